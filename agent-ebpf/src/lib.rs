//! Library half of the eBPF crate. Empty on purpose: it only exists so that tools that walk the
//! workspace on the host (clippy, rust-analyzer) find a target that builds everywhere.
#![no_std]

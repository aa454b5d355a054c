//! The userspace half of the agent. Data path, one module per stage:
//! [`loader`] → [`capture`] → [`conn`] → [`protocol`] → [`trace`] → [`export`], wired by
//! [`pipeline`]; beside it [`select`] (which processes), [`process`] and [`k8s`] (what they are
//! called), [`config`] and [`cli`] (settings), [`admin`] (the agent's own HTTP endpoint).
//! Spans also feed [`metrics`] (RED metrics, the service graph) and the [`ui`] web view, both
//! served by [`web`].
//! See docs/ARCHITECTURE.md.

pub mod admin;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod elf;
pub mod export;
pub mod k8s;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod percent;
pub mod pipeline;
pub mod process;
pub mod protocol;
pub mod select;
pub mod stats;
pub mod timer;
pub mod tls;
pub mod trace;
pub mod ui;
pub mod web;

//! Builds the kernel programs (`agent-ebpf`) for the BPF target with aya-build and leaves the
//! object in `OUT_DIR/agent`, which `loader.rs` embeds. Checks the eBPF toolchain first so that a
//! fresh machine gets a message naming the setup command instead of a linker error.
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const SETUP_HINT: &str = "the eBPF toolchain is incomplete; run `cargo xtask setup` once \
(installs nightly rust-src, LLVM 22 and bpf-linker), then build again";

fn check_toolchain() -> anyhow::Result<()> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.map(|o| o.status.success()).unwrap_or(false) {
        return Err(anyhow!("bpf-linker not found on PATH: {SETUP_HINT}"));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .ok_or_else(|| anyhow!("no nightly Rust toolchain: {SETUP_HINT}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let src = std::path::Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        return Err(anyhow!("nightly rust-src component missing: {SETUP_HINT}"));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    check_toolchain()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .context("agent-ebpf package not in the workspace")?;
    let root = ebpf
        .manifest_path
        .parent()
        .context("agent-ebpf manifest has no parent")?;
    // aya-build watches the kernel crate; the types it shares with userspace change it too.
    if let Some(common) = root.parent().map(|w| w.join("agent-common")) {
        println!("cargo:rerun-if-changed={common}");
    }
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .with_context(|| {
        format!("building the kernel programs failed ({SETUP_HINT} if the toolchain is missing)")
    })
}

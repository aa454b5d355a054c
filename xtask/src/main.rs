//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: installs what a fresh Debian machine lacks to build the kernel programs (nightly
//!   rust-src, LLVM 22, bpf-linker built against it) and to run the end-to-end tests (curl,
//!   Node.js, Java, iproute2). Idempotent: quick when everything is there.
//! - `build`: setup, then `cargo build --release` (the eBPF object is embedded by agent/build.rs).
//! - `run -- ARGS`: build, then run `target/release/agent ARGS` (as root).
//! - `lint`: rustfmt and clippy with warnings denied.
//! - `test`: build, unit tests, then the end-to-end tests (they need root and load eBPF; they fail,
//!   never skip, when that is impossible).
//! - `bench`: build, then measure what the agent costs traced services (see `bench`).

mod bench;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks for the eBPF tracing agent")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test peers that are missing.
    Setup,
    /// Set up and build the release agent.
    Build,
    /// Set up, build and run the agent with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt --check and clippy -D warnings.
    Lint,
    /// Set up, build, and run the unit and end-to-end tests.
    Test {
        /// Extra arguments for the end-to-end test runner (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and measure the agent's overhead (docs/BENCHMARKS.md).
    Bench(bench::Options),
}

const LLVM: &str = "/usr/lib/llvm-22";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command as root, through sudo when not root already.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        // Keep the environment (cargo and rustup homes, OTEL_* variables) under sudo.
        c.arg("-E").arg(program);
        c
    }
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(as_root("apt-get").arg("update").arg("-q"))?;
    run(as_root("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs the PyPI packages whose module (first of each pair) does not import.
fn pip_install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(module, _)| {
            !succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing))
}

/// What the benchmark needs beyond the test peers: a collector, the Python service's libraries
/// with OpenTelemetry's auto-instrumentation for the comparison, and valgrind to count the
/// pipeline's instructions.
fn bench_setup() -> Result<()> {
    apt_install(&["nginx", "wrk", "redis-server", "valgrind"])?;
    pip_install(&[
        ("flask", "flask"),
        ("waitress", "waitress"),
        ("requests", "requests"),
        ("redis", "redis"),
        ("rotel", "rotel"),
    ])?;
    // The SDK and the instrumentations of the app's libraries (Flask, requests, redis), pinned
    // to one consistent release: `opentelemetry-bootstrap` picks versions PyPI may not have.
    let otel = [
        "opentelemetry-api==1.45.1",
        "opentelemetry-sdk==1.45.1",
        "opentelemetry-exporter-otlp==1.45.1",
        "opentelemetry-distro==0.66b1",
        "opentelemetry-instrumentation==0.66b1",
        "opentelemetry-instrumentation-flask==0.66b1",
        "opentelemetry-instrumentation-requests==0.66b1",
        "opentelemetry-instrumentation-redis==0.66b1",
    ];
    let probe = "import opentelemetry.instrumentation.flask, opentelemetry.instrumentation.redis, \
                 opentelemetry.instrumentation.requests, opentelemetry.exporter.otlp";
    if !succeeds(Command::new("python3").args(["-c", probe])) {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(otel))?;
    }
    Ok(())
}

fn setup() -> Result<()> {
    // Kernel-program toolchain.
    apt_install(&[
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
    ])?;
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup component list")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        let path = format!("{LLVM}/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_SYS_221_PREFIX", LLVM)
            .env("LLVM_PREFIX", LLVM)
            .env("PATH", path))?;
    }
    // End-to-end test peers (python3 ships with the machine image).
    apt_install(&[
        "curl",
        "nodejs",
        "iproute2",
        "util-linux",
        "openjdk-17-jdk-headless",
        // Database and cache servers with their command-line clients.
        "postgresql",
        "mariadb-server",
        "mariadb-client",
        "redis-server",
        "redis-tools",
        // Load generation for the benchmark.
        "nginx",
        "wrk",
        // Headless browser for the web view's test.
        "chromium",
    ])?;
    // Python clients and servers from PyPI, each checked by importing its module.
    pip_install(&[
        ("grpc", "grpcio"),
        ("psycopg2", "psycopg2-binary"),
        ("psycopg", "psycopg[binary]"),
        ("pymysql", "pymysql"),
        ("mysql.connector", "mysql-connector-python"),
        ("redis", "redis"),
        ("hypercorn", "hypercorn"),
    ])?;
    // kubectl renders the kustomizations; kubernetes-validate checks manifests offline.
    if !succeeds(Command::new("kubectl").args(["version", "--client"])) {
        apt_install(&["kubectl"])?;
    }
    pip_install(&[("kubernetes_validate", "kubernetes-validate")])?;
    eprintln!("setup: toolchain and test peers present");
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "--package", "agent"]))
}

fn agent_bin() -> PathBuf {
    root().join("target/release/agent")
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The kernel crate needs nightly and its own target: it is checked just below.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel crate is checked for its own target with the nightly toolchain.
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "agent-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root()))
}

/// Runs a test command, echoing its output, and adds up its `test result:` lines.
fn run_tests(cmd: &mut Command, totals: &mut (u64, u64)) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("test output")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.0 += count("passed");
            totals.1 += count("failed");
        }
    }
    let status = child.wait().context("waiting for tests")?;
    if !status.success() {
        println!("{} passed, {} failed", totals.0, totals.1.max(1));
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    build()?;
    let cargo_path = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut totals = (0, 0);
    // Unit tests read the running kernel's BTF; the end-to-end tests load eBPF: both as root
    // (through sudo when not root already).
    run_tests(
        as_root(&cargo_path).current_dir(root()).args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "agent-e2e",
            "--exclude",
            "agent-ebpf",
        ]),
        &mut totals,
    )?;
    run_tests(
        as_root(&cargo_path)
            .current_dir(root())
            .args([
                "test",
                "--no-fail-fast",
                "--package",
                "agent-e2e",
                "--tests",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .env("AGENT_BIN", agent_bin()),
        &mut totals,
    )?;
    // One closing line for the whole suite.
    println!("{} passed, {} failed", totals.0, totals.1);
    if totals.0 == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Run { args } => {
            build()?;
            run(as_root(agent_bin().to_str().context("non-UTF-8 path")?).args(args))
        }
        Task::Lint => lint(),
        Task::Test { args } => test(&args),
        Task::Bench(opts) => {
            build()?;
            bench_setup()?;
            // AGENT_BIN measures another build (or a wrapper) against the same scenarios.
            let agent = std::env::var_os("AGENT_BIN").map_or_else(agent_bin, PathBuf::from);
            bench::run(opts, agent, root())
        }
    }
}

//! `cargo xtask bench`: what tracing costs the traced application, measured honestly on a
//! noisy 2-core machine: every scenario is run without and with the agent (and, for the Python
//! service, under OpenTelemetry's Python auto-instrumentation), alternated round after round in
//! one run, and the medians compared as ratios. Prints a markdown table, writes it and a JSON
//! file under `target/bench/`, and prints each budget of docs/BENCHMARKS.md as met or not (a
//! report, never a test failure).

mod agent;
mod pipeline;
mod procs;
mod report;
mod scenario;
mod wrk;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

use agent::AgentRun;
use report::Row;
use scenario::{Mode, Nginx, PythonDeps};
use wrk::Load;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rounds of each mode per scenario (alternated).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Instead of the comparison: steady load on nginx for this many seconds, reporting the
    /// agent's memory and queue depths over time.
    #[arg(long)]
    pub soak: Option<u64>,
}

struct Ctx {
    opts: Options,
    peers: PathBuf,
    work: PathBuf,
    agent_bin: PathBuf,
    otlp_grpc: String,
}

pub fn run(opts: Options, agent_bin: PathBuf, root: PathBuf) -> Result<()> {
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work)?;
    let files = procs::raise_fd_limit(65_536)?;
    if files < 12_000 {
        eprintln!("open-file limit {files}: the 10k-connection scenario will fail");
    }
    let _stats = procs::BpfStats::enable()?;
    // A real OTLP collector that discards what it receives: export costs what it costs.
    let otlp_port = procs::free_port()?;
    let _collector = procs::Spawned::start(
        "rotel",
        std::process::Command::new(rotel()?).args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{otlp_port}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{}", procs::free_port()?),
            "--exporter",
            "blackhole",
        ]),
    )?;
    procs::wait_port(otlp_port, "rotel")?;
    let ctx = Ctx {
        opts,
        peers: root.join("xtask/bench-peers"),
        work,
        agent_bin,
        otlp_grpc: format!("http://127.0.0.1:{otlp_port}"),
    };
    if let Some(secs) = ctx.opts.soak {
        return soak(&ctx, Duration::from_secs(secs));
    }
    let mut rows = Vec::new();
    let wanted = |name: &str| ctx.opts.only.as_deref().is_none_or(|o| name.contains(o));
    for (name, load) in [
        ("nginx-saturated", Load::Saturate { connections: 50 }),
        // Ten thousand open keep-alive connections, each making a request a second: what the
        // agent's memory costs per connection.
        (
            "nginx-10k-connections",
            Load::Fixed {
                connections: 10_000,
                delay_ms: 1000,
            },
        ),
    ] {
        if wanted(name) {
            rows.extend(nginx(&ctx, name, load)?);
        }
    }
    for (name, load) in [
        (
            "python-fixed-rate",
            Load::Fixed {
                connections: 8,
                delay_ms: 20,
            },
        ),
        ("python-saturated", Load::Saturate { connections: 16 }),
    ] {
        if wanted(name) {
            rows.extend(python(&ctx, name, load)?);
        }
    }
    if !rows.is_empty() {
        report::print_and_save(&rows, &ctx.work)?;
    }
    if wanted("pipeline") {
        // The working tree's code (not `AGENT_BIN`'s), free of the scenarios' other processes.
        pipeline::run(&ctx.work)?;
    }
    Ok(())
}

/// The rotel binary shipped inside its PyPI package.
fn rotel() -> Result<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("finding rotel (cargo xtask bench installs it)")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn nginx(ctx: &Ctx, name: &str, load: Load) -> Result<Vec<Row>> {
    let nginx = Nginx::start(&ctx.work.join(name))?;
    let duration = Duration::from_secs(ctx.opts.seconds);
    let mut rows = Vec::new();
    // Warm-up, unmeasured.
    wrk::run(&ctx.peers, &nginx.url, load, Duration::from_secs(2))?;
    for round in 0..ctx.opts.rounds {
        for mode in [Mode::Bare, Mode::Agent] {
            let agent = (mode == Mode::Agent)
                .then(|| AgentRun::start(ctx, &[nginx.server.pid()], &format!("nginx-{round}")))
                .transpose()?;
            let before = agent.as_ref().map(AgentRun::snapshot).transpose()?;
            let outcome = wrk::run(&ctx.peers, &nginx.url, load, duration)?;
            let cost = match (agent, before) {
                (Some(a), Some(b)) => Some(a.finish(b, &outcome, 1)?),
                _ => None,
            };
            eprintln!("{name} round {round} {mode:?}: {:.0} req/s", outcome.rps);
            rows.push(Row::new(name, mode, round, outcome, cost));
        }
    }
    Ok(rows)
}

fn python(ctx: &Ctx, name: &str, load: Load) -> Result<Vec<Row>> {
    let deps = PythonDeps::start(&ctx.peers)?;
    let duration = Duration::from_secs(ctx.opts.seconds);
    let mut rows = Vec::new();
    for round in 0..ctx.opts.rounds {
        for mode in [Mode::Bare, Mode::Agent, Mode::Sdk] {
            let (front, url) = deps.front(&ctx.peers, mode, &ctx.otlp_grpc)?;
            wrk::run(&ctx.peers, &url, load, Duration::from_secs(1))?;
            let agent = (mode == Mode::Agent)
                .then(|| AgentRun::start(ctx, &[front.pid()], &format!("{name}-{round}")))
                .transpose()?;
            let before = agent.as_ref().map(AgentRun::snapshot).transpose()?;
            let outcome = wrk::run(&ctx.peers, &url, load, duration)?;
            // Per request: the SERVER span, the CLIENT call to the backend, the Redis GET.
            let cost = match (agent, before) {
                (Some(a), Some(b)) => Some(a.finish(b, &outcome, 3)?),
                _ => None,
            };
            eprintln!("{name} round {round} {mode:?}: {:.0} req/s", outcome.rps);
            rows.push(Row::new(name, mode, round, outcome, cost));
            drop(front);
        }
    }
    Ok(rows)
}

fn soak(ctx: &Ctx, duration: Duration) -> Result<()> {
    let nginx = Nginx::start(&ctx.work.join("nginx-soak"))?;
    let agent = AgentRun::start(ctx, &[nginx.server.pid()], "soak")?;
    let url = nginx.url.clone();
    let peers = ctx.peers.clone();
    let load = Load::Fixed {
        connections: 20,
        delay_ms: 2,
    };
    let driver = std::thread::spawn(move || wrk::run(&peers, &url, load, duration));
    println!(
        "| t (s) | agent RSS (MiB) | ring buffer queued (bytes) | spans queue | events lost |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let start = std::time::Instant::now();
    while !driver.is_finished() {
        std::thread::sleep(Duration::from_secs(5));
        let s = agent.sample()?;
        println!(
            "| {} | {:.1} | {} | {} | {} |",
            start.elapsed().as_secs(),
            s.rss_mib,
            s.ring_queued,
            s.spans_queue,
            s.lost
        );
    }
    let outcome = driver.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
    let before = agent::Snapshot::default();
    let cost = agent.finish(before, &outcome, 1)?;
    println!(
        "\n{} requests at {:.0}/s; spans missing: {}; events lost: {}; peak RSS {:.1} MiB",
        outcome.requests,
        outcome.rps,
        cost.requests_without_span,
        cost.events_lost,
        cost.peak_rss_mib
    );
    Ok(())
}

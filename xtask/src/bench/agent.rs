//! The agent under measurement: started for one run with OTLP export to the local collector
//! and its Prometheus endpoint on, measured from `/proc`, the BPF statistics of its programs and
//! its own counters.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    Ctx,
    procs::{self, Spawned},
    wrk::Outcome,
};

/// What the agent cost during one run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Cost {
    /// Agent user+system CPU per request served, in microseconds.
    pub cpu_us_per_request: f64,
    /// Kernel time per BPF program run, in nanoseconds.
    pub kernel_ns_per_event: f64,
    /// Kernel time in the agent's programs per request served, in microseconds.
    pub kernel_us_per_request: f64,
    pub peak_rss_mib: f64,
    /// Kernel records lost plus spans dropped or not exported.
    pub events_lost: u64,
    pub spans: u64,
    /// Requests the load generator completed minus those the spans account for.
    pub requests_without_span: u64,
}

/// Counters read before the load starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    cpu_us: u64,
    bpf_ns: u64,
    bpf_runs: u64,
}

/// A point of the soak report.
pub struct Sample {
    pub rss_mib: f64,
    /// Bytes queued in the kernel's ring buffer, not read yet.
    pub ring_queued: u64,
    pub spans_queue: u64,
    pub lost: u64,
}

pub struct AgentRun {
    agent: Spawned,
    prometheus: u16,
    log: PathBuf,
}

impl AgentRun {
    pub fn start(ctx: &Ctx, pids: &[u32], label: &str) -> Result<Self> {
        let prometheus = procs::free_port()?;
        let log = ctx.work.join(format!("agent-{label}.log"));
        let mut cmd = Command::new(&ctx.agent_bin);
        for pid in pids {
            cmd.args(["--pid", &pid.to_string()]);
        }
        cmd.args(["--otlp-endpoint", &ctx.otlp_grpc, "--otlp-protocol", "grpc"])
            .args(["--prometheus-port", &prometheus.to_string()])
            .env("AGENT_LOG", "info");
        let agent = Spawned::start_logged("agent", &mut cmd, &log)?;
        procs::wait_log(&log, "ready: tracing", Duration::from_secs(60))
            .context("the agent did not start")?;
        // The peak measured is the peak under load: start-up (BTF parsing, the /proc scan) is
        // one-off and already handed back.
        procs::reset_peak_rss(agent.pid())?;
        Ok(AgentRun {
            agent,
            prometheus,
            log,
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let pid = self.agent.pid();
        let (bpf_ns, bpf_runs) = procs::bpf_run_stats(pid)?;
        Ok(Snapshot {
            cpu_us: procs::cpu_us(pid)?,
            bpf_ns,
            bpf_runs,
        })
    }

    pub fn sample(&self) -> Result<Sample> {
        let m = procs::scrape(self.prometheus)?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.agent.pid()))?;
        let rss_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
        Ok(Sample {
            rss_mib: rss_kib / 1024.0,
            ring_queued: get("agent_ring_buffer_queued_bytes"),
            spans_queue: get("agent_spans_queue_depth"),
            lost: lost(&m),
        })
    }

    /// Reads the costs of the run that `before` started, then stops the agent.
    pub fn finish(
        self,
        before: Snapshot,
        outcome: &Outcome,
        spans_per_request: u64,
    ) -> Result<Cost> {
        let after = self.snapshot()?;
        let peak = procs::peak_rss_kib(self.agent.pid())?;
        // Stopping flushes every span; the agent then logs its final counters.
        let status = self.agent.stop(libc::SIGINT)?;
        anyhow::ensure!(
            status.success(),
            "agent exited {status}; see {}",
            self.log.display()
        );
        let m = final_counters(&self.log)?;
        let requests = outcome.requests.max(1) as f64;
        // Spans that reached the collector: a span dropped on the way is a request without one.
        let spans = m.get("spans_exported").copied().unwrap_or(0.0) as u64;
        let runs = after.bpf_runs.saturating_sub(before.bpf_runs).max(1) as f64;
        let bpf_ns = after.bpf_ns.saturating_sub(before.bpf_ns) as f64;
        Ok(Cost {
            cpu_us_per_request: after.cpu_us.saturating_sub(before.cpu_us) as f64 / requests,
            kernel_ns_per_event: bpf_ns / runs,
            kernel_us_per_request: bpf_ns / 1000.0 / requests,
            peak_rss_mib: peak as f64 / 1024.0,
            events_lost: lost(&m),
            spans,
            requests_without_span: outcome.requests.saturating_sub(spans / spans_per_request),
        })
    }
}

/// The `name = value` counter lines the agent logs when it stops.
fn final_counters(log: &std::path::Path) -> Result<HashMap<String, f64>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(" = ")?;
            let name = name.rsplit(' ').next()?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// Everything lost on the way: kernel records (any `lost_*` outcome), spans dropped at the
/// export queue or refused by the backend. Reads both the Prometheus names and the names of
/// the final log lines.
fn lost(m: &HashMap<String, f64>) -> u64 {
    m.iter()
        .filter(|(k, _)| {
            let k = k.trim_start_matches("agent_");
            k.starts_with("kernel_events_total{outcome=\"lost_")
                || k.starts_with("kernel_lost_")
                || k.starts_with("spans_dropped_queue")
                || k.starts_with("spans_export_failed")
        })
        .map(|(_, v)| *v as u64)
        .sum()
}

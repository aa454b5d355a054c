//! Command-line interface. Every setting can also come from the YAML file given with `--config`
//! (see `config.rs`); flags win over the file, and selectors from both are combined.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::k8s;

/// eBPF zero-code tracing agent: spans for the HTTP traffic of running processes, without
/// touching their code. Needs root.
///
/// Select processes with --pid, --exe, --port, --container or --all (combinable, with
/// --exclude-* exceptions); processes they start later are traced too.
///
/// With no OTLP endpoint configured (flag or OTEL_EXPORTER_OTLP_ENDPOINT /
/// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), spans are printed on stdout.
#[derive(Debug, Default, Parser)]
#[command(name = "agent", version, about, long_about)]
pub struct Args {
    /// Process to trace (all of its threads, and the children it starts); repeat for several.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace processes whose executable path or file name matches this glob, e.g. 'python3*'
    /// or '/usr/sbin/nginx'; repeat for several.
    #[arg(long = "exe", value_name = "GLOB")]
    pub exes: Vec<String>,

    /// Trace processes that listen on, or connect to, this TCP port; repeat for several.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Trace the processes of this container (full id or a prefix of 12+ characters).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Trace every process on the host (except the excluded ones).
    #[arg(long)]
    pub all: bool,

    /// Never trace this process.
    #[arg(long = "exclude-pid", value_name = "PID")]
    pub exclude_pids: Vec<u32>,

    /// Never trace processes whose executable matches this glob.
    #[arg(long = "exclude-exe", value_name = "GLOB")]
    pub exclude_exes: Vec<String>,

    /// Never trace the processes of this container.
    #[arg(long = "exclude-container", value_name = "ID")]
    pub exclude_containers: Vec<String>,

    /// YAML configuration file (selectors and settings; flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// OTLP endpoint, e.g. http://localhost:4318 (like OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf, or grpc when the endpoint's port is 4317).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// How spans are printed when no OTLP endpoint is configured [default: text].
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Payload bytes captured per syscall, 64 to 4096 [default: 4096]; enough for request and
    /// status lines and headers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub capture_bytes: Option<u32>,

    /// Kernel ring buffer size in MiB, a power of two [default: 1 MiB per CPU, 4 to 64]. Its
    /// pages are resident (and counted twice in RSS, being mapped twice); the reader is woken at
    /// 512 KiB queued (an eighth of a smaller ring), so 4 MiB absorbs nearly a third of a second
    /// of the agent falling behind at 23k requests/s. Records that do not fit are counted as
    /// lost, never dropped silently.
    #[arg(long, value_parser = parse_ring_size)]
    pub ring_buffer_mib: Option<u32>,

    /// Serve the agent's own HTTP endpoint on this port: /metrics (Prometheus), /healthz and
    /// /readyz.
    #[arg(long, value_name = "PORT")]
    pub prometheus_port: Option<u16>,

    /// Serve the local web view on this address, e.g. 127.0.0.1:8090: the live service map,
    /// the slowest and failed recent traces, and their waterfalls. Needs no backend.
    #[arg(long, value_name = "ADDR:PORT")]
    pub ui: Option<std::net::SocketAddr>,

    /// Most metric series per family (RED, service graph); measurements for new label
    /// combinations past it go to an overflow series, and are counted [default: 2000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub metric_series_limit: Option<u32>,

    /// An http.route pattern for SERVER spans and metrics, e.g. '/users/{name}' ({x} is one
    /// path segment, a final '*' the rest); tried in order before the built-in reduction of
    /// ids to {id}. Repeat for several.
    #[arg(long = "route", value_name = "PATTERN")]
    pub routes: Vec<String>,

    /// Kubernetes metadata (k8s.* attributes, service names from pod labels and workloads):
    /// auto (in a cluster, or with --kubeconfig), on, off [default: auto].
    #[arg(long, value_enum)]
    pub kubernetes: Option<k8s::Mode>,

    /// kubeconfig to reach the Kubernetes API (default: in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The Kubernetes node the agent runs on (default: NODE_NAME, else the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// BTF of the running kernel, for struct offsets [default: /sys/kernel/btf/vmlinux].
    #[arg(long)]
    pub btf: Option<PathBuf>,

    /// Read the bytes at the syscall tracepoints even on kernels with the socket BTF
    /// tracepoints (the path kernels before 6.3 take; for comparisons and tests).
    #[arg(long, hide = true)]
    pub syscall_tracepoints: bool,

    /// Log filter for the agent's own diagnostics on stderr (RUST_LOG syntax) [default: info].
    #[arg(long, env = "AGENT_LOG")]
    pub log: Option<String>,
}

/// Validates a ring buffer size in MiB.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    check_ring_size(n)
}

pub fn check_ring_size(n: u32) -> Result<u32, String> {
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "ring buffer size {n} MiB must be a power of two between 1 and 1024"
        ));
    }
    Ok(n)
}

/// Span print format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One readable line per span.
    Text,
    /// One JSON object per span per line.
    Json,
}

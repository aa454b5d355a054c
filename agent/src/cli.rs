//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// eBPF zero-code tracing agent: spans for the HTTP traffic of running processes, without
/// touching their code. Needs root.
///
/// With no OTLP endpoint configured (flag or OTEL_EXPORTER_OTLP_ENDPOINT /
/// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), spans are printed on stdout.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, long_about)]
pub struct Args {
    /// Process to trace (all of its threads); repeat for several.
    #[arg(long = "pid", value_name = "PID", required = true)]
    pub pids: Vec<u32>,

    /// OTLP endpoint, e.g. http://localhost:4318 (like OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf, or grpc when the endpoint's port is 4317).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// How spans are printed when no OTLP endpoint is configured.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Payload bytes captured per syscall (at most 4096); enough for request and status lines
    /// and headers.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub capture_bytes: u32,

    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_parser = parse_ring_size)]
    pub ring_buffer_mib: u32,

    /// BTF of the running kernel, for struct offsets.
    #[arg(long, default_value = crate::btf::VMLINUX)]
    pub btf: PathBuf,

    /// Log filter for the agent's own diagnostics on stderr (RUST_LOG syntax).
    #[arg(long, env = "AGENT_LOG", default_value = "info")]
    pub log: String,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err("must be a power of two between 1 and 1024".into());
    }
    Ok(n)
}

/// Span print format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One readable line per span.
    Text,
    /// One JSON object per span per line.
    Json,
}

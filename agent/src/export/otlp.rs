//! OTLP trace export, gRPC or http/protobuf, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables (or `--otlp-endpoint`).
//!
//! One agent traces many processes, and each is its own OpenTelemetry resource (service.name,
//! process.pid, ...): a batch is one `ExportTraceServiceRequest` with a `ResourceSpans` per
//! process. The process loop encodes the requests (`batch`, following `OTEL_BSP_SCHEDULE_DELAY`
//! and `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`); the task here sends them with `transport`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::warn;

use super::{
    batch::Batch,
    endpoint::{Signal, Target, env_number},
    proto::AnyValue,
    transport::{self, Transport},
};
use crate::{process::ProcessInfo, stats::Stats};

/// Resolved OTLP trace settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub batch_delay: Duration,
    pub batch_size: usize,
    /// Most traced processes whose encoded resource is kept at once.
    pub max_resources: usize,
}

impl Config {
    /// OTLP settings from the flag and the environment, or `None` when no endpoint is configured
    /// anywhere (spans then go to stdout).
    pub fn from_env(
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>> {
        let Some(target) = Target::resolve(Signal::Traces, flag_endpoint, flag_protocol)? else {
            return Ok(None);
        };
        Ok(Some(Config {
            target,
            batch_delay: Duration::from_millis(env_number("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            batch_size: env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.max(1) as usize,
            max_resources: 1024,
        }))
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Bytes the transport needs in front of each encoded request.
    pub fn prefix_len(&self) -> usize {
        transport::prefix_len(self.target.protocol)
    }

    /// Fails early, at start-up, on a configuration the exporter refuses.
    pub fn validate(&self) -> Result<()> {
        Transport::new(&self.target).map(drop)
    }
}

/// Resource attributes of a traced process: its own `OTEL_RESOURCE_ATTRIBUTES` and `k8s.*`
/// first, then the agent's keys, which win over any of the same name.
pub fn resource_attributes(p: &ProcessInfo) -> Vec<(&str, AnyValue<'_>)> {
    let own: [(&str, AnyValue<'_>); 9] = [
        ("service.name", AnyValue::Str(&p.service_name)),
        ("process.pid", AnyValue::Int(i64::from(p.pid))),
        ("process.executable.name", AnyValue::Str(&p.executable_name)),
        ("process.executable.path", AnyValue::Str(&p.executable_path)),
        ("process.command_line", AnyValue::Str(&p.command_line)),
        ("host.name", AnyValue::Str(&p.host_name)),
        ("telemetry.sdk.name", AnyValue::Str(env!("CARGO_PKG_NAME"))),
        ("telemetry.sdk.language", AnyValue::Str("rust")),
        (
            "telemetry.sdk.version",
            AnyValue::Str(env!("CARGO_PKG_VERSION")),
        ),
    ];
    let runtime = p
        .runtime
        .name()
        .map(|n| ("process.runtime.name", AnyValue::Str(n)));
    let container = p
        .container_id
        .as_deref()
        .map(|id| ("container.id", AnyValue::Str(id)));
    let agent: Vec<_> = runtime.into_iter().chain(container).chain(own).collect();
    let mut all: Vec<_> = p
        .attributes
        .iter()
        .filter(|(k, _)| !agent.iter().any(|(a, _)| a == k))
        .map(|(k, v)| (k.as_str(), AnyValue::Str(v)))
        .collect();
    all.extend(agent);
    all
}

/// Batches exported at once: one round trip at a time cannot keep up with a busy host.
const IN_FLIGHT: usize = 4;

/// Sends the requests the process loop's `Batcher` made until the channel closes, up to
/// `IN_FLIGHT` at once; then waits for the last of them.
pub async fn run(
    config: Config,
    mut rx: mpsc::Receiver<Batch>,
    queued: Arc<AtomicU64>,
    stats: Arc<Stats>,
) -> Result<()> {
    let transport = Transport::new(&config.target)?;
    let mut in_flight = JoinSet::new();
    while let Some(Batch { body, spans: n }) = rx.recv().await {
        queued.fetch_sub(n, Ordering::Relaxed);
        settle(&mut in_flight, IN_FLIGHT).await;
        let transport = transport.clone();
        let stats = stats.clone();
        in_flight.spawn(async move {
            match transport.send(transport.seal(body)).await {
                Ok(outcome) => {
                    let rejected = outcome.rejected.min(n);
                    stats.add(&stats.spans_exported, n - rejected);
                    if rejected > 0 {
                        stats.add(&stats.spans_export_failed, rejected);
                        warn!(spans = rejected, "the OTLP collector rejected spans");
                    }
                }
                Err(err) => {
                    stats.add(&stats.spans_export_failed, n);
                    warn!(spans = n, "{err}");
                }
            }
        });
    }
    settle(&mut in_flight, 1).await;
    Ok(())
}

/// Waits until fewer than `limit` exports are in flight.
async fn settle(in_flight: &mut JoinSet<()>, limit: usize) {
    while in_flight.len() >= limit.max(1) {
        if in_flight.join_next().await.is_none() {
            break;
        }
    }
}

//! OTLP trace export, gRPC or http/protobuf, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables (or `--otlp-endpoint`).
//!
//! One agent traces many processes, and each is its own OpenTelemetry resource (service.name,
//! process.pid, ...). A batch becomes one `ExportTraceServiceRequest` with a `ResourceSpans` per
//! process, encoded straight from the agent's spans (`proto`) with each process's resource
//! encoded once and kept (bounded), and sent by `transport`. Batching follows
//! `OTEL_BSP_SCHEDULE_DELAY` and `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Result;
use opentelemetry::{KeyValue, trace::TraceState};
use opentelemetry_sdk::Resource;
use smol_str::SmolStr;
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    endpoint::{Signal, Target, env_number},
    proto::{self, AnyValue, Writer},
    transport::Transport,
};
use crate::{process::ProcessInfo, stats::Stats, trace::Span};

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

/// The same attributes as the SDK's resource (for the metrics exporter).
pub fn resource(p: &ProcessInfo) -> Resource {
    let attributes = resource_attributes(p).into_iter().map(|(k, v)| match v {
        AnyValue::Str(s) => KeyValue::new(k.to_string(), s.to_string()),
        AnyValue::Int(i) => KeyValue::new(k.to_string(), i),
    });
    Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

/// Batches exported at once: one round trip at a time cannot keep up with a busy host.
const IN_FLIGHT: usize = 4;

/// Encodes batches of spans as `ExportTraceServiceRequest` bodies, keeping each process's
/// encoded resource (bounded). Apart from the exporter so that `benches/pipeline.rs` measures
/// exactly this work.
pub struct Encoder {
    max_resources: usize,
    resources: HashMap<u32, (Arc<ProcessInfo>, Arc<[u8]>)>,
    /// Encoded bytes per span in the last batch, with some room: the next batch's buffer is
    /// allocated at its expected size once rather than grown (and copied) as it fills.
    span_bytes: usize,
}

impl Encoder {
    /// Keeps the encoded resources of at most `max_resources` processes.
    pub fn new(max_resources: usize) -> Self {
        Encoder {
            max_resources,
            resources: HashMap::new(),
            span_bytes: 512,
        }
    }

    /// The encoded resource of a process (encoded again when the pid now names another one).
    fn resource(&mut self, p: &Arc<ProcessInfo>) -> Arc<[u8]> {
        if let Some((known, bytes)) = self.resources.get(&p.pid)
            && known == p
        {
            return bytes.clone();
        }
        if self.resources.len() >= self.max_resources {
            self.resources.clear(); // bounded: encoding one again is cheap
        }
        let bytes: Arc<[u8]> = proto::resource(resource_attributes(p)).into();
        self.resources.insert(p.pid, (p.clone(), bytes.clone()));
        bytes
    }

    /// Encodes `spans` (and empties it) as one request, a `ResourceSpans` per process, after
    /// `prefix` bytes left for the transport's framing.
    pub fn encode(&mut self, spans: &mut Vec<Span>, prefix: usize) -> Vec<u8> {
        let n = spans.len();
        spans.sort_by_key(|s| s.process.pid);
        let mut w = Writer {
            buf: Vec::with_capacity(prefix + n * self.span_bytes),
        };
        w.buf.resize(prefix, 0);
        for group in spans.chunk_by_mut(|a, b| a.process.pid == b.process.pid) {
            let resource = self.resource(&group[0].process);
            for s in group.iter_mut() {
                sanitize_trace_state(s);
            }
            proto::resource_spans(&mut w, &resource, group.iter());
        }
        spans.clear();
        self.span_bytes = (w.buf.len() / n.max(1)).clamp(64, 16 * 1024) * 9 / 8;
        w.buf
    }
}

/// The transport, the encoder, and the exports in flight.
struct Exporter {
    transport: Transport,
    encoder: Encoder,
    in_flight: tokio::task::JoinSet<()>,
}

impl Exporter {
    /// Waits until fewer than `limit` exports are in flight.
    async fn settle(&mut self, limit: usize) {
        while self.in_flight.len() >= limit.max(1) {
            if self.in_flight.join_next().await.is_none() {
                break;
            }
        }
    }

    /// Encodes `spans` as one request, a `ResourceSpans` per process, and sends it.
    async fn export(&mut self, spans: &mut Vec<Span>, stats: &Arc<Stats>) {
        let n = spans.len() as u64;
        let buf = self.encoder.encode(spans, self.transport.prefix_len());
        self.settle(IN_FLIGHT).await;
        let transport = self.transport.clone();
        let stats = stats.clone();
        let body = self.transport.seal(buf);
        self.in_flight.spawn(async move {
            match transport.send(body).await {
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
}

/// A `tracestate` that does not parse (it came from the wire) is dropped rather than sent on.
fn sanitize_trace_state(s: &mut Span) {
    if !s.trace_state.is_empty() && s.trace_state.parse::<TraceState>().is_err() {
        s.trace_state = SmolStr::default();
    }
}

/// Batches spans and exports them until the channel closes; then exports the rest.
pub async fn run(config: Config, mut rx: mpsc::Receiver<Span>, stats: Arc<Stats>) -> Result<()> {
    let mut exporters = Exporter {
        transport: Transport::new(&config.target)?,
        encoder: Encoder::new(config.max_resources),
        in_flight: tokio::task::JoinSet::new(),
    };
    let mut pending: Vec<Span> = Vec::with_capacity(config.batch_size);
    let mut tick = tokio::time::interval(config.batch_delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut pending, config.batch_size) => {
                if n == 0 {
                    break;
                }
                if pending.len() >= config.batch_size {
                    exporters.export(&mut pending, &stats).await;
                }
            }
            _ = tick.tick() => {
                if !pending.is_empty() {
                    exporters.export(&mut pending, &stats).await;
                }
            }
        }
    }
    if !pending.is_empty() {
        exporters.export(&mut pending, &stats).await;
    }
    exporters.settle(1).await;
    Ok(())
}

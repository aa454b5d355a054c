//! OTLP export through `opentelemetry-otlp`, gRPC or http/protobuf, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables (or `--otlp-endpoint`).
//!
//! One agent traces many processes, and each is its own OpenTelemetry resource (service.name,
//! process.pid, ...). An OTLP exporter carries one resource, so the agent keeps one exporter per
//! traced process (bounded), groups each batch by process, and sends each group through its
//! process's exporter. Batching follows `OTEL_BSP_SCHEDULE_DELAY` and
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{
        SpanContext, SpanId, SpanKind as OtelKind, Status as OtelStatus, TraceFlags, TraceId,
        TraceState,
    },
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::endpoint::{Protocol, Signal, Target, env_number};
use crate::{
    process::ProcessInfo,
    stats::Stats,
    trace::{Span, SpanKind, Status, Value},
};

/// Resolved OTLP trace settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub batch_delay: Duration,
    pub batch_size: usize,
    /// Most traced processes with an exporter of their own at once.
    pub max_exporters: usize,
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
            max_exporters: 1024,
        }))
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Builds an exporter (checks the configuration; connections are made lazily).
    fn build(&self) -> Result<SpanExporter> {
        let url = self.target.url();
        let exporter = match self.target.protocol {
            Protocol::Grpc => {
                let b = SpanExporter::builder().with_tonic();
                match url {
                    Some(ep) => b.with_endpoint(ep).build(),
                    None => b.build(),
                }
            }
            Protocol::HttpProtobuf => {
                let b = SpanExporter::builder().with_http();
                match url {
                    Some(ep) => b.with_endpoint(ep).build(),
                    None => b.build(),
                }
            }
        };
        exporter.context("invalid OTLP exporter configuration")
    }

    /// Fails early, at start-up, on a configuration the exporter refuses.
    pub fn validate(&self) -> Result<()> {
        self.build().map(drop)
    }
}

/// Resource attributes of a traced process.
pub fn resource(p: &ProcessInfo) -> Resource {
    let runtime = p
        .runtime
        .name()
        .map(|n| KeyValue::new("process.runtime.name", n));
    let container = p
        .container_id
        .clone()
        .map(|id| KeyValue::new("container.id", id));
    // The process's own OTEL_RESOURCE_ATTRIBUTES and k8s.*; the agent's own keys below win.
    let extra = p
        .attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    Resource::builder_empty()
        .with_attributes(extra)
        .with_attributes(runtime)
        .with_attributes(container)
        .with_attributes([
            KeyValue::new("service.name", p.service_name.clone()),
            KeyValue::new("process.pid", i64::from(p.pid)),
            KeyValue::new("process.executable.name", p.executable_name.clone()),
            KeyValue::new("process.executable.path", p.executable_path.clone()),
            KeyValue::new("process.command_line", p.command_line.clone()),
            KeyValue::new("host.name", p.host_name.clone()),
            KeyValue::new("telemetry.sdk.name", env!("CARGO_PKG_NAME")),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

/// Converts one span to the SDK's export type, moving its strings rather than copying them.
pub fn span_data(s: Span) -> SpanData {
    let attributes = s
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::Str(x) => KeyValue::new(k, x),
            Value::Int(i) => KeyValue::new(k, i),
        })
        .collect();
    // A tracestate that does not parse (it came from the wire) is dropped rather than sent on.
    let trace_state = if s.trace_state.is_empty() {
        TraceState::default()
    } else {
        s.trace_state.parse().unwrap_or_default()
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            if s.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            false,
            trace_state,
        ),
        parent_span_id: s.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent_remote,
        span_kind: match s.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
        },
        name: Cow::Owned(s.name),
        start_time: s.start,
        end_time: s.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.status {
            Status::Error => OtelStatus::error(""),
            Status::Unset => OtelStatus::Unset,
        },
        instrumentation_scope: scope().clone(),
    }
}

/// The agent as the instrumentation scope of every span, built once.
fn scope() -> &'static InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE.get_or_init(|| {
        InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    })
}

/// Batches exported at once: one round trip at a time cannot keep up with a busy host.
const IN_FLIGHT: usize = 4;

/// Exporters per traced process, and the exports in flight.
struct Exporters {
    config: Config,
    by_pid: HashMap<u32, (Arc<ProcessInfo>, Arc<SpanExporter>)>,
    in_flight: tokio::task::JoinSet<()>,
}

impl Exporters {
    fn get(&mut self, p: &Arc<ProcessInfo>) -> Result<Arc<SpanExporter>> {
        let stale = self.by_pid.get(&p.pid).is_some_and(|(known, _)| known != p);
        if stale || !self.by_pid.contains_key(&p.pid) {
            if self.by_pid.len() >= self.config.max_exporters {
                // Bounded: start over; exporters are cheap to build again.
                for (_, (_, e)) in self.by_pid.drain() {
                    let _ = e.shutdown();
                }
            }
            let mut e = self.config.build()?;
            e.set_resource(&resource(p));
            self.by_pid.insert(p.pid, (p.clone(), Arc::new(e)));
        }
        Ok(self.by_pid[&p.pid].1.clone())
    }

    /// Waits until fewer than `limit` exports are in flight.
    async fn settle(&mut self, limit: usize) {
        while self.in_flight.len() >= limit.max(1) {
            if self.in_flight.join_next().await.is_none() {
                break;
            }
        }
    }

    async fn export(&mut self, spans: &mut Vec<Span>, stats: &Arc<Stats>) {
        let mut groups: HashMap<u32, (Arc<ProcessInfo>, Vec<SpanData>)> = HashMap::new();
        for s in spans.drain(..) {
            groups
                .entry(s.process.pid)
                .or_insert_with(|| (s.process.clone(), Vec::new()))
                .1
                .push(span_data(s));
        }
        for (_, (process, batch)) in groups {
            let n = batch.len() as u64;
            let exporter = match self.get(&process) {
                Ok(e) => e,
                Err(err) => {
                    stats.add(&stats.spans_export_failed, n);
                    warn!(spans = n, service = %process.service_name, "OTLP exporter: {err:#}");
                    continue;
                }
            };
            self.settle(IN_FLIGHT).await;
            let stats = stats.clone();
            self.in_flight.spawn(async move {
                match exporter.export(batch).await {
                    Ok(()) => stats.add(&stats.spans_exported, n),
                    Err(err) => {
                        stats.add(&stats.spans_export_failed, n);
                        warn!(spans = n, service = %process.service_name, "OTLP export failed: {err}");
                    }
                }
            });
        }
    }
}

/// Batches spans and exports them until the channel closes; then exports the rest.
pub async fn run(config: Config, mut rx: mpsc::Receiver<Span>, stats: Arc<Stats>) -> Result<()> {
    let mut exporters = Exporters {
        config: config.clone(),
        by_pid: HashMap::new(),
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
    for (_, (_, e)) in exporters.by_pid.drain() {
        if let Err(err) = e.shutdown() {
            debug!("exporter shutdown: {err}");
        }
    }
    Ok(())
}

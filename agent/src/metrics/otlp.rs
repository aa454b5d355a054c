//! OTLP metrics through `opentelemetry-otlp`, to the same collector as the traces
//! (`OTEL_EXPORTER_OTLP_METRICS_*` over `OTEL_EXPORTER_OTLP_*`, `OTEL_METRICS_EXPORTER=none` to
//! turn off), every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds, with the temporality of
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
//!
//! RED metrics belong to the traced service, so each traced process gets a meter provider with
//! its own resource (the same one as its spans) and a manual reader; service-graph metrics
//! belong to no single service and go under the agent's own resource. One task collects every
//! reader and exports: no thread per provider, and the provider count is bounded.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use anyhow::{Context as _, Result};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, MeterProvider as _},
};
use opentelemetry_otlp::{MetricExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter as _, reader::MetricReader,
    },
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    graph::Request,
    histogram::BOUNDS,
    red::{Instrument, Key},
    series::OVERFLOW_ATTRIBUTE,
};
use crate::{
    export::endpoint::{Protocol, Signal, Target, env_number},
    process::ProcessInfo,
    stats::Stats,
    trace::{Span, Value},
};

/// Most traced processes with a meter provider at once.
const MAX_PROVIDERS: usize = 1024;

/// Resolved OTLP metrics settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Config {
    /// The metrics settings, or `None` when metrics have no OTLP endpoint (or are turned off).
    pub fn from_env(
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>> {
        let Some(target) = Target::resolve(Signal::Metrics, flag_endpoint, flag_protocol)? else {
            return Ok(None);
        };
        Ok(Some(Config {
            target,
            interval: Duration::from_millis(
                env_number("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?.max(100),
            ),
            timeout: Duration::from_millis(
                env_number("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?.max(100),
            ),
        }))
    }

    /// Builds the exporter (connections are made lazily).
    fn build(&self) -> Result<MetricExporter> {
        let url = self.target.url();
        let exporter = match self.target.protocol {
            Protocol::Grpc => {
                let b = MetricExporter::builder()
                    .with_tonic()
                    .with_timeout(self.timeout);
                match url {
                    Some(ep) => b.with_endpoint(ep).build(),
                    None => b.build(),
                }
            }
            Protocol::HttpProtobuf => {
                let b = MetricExporter::builder()
                    .with_http()
                    .with_timeout(self.timeout);
                match url {
                    Some(ep) => b.with_endpoint(ep).build(),
                    None => b.build(),
                }
            }
        };
        exporter.context("invalid OTLP metrics exporter configuration")
    }
}

/// A manual reader the recorder keeps a handle on while the provider owns it.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// One meter provider and the reader that collects it.
struct Meters<I> {
    provider: SdkMeterProvider,
    reader: SharedReader,
    instruments: I,
}

impl<I> Meters<I> {
    fn new(
        resource: Resource,
        temporality: Temporality,
        make: impl FnOnce(&SdkMeterProvider) -> I,
    ) -> Self {
        let reader = SharedReader(Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        ));
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.clone())
            .build();
        let instruments = make(&provider);
        Meters {
            provider,
            reader,
            instruments,
        }
    }

    fn collect(&self) -> Option<ResourceMetrics> {
        let mut rm = ResourceMetrics::default();
        match self.reader.collect(&mut rm) {
            Ok(()) => Some(rm),
            Err(err) => {
                debug!("metrics collection: {err}");
                None
            }
        }
    }
}

fn histogram(provider: &SdkMeterProvider, i: Instrument) -> Histogram<f64> {
    provider
        .meter(env!("CARGO_PKG_NAME"))
        .f64_histogram(i.name())
        .with_unit("s")
        .with_description(i.description())
        .with_boundaries(BOUNDS.to_vec())
        .build()
}

/// The RED instruments of one traced process.
struct Red {
    process: Arc<ProcessInfo>,
    histograms: Vec<(Instrument, Histogram<f64>)>,
}

/// The service-graph instruments.
struct GraphInstruments {
    total: Counter<u64>,
    failed: Counter<u64>,
    server: Histogram<f64>,
    client: Histogram<f64>,
}

fn graph_instruments(provider: &SdkMeterProvider) -> GraphInstruments {
    let meter = provider.meter(env!("CARGO_PKG_NAME"));
    let h = |name: &'static str, what: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(what)
            .with_boundaries(BOUNDS.to_vec())
            .build()
    };
    GraphInstruments {
        total: meter
            .u64_counter("traces_service_graph_request_total")
            .with_description("Requests between two nodes of the service graph.")
            .build(),
        failed: meter
            .u64_counter("traces_service_graph_request_failed_total")
            .with_description("Failed requests between two nodes of the service graph.")
            .build(),
        server: h(
            "traces_service_graph_request_server_seconds",
            "Request durations as the server saw them.",
        ),
        client: h(
            "traces_service_graph_request_client_seconds",
            "Request durations as the client saw them.",
        ),
    }
}

/// The agent's own resource, for metrics that belong to no single service.
fn agent_resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", env!("CARGO_PKG_NAME")),
            KeyValue::new("host.name", host),
            KeyValue::new("telemetry.sdk.name", env!("CARGO_PKG_NAME")),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

fn key_values(attrs: &[(&'static str, Value)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| match v {
            Value::Str(s) => KeyValue::new(*k, s.clone()),
            Value::Int(i) => KeyValue::new(*k, *i),
        })
        .collect()
}

/// Records measurements into the SDK instruments; exported by [`run`].
pub struct Recorder {
    temporality: Temporality,
    processes: Mutex<HashMap<u32, Meters<Red>>>,
    graph: Meters<GraphInstruments>,
}

impl Recorder {
    fn new(temporality: Temporality) -> Self {
        Recorder {
            temporality,
            processes: Mutex::new(HashMap::new()),
            graph: Meters::new(agent_resource(), temporality, graph_instruments),
        }
    }

    /// Records a span's duration in its process's RED histogram. `overflowed` says the series
    /// limit sent it to the overflow series, whose attributes it then takes.
    pub fn record_span(&self, span: &Span, seconds: f64, overflowed: bool) {
        let instrument = Instrument::of(span);
        let key = Key::of(span, Arc::from(""));
        let attrs = if overflowed {
            vec![KeyValue::new(OVERFLOW_ATTRIBUTE, true)]
        } else {
            key_values(&key.attributes)
        };
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = &span.process;
        let stale = processes
            .get(&p.pid)
            .is_some_and(|m| m.instruments.process != *p);
        if stale || !processes.contains_key(&p.pid) {
            if processes.len() >= MAX_PROVIDERS && !stale {
                // Bounded: drop the providers of processes that are gone, else the oldest pid.
                let gone: Vec<u32> = processes
                    .keys()
                    .copied()
                    .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                    .collect();
                let victims = if gone.is_empty() {
                    processes.keys().min().copied().into_iter().collect()
                } else {
                    gone
                };
                for pid in victims {
                    if let Some(m) = processes.remove(&pid) {
                        let _ = m.provider.shutdown();
                    }
                }
            }
            let meters = Meters::new(
                crate::export::otlp::resource(p),
                self.temporality,
                |provider| Red {
                    process: p.clone(),
                    histograms: Instrument::ALL
                        .iter()
                        .map(|&i| (i, histogram(provider, i)))
                        .collect(),
                },
            );
            processes.insert(p.pid, meters);
        }
        if let Some(h) = processes.get(&p.pid).and_then(|m| {
            m.instruments
                .histograms
                .iter()
                .find(|(i, _)| *i == instrument)
        }) {
            h.1.record(seconds, &attrs);
        }
    }

    /// Records one request of the service graph.
    pub fn record_request(&self, r: &Request, overflowed: bool) {
        let attrs = if overflowed {
            vec![KeyValue::new(OVERFLOW_ATTRIBUTE, true)]
        } else {
            vec![
                KeyValue::new("client", r.edge.client.to_string()),
                KeyValue::new("server", r.edge.server.to_string()),
                KeyValue::new("connection_type", r.edge.connection_type),
            ]
        };
        let g = &self.graph.instruments;
        g.total.add(1, &attrs);
        if r.failed {
            g.failed.add(1, &attrs);
        }
        if let Some(s) = r.client_seconds {
            g.client.record(s, &attrs);
        }
        if let Some(s) = r.server_seconds {
            g.server.record(s, &attrs);
        }
    }

    /// Collects every provider; forgets the providers of processes that are gone (their last
    /// values are in this collection).
    fn collect(&self) -> Vec<ResourceMetrics> {
        let mut out = Vec::new();
        let mut processes = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut gone = Vec::new();
        for (pid, m) in processes.iter() {
            out.extend(m.collect());
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                gone.push(*pid);
            }
        }
        for pid in gone {
            if let Some(m) = processes.remove(&pid) {
                let _ = m.provider.shutdown();
            }
        }
        drop(processes);
        out.extend(self.graph.collect());
        out
    }
}

/// OTLP metrics export: the recorder the aggregation feeds, and the exporter.
pub struct Export {
    config: Config,
    recorder: Arc<Recorder>,
    exporter: MetricExporter,
}

impl Export {
    /// Builds the exporter (which checks the configuration) and its recorder.
    pub fn start(config: Config) -> Result<Self> {
        let exporter = config.build()?;
        let recorder = Arc::new(Recorder::new(exporter.temporality()));
        Ok(Export {
            config,
            recorder,
            exporter,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// Exports every interval until `stop`, then once more.
    pub async fn run(self, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => export(&self.recorder, &self.exporter, &stats).await,
                _ = stop.changed() => break,
            }
        }
        export(&self.recorder, &self.exporter, &stats).await;
        if let Err(err) = self.exporter.shutdown() {
            debug!("metrics exporter shutdown: {err}");
        }
    }
}

async fn export(recorder: &Recorder, exporter: &MetricExporter, stats: &Stats) {
    for rm in recorder.collect() {
        if rm.scope_metrics().next().is_none() {
            continue;
        }
        match exporter.export(&rm).await {
            Ok(()) => stats.inc(&stats.metric_exports),
            Err(err) => {
                stats.inc(&stats.metric_exports_failed);
                warn!("OTLP metrics export failed: {err}");
            }
        }
    }
}

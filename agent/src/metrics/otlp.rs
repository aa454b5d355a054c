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
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram, Counter, Histogram, MeterProvider as _},
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
    graph::{Edge, Request},
    histogram::BOUNDS,
    red::{Instrument, Key, Measured},
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

/// The RED instruments of one meter provider.
struct Red {
    /// The traced process (`None` for the agent's own provider).
    process: Option<Arc<ProcessInfo>>,
    histograms: Vec<(Instrument, Histogram<f64>)>,
}

impl Red {
    fn new(provider: &SdkMeterProvider, process: Option<Arc<ProcessInfo>>) -> Self {
        Red {
            process,
            histograms: Instrument::ALL
                .iter()
                .map(|&i| (i, histogram(provider, i)))
                .collect(),
        }
    }

    fn bind(&self, instrument: Instrument, attrs: &[KeyValue]) -> Option<BoundHistogram<f64>> {
        self.histograms
            .iter()
            .find(|(i, _)| *i == instrument)
            .map(|(_, h)| h.bind(attrs))
    }
}

/// The service-graph instruments.
struct GraphInstruments {
    total: Counter<u64>,
    failed: Counter<u64>,
    server: Histogram<f64>,
    client: Histogram<f64>,
}

/// The agent's own provider: the service graph, and the RED overflow series.
struct AgentInstruments {
    graph: GraphInstruments,
    red: Red,
}

fn agent_instruments(provider: &SdkMeterProvider) -> AgentInstruments {
    let meter = provider.meter(env!("CARGO_PKG_NAME"));
    let h = |name: &'static str, what: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(what)
            .with_boundaries(BOUNDS.to_vec())
            .build()
    };
    let graph = GraphInstruments {
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
    };
    AgentInstruments {
        graph,
        red: Red::new(provider, None),
    }
}

/// The service-graph instruments bound to one edge.
pub struct BoundEdge {
    total: BoundCounter<u64>,
    failed: BoundCounter<u64>,
    server: BoundHistogram<f64>,
    client: BoundHistogram<f64>,
}

impl BoundEdge {
    pub fn record(&self, r: &Request) {
        self.total.add(1);
        if r.failed {
            self.failed.add(1);
        }
        if let Some(s) = r.client_seconds {
            self.client.record(s);
        }
        if let Some(s) = r.server_seconds {
            self.server.record(s);
        }
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
            Value::Str(s) => KeyValue::new(*k, s.to_string()),
            Value::Int(i) => KeyValue::new(*k, *i),
        })
        .collect()
}

fn overflow_attributes() -> Vec<KeyValue> {
    vec![KeyValue::new(OVERFLOW_ATTRIBUTE, true)]
}

/// Binds SDK instruments to the aggregation's series, so that a measurement costs no attribute
/// lookup; exported by [`Export::run`].
pub struct Recorder {
    temporality: Temporality,
    processes: Mutex<HashMap<u32, Meters<Red>>>,
    agent: Meters<AgentInstruments>,
    /// Bumped whenever providers are dropped, so that instruments bound to them are let go.
    generation: AtomicU64,
}

impl Recorder {
    fn new(temporality: Temporality) -> Self {
        Recorder {
            temporality,
            processes: Mutex::new(HashMap::new()),
            agent: Meters::new(agent_resource(), temporality, agent_instruments),
            generation: AtomicU64::new(0),
        }
    }

    fn processes(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Meters<Red>>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The RED histogram of a span's series, bound to its attributes in its process's provider;
    /// `None` binds the instrument's overflow series in the agent's provider.
    pub fn bind_red(
        &self,
        span: Option<&Span>,
        instrument: Instrument,
    ) -> Option<BoundHistogram<f64>> {
        let Some(span) = span else {
            return self
                .agent
                .instruments
                .red
                .bind(instrument, &overflow_attributes());
        };
        let attrs = key_values(&Key::of(&Measured::by(span, instrument)).attributes);
        let mut processes = self.processes();
        let p = &span.process;
        let current = processes
            .get(&p.pid)
            .is_some_and(|m| m.instruments.process.as_ref() == Some(p));
        if !current {
            if processes.len() >= MAX_PROVIDERS && !processes.contains_key(&p.pid) {
                // Bounded: drop the providers of processes that are gone, else the lowest pid.
                let gone: Vec<u32> = processes
                    .keys()
                    .copied()
                    .filter(|pid| !alive(*pid))
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
                |provider| Red::new(provider, Some(p.clone())),
            );
            if let Some(old) = processes.insert(p.pid, meters) {
                let _ = old.provider.shutdown();
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        processes.get(&p.pid)?.instruments.bind(instrument, &attrs)
    }

    /// The service-graph instruments bound to one edge (or to the overflow series).
    pub fn bind_edge(&self, edge: &Edge, overflowed: bool) -> BoundEdge {
        let attrs = if overflowed {
            overflow_attributes()
        } else {
            vec![
                KeyValue::new("client", edge.client.to_string()),
                KeyValue::new("server", edge.server.to_string()),
                KeyValue::new("connection_type", edge.connection_type),
            ]
        };
        let g = &self.agent.instruments.graph;
        BoundEdge {
            total: g.total.bind(&attrs),
            failed: g.failed.bind(&attrs),
            server: g.server.bind(&attrs),
            client: g.client.bind(&attrs),
        }
    }

    /// Changes whenever providers were dropped.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether instruments bound for this process still feed a provider.
    pub fn serves(&self, p: &Arc<ProcessInfo>) -> bool {
        self.processes()
            .get(&p.pid)
            .is_some_and(|m| m.instruments.process.as_ref() == Some(p))
    }

    /// Collects every provider; forgets the providers of processes that are gone (their last
    /// values are in this collection).
    fn collect(&self) -> Vec<ResourceMetrics> {
        let mut out = Vec::new();
        let mut processes = self.processes();
        let mut gone = Vec::new();
        for (pid, m) in processes.iter() {
            out.extend(m.collect());
            if !alive(*pid) {
                gone.push(*pid);
            }
        }
        for pid in &gone {
            if let Some(m) = processes.remove(pid) {
                let _ = m.provider.shutdown();
            }
        }
        if !gone.is_empty() {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        drop(processes);
        out.extend(self.agent.collect());
        out
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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

//! OTLP metrics, to the same collector as the traces (`OTEL_EXPORTER_OTLP_METRICS_*` over
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_METRICS_EXPORTER=none` to turn off), every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds, with the temporality of
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
//!
//! The aggregation's own series are exported: each RED series keeps its measurements per traced
//! process (a [`Share`]), because RED metrics belong to the traced service and go under the
//! same resource as its spans; service-graph metrics belong to no single service and go under
//! the agent's own resource. Once an interval the shares and edges are copied out under the
//! aggregation's lock ([`super::Metrics::otlp_points`]) and encoded here with the span
//! encoder's `Writer`, then sent with the trace export's transport.
//!
//! An OpenTelemetry SDK meter provider per process did this before, with bound instruments fed
//! beside the aggregation's own histograms: a second aggregation of every span (~2% of the
//! agent's CPU beside nginx), and three more crates.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    EdgeStats, Metrics,
    graph::Edge,
    histogram::{BOUNDS, Histogram},
    red::{Instrument, Key},
    series::OVERFLOW_ATTRIBUTE,
};
use crate::{
    export::{
        endpoint::{Signal, Target, env, env_number},
        otlp::resource_attributes,
        proto::{self, AnyValue, Writer},
        transport::{self, Transport},
    },
    process::ProcessInfo,
    stats::Stats,
    trace::Value,
};

/// Most processes one RED series keeps apart; measurements of further processes go to the
/// series' overflow share (under the agent's resource, marked `otel.metric.overflow`).
pub const MAX_SHARES: usize = 256;

/// Data points in one `Metric` message at most, and the size past which a request is closed: a
/// request stays far below the 4 MiB a gRPC server accepts by default.
const POINTS_PER_METRIC: usize = 500;
const REQUEST_BYTES: usize = 1 << 20;

const TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";

/// How the exported values relate to earlier exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since the series began.
    Cumulative,
    /// What was measured since the previous export.
    Delta,
}

impl Temporality {
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `cumulative` (the default), `delta`,
    /// or `lowmemory`, which is delta for synchronous counters and histograms, the only kinds
    /// the agent has. Anything else is warned about and ignored, as the specification asks.
    fn from_env() -> Self {
        Self::parse(env(TEMPORALITY).as_deref())
    }

    fn parse(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("cumulative") => Temporality::Cumulative,
            Some("delta" | "lowmemory") => Temporality::Delta,
            Some(other) => {
                warn!(
                    "{TEMPORALITY}={other:?} is not cumulative, delta or lowmemory; using cumulative"
                );
                Temporality::Cumulative
            }
        }
    }

    /// `AggregationTemporality` as OTLP numbers it.
    fn proto(self) -> u64 {
        match self {
            Temporality::Delta => 1,
            Temporality::Cumulative => 2,
        }
    }
}

/// Resolved OTLP metrics settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub interval: Duration,
    /// How long one export may take, retries included (`OTEL_METRIC_EXPORT_TIMEOUT`).
    pub timeout: Duration,
    pub temporality: Temporality,
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
            temporality: Temporality::from_env(),
        }))
    }
}

/// Nanoseconds since the Unix epoch, OTLP's timestamps.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One process's measurements in a RED series (`None`: the series' overflow share).
#[derive(Debug, Clone)]
pub struct Share {
    pub process: Option<Arc<ProcessInfo>>,
    pub histogram: Histogram,
    /// When the values began: the share's first measurement, or the previous delta export.
    pub start_ns: u64,
}

impl Share {
    /// Records `secs` in the share of `process` (its latest identity kept, for the resource),
    /// made when new. Past `MAX_SHARES` the overflow share takes it; returns true then.
    pub fn record(shares: &mut Vec<Share>, process: Option<&Arc<ProcessInfo>>, secs: f64) -> bool {
        let pid = process.map(|p| p.pid);
        if let Some(s) = shares
            .iter_mut()
            .find(|s| s.process.as_ref().map(|p| p.pid) == pid)
        {
            if let (Some(new), Some(mine)) = (process, &mut s.process)
                && !Arc::ptr_eq(new, mine)
            {
                *mine = new.clone();
            }
            s.histogram.record(secs);
            return false;
        }
        let full = shares.len() >= MAX_SHARES && process.is_some();
        if full && let Some(s) = shares.iter_mut().find(|s| s.process.is_none()) {
            s.histogram.record(secs);
            return true;
        }
        let mut histogram = Histogram::default();
        histogram.record(secs);
        shares.push(Share {
            process: if full { None } else { process.cloned() },
            histogram,
            start_ns: wall_ns(),
        });
        full
    }

    /// The share's data point at `now_ns`: its totals, or for a delta export what it measured
    /// since the last one (`None` when that is nothing).
    pub fn take(&mut self, temporality: Temporality, now_ns: u64) -> Option<(Histogram, u64)> {
        match temporality {
            Temporality::Cumulative => Some((self.histogram.clone(), self.start_ns)),
            Temporality::Delta => {
                let h = std::mem::take(&mut self.histogram);
                let start = std::mem::replace(&mut self.start_ns, now_ns);
                (h.count > 0).then_some((h, start))
            }
        }
    }
}

/// What an edge series last gave OTLP (for delta exports) and since when it counts.
#[derive(Debug, Clone, Default)]
pub struct EdgeMark {
    /// The edge's first request, then (delta) the previous export.
    pub start_ns: u64,
    /// The edge's stats at the previous delta export.
    pub exported: EdgeStats,
}

impl EdgeMark {
    /// The edge's data point at `now_ns` (`None`: nothing new for a delta export).
    pub fn take(
        &mut self,
        stats: &EdgeStats,
        temporality: Temporality,
        now_ns: u64,
    ) -> Option<(EdgeStats, u64)> {
        match temporality {
            Temporality::Cumulative => Some((stats.clone(), self.start_ns)),
            Temporality::Delta => {
                let d = stats.since(&self.exported);
                self.exported = stats.clone();
                let start = std::mem::replace(&mut self.start_ns, now_ns);
                (d.requests > 0).then_some((d, start))
            }
        }
    }
}

/// A RED series' data point for one process.
#[derive(Debug, Clone)]
pub struct RedPoint {
    pub key: Key,
    pub process: Option<Arc<ProcessInfo>>,
    pub histogram: Histogram,
    pub start_ns: u64,
}

/// A service-graph edge's data points.
#[derive(Debug, Clone)]
pub struct EdgePoint {
    pub edge: Edge,
    pub overflow: bool,
    pub stats: EdgeStats,
    pub start_ns: u64,
}

/// One export's data points, copied out of the aggregation.
#[derive(Debug, Default)]
pub struct Points {
    pub red: Vec<RedPoint>,
    pub edges: Vec<EdgePoint>,
}

/// What a `Metric` message carries.
#[derive(Clone, Copy)]
enum Kind {
    Histogram,
    /// A monotonic integer sum (a counter).
    Counter,
}

/// A metric's name, description, unit and kind.
#[derive(Clone, Copy)]
struct Descriptor {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    kind: Kind,
}

/// One data point, ready to encode.
struct Point<'a> {
    attributes: Vec<(&'a str, AnyValue<'a>)>,
    start_ns: u64,
    value: PointValue<'a>,
}

enum PointValue<'a> {
    Histogram(&'a Histogram),
    Count(u64),
}

fn any(v: &Value) -> AnyValue<'_> {
    match v {
        Value::Str(s) => AnyValue::Str(s),
        Value::Int(i) => AnyValue::Int(*i),
    }
}

const OVERFLOWED: (&str, AnyValue<'static>) = (OVERFLOW_ATTRIBUTE, AnyValue::Str("true"));

/// The graph's metrics, by the names Tempo's and Grafana's service-graph views read.
const TOTAL: Descriptor = Descriptor {
    name: "traces_service_graph_request_total",
    description: "Requests between two nodes of the service graph.",
    unit: "",
    kind: Kind::Counter,
};
const FAILED: Descriptor = Descriptor {
    name: "traces_service_graph_request_failed_total",
    description: "Failed requests between two nodes of the service graph.",
    unit: "",
    kind: Kind::Counter,
};
const SERVER: Descriptor = Descriptor {
    name: "traces_service_graph_request_server_seconds",
    description: "Request durations as the server saw them.",
    unit: "s",
    kind: Kind::Histogram,
};
const CLIENT: Descriptor = Descriptor {
    name: "traces_service_graph_request_client_seconds",
    description: "Request durations as the client saw them.",
    unit: "s",
    kind: Kind::Histogram,
};

fn red_descriptor(i: Instrument) -> Descriptor {
    Descriptor {
        name: i.name(),
        description: i.description(),
        unit: "s",
        kind: Kind::Histogram,
    }
}

/// The agent's own resource, for metrics that belong to no single service.
fn agent_resource() -> Vec<u8> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    proto::resource([
        ("service.name", AnyValue::Str(env!("CARGO_PKG_NAME"))),
        ("host.name", AnyValue::Str(&host)),
        ("telemetry.sdk.name", AnyValue::Str(env!("CARGO_PKG_NAME"))),
        ("telemetry.sdk.language", AnyValue::Str("rust")),
        (
            "telemetry.sdk.version",
            AnyValue::Str(env!("CARGO_PKG_VERSION")),
        ),
    ])
}

/// Encoded `ExportMetricsServiceRequest`s, each with `prefix` bytes in front for the transport.
struct Requests {
    prefix: usize,
    done: Vec<Vec<u8>>,
    w: Writer,
}

impl Requests {
    fn new(prefix: usize) -> Self {
        Requests {
            prefix,
            done: Vec::new(),
            w: Writer {
                buf: vec![0; prefix],
            },
        }
    }

    /// Appends a `ResourceMetrics` with one metric, in a new request once this one is full.
    fn metric(
        &mut self,
        resource: &[u8],
        d: Descriptor,
        points: &[Point<'_>],
        temporality: Temporality,
        now_ns: u64,
    ) {
        if self.w.buf.len() >= REQUEST_BYTES {
            let full = std::mem::replace(&mut self.w.buf, vec![0; self.prefix]);
            self.done.push(full);
        }
        self.w.message(1, |w| {
            w.bytes(1, resource);
            w.message(2, |w| {
                w.message(1, |w| {
                    w.bytes(1, env!("CARGO_PKG_NAME").as_bytes());
                    w.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
                });
                w.message(2, |w| metric(w, d, points, temporality, now_ns));
            });
        });
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.w.buf.len() > self.prefix {
            self.done.push(self.w.buf);
        }
        self.done
    }
}

/// The body of a `Metric` message.
fn metric(w: &mut Writer, d: Descriptor, points: &[Point<'_>], t: Temporality, now_ns: u64) {
    w.bytes(1, d.name.as_bytes());
    w.bytes(2, d.description.as_bytes());
    w.bytes(3, d.unit.as_bytes());
    let (field, monotonic) = match d.kind {
        Kind::Histogram => (9, false),
        Kind::Counter => (7, true),
    };
    w.message(field, |w| {
        for p in points {
            w.message(1, |w| point(w, p, now_ns));
        }
        w.uint(2, t.proto());
        w.uint(3, u64::from(monotonic));
    });
}

/// The body of a `HistogramDataPoint` or a `NumberDataPoint`.
fn point(w: &mut Writer, p: &Point<'_>, now_ns: u64) {
    match p.value {
        PointValue::Histogram(h) => {
            for (k, v) in &p.attributes {
                w.key_value(9, k, *v);
            }
            w.fixed64(2, p.start_ns);
            w.fixed64(3, now_ns);
            w.fixed64(4, h.count);
            w.double(5, h.sum);
            w.packed64(6, h.buckets.iter().copied());
            w.packed64(7, BOUNDS.iter().map(|b| b.to_bits()));
        }
        PointValue::Count(n) => {
            for (k, v) in &p.attributes {
                w.key_value(7, k, *v);
            }
            w.fixed64(2, p.start_ns);
            w.fixed64(3, now_ns);
            w.fixed64(6, n);
        }
    }
}

/// One process's RED points (`None`: the overflow shares, under the agent), by instrument.
type ProcessPoints<'a> = (
    Option<&'a Arc<ProcessInfo>>,
    BTreeMap<Instrument, Vec<Point<'a>>>,
);

/// Encodes one export's points into requests: per process, its RED metrics under its resource;
/// under the agent's resource, the overflow shares and the service graph.
fn encode(
    points: &Points,
    agent: &[u8],
    temporality: Temporality,
    now_ns: u64,
    prefix: usize,
) -> Vec<Vec<u8>> {
    let mut requests = Requests::new(prefix);
    let mut emit = |resource: &[u8], d: Descriptor, all: &[Point<'_>]| {
        for chunk in all.chunks(POINTS_PER_METRIC) {
            requests.metric(resource, d, chunk, temporality, now_ns);
        }
    };

    // RED: grouped by process (pid and identity), then by instrument.
    let mut by_process: BTreeMap<(u32, usize), ProcessPoints<'_>> = BTreeMap::new();
    for r in &points.red {
        let id = r
            .process
            .as_ref()
            .map_or((0, 0), |p| (p.pid, Arc::as_ptr(p) as usize));
        let mut attributes: Vec<_> = r.key.attributes.iter().map(|(k, v)| (*k, any(v))).collect();
        if r.process.is_none() && !r.key.is_overflow() {
            attributes.push(OVERFLOWED);
        }
        by_process
            .entry(id)
            .or_insert_with(|| (r.process.as_ref(), BTreeMap::new()))
            .1
            .entry(r.key.instrument)
            .or_default()
            .push(Point {
                attributes,
                start_ns: r.start_ns,
                value: PointValue::Histogram(&r.histogram),
            });
    }
    for (process, group) in by_process.values() {
        let resource = match process {
            Some(p) => proto::resource(resource_attributes(p)),
            None => agent.to_vec(),
        };
        for (instrument, all) in group {
            emit(&resource, red_descriptor(*instrument), all);
        }
    }

    // The service graph.
    let mut graph: [(Descriptor, Vec<Point<'_>>); 4] = [
        (TOTAL, Vec::new()),
        (FAILED, Vec::new()),
        (SERVER, Vec::new()),
        (CLIENT, Vec::new()),
    ];
    for e in &points.edges {
        let attributes = if e.overflow {
            vec![OVERFLOWED]
        } else {
            vec![
                ("client", AnyValue::Str(&e.edge.client)),
                ("server", AnyValue::Str(&e.edge.server)),
                ("connection_type", AnyValue::Str(e.edge.connection_type)),
            ]
        };
        let s = &e.stats;
        let values = [
            Some(PointValue::Count(s.requests)),
            Some(PointValue::Count(s.failed)),
            (s.server.count > 0).then_some(PointValue::Histogram(&s.server)),
            (s.client.count > 0).then_some(PointValue::Histogram(&s.client)),
        ];
        for ((_, into), value) in graph.iter_mut().zip(values) {
            if let Some(value) = value {
                into.push(Point {
                    attributes: attributes.clone(),
                    start_ns: e.start_ns,
                    value,
                });
            }
        }
    }
    for (d, all) in &graph {
        emit(agent, *d, all);
    }
    requests.finish()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// OTLP metrics export: every interval, the aggregation's points to the collector.
pub struct Export {
    config: Config,
    transport: Transport,
    metrics: Arc<Metrics>,
    agent: Vec<u8>,
}

impl Export {
    /// Checks the configuration (connections are made on first use).
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Self> {
        let transport = Transport::new(&config.target)?;
        Ok(Export {
            config,
            transport,
            metrics,
            agent: agent_resource(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Exports every interval until `stop`, then once more.
    pub async fn run(self, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.export(&stats).await,
                _ = stop.changed() => break,
            }
        }
        self.export(&stats).await;
    }

    /// Sends the points as they are now; processes that are gone are forgotten after their
    /// last values.
    async fn export(&self, stats: &Stats) {
        let now = wall_ns();
        let t = self.config.temporality;
        let mut seen = HashMap::new();
        let points = self
            .metrics
            .otlp_points(t, now, |pid| *seen.entry(pid).or_insert_with(|| alive(pid)));
        let prefix = transport::prefix_len(self.config.target.protocol);
        let requests = encode(&points, &self.agent, t, now, prefix);
        debug!(
            points = points.red.len() + points.edges.len(),
            requests = requests.len(),
            "exporting metrics"
        );
        for body in requests {
            let body = self.transport.seal(body);
            match tokio::time::timeout(self.config.timeout, self.transport.send(body)).await {
                Ok(Ok(outcome)) => {
                    stats.inc(&stats.metric_exports);
                    if outcome.rejected > 0 {
                        stats.add(&stats.metric_points_rejected, outcome.rejected);
                        warn!(
                            points = outcome.rejected,
                            "the OTLP collector rejected metric data points"
                        );
                    }
                }
                Ok(Err(err)) => {
                    stats.inc(&stats.metric_exports_failed);
                    warn!("OTLP metrics export failed: {err}");
                }
                Err(_) => {
                    stats.inc(&stats.metric_exports_failed);
                    warn!(
                        "OTLP metrics export timed out after {:?} (OTEL_METRIC_EXPORT_TIMEOUT)",
                        self.config.timeout
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
mod tests;

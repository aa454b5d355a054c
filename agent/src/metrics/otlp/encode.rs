//! The OTLP encoding of one export's points: `ExportMetricsServiceRequest`s of at most ~1 MiB,
//! each `ResourceMetrics` carrying one metric of one resource (a process's RED histograms, or
//! under the agent's own resource the overflow shares and the service graph). Field numbers are
//! those of `opentelemetry/proto/{collector/metrics,metrics,resource,common}/v1`; the tests
//! decode the requests with `opentelemetry-proto`'s generated types.

use std::{collections::BTreeMap, sync::Arc};

use super::{Points, Temporality};
use crate::{
    export::{
        otlp::resource_attributes,
        proto::{self, AnyValue, Writer},
    },
    metrics::{
        histogram::{BOUNDS, Histogram},
        red::Instrument,
        series::OVERFLOW_ATTRIBUTE,
    },
    process::ProcessInfo,
};

/// Data points in one `Metric` message at most, and the size past which a request is closed: a
/// request stays far below the 4 MiB a gRPC server accepts by default.
const POINTS_PER_METRIC: usize = 500;
pub(super) const REQUEST_BYTES: usize = 1 << 20;

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
pub(super) fn agent_resource() -> Vec<u8> {
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

/// The body of a `HistogramDataPoint` or a `NumberDataPoint`: both number their timestamps
/// alike, their attributes and values apart.
fn point(w: &mut Writer, p: &Point<'_>, now_ns: u64) {
    let attributes = match p.value {
        PointValue::Histogram(_) => 9,
        PointValue::Count(_) => 7,
    };
    for (k, v) in &p.attributes {
        w.key_value(attributes, k, *v);
    }
    w.fixed64(2, p.start_ns);
    w.fixed64(3, now_ns);
    match p.value {
        PointValue::Histogram(h) => {
            w.fixed64(4, h.count);
            w.double(5, h.sum);
            w.packed64(6, h.buckets.iter().copied());
            w.packed64(7, BOUNDS.iter().map(|b| b.to_bits()));
        }
        // `as_int`, an `sfixed64`.
        PointValue::Count(n) => w.fixed64(6, n),
    }
}

/// One process's RED points (`None`: the overflow shares, under the agent), by instrument.
type ProcessPoints<'a> = (
    Option<&'a Arc<ProcessInfo>>,
    BTreeMap<Instrument, Vec<Point<'a>>>,
);

/// Encodes one export's points into requests: per process, its RED metrics under its resource;
/// under the agent's resource, the overflow shares and the service graph.
pub(super) fn encode(
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
        let mut attributes: Vec<_> = r
            .key
            .attributes
            .iter()
            .map(|(k, v)| (*k, v.into()))
            .collect();
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

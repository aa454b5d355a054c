//! RED metrics (rate, errors, duration) as OpenTelemetry semantic-convention duration
//! histograms, one per kind of call, with the attributes the conventions list for each. Rate
//! and errors come from the same histogram: its count, and the count of series with an
//! `error.type`.

use smol_str::SmolStr;
use std::hash::{Hash, Hasher};

use super::series;
use crate::trace::{Span, SpanKind, Value};

/// The duration instruments, all in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    DbClient,
}

impl Instrument {
    pub const ALL: [Instrument; 5] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
        Instrument::DbClient,
    ];

    /// The OpenTelemetry instrument name.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http.server.request.duration",
            Instrument::HttpClient => "http.client.request.duration",
            // Seconds, like the HTTP ones (as Beyla exports them), rather than the older
            // convention's milliseconds: one unit across the agent's histograms.
            Instrument::RpcServer => "rpc.server.duration",
            Instrument::RpcClient => "rpc.client.duration",
            Instrument::DbClient => "db.client.operation.duration",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests.",
            Instrument::HttpClient => "Duration of HTTP client requests.",
            Instrument::RpcServer => "Duration of inbound RPCs.",
            Instrument::RpcClient => "Duration of outbound RPCs.",
            Instrument::DbClient => "Duration of database client operations.",
        }
    }

    /// The span attributes that become metric attributes: the low-cardinality ones the
    /// conventions list (never paths, queries or client ports).
    fn attributes(self) -> &'static [&'static str] {
        match self {
            Instrument::HttpServer => &[
                "http.request.method",
                "http.route",
                "http.response.status_code",
                "url.scheme",
                "network.protocol.name",
                "network.protocol.version",
                "error.type",
            ],
            Instrument::HttpClient => &[
                "http.request.method",
                "http.response.status_code",
                "server.address",
                "server.port",
                "url.scheme",
                "network.protocol.name",
                "network.protocol.version",
                "error.type",
            ],
            Instrument::RpcServer => &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "error.type",
            ],
            Instrument::RpcClient => &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "server.address",
                "server.port",
                "error.type",
            ],
            Instrument::DbClient => &[
                "db.system.name",
                "db.operation.name",
                "db.collection.name",
                "db.namespace",
                "db.response.status_code",
                "server.address",
                "server.port",
                "error.type",
            ],
        }
    }

    /// Which instrument a span is measured by.
    pub fn of(span: &Span) -> Instrument {
        let rpc = span.attr("rpc.system").is_some();
        match span.kind {
            SpanKind::Server if rpc => Instrument::RpcServer,
            SpanKind::Server => Instrument::HttpServer,
            SpanKind::Client if span.attr("db.system.name").is_some() => Instrument::DbClient,
            SpanKind::Client if rpc => Instrument::RpcClient,
            SpanKind::Client => Instrument::HttpClient,
        }
    }
}

/// A metric attribute value: strings stay strings, integers stay integers (OTLP keeps the type;
/// Prometheus prints both as text).
pub type Attr = (&'static str, Value);

/// One series of one instrument: the service it measures and its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub instrument: Instrument,
    pub service: SmolStr,
    pub attributes: Vec<Attr>,
}

impl Key {
    /// The span's attributes this instrument keeps, in the instrument's order.
    fn span_attributes(
        span: &Span,
        instrument: Instrument,
    ) -> impl Iterator<Item = (&'static str, &Value)> {
        instrument
            .attributes()
            .iter()
            .filter_map(|k| span.attr(k).map(|v| (*k, v)))
    }

    /// The fingerprint of the series a span is measured in, from the span alone.
    pub fn fingerprint(span: &Span, instrument: Instrument) -> u64 {
        let mut h = series::hasher();
        instrument.hash(&mut h);
        span.process.service_name.hash(&mut h);
        for (k, v) in Self::span_attributes(span, instrument) {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        h.finish()
    }

    /// Whether this is the series a span is measured in (no allocation).
    pub fn describes(&self, span: &Span, instrument: Instrument) -> bool {
        if self.instrument != instrument || *self.service != *span.process.service_name {
            return false;
        }
        let mut mine = self.attributes.iter();
        for (k, v) in Self::span_attributes(span, instrument) {
            match mine.next() {
                Some((mk, mv)) if *mk == k && mv == v => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }

    /// The series a span is measured in.
    pub fn of(span: &Span, instrument: Instrument) -> Key {
        Key {
            instrument,
            service: SmolStr::new(&span.process.service_name),
            attributes: Self::span_attributes(span, instrument)
                .map(|(k, v)| (k, v.clone()))
                .collect(),
        }
    }

    /// The instrument's overflow series (all services share it), with its fingerprint.
    pub fn overflow(instrument: Instrument) -> (u64, Key) {
        let key = Key {
            instrument,
            service: SmolStr::default(),
            attributes: vec![(series::OVERFLOW_ATTRIBUTE, Value::Str("true".into()))],
        };
        (series::fingerprint(&key), key)
    }

    /// Whether this is an overflow series.
    pub fn is_overflow(&self) -> bool {
        self.service.is_empty()
    }
}

/// A span's duration in seconds.
pub fn seconds(span: &Span) -> f64 {
    span.end
        .duration_since(span.start)
        .map_or(0.0, |d| d.as_secs_f64())
}

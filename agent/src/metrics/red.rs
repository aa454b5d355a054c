//! RED metrics (rate, errors, duration) as OpenTelemetry semantic-convention duration
//! histograms, one per kind of call, with the attributes the conventions list for each. Rate
//! and errors come from the same histogram: its count, and the count of series with an
//! `error.type`.

use smol_str::SmolStr;
use std::hash::Hash;

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

/// Most attributes one instrument keeps (a test checks every instrument against it).
const MAX_KEPT: usize = 8;

/// What a span is measured with: its instrument, its service and the values of the
/// instrument's attributes. Found in one pass over the span's attributes, then used for the
/// series' fingerprint, the comparison with the series found and, for a new series, its key
/// (a lookup per attribute and per use cost ~5% of the agent's CPU at 25k spans/s).
pub struct Measured<'s> {
    pub instrument: Instrument,
    service: &'s SmolStr,
    /// The span's value of each of `instrument.attributes()`, in that order.
    values: [Option<&'s Value>; MAX_KEPT],
}

impl<'s> Measured<'s> {
    /// A span, measured by the instrument that measures it.
    pub fn new(span: &'s Span) -> Self {
        Self::by(span, Instrument::of(span))
    }

    /// A span, measured by `instrument`.
    pub fn by(span: &'s Span, instrument: Instrument) -> Self {
        let keys = instrument.attributes();
        // The lengths of the instrument's names, a bit each: most of a span's names have a
        // length none of them has and are passed over without a comparison.
        let lengths = keys.iter().fold(0u64, |m, k| m | length_bit(k));
        let mut values = [None; MAX_KEPT];
        for (k, v) in &span.attributes {
            if lengths & length_bit(k) == 0 {
                continue;
            }
            if let Some(slot) = keys
                .iter()
                .position(|key| key == k)
                .and_then(|i| values.get_mut(i))
            {
                // The first value wins, as with `Span::attr`.
                slot.get_or_insert(v);
            }
        }
        Measured {
            instrument,
            service: &span.process.service_name,
            values,
        }
    }

    /// The span's attributes the instrument keeps, in the instrument's order.
    fn attributes(&self) -> impl Iterator<Item = (&'static str, &'s Value)> + '_ {
        self.instrument
            .attributes()
            .iter()
            .zip(self.values)
            .filter_map(|(k, v)| v.map(|v| (*k, v)))
    }

    /// The fingerprint of the series the span is measured in. The instrument fixes the
    /// attribute names, so a slot's place stands for its name: only values are hashed.
    pub fn fingerprint(&self) -> u64 {
        let mut h = series::Mix::new(self.instrument as u64);
        h.bytes(self.service.as_bytes());
        for v in &self.values {
            match v {
                None => h.word(0),
                Some(Value::Int(i)) => {
                    h.word(1);
                    h.word(*i as u64);
                }
                Some(Value::Str(s)) => {
                    h.word(2);
                    h.bytes(s.as_bytes());
                }
            }
        }
        h.finish()
    }
}

/// A bit standing for a name's length (lengths 64 apart share one).
fn length_bit(name: &str) -> u64 {
    1 << (name.len() % 64)
}

impl Key {
    /// Whether this is the series a span is measured in (no allocation).
    pub fn describes(&self, m: &Measured) -> bool {
        if self.instrument != m.instrument || *self.service != *m.service {
            return false;
        }
        let mut mine = self.attributes.iter();
        for (k, v) in m.attributes() {
            match mine.next() {
                // Both names come from `instrument.attributes()`: the same pointer, unless a
                // key was made elsewhere (the overflow series').
                Some((mk, mv)) if (std::ptr::eq(*mk, k) || *mk == k) && mv == v => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }

    /// The series a span is measured in.
    pub fn of(m: &Measured) -> Key {
        Key {
            instrument: m.instrument,
            service: m.service.clone(),
            attributes: m.attributes().map(|(k, v)| (k, v.clone())).collect(),
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
    span.duration_ns() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{process, server};

    #[test]
    fn every_instrument_fits_the_measured_values() {
        for i in Instrument::ALL {
            assert!(i.attributes().len() <= MAX_KEPT, "{i:?}");
        }
    }

    #[test]
    fn a_key_keeps_the_instruments_order_and_the_first_value() {
        let p = process(1, "shop");
        let mut span = server(&p, 1, "/users/{id}", 503);
        span.attributes.reverse();
        span.attributes
            .push(("http.route", Value::text("/second/value")));
        let m = Measured::new(&span);
        assert_eq!(m.instrument, Instrument::HttpServer);
        let key = Key::of(&m);
        assert_eq!(
            key.attributes,
            [
                ("http.request.method", Value::text("GET")),
                ("http.route", Value::text("/users/{id}")),
                ("http.response.status_code", Value::Int(503)),
                ("error.type", Value::text("503")),
            ]
        );
        assert!(key.describes(&m));
        assert_eq!(m.fingerprint(), Measured::new(&span).fingerprint());
        let other = server(&p, 2, "/users/{id}", 200);
        assert!(!key.describes(&Measured::new(&other)));
        assert_ne!(m.fingerprint(), Measured::new(&other).fingerprint());
    }
}

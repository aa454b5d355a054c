//! The agent's span: what `trace` produces and `export` sends. Kept independent of the
//! OpenTelemetry SDK types so that stages stay testable and the stdout exporter stays simple.

use std::sync::Arc;

use smol_str::SmolStr;

use crate::{process::ProcessInfo, trace::link::Link};

/// SERVER or CLIENT, as in OpenTelemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        }
    }
}

/// An attribute value. Strings are `SmolStr`: constants (`"tcp"`, `"GET"`) cost nothing, and
/// the short ones most attributes hold (addresses, methods, routes) live inline, so building a
/// span's ~20 attributes does not allocate for each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Str(SmolStr),
    Int(i64),
}

impl Value {
    /// A constant string value.
    pub const fn text(s: &'static str) -> Value {
        Value::Str(SmolStr::new_static(s))
    }
}

/// Span status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent is in another process or on another host.
    pub parent_remote: bool,
    /// The sampler's decision: unsampled spans are not exported.
    pub sampled: bool,
    /// W3C `tracestate`, carried unchanged from the request that started the trace here.
    pub trace_state: SmolStr,
    /// How the span found its place in the trace.
    pub link: Link,
    pub kind: SpanKind,
    pub name: SmolStr,
    /// Wall-clock start and end, in nanoseconds since the Unix epoch: what OTLP carries, so a
    /// span is encoded without converting its times (a `SystemTime` cost two conversions and a
    /// subtraction per span, ~1.5% of the userspace work per request).
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
    /// The traced process: the span's resource.
    pub process: Arc<ProcessInfo>,
}

impl Span {
    /// How long the span took, in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// An attribute's value, if set.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A string attribute's value.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Value::Str(s) => Some(s),
            Value::Int(_) => None,
        }
    }
}

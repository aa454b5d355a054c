//! OTLP trace requests encoded straight from the agent's spans into protobuf bytes.
//!
//! The SDK path (span → `SpanData` → generated proto structs → prost) cost a quarter of the
//! agent's CPU at saturation: every span was converted twice, its attributes boxed into
//! `AnyValue`s, cloned once more inside the exporter, and every nested message's length computed
//! again at each level. Here a span is written once, in place; a nested message's length is
//! patched in after its body, and a process's resource is encoded once and reused.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,resource,common}/v1`;
//! the tests decode the output with the generated types of `opentelemetry-proto`. The metrics
//! messages are written with the same `Writer` in `metrics::otlp::encode`.

use crate::trace::{Span, SpanKind, Status, Value};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the parent's is-remote bit is known (bit 8), and its value (bit 9).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;
/// W3C trace flags: sampled.
const FLAG_SAMPLED: u32 = 0x01;

/// An attribute value as OTLP carries it.
#[derive(Debug, Clone, Copy)]
pub enum AnyValue<'a> {
    Str(&'a str),
    Int(i64),
}

impl<'a> From<&'a Value> for AnyValue<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Str(s) => AnyValue::Str(s),
            Value::Int(i) => AnyValue::Int(*i),
        }
    }
}

/// A growing protobuf message.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    /// Byte by byte: most varints here are one or two bytes, and a copy of a variable-length
    /// slice would be a `memcpy` call each (the encoder's largest cost when it was one).
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// A `bytes` or `string` field; empty ones are left out, as proto3 does.
    pub fn bytes(&mut self, field: u32, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        self.tag(field, LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    /// A varint field (`uint32`, `uint64`, `bool`, an enum); zero is left out, as proto3 does.
    pub fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.tag(field, VARINT);
            self.varint(value);
        }
    }

    /// A `fixed64` or `sfixed64` field, written even when zero (a timestamp, a count).
    pub fn fixed64(&mut self, field: u32, value: u64) {
        self.tag(field, FIXED64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A `double` field, written even when zero (an `optional` one).
    pub fn double(&mut self, field: u32, value: f64) {
        self.fixed64(field, value.to_bits());
    }

    /// A packed `repeated fixed64` or `repeated double` field of these 8-byte values.
    pub fn packed64(&mut self, field: u32, values: impl ExactSizeIterator<Item = u64>) {
        if values.len() == 0 {
            return;
        }
        self.tag(field, LEN);
        self.varint(8 * values.len() as u64);
        for v in values {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        self.tag(field, FIXED32);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A nested message written by `body`. Its length goes in front once known: one byte is
    /// reserved, and the body is moved up in the rare case the length needs more.
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Self)) {
        self.message_sized(field, 1, body);
    }

    /// A message whose length prefix is expected to take `reserve` bytes: a span (128 bytes to
    /// 16 KiB) takes 2, a batch 3. When the guess holds, the body is written once and never
    /// moved; otherwise it is shifted to fit the prefix (the encoding stays minimal).
    fn message_sized(&mut self, field: u32, reserve: usize, body: impl FnOnce(&mut Self)) {
        let at = self.open(field, reserve);
        body(self);
        self.close(at, reserve);
    }

    /// Starts a message whose body is written by later calls, `reserve` bytes left for its
    /// length; returns where they are, for `close`.
    pub fn open(&mut self, field: u32, reserve: usize) -> usize {
        self.tag(field, LEN);
        let at = self.buf.len();
        self.buf.resize(at + reserve, 0);
        at
    }

    /// Ends the message `open` started at `at`: everything written since is its body.
    pub fn close(&mut self, at: usize, reserve: usize) {
        let end = self.buf.len();
        let len = end - at - reserve;
        let n = varint_len(len as u64);
        if n != reserve {
            if n > reserve {
                self.buf.resize(end + n - reserve, 0);
            }
            self.buf.copy_within(at + reserve..end, at + n);
            self.buf.truncate(at + n + len);
        }
        let mut v = len as u64;
        for byte in &mut self.buf[at..at + n - 1] {
            *byte = (v as u8) | 0x80;
            v >>= 7;
        }
        self.buf[at + n - 1] = v as u8;
    }

    /// A `KeyValue` in field `field`. The most frequent message (a dozen per span), so its
    /// lengths are computed first and every byte is written once, without the placeholder and
    /// back-patching of `message`.
    pub fn key_value(&mut self, field: u32, key: &str, value: AnyValue<'_>) {
        if !self.short_key_value(field, key, value) {
            self.long_key_value(field, key, value);
        }
    }

    /// A `KeyValue` whose lengths all fit one byte (under 128), with one-byte tags: nearly all
    /// of them (attribute names are short, and so are most values). Its fixed bytes go in as
    /// two small arrays, the key and a string value as one copy each: ~120 instructions where
    /// the general encoding took ~240. Returns false, writing nothing, for any other.
    fn short_key_value(&mut self, field: u32, key: &str, value: AnyValue<'_>) -> bool {
        let (key, tag) = (key.as_bytes(), field << 3 | LEN);
        // Field 1 of `KeyValue` (key), then field 2 (value: `AnyValue`).
        const KEY: u8 = 1 << 3 | LEN as u8;
        const VALUE: u8 = 2 << 3 | LEN as u8;
        // An int's `KeyValue` is at most 2 + key + 2 + 11 bytes; an empty key is left out of
        // the encoding (proto3), which the general path does.
        if key.is_empty() || key.len() > 100 || tag >= 0x80 {
            return false;
        }
        // The `AnyValue`'s length: a string (field 1) or an int (field 3, at most 10 varint
        // bytes).
        let any_len = match value {
            // The `KeyValue`, 2 + key + 2 + (2 + s) bytes, under 128 (and so every length in it).
            AnyValue::Str(s) if key.len() + s.len() > 121 => return false,
            AnyValue::Str(s) => 2 + s.len(),
            AnyValue::Int(i) => 1 + varint_len(i as u64),
        };
        let kv_len = 2 + key.len() + 2 + any_len;
        self.buf.reserve(2 + kv_len);
        self.buf
            .extend_from_slice(&[tag as u8, kv_len as u8, KEY, key.len() as u8]);
        self.buf.extend_from_slice(key);
        match value {
            AnyValue::Str(s) => {
                self.buf.extend_from_slice(&[
                    VALUE,
                    any_len as u8,
                    1 << 3 | LEN as u8,
                    s.len() as u8,
                ]);
                self.buf.extend_from_slice(s.as_bytes());
            }
            AnyValue::Int(i) => {
                self.buf
                    .extend_from_slice(&[VALUE, any_len as u8, 3 << 3 | VARINT as u8]);
                self.varint(i as u64);
            }
        }
        true
    }

    /// A `KeyValue` of any size.
    fn long_key_value(&mut self, field: u32, key: &str, value: AnyValue<'_>) {
        // `AnyValue` body: a string (field 1, written even when empty: it is still a value) or
        // an int (field 3).
        let any_len = match value {
            AnyValue::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            AnyValue::Int(i) => 1 + varint_len(i as u64),
        };
        let key_len = if key.is_empty() {
            0
        } else {
            1 + varint_len(key.len() as u64) + key.len()
        };
        let kv_len = key_len + 1 + varint_len(any_len as u64) + any_len;
        self.buf.reserve(1 + varint_len(kv_len as u64) + kv_len);
        self.tag(field, LEN);
        self.varint(kv_len as u64);
        self.bytes(1, key.as_bytes());
        self.tag(2, LEN);
        self.varint(any_len as u64);
        match value {
            AnyValue::Str(s) => {
                self.tag(1, LEN);
                self.varint(s.len() as u64);
                self.buf.extend_from_slice(s.as_bytes());
            }
            AnyValue::Int(i) => {
                self.tag(3, VARINT);
                self.varint(i as u64);
            }
        }
    }
}

/// Bytes the varint encoding of `v` takes (1 to 10).
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The body of a `Resource` message with these attributes.
pub fn resource<'a>(attributes: impl IntoIterator<Item = (&'a str, AnyValue<'a>)>) -> Vec<u8> {
    let mut w = Writer::default();
    for (k, v) in attributes {
        w.key_value(1, k, v);
    }
    w.buf
}

/// Appends one `Span` message (field `field` of its `ScopeSpans`).
pub fn span(w: &mut Writer, field: u32, s: &Span) {
    w.message_sized(field, 2, |w| {
        w.bytes(1, &s.trace_id);
        w.bytes(2, &s.span_id);
        w.bytes(3, s.trace_state.as_bytes());
        if let Some(parent) = &s.parent_span_id {
            w.bytes(4, parent);
        }
        w.bytes(5, s.name.as_bytes());
        w.uint(
            6,
            match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            },
        );
        w.fixed64(7, s.start_ns);
        w.fixed64(8, s.end_ns);
        for (k, v) in &s.attributes {
            w.key_value(9, k, v.into());
        }
        if s.status == Status::Error {
            w.message(15, |w| w.uint(3, 2));
        }
        let mut flags = FLAG_HAS_IS_REMOTE;
        if s.sampled {
            flags |= FLAG_SAMPLED;
        }
        if s.parent_span_id.is_some() && s.parent_remote {
            flags |= FLAG_IS_REMOTE;
        }
        w.fixed32(16, flags);
    });
}

/// Appends one `ResourceSpans` (field 1 of `ExportTraceServiceRequest`): a process's encoded
/// resource, the agent as instrumentation scope, and its spans, which `spans` writes as `Span`
/// messages in field 2 of the `ScopeSpans` (`span`).
pub fn resource_spans(w: &mut Writer, resource: &[u8], spans: impl FnOnce(&mut Writer)) {
    let open = OpenResourceSpans::start(w, resource);
    spans(w);
    open.finish(w);
}

/// A `ResourceSpans` whose spans are still being appended (`span` with field 2), one by one.
#[derive(Debug)]
pub struct OpenResourceSpans {
    resource_spans: usize,
    scope_spans: usize,
}

impl OpenResourceSpans {
    /// Length prefixes reserved: a batch's spans take 16 KiB to 2 MiB, three bytes.
    const RESERVE: usize = 3;

    /// Writes the message's head: the resource, and the agent as instrumentation scope.
    pub fn start(w: &mut Writer, resource: &[u8]) -> Self {
        let resource_spans = w.open(1, Self::RESERVE);
        w.bytes(1, resource);
        let scope_spans = w.open(2, Self::RESERVE);
        w.message(1, |w| {
            w.bytes(1, env!("CARGO_PKG_NAME").as_bytes());
            w.bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
        });
        OpenResourceSpans {
            resource_spans,
            scope_spans,
        }
    }

    /// Ends the message after the spans written since `start`.
    pub fn finish(self, w: &mut Writer) {
        w.close(self.scope_spans, Self::RESERVE);
        w.close(self.resource_spans, Self::RESERVE);
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;

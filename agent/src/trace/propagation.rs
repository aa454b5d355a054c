//! Trace context that applications already put on the wire: W3C Trace Context (`traceparent`,
//! `tracestate`), B3 multi-header (`X-B3-*`) and B3 single header (`b3`).
//!
//! The agent only reads these headers (it cannot write into the application's memory). A value
//! that breaks its format in any way is treated as absent and reported as [`Extracted::Malformed`]
//! so the caller can count it; nothing here panics on any input.

/// The propagation format a context came from; the names are those of `OTEL_PROPAGATORS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C Trace Context.
    TraceContext,
    /// B3 single header (`b3`).
    B3,
    /// B3 multiple headers (`X-B3-TraceId`, ...).
    B3Multi,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::TraceContext => "tracecontext",
            Format::B3 => "b3",
            Format::B3Multi => "b3multi",
        }
    }
}

/// A span context read from headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub trace_id: [u8; 16],
    /// The sender's span: the parent of a span that receives this context.
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// `tracestate`, carried unchanged (W3C only; empty otherwise).
    pub trace_state: String,
    pub format: Format,
}

/// What a request's headers say about trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// No propagation header at all.
    None,
    /// A valid context (W3C wins when several formats are present).
    Context(Remote),
    /// A propagation header was present but broken in the given format; ignored.
    Malformed(Format),
}

/// Read access to header-like fields, by case-insensitive name.
pub trait Carrier {
    /// Every value of the field `name` (case-insensitive), in order. An iterator, not a
    /// collection: most requests carry no context, and each of the formats' names is looked up
    /// on every one of them.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a;

    /// Every field name, in order.
    fn names(&self) -> impl Iterator<Item = &str>;
}

/// Whether `extract` reads a field of this name: the context's own fields and `tracestate`.
pub fn reads_field(name: &str) -> bool {
    names_context(name) || name.eq_ignore_ascii_case("tracestate")
}

/// Whether a field of this name can carry a context in one of the formats read: the names
/// `extract` looks up, `X-B3-*` as a whole.
fn names_context(name: &str) -> bool {
    const B3_MULTI: &str = "x-b3-";
    // Each comparison starts with the lengths, so most names are turned down by them.
    name.eq_ignore_ascii_case("b3")
        || name.eq_ignore_ascii_case("traceparent")
        || (name.len() > B3_MULTI.len()
            && name
                .get(..B3_MULTI.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(B3_MULTI)))
}

/// Longest `tracestate` carried; the W3C recommends propagating at least 512 characters.
const MAX_TRACE_STATE: usize = 1024;

/// Reads the trace context of a request. W3C wins over B3 single, which wins over B3 multi;
/// a malformed W3C header does not stop a valid B3 context from being used.
pub fn extract(carrier: &impl Carrier) -> Extracted {
    // Most requests carry no context: one pass over the names settles it, where each format
    // would look up its fields one by one.
    if !carrier.names().any(names_context) {
        return Extracted::None;
    }
    let mut malformed = None;
    for format in [Format::TraceContext, Format::B3, Format::B3Multi] {
        let result = match format {
            Format::TraceContext => w3c(carrier),
            Format::B3 => b3_single(carrier),
            Format::B3Multi => b3_multi(carrier),
        };
        match result {
            Some(Ok(remote)) => return Extracted::Context(remote),
            Some(Err(())) => {
                malformed.get_or_insert(format);
            }
            None => {}
        }
    }
    malformed.map_or(Extracted::None, Extracted::Malformed)
}

/// `Some(Err)` when present but invalid, `None` when absent.
type Parsed = Option<Result<Remote, ()>>;

/// Exactly one value, or an error when the field is repeated with different values.
fn single<'a>(carrier: &'a impl Carrier, name: &'a str) -> Option<Result<&'a str, ()>> {
    let mut values = carrier.values(name);
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some(Err(()));
    }
    Some(Ok(first.trim()))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decodes lowercase-or-uppercase hex of exactly `N` bytes, refusing all zeroes.
fn id<const N: usize>(s: &str) -> Result<[u8; N], ()> {
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return Err(());
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| ())?;
    if out == [0u8; N] {
        return Err(());
    }
    Ok(out)
}

/// W3C `traceparent`: `version-traceid-parentid-flags`, lowercase hex only.
fn w3c(carrier: &impl Carrier) -> Parsed {
    let value = match single(carrier, "traceparent")? {
        Ok(v) => v,
        Err(()) => return Some(Err(())),
    };
    Some(
        parse_traceparent(value).map(|(trace_id, span_id, sampled)| Remote {
            trace_id,
            span_id,
            sampled,
            trace_state: trace_state(carrier),
            format: Format::TraceContext,
        }),
    )
}

/// Parses a `traceparent` value into trace id, parent id and the sampled flag.
fn parse_traceparent(value: &str) -> Result<([u8; 16], [u8; 8], bool), ()> {
    // ASCII only, so that every slice below falls on a character boundary.
    if !value.is_ascii() || value.len() < 55 {
        return Err(());
    }
    let bytes = value.as_bytes();
    let version = &value[0..2];
    if !is_lower_hex(version) || version == "ff" {
        return Err(());
    }
    // Version 00 is exactly 55 characters; later versions may append fields after a dash.
    if version == "00" && bytes.len() != 55 {
        return Err(());
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return Err(());
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return Err(());
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
        return Err(());
    }
    let flags = u8::from_str_radix(flags, 16).map_err(|_| ())?;
    Ok((id(trace)?, id(parent)?, flags & 1 == 1))
}

/// All `tracestate` values joined, as the W3C allows the field to be split; dropped when too
/// long to carry.
fn trace_state(carrier: &impl Carrier) -> String {
    let mut joined = String::new();
    for v in carrier.values("tracestate").map(str::trim) {
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    if joined.len() > MAX_TRACE_STATE {
        String::new()
    } else {
        joined
    }
}

/// A B3 trace id: 16 or 32 hex characters; a 64-bit id is left-padded to 128 bits.
fn b3_trace_id(s: &str) -> Result<[u8; 16], ()> {
    match s.len() {
        32 => id::<16>(s),
        16 => {
            let low = id::<8>(s)?;
            let mut out = [0u8; 16];
            out[8..].copy_from_slice(&low);
            Ok(out)
        }
        _ => Err(()),
    }
}

/// B3 sampling state: `1`/`0`, `true`/`false` (old multi-header senders) or `d` (debug).
fn b3_sampled(s: &str) -> Result<bool, ()> {
    match s {
        "1" | "d" => Ok(true),
        "0" => Ok(false),
        _ if s.eq_ignore_ascii_case("true") => Ok(true),
        _ if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(()),
    }
}

/// B3 single header: `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`. A lone sampling
/// state (`b3: 0`) carries no ids and counts as absent.
fn b3_single(carrier: &impl Carrier) -> Parsed {
    let value = match single(carrier, "b3")? {
        Ok(v) => v,
        Err(()) => return Some(Err(())),
    };
    if matches!(value, "0" | "1" | "d") {
        return None;
    }
    let parts: Vec<&str> = value.split('-').collect();
    if !(2..=4).contains(&parts.len()) {
        return Some(Err(()));
    }
    let parse = || -> Result<Remote, ()> {
        let trace_id = b3_trace_id(parts[0])?;
        let span_id = id::<8>(parts[1])?;
        let sampled = match parts.get(2) {
            Some(s) => b3_sampled(s)?,
            // Deferred decision: the receiver decides; the agent treats it as sampled.
            None => true,
        };
        if let Some(parent) = parts.get(3) {
            id::<8>(parent)?;
        }
        Ok(Remote {
            trace_id,
            span_id,
            sampled,
            trace_state: String::new(),
            format: Format::B3,
        })
    };
    Some(parse())
}

/// B3 multi-header: `X-B3-TraceId` and `X-B3-SpanId` required together; `X-B3-Sampled`,
/// `X-B3-Flags: 1` (debug, implies sampled) and `X-B3-ParentSpanId` optional.
fn b3_multi(carrier: &impl Carrier) -> Parsed {
    let trace = single(carrier, "x-b3-traceid");
    let span = single(carrier, "x-b3-spanid");
    let (trace, span) = match (trace, span) {
        (None, None) => return None,
        (Some(Ok(t)), Some(Ok(s))) => (t, s),
        _ => return Some(Err(())),
    };
    let parse = || -> Result<Remote, ()> {
        let trace_id = b3_trace_id(trace)?;
        let span_id = id::<8>(span)?;
        if let Some(parent) = single(carrier, "x-b3-parentspanid") {
            id::<8>(parent?)?;
        }
        let debug = match single(carrier, "x-b3-flags") {
            Some(flags) => match flags? {
                "1" => true,
                "0" => false,
                _ => return Err(()),
            },
            None => false,
        };
        let sampled = match single(carrier, "x-b3-sampled") {
            Some(s) => b3_sampled(s?)?,
            None => true,
        };
        Ok(Remote {
            trace_id,
            span_id,
            sampled: sampled || debug,
            trace_state: String::new(),
            format: Format::B3Multi,
        })
    };
    Some(parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H<'s>(Vec<(&'static str, &'s str)>);

    impl Carrier for H<'_> {
        fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
            self.0
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }

        fn names(&self) -> impl Iterator<Item = &str> {
            self.0.iter().map(|(n, _)| *n)
        }
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn ctx(e: Extracted) -> Remote {
        match e {
            Extracted::Context(r) => r,
            other => panic!("expected a context, got {other:?}"),
        }
    }

    #[test]
    fn w3c_with_tracestate() {
        let h = H(vec![
            (
                "Traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("TraceState", "rojo=00f067aa0ba902b7"),
        ]);
        let r = ctx(extract(&h));
        assert_eq!(hex::encode(r.trace_id), TRACE);
        assert_eq!(hex::encode(r.span_id), SPAN);
        assert!(r.sampled);
        assert_eq!(r.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(r.format, Format::TraceContext);
        let unsampled = H(vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(!ctx(extract(&unsampled)).sampled);
    }

    #[test]
    fn w3c_future_version_may_append_fields() {
        let h = H(vec![(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        )]);
        assert!(ctx(extract(&h)).sampled);
    }

    #[test]
    fn w3c_malformed_values_are_ignored() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            let h = H(vec![("traceparent", bad)]);
            assert_eq!(
                extract(&h),
                Extracted::Malformed(Format::TraceContext),
                "{bad:?}"
            );
        }
        // Two different traceparent fields are ambiguous.
        let h = H(vec![
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(extract(&h), Extracted::Malformed(Format::TraceContext));
    }

    #[test]
    fn b3_multi_with_64_bit_trace_id() {
        let h = H(vec![
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("X-B3-SpanId", SPAN),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "0"),
        ]);
        let r = ctx(extract(&h));
        assert_eq!(hex::encode(r.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert!(!r.sampled);
        assert_eq!(r.format, Format::B3Multi);
        let debug = H(vec![
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert!(ctx(extract(&debug)).sampled, "debug implies sampled");
    }

    #[test]
    fn b3_single_forms() {
        let full = H(vec![(
            "b3",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
        )]);
        let r = ctx(extract(&full));
        assert_eq!(hex::encode(r.trace_id), TRACE);
        assert_eq!(r.format, Format::B3);
        let short = H(vec![("B3", "a3ce929d0e0e4736-00f067aa0ba902b7")]);
        assert!(ctx(extract(&short)).sampled);
        let deny = H(vec![("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        assert!(!ctx(extract(&deny)).sampled);
        let debug = H(vec![("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]);
        assert!(ctx(extract(&debug)).sampled);
        // A sampling decision alone carries no ids.
        assert_eq!(extract(&H(vec![("b3", "0")])), Extracted::None);
    }

    #[test]
    fn b3_malformed_values_are_ignored() {
        for bad in [
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b",
            "4bf92f3577b34da6a3ce-00f067aa0ba902b7-1",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-2",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-xyz",
            "0000000000000000-00f067aa0ba902b7",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-9",
        ] {
            assert_eq!(
                extract(&H(vec![("b3", bad)])),
                Extracted::Malformed(Format::B3),
                "{bad:?}"
            );
        }
        let no_span = H(vec![("X-B3-TraceId", TRACE)]);
        assert_eq!(extract(&no_span), Extracted::Malformed(Format::B3Multi));
        let bad_sampled = H(vec![
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "yes"),
        ]);
        assert_eq!(extract(&bad_sampled), Extracted::Malformed(Format::B3Multi));
    }

    /// The one pass over the names that lets most requests skip the formats' look-ups: it
    /// admits every name a format reads, whatever its case, and nothing else decides.
    #[test]
    fn only_context_fields_are_looked_up() {
        for name in [
            "traceparent",
            "TraceParent",
            "b3",
            "B3",
            "x-b3-spanid",
            "X-B3-Flags",
        ] {
            assert!(names_context(name), "{name}");
        }
        for name in [
            "tracestate",
            "b",
            "b4",
            "x-b3-",
            "x-b3",
            "host",
            "traceparents",
            "é",
        ] {
            assert!(!names_context(name), "{name}");
        }
        let plain = H(vec![
            ("Host", "a"),
            ("User-Agent", "curl"),
            ("Accept", "*/*"),
        ]);
        assert_eq!(extract(&plain), Extracted::None);
        // A `tracestate` without its `traceparent` carries nothing, but is read with one.
        assert_eq!(extract(&H(vec![("tracestate", "a=1")])), Extracted::None);
        assert!(reads_field("TraceState") && reads_field("X-B3-Sampled") && !reads_field("host"));
        let span_only = H(vec![("Host", "a"), ("x-b3-spanid", SPAN)]);
        assert_eq!(extract(&span_only), Extracted::Malformed(Format::B3Multi));
    }

    #[test]
    fn w3c_wins_and_broken_w3c_falls_back_to_b3() {
        let both = H(vec![
            ("b3", "a3ce929d0e0e4736-1111111111111111-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(ctx(extract(&both)).format, Format::TraceContext);
        let broken_w3c = H(vec![
            ("traceparent", "garbage"),
            ("b3", "a3ce929d0e0e4736-1111111111111111-1"),
        ]);
        assert_eq!(ctx(extract(&broken_w3c)).format, Format::B3);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"0123456789abcdefABCDEF-_ \x7fd\xc3\xa9";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 80) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 56)) as usize + i) % alphabet.len()])
                .collect();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            for name in ["traceparent", "b3", "x-b3-traceid"] {
                let _ = extract(&H(vec![(name, &s), ("x-b3-spanid", &s)]));
            }
        }
    }
}

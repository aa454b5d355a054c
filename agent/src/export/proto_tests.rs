//! The encoding checked by decoding it with the generated OTLP types.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue as PbValue, any_value},
    trace::v1::{span::SpanKind as PbKind, status::StatusCode},
};
use prost::Message as _;

use super::*;
use crate::metrics::tests::{client, process, server, under};

fn decode(w: Writer) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(w.buf.as_slice()).expect("a valid OTLP request")
}

fn value(v: &Option<PbValue>) -> Option<&any_value::Value> {
    v.as_ref()?.value.as_ref()
}

#[test]
fn spans_decode_with_every_field() {
    let p = process(7, "front");
    let parent = client(&p, 1, "db", 5432);
    let mut child = under(server(&p, 2, "/users/{id}", 503), &parent);
    child.parent_remote = true;
    child.trace_state = "vendor=abc".into();
    let res = resource([
        ("service.name", AnyValue::Str("front")),
        ("process.pid", AnyValue::Int(7)),
    ]);
    let mut w = Writer::default();
    resource_spans(&mut w, &res, |w| {
        span(w, 2, &parent);
        span(w, 2, &child);
    });
    let req = decode(w);

    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let attrs = &rs.resource.as_ref().expect("a resource").attributes;
    assert_eq!(attrs[0].key, "service.name");
    assert_eq!(
        value(&attrs[0].value),
        Some(&any_value::Value::StringValue("front".into()))
    );
    assert_eq!(value(&attrs[1].value), Some(&any_value::Value::IntValue(7)));
    let scope = rs.scope_spans[0].scope.as_ref().expect("a scope");
    assert_eq!(scope.name, env!("CARGO_PKG_NAME"));
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));

    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let (c, s) = (&spans[0], &spans[1]);
    assert_eq!(c.trace_id, parent.trace_id);
    assert_eq!(c.span_id, parent.span_id);
    assert!(c.parent_span_id.is_empty());
    assert_eq!(c.kind, PbKind::Client as i32);
    assert_eq!(c.flags, 0x101, "sampled, parent remoteness known");
    assert_eq!(c.status, None);
    assert_eq!(c.start_time_unix_nano, parent.start_ns);
    assert_eq!(c.end_time_unix_nano, parent.end_ns);

    assert_eq!(s.parent_span_id, parent.span_id);
    assert_eq!(s.kind, PbKind::Server as i32);
    assert_eq!(s.name, "GET");
    assert_eq!(s.trace_state, "vendor=abc");
    assert_eq!(s.flags, 0x301, "sampled, remote parent");
    assert_eq!(
        s.status.as_ref().map(|st| st.code),
        Some(StatusCode::Error as i32)
    );
    let got: Vec<(&str, &any_value::Value)> = s
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), value(&kv.value).expect("a value")))
        .collect();
    assert_eq!(got.len(), child.attributes.len());
    for ((k, v), (want_k, want_v)) in got.iter().zip(&child.attributes) {
        assert_eq!(k, want_k);
        match want_v {
            Value::Str(x) => assert_eq!(*v, &any_value::Value::StringValue(x.to_string())),
            Value::Int(i) => assert_eq!(*v, &any_value::Value::IntValue(*i)),
        }
    }
}

#[test]
fn long_values_and_large_batches_get_multi_byte_lengths() {
    let p = process(8, "api");
    let long = "x".repeat(70_000);
    let mut spans = Vec::new();
    for i in 0..300u16 {
        let mut s = server(&p, i as u8, "/", 200);
        s.span_id = [i as u8, (i >> 8) as u8, 0, 0, 0, 0, 0, 1];
        if i == 5 {
            s.attributes
                .push(("url.full", Value::Str(long.as_str().into())));
            s.attributes.push(("empty", Value::text("")));
            s.attributes.push(("negative", Value::Int(-3)));
        }
        spans.push(s);
    }
    let mut w = Writer::default();
    resource_spans(&mut w, &resource([]), |w| {
        spans.iter().for_each(|s| span(w, 2, s))
    });
    resource_spans(&mut w, &resource([]), |w| span(w, 2, &spans[0]));
    let bytes = w.buf.clone();
    let req = decode(w);
    // Length prefixes written ahead of their messages (one, two or three bytes guessed, then
    // moved when the guess was wrong) are still the minimal encoding: byte for byte what the
    // generated types write.
    assert_eq!(req.encode_to_vec(), bytes);
    assert_eq!(req.resource_spans.len(), 2);
    let got = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(got.len(), 300);
    assert_eq!(got[299].span_id, spans[299].span_id);
    let attrs = &got[5].attributes;
    let find = |key: &str| {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| value(&kv.value))
    };
    assert_eq!(find("url.full"), Some(&any_value::Value::StringValue(long)));
    assert_eq!(
        find("empty"),
        Some(&any_value::Value::StringValue(String::new()))
    );
    assert_eq!(find("negative"), Some(&any_value::Value::IntValue(-3)));
    assert_eq!(req.resource_spans[1].scope_spans[0].spans.len(), 1);
}

/// The short form writes exactly the bytes of the general one, on both sides of every
/// one-byte length, and declines what it cannot write.
#[test]
fn short_key_values_are_the_general_encoding() {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let values: Vec<String> = (0..=130).map(|n| "v".repeat(n)).collect();
    let ints = [0, 1, 127, 128, -1, i64::MAX, i64::MIN];
    let mut short_ones = 0;
    for key_len in [1, 2, 19, 64, 100, 101, 121, 122] {
        let key = "k".repeat(key_len);
        let strs = values.iter().map(|v| AnyValue::Str(v));
        for any in strs.chain(ints.map(AnyValue::Int)) {
            for field in [1, 9, 15, 16] {
                let (mut short, mut long) = (Writer::default(), Writer::default());
                long.long_key_value(field, &key, any);
                if short.short_key_value(field, &key, any) {
                    short_ones += 1;
                    assert_eq!(short.buf, long.buf, "{key_len} {any:?} {field}");
                } else {
                    assert!(short.buf.is_empty());
                }
            }
            // Field 1 of a `Resource` is its attributes.
            let mut w = Writer::default();
            w.key_value(1, &key, any);
            let resource = Resource::decode(w.buf.as_slice()).expect("a Resource");
            let kv = &resource.attributes[0];
            assert_eq!(kv.key, key);
            let decoded = value(&kv.value);
            match any {
                AnyValue::Str(s) => {
                    assert_eq!(decoded, Some(&any_value::Value::StringValue(s.into())))
                }
                AnyValue::Int(i) => assert_eq!(decoded, Some(&any_value::Value::IntValue(i))),
            }
        }
    }
    assert!(
        short_ones > 1000,
        "the short form is the common one: {short_ones}"
    );
}

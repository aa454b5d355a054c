//! Requests checked by decoding them with the generated OTLP types.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
};
use prost::Message as _;

use super::*;
use crate::{
    metrics::tests::{client, process, server},
    trace::Value,
};

const PREFIX: usize = 5;

fn decode(batch: &Batch) -> ExportTraceServiceRequest {
    assert!(batch.body[..PREFIX].iter().all(|&b| b == 0), "room left");
    ExportTraceServiceRequest::decode(&batch.body[PREFIX..]).expect("a valid OTLP request")
}

/// Each `ResourceSpans` as (its `process.pid`, its spans' first id bytes).
fn layout(req: &ExportTraceServiceRequest) -> Vec<(i64, Vec<u8>)> {
    req.resource_spans
        .iter()
        .map(|rs| {
            let pid = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "process.pid"))
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    any_value::Value::IntValue(i) => *i,
                    other => panic!("process.pid is {other:?}"),
                })
                .expect("a process.pid");
            let ids = rs.scope_spans[0].spans.iter().map(|s| s.span_id[0]);
            (pid, ids.collect())
        })
        .collect()
}

#[test]
fn a_full_batch_is_one_request_grouped_by_process_in_order() {
    let (a, b) = (process(10, "front"), process(20, "back"));
    let mut batcher = Batcher::new(5, PREFIX, 8);
    let spans = [
        server(&a, 1, "/", 200),
        server(&a, 2, "/", 200),
        client(&b, 3, "db", 5432),
        server(&a, 4, "/", 200),
    ];
    for mut s in spans {
        assert!(batcher.push(&mut s).is_none(), "not full yet");
    }
    assert_eq!(batcher.pending(), 4);
    let batch = batcher.push(&mut client(&b, 5, "db", 5432)).expect("full");
    assert_eq!(batch.spans, 5);
    assert_eq!(batcher.pending(), 0);
    let req = decode(&batch);
    assert_eq!(layout(&req), [(10, vec![1, 2, 4]), (20, vec![3, 5])]);
    assert_eq!(
        req.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .unwrap()
            .name,
        "agent"
    );
}

#[test]
fn take_sends_what_is_pending_and_nothing_when_empty() {
    let p = process(7, "api");
    let mut batcher = Batcher::new(512, PREFIX, 8);
    assert!(batcher.take().is_none());
    batcher.push(&mut server(&p, 1, "/a", 200));
    let first = batcher.take().expect("one span pending");
    assert_eq!(first.spans, 1);
    assert!(batcher.take().is_none(), "taken once");
    // The next request is a request of its own: nothing of the first one is left in it.
    batcher.push(&mut server(&p, 2, "/b", 503));
    let req = decode(&batcher.take().expect("pending"));
    assert_eq!(layout(&req), [(7, vec![2])]);
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "an error");
}

#[test]
fn a_reused_pid_is_another_resource() {
    let old = process(30, "old");
    let new = process(30, "new");
    let mut batcher = Batcher::new(512, PREFIX, 8);
    batcher.push(&mut server(&old, 1, "/", 200));
    batcher.push(&mut server(&new, 2, "/", 200));
    batcher.push(&mut server(&old, 3, "/", 200));
    let req = decode(&batcher.take().expect("pending"));
    let names: Vec<_> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let attrs = &rs.resource.as_ref().unwrap().attributes;
            let name = attrs.iter().find(|kv| kv.key == "service.name").unwrap();
            match name.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("service.name is {other:?}"),
            }
        })
        .collect();
    assert_eq!(names, ["old", "new"]);
    assert_eq!(layout(&req), [(30, vec![1, 3]), (30, vec![2])]);
}

#[test]
fn an_invalid_tracestate_is_left_out_and_a_valid_one_kept() {
    let p = process(7, "api");
    let mut batcher = Batcher::new(512, PREFIX, 1);
    let mut bad = server(&p, 1, "/", 200);
    bad.trace_state = "not a tracestate ,,=".into();
    let mut good = server(&p, 2, "/", 200);
    good.trace_state = "vendor=abc".into();
    batcher.push(&mut bad);
    batcher.push(&mut good);
    let req = decode(&batcher.take().expect("pending"));
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans[0].trace_state, "");
    assert_eq!(spans[1].trace_state, "vendor=abc");
}

#[test]
fn resources_are_bounded_and_encoded_again_when_forgotten() {
    let mut batcher = Batcher::new(512, PREFIX, 2);
    let procs: Vec<_> = (1..=5).map(|pid| process(pid, "svc")).collect();
    for (i, p) in procs.iter().enumerate() {
        batcher.push(&mut server(p, i as u8, "/", 200));
        assert!(batcher.resources.len() <= 2);
    }
    let req = decode(&batcher.take().expect("pending"));
    let pids: Vec<_> = layout(&req).into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(pids, [1, 2, 3, 4, 5]);
}

/// Requests small (a one-byte length where three were left) and large (past 2 MiB, four) are
/// the minimal encoding: byte for byte what the generated types write.
#[test]
fn length_prefixes_are_minimal_whatever_the_size() {
    let (a, b) = (process(1, "a"), process(2, "b"));
    let long = "x".repeat(70_000);
    for (n, attribute) in [(1, ""), (3, ""), (50, long.as_str())] {
        let mut batcher = Batcher::new(512, PREFIX, 8);
        for i in 0..n {
            let mut s = server(if i % 3 == 1 { &b } else { &a }, i as u8, "/", 200);
            if !attribute.is_empty() {
                s.attributes
                    .push(("url.full", Value::Str(attribute.into())));
            }
            batcher.push(&mut s);
        }
        let batch = batcher.take().expect("pending");
        let req = decode(&batch);
        assert_eq!(req.encode_to_vec(), &batch.body[PREFIX..], "{n} spans");
        let spans: usize = req
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans.len())
            .sum();
        assert_eq!(spans, n);
    }
}

/// A request's buffer is allocated at the size the last request reached: a quiet host's
/// requests of a span or two stay small, a busy host's full ones are not grown as they fill.
#[test]
fn a_request_buffer_is_sized_by_the_last_request() {
    let p = process(7, "api");
    let mut batcher = Batcher::new(64, PREFIX, 8);
    let capacity = |b: &Batcher| b.open.as_ref().expect("open").body.buf.capacity();
    for i in 0..64 {
        batcher.push(&mut server(&p, i, "/", 200));
    }
    batcher.push(&mut server(&p, 1, "/", 200));
    let after_full = capacity(&batcher);
    let one = batcher.take().expect("pending");
    assert_eq!(one.spans, 1);
    batcher.push(&mut server(&p, 2, "/", 200));
    let after_one = capacity(&batcher);
    // Each span here encodes to over 100 bytes.
    assert!(after_full >= 64 * 100, "{after_full}");
    assert!(
        after_one < after_full / 8,
        "{after_one} against {after_full}"
    );
}

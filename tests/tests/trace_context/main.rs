//! Trace context end to end: a chain of three uninstrumented services in three runtimes
//! (threaded Python → Java HttpServer + HttpURLConnection → Node.js), traced by one agent, must
//! give one trace per request with every parent right; propagated W3C and B3 context is honoured;
//! two agents join their spans through propagated headers; concurrent clients never cross-link;
//! malformed headers are ignored and counted; sampling keeps or drops whole traces.
//!
//! Assertions are on trace ids and parent ids, span by span.

mod support;

use std::{collections::BTreeSet, process::Command, time::Duration};

use agent_e2e::{
    Proc, free_port, http_get, netns::Netns, peer, receiver::Receiver, receiver::RecvSpan,
    wait_ready,
};

use support::*;

#[test]
fn chain_of_three_runtimes_is_one_trace_per_request() {
    let chain = ChainServices::start();
    let rx = Receiver::grpc();
    let agent = start_agent(&chain.pids(), &rx, &[]);
    for id in 0..4 {
        chain.get(&format!("/chain?id={id}"), &[]);
    }
    chain.get("/fanout?id=f", &[]);
    let spans = rx.wait_spans(4 * 5 + 9);
    std::thread::sleep(Duration::from_millis(500));
    let (_, stderr) = agent.stop();
    let spans_after = rx.spans();
    assert_eq!(spans_after.len(), 29, "no extra spans: {spans_after:#?}");
    let mut traces = BTreeSet::new();
    for id in 0..4 {
        let t = check_request(&spans, &id.to_string(), false, None);
        let root = &by_role(&spans, &id.to_string())[&r("svc-a", SERVER, "-")];
        assert!(root.parent_span_id.is_empty(), "no context sent: a root");
        traces.insert(t);
    }
    check_request(&spans, "f", true, None);
    assert_eq!(traces.len(), 4, "one trace per request");
    assert_eq!(counter(&stderr, "processes_multiplexed"), 0, "{stderr:#?}");
    assert!(counter(&stderr, "spans_linked_peer") >= 10, "{stderr:#?}");
}

#[test]
fn chain_entered_with_w3c_b3_multi_and_b3_single() {
    let chain = ChainServices::start();
    let rx = Receiver::http();
    let agent = start_agent(&chain.pids(), &rx, &[]);
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    chain.get(
        "/chain?id=w3c",
        &[
            (
                "traceparent",
                &format!("00-{w3c_trace}-00f067aa0ba902b7-01"),
            ),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ],
    );
    chain.get(
        "/chain?id=b3multi",
        &[
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("X-B3-SpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-ParentSpanId", "e457b5a2e4d86bd1"),
            ("X-B3-Sampled", "1"),
        ],
    );
    chain.get(
        "/chain?id=b3",
        &[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )],
    );
    chain.get(
        "/chain?id=both",
        &[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    );
    let spans = rx.wait_spans(20);
    let (_, stderr) = agent.stop();
    let cases = [
        ("w3c", w3c_trace, "00f067aa0ba902b7", "tracecontext"),
        (
            "b3multi",
            "0000000000000000a3ce929d0e0e4736",
            "05e3ac9a4f6e3b90",
            "b3multi",
        ),
        (
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            "b3",
        ),
        (
            "both",
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            "tracecontext",
        ),
    ];
    for (id, trace, parent, format) in cases {
        check_request(&spans, id, false, Some(trace));
        let root = &by_role(&spans, id)[&r("svc-a", SERVER, "-")];
        assert_eq!(
            root.parent_hex(),
            parent,
            "{id}: parent is the sender's span"
        );
        assert_eq!(root.attr("agent.propagation"), Some(format), "{id}");
    }
    let w3c = by_role(&spans, "w3c");
    for s in w3c.values() {
        assert_eq!(
            s.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            "tracestate carried unchanged: {s:#?}"
        );
    }
    assert_eq!(counter(&stderr, "context_tracecontext"), 2, "{stderr:#?}");
    assert_eq!(counter(&stderr, "context_b3"), 1);
    assert_eq!(counter(&stderr, "context_b3multi"), 1);
}

#[test]
fn twenty_concurrent_clients_never_cross_link() {
    let chain = ChainServices::start();
    let rx = Receiver::grpc();
    let agent = start_agent(&chain.pids(), &rx, &[]);
    let port = chain.a_port;
    let clients: Vec<_> = (0..20)
        .map(|t| {
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for k in 0..5 {
                    let id = format!("{t}x{k}");
                    let fanout = (t + k) % 4 == 0;
                    let path = format!("/{}?id={id}", if fanout { "fanout" } else { "chain" });
                    let trace =
                        ((t + k) % 3 == 0).then(|| format!("{:032x}", 0xabc000 + t * 100 + k));
                    let parent = format!("{:016x}", 0x5eed00 + t * 100 + k);
                    let tp = trace.as_ref().map(|tr| format!("00-{tr}-{parent}-01"));
                    let headers: Vec<(&str, &str)> = tp
                        .as_deref()
                        .map(|v| vec![("traceparent", v)])
                        .unwrap_or_default();
                    let (status, body) = http_get("127.0.0.1", port, &path, &headers);
                    assert_eq!(status, 200, "{path}: {body}");
                    sent.push((id, fanout, trace));
                }
                sent
            })
        })
        .collect();
    let sent: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let expected: usize = sent.iter().map(|(_, f, _)| if *f { 9 } else { 5 }).sum();
    let spans = rx.wait_spans(expected);
    std::thread::sleep(Duration::from_millis(500));
    let (_, stderr) = agent.stop();
    assert_eq!(rx.spans().len(), expected, "{stderr:#?}");
    let mut traces = BTreeSet::new();
    for (id, fanout, trace) in &sent {
        traces.insert(check_request(&spans, id, *fanout, trace.as_deref()));
    }
    assert_eq!(traces.len(), sent.len(), "every request its own trace");
}

#[test]
fn two_agents_join_one_trace_through_forwarded_headers() {
    let ns = Netns::new(7);
    let (x_port, y_port) = (free_port(), free_port());
    let y = Proc::spawn(
        ns.command("python3")
            .arg(peer("chain.py"))
            .arg(y_port.to_string())
            .env("OTEL_SERVICE_NAME", "svc-y"),
    );
    let x = Proc::spawn(
        Command::new("python3")
            .arg(peer("chain.py"))
            .arg(x_port.to_string())
            .arg(format!("http://{}:{y_port}", ns.ns_ip))
            .env("OTEL_SERVICE_NAME", "svc-x"),
    );
    wait_ready(&y, "service in the namespace");
    wait_ready(&x, "forwarding service");
    let rx = Receiver::grpc();
    let agent_x = start_agent(&[x.pid()], &rx, &[]);
    let agent_y = start_agent(&[y.pid()], &rx, &[]);

    let (t1, p1) = ("11111111111111111111111111111111", "1111111111111111");
    let (t2, p2) = ("22222222222222222222222222222222", "2222222222222222");
    for (id, mode, t, p) in [(1, "forward", t1, p1), (2, "propagate", t2, p2)] {
        let (status, _) = http_get(
            "127.0.0.1",
            x_port,
            &format!("/chain?id={id}&mode={mode}"),
            &[
                ("traceparent", &format!("00-{t}-{p}-01")),
                ("tracestate", "k=v"),
            ],
        );
        assert_eq!(status, 200);
    }
    let spans = rx.wait_spans(6);
    agent_x.stop();
    agent_y.stop();
    let spans_after = rx.spans();
    assert_eq!(spans_after.len(), 6, "{spans_after:#?}");

    let one = |id: &str, service: &str, kind: i32| -> RecvSpan {
        by_role(&spans, id)
            .remove(&r(service, kind, "-"))
            .unwrap_or_else(|| panic!("no {service} {kind} span for {id}: {spans:#?}"))
    };
    // Forwarded unchanged: both agents put their spans in the caller's trace; the receiver's
    // parent is the caller's span, the only one the header names.
    let (x_in, x_out, y_in) = (
        one("1", "svc-x", SERVER),
        one("1", "svc-x", CLIENT),
        one("1", "svc-y", SERVER),
    );
    for s in [&x_in, &x_out, &y_in] {
        assert_eq!(s.trace_hex(), t1, "{s:#?}");
    }
    assert_eq!(x_in.parent_hex(), p1);
    assert_eq!(x_out.parent_hex(), x_in.span_hex());
    assert_ne!(x_out.span_hex(), p1, "a forwarded id is not this span's");
    assert_eq!(y_in.parent_hex(), p1);
    assert_eq!(y_in.trace_state, "k=v");
    assert_eq!(
        y_in.resource.get("host.name"),
        x_in.resource.get("host.name")
    );
    // Propagated with a new span id: the downstream SERVER span is the CLIENT span's child,
    // across agents.
    let (x_in, x_out, y_in) = (
        one("2", "svc-x", SERVER),
        one("2", "svc-x", CLIENT),
        one("2", "svc-y", SERVER),
    );
    for s in [&x_in, &x_out, &y_in] {
        assert_eq!(s.trace_hex(), t2, "{s:#?}");
    }
    assert_eq!(x_out.parent_hex(), x_in.span_hex());
    assert_eq!(
        y_in.parent_hex(),
        x_out.span_hex(),
        "linked through the receiver"
    );
    assert_eq!(y_in.attr("server.address"), Some(ns.ns_ip.as_str()));
}

#[test]
fn malformed_context_headers_are_ignored_and_counted() {
    let port = free_port();
    let svc = Proc::spawn(
        Command::new("python3")
            .arg(peer("chain.py"))
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", "svc-m"),
    );
    wait_ready(&svc, "service");
    let rx = Receiver::grpc();
    let agent = start_agent(&[svc.pid()], &rx, &[]);
    let bad: &[(&str, &str)] = &[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ),
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        (
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ),
        ("b3", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("b3", "zzzz-00f067aa0ba902b7-1"),
        ("X-B3-TraceId", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ];
    for (i, (k, v)) in bad.iter().enumerate() {
        let (status, _) = http_get("127.0.0.1", port, &format!("/chain?id={i}"), &[(k, v)]);
        assert_eq!(status, 200);
    }
    let spans = rx.wait_spans(bad.len());
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), bad.len());
    let traces: BTreeSet<_> = spans.iter().map(|s| s.trace_hex()).collect();
    assert_eq!(traces.len(), bad.len(), "each a new trace");
    for s in &spans {
        assert!(
            s.parent_span_id.is_empty(),
            "ignored context: a root {s:#?}"
        );
        assert_ne!(s.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.attr("agent.propagation"), None);
    }
    assert_eq!(
        counter(&stderr, "context_malformed"),
        bad.len() as u64,
        "{stderr:#?}"
    );
}

#[test]
fn sampling_keeps_or_drops_whole_traces() {
    let chain = ChainServices::start();
    let rx = Receiver::grpc();
    let agent = start_agent(
        &chain.pids(),
        &rx,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    for i in 0..6 {
        let tp = format!("00-{:032x}-{:016x}-01", 0xa000 + i, 0xb000 + i);
        chain.get(&format!("/chain?id=on{i}"), &[("traceparent", &tp)]);
        let tp = format!("00-{:032x}-{:016x}-00", 0xc000 + i, 0xd000 + i);
        chain.get(&format!("/chain?id=off{i}"), &[("traceparent", &tp)]);
    }
    for i in 0..30 {
        chain.get(&format!("/chain?id=r{i}"), &[]);
    }
    // Sampled-flag requests give at least 30 spans; wait for them, then for the ratio ones.
    rx.wait_spans(30);
    std::thread::sleep(Duration::from_secs(2));
    let (_, stderr) = agent.stop();
    let spans = rx.spans();
    for i in 0..6 {
        check_request(&spans, &format!("on{i}"), false, None);
        assert!(
            by_role(&spans, &format!("off{i}")).is_empty(),
            "an unsampled parent: nothing exported"
        );
    }
    let mut kept = 0;
    for i in 0..30 {
        let id = format!("r{i}");
        if !by_role(&spans, &id).is_empty() {
            check_request(&spans, &id, false, None);
            kept += 1;
        }
    }
    assert!((3..=27).contains(&kept), "about half of 30 traces: {kept}");
    assert_eq!(
        counter(&stderr, "spans_unsampled"),
        (6 * 5 + (30 - kept) * 5) as u64,
        "{stderr:#?}"
    );
}

#[test]
fn event_loop_links_only_through_forwarded_context() {
    let (n_port, c_port) = (free_port(), free_port());
    let c = Proc::spawn(
        Command::new("python3")
            .arg(peer("chain.py"))
            .arg(c_port.to_string())
            .env("OTEL_SERVICE_NAME", "svc-c"),
    );
    let n = Proc::spawn(
        Command::new("node")
            .arg(peer("node_relay.js"))
            .arg(n_port.to_string())
            .arg(c_port.to_string())
            .env("OTEL_SERVICE_NAME", "svc-n"),
    );
    wait_ready(&c, "python leaf");
    wait_ready(&n, "node relay");
    let rx = Receiver::grpc();
    let agent = start_agent(&[n.pid(), c.pid()], &rx, &[]);
    let clients: Vec<_> = (0..10)
        .map(|t| {
            std::thread::spawn(move || {
                for k in 0..4 {
                    let id = format!("{t}n{k}");
                    let (path, tp) = if k % 2 == 0 {
                        (
                            format!("/chain?id={id}&mode=forward"),
                            Some(format!(
                                "00-{:032x}-{:016x}-01",
                                0xe000 + t * 10 + k,
                                0xf000 + t * 10 + k
                            )),
                        )
                    } else {
                        (format!("/chain?id={id}"), None)
                    };
                    let headers: Vec<(&str, &str)> = tp
                        .as_deref()
                        .map(|v| vec![("traceparent", v)])
                        .unwrap_or_default();
                    let (status, body) = http_get("127.0.0.1", n_port, &path, &headers);
                    assert_eq!(status, 200, "{path}: {body}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let spans = rx.wait_spans(10 * 4 * 3);
    let (_, stderr) = agent.stop();
    for t in 0..10 {
        for k in 0..4 {
            let id = format!("{t}n{k}");
            let got = by_role(&spans, &id);
            let (n_in, n_out, c_in) = (
                &got[&r("svc-n", SERVER, "-")],
                &got[&r("svc-n", CLIENT, "-")],
                &got[&r("svc-c", SERVER, "-")],
            );
            assert_eq!(c_in.parent_hex(), n_out.span_hex(), "{id}: same-host link");
            assert_eq!(c_in.trace_hex(), n_out.trace_hex());
            if k % 2 == 0 {
                // Forwarded context names the inbound request exactly.
                assert_eq!(n_out.parent_hex(), n_in.span_hex(), "{id}");
                assert_eq!(n_out.trace_hex(), n_in.trace_hex(), "{id}");
            } else {
                // An event loop's thread says nothing: unlinked, never a wrong parent.
                assert!(n_out.parent_span_id.is_empty(), "{id}: {n_out:#?}");
                assert_ne!(n_out.trace_hex(), n_in.trace_hex(), "{id}");
            }
        }
    }
    assert_eq!(counter(&stderr, "spans_linked_thread"), 0, "{stderr:#?}");
    assert_eq!(
        counter(&stderr, "spans_linked_forwarded"),
        20,
        "{stderr:#?}"
    );
}

//! Linking by thread and by propagated or forwarded context.

use super::*;

#[test]
fn root_server_and_thread_linked_clients() {
    let mut w = World::new();
    let srv = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50000",
        false,
    );
    let out1 = conn(A, 2, Role::Client, "127.0.0.1:50001", "10.0.0.9:80", false);
    w.start(srv, 0, 7, 1, Extracted::None);
    // Two calls on one keep-alive connection, both made by the serving thread.
    w.start(out1, 0, 7, 2, Extracted::None);
    w.finish(out1, 0, "/call-1");
    w.start(out1, 1, 7, 2, Extracted::None);
    w.finish(out1, 1, "/call-2");
    w.finish(srv, 0, "/in");
    // After the response, the thread serves nothing: a call from it is a new trace.
    w.start(out1, 2, 7, 2, Extracted::None);
    w.finish(out1, 2, "/later");
    let server = w.span("/in");
    assert_eq!(server.parent_span_id, None);
    assert_eq!(server.link, Link::Root);
    assert_child(w.span("/call-1"), server);
    assert_child(w.span("/call-2"), server);
    assert_eq!(w.span("/call-1").link, Link::Thread);
    assert_ne!(w.span("/later").trace_id, server.trace_id);
    assert_eq!(w.span("/later").parent_span_id, None);
    assert_eq!(w.linker.tracked(), 0, "nothing left behind");
}

#[test]
fn propagated_context_and_tracestate() {
    let mut w = World::new();
    let srv = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50000",
        false,
    );
    let out = conn(A, 2, Role::Client, "127.0.0.1:50001", "10.0.0.9:80", false);
    w.start(srv, 0, 7, 1, remote(TRACE, SENDER, true));
    w.start(out, 0, 7, 2, Extracted::None);
    w.finish(out, 0, "/call");
    w.finish(srv, 0, "/in");
    let server = w.span("/in");
    assert_eq!(server.trace_id, TRACE);
    assert_eq!(server.parent_span_id, Some(SENDER));
    assert!(server.parent_remote);
    assert_eq!(&*server.trace_state, "vendor=x");
    assert_eq!(server.link, Link::Propagated(Format::TraceContext));
    assert_eq!(server.attr_str("agent.propagation"), Some("tracecontext"));
    let call = w.span("/call");
    assert_child(call, server);
    assert!(!call.parent_remote);
    assert_eq!(
        &*call.trace_state, "vendor=x",
        "children inherit tracestate"
    );
    assert_eq!(w.count(&w.stats.context_tracecontext), 1);
}

#[test]
fn thread_pool_reuse_and_separate_threads_never_cross() {
    let mut w = World::new();
    let out = conn(A, 9, Role::Client, "127.0.0.1:50009", "10.0.0.9:80", false);
    // Two threads serve two requests at once; one keep-alive outbound connection carries calls
    // for both.
    let s1 = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50001",
        false,
    );
    let s2 = conn(
        A,
        2,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50002",
        false,
    );
    w.start(s1, 0, 101, 1, Extracted::None);
    w.start(s2, 0, 102, 1, Extracted::None);
    w.start(out, 0, 102, 2, Extracted::None);
    w.finish(out, 0, "/for-2");
    w.start(out, 1, 101, 2, Extracted::None);
    w.finish(out, 1, "/for-1");
    w.finish(s1, 0, "/in-1");
    w.finish(s2, 0, "/in-2");
    // Thread 101 is reused for another connection's request.
    let s3 = conn(
        A,
        3,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50003",
        false,
    );
    w.start(s3, 0, 101, 1, Extracted::None);
    w.start(out, 2, 101, 2, Extracted::None);
    w.finish(out, 2, "/for-3");
    w.finish(s3, 0, "/in-3");
    assert_child(w.span("/for-1"), w.span("/in-1"));
    assert_child(w.span("/for-2"), w.span("/in-2"));
    assert_child(w.span("/for-3"), w.span("/in-3"));
    assert_ne!(w.span("/in-1").trace_id, w.span("/in-3").trace_id);
    assert_eq!(w.count(&w.stats.processes_multiplexed), 0);
}

#[test]
fn event_loop_is_detected_and_never_guessed() {
    let mut w = World::new();
    let s1 = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50001",
        false,
    );
    let s2 = conn(
        A,
        2,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50002",
        false,
    );
    let out = conn(A, 3, Role::Client, "127.0.0.1:50003", "10.0.0.9:80", false);
    // One thread reads two connections' requests before answering either.
    w.start(s1, 0, 7, 1, Extracted::None);
    w.start(s2, 0, 7, 1, Extracted::None);
    w.start(out, 0, 7, 2, Extracted::None);
    w.finish(out, 0, "/call");
    w.finish(s1, 0, "/in-1");
    w.finish(s2, 0, "/in-2");
    // Later, one request at a time: still not linked, the process is an event loop.
    let s3 = conn(
        A,
        4,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50004",
        false,
    );
    w.start(s3, 0, 7, 1, Extracted::None);
    w.start(out, 1, 7, 2, Extracted::None);
    w.finish(out, 1, "/call-later");
    w.finish(s3, 0, "/in-3");
    assert_eq!(w.span("/call").parent_span_id, None);
    assert_eq!(w.span("/call-later").parent_span_id, None);
    assert_eq!(w.count(&w.stats.processes_multiplexed), 1);
    w.linker.forget_process(A);
    assert!(w.linker.multiplexed.is_empty());
}

#[test]
fn pipelined_requests_on_one_connection_are_ambiguous() {
    let mut w = World::new();
    let srv = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50001",
        false,
    );
    let out = conn(A, 3, Role::Client, "127.0.0.1:50003", "10.0.0.9:80", false);
    w.start(srv, 0, 7, 1, Extracted::None);
    w.start(srv, 1, 7, 1, Extracted::None);
    w.start(out, 0, 7, 2, Extracted::None);
    w.finish(out, 0, "/call");
    w.finish(srv, 0, "/in-1");
    w.start(out, 1, 7, 2, Extracted::None);
    w.finish(out, 1, "/call-2");
    w.finish(srv, 1, "/in-2");
    assert_eq!(w.span("/call").parent_span_id, None);
    assert_child(w.span("/call-2"), w.span("/in-2"));
    assert_eq!(w.count(&w.stats.link_ambiguous), 1);
    assert_eq!(w.count(&w.stats.processes_multiplexed), 0);
}

#[test]
fn outbound_context_on_the_wire() {
    let mut w = World::new();
    let srv = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50001",
        false,
    );
    let out = conn(A, 3, Role::Client, "127.0.0.1:50003", "10.0.0.9:80", false);
    w.start(srv, 0, 7, 1, remote(TRACE, SENDER, true));
    // Forwarded unchanged: the id is the caller's, not this call's.
    w.start(out, 0, 7, 2, remote(TRACE, SENDER, true));
    w.finish(out, 0, "/forwarded");
    // Propagated by the application with a span id of its own for this call.
    let own = [0x22; 8];
    w.start(out, 1, 7, 2, remote(TRACE, own, true));
    w.finish(out, 1, "/own-id");
    // An application that started a trace of its own.
    let other = [0x5a; 16];
    w.start(out, 2, 7, 2, remote(other, [0x33; 8], true));
    w.finish(out, 2, "/own-trace");
    w.finish(srv, 0, "/in");
    let server = w.span("/in");
    let fwd = w.span("/forwarded");
    assert_child(fwd, server);
    assert_ne!(fwd.span_id, SENDER);
    let own_span = w.span("/own-id");
    assert_child(own_span, server);
    assert_eq!(
        own_span.span_id, own,
        "the header's span id is this span's id"
    );
    let own_trace = w.span("/own-trace");
    assert_eq!(own_trace.trace_id, other);
    assert_eq!(own_trace.span_id, [0x33; 8]);
    assert_eq!(own_trace.parent_span_id, None);
}

#[test]
fn event_loop_forwarding_headers_is_linked_by_context() {
    let mut w = World::new();
    let s1 = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50001",
        false,
    );
    let s2 = conn(
        A,
        2,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50002",
        false,
    );
    let out = conn(A, 3, Role::Client, "127.0.0.1:50003", "10.0.0.9:80", false);
    let (sender1, sender2) = ([0x01; 8], [0x02; 8]);
    w.start(s1, 0, 7, 1, remote(TRACE, sender1, true));
    w.start(s2, 0, 7, 1, remote([0x77; 16], sender2, true));
    w.start(out, 0, 7, 2, remote([0x77; 16], sender2, true));
    w.finish(out, 0, "/for-2");
    w.start(out, 1, 7, 2, remote(TRACE, sender1, true));
    w.finish(out, 1, "/for-1");
    w.finish(s1, 0, "/in-1");
    w.finish(s2, 0, "/in-2");
    assert_child(w.span("/for-1"), w.span("/in-1"));
    assert_child(w.span("/for-2"), w.span("/in-2"));
    assert_eq!(w.span("/for-1").link, Link::Forwarded);
    assert_eq!(w.count(&w.stats.spans_linked_forwarded), 2);
}

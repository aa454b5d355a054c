//! The linker on hand-made records: every source of placement, the orders in which records can
//! arrive, and the cases where it must refuse to link.

use std::sync::atomic::Ordering;

use super::*;
use crate::{
    conn::{Peer, SyscallTime},
    protocol::http::{Exchange as HttpExchange, Headers, Request, Response, Version},
    trace::{propagation::Extracted, sampler::Root},
};

/// Processes that do not exist: identities fall back to `pid-N`, runtime native.
const A: u32 = 3_999_999_001;
const B: u32 = 3_999_999_002;
const C: u32 = 3_999_999_003;

const TRACE: [u8; 16] = [0x4b; 16];
const SENDER: [u8; 8] = [0x11; 8];

struct World {
    linker: Linker,
    processes: Processes,
    stats: Stats,
    spans: Vec<Span>,
    clock: u64,
}

fn conn(tgid: u32, id: u64, role: Role, local: &str, remote: &str, peer_traced: bool) -> ConnMeta {
    ConnMeta {
        tgid,
        id,
        role,
        peer: Peer {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        },
        peer_traced,
        tls: None,
    }
}

fn remote(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Extracted {
    Extracted::Context(Remote {
        trace_id,
        span_id,
        sampled,
        trace_state: "vendor=x".into(),
        format: Format::TraceContext,
    })
}

impl World {
    fn new() -> Self {
        Self::with(Sampler::default())
    }

    fn with(sampler: Sampler) -> Self {
        World {
            linker: Linker::new(sampler),
            processes: Processes::new(64),
            stats: Stats::default(),
            spans: Vec::new(),
            clock: 1_000_000,
        }
    }

    fn feed(&mut self, conn: ConnMeta, record: Record) {
        self.linker.record(
            ConnRecord { conn, record },
            &mut self.processes,
            &self.stats,
            &mut self.spans,
        );
    }

    fn start(&mut self, conn: ConnMeta, id: u64, tid: u32, fingerprint: u64, context: Extracted) {
        self.clock += 1000;
        let first = SyscallTime {
            enter_ns: self.clock,
            exit_ns: self.clock + 10,
            tid,
        };
        self.feed(
            conn,
            Record::Started(Start {
                id,
                first,
                context,
                fingerprint,
                thread_affine: true,
            }),
        );
    }

    fn finish(&mut self, conn: ConnMeta, id: u64, path: &str) {
        self.clock += 1000;
        let at = SyscallTime {
            enter_ns: self.clock,
            exit_ns: self.clock + 10,
            tid: 1,
        };
        let exchange = Exchange::Http(HttpExchange {
            request: Request {
                method: "GET".into(),
                target: path.into(),
                version: Version::Http11,
                headers: Headers::default(),
                first: at,
                last: at,
                body_len: 0,
            },
            response: Response {
                status: 200,
                version: Version::Http11,
                headers: Headers::default(),
                trailers: Headers::default(),
                first: at,
                last: at,
                body_len: 0,
                reset: None,
            },
        });
        self.feed(conn, Record::Finished { id, exchange });
    }

    fn tick_after(&mut self, ns: u64) {
        self.clock += ns;
        self.linker.now_ns = self.clock;
        self.linker
            .tick(0, &mut self.processes, &self.stats, &mut self.spans);
    }

    fn span(&self, path: &str) -> &Span {
        let found: Vec<_> = self
            .spans
            .iter()
            .filter(|s| s.attr_str("url.path") == Some(path))
            .collect();
        assert_eq!(found.len(), 1, "one span for {path}: {:#?}", self.spans);
        found[0]
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn assert_child(child: &Span, parent: &Span) {
    assert_eq!(child.trace_id, parent.trace_id, "same trace");
    assert_eq!(child.parent_span_id, Some(parent.span_id), "parent link");
}

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

/// A → B → C on one host, nothing propagated: one trace of five spans, whatever the order in
/// which the two ends of each connection are seen.
#[test]
fn same_host_chain_in_both_orders() {
    for server_first in [false, true] {
        let mut w = World::new();
        let a_in = conn(
            A,
            1,
            Role::Server,
            "127.0.0.1:8000",
            "127.0.0.1:40000",
            false,
        );
        let a_out = conn(
            A,
            2,
            Role::Client,
            "127.0.0.1:41000",
            "127.0.0.1:8001",
            false,
        );
        let b_in = conn(
            B,
            3,
            Role::Server,
            "127.0.0.1:8001",
            "127.0.0.1:41000",
            true,
        );
        let b_out = conn(
            B,
            4,
            Role::Client,
            "127.0.0.1:42000",
            "127.0.0.1:8002",
            false,
        );
        let c_in = conn(
            C,
            5,
            Role::Server,
            "127.0.0.1:8002",
            "127.0.0.1:42000",
            true,
        );
        w.start(a_in, 0, 10, 1, Extracted::None);
        if server_first {
            w.start(b_in, 0, 20, 2, Extracted::None);
            w.start(a_out, 0, 10, 2, Extracted::None);
            w.start(c_in, 0, 30, 3, Extracted::None);
            w.start(b_out, 0, 20, 3, Extracted::None);
        } else {
            w.start(a_out, 0, 10, 2, Extracted::None);
            w.start(b_in, 0, 20, 2, Extracted::None);
            w.start(b_out, 0, 20, 3, Extracted::None);
            w.start(c_in, 0, 30, 3, Extracted::None);
        }
        w.finish(c_in, 0, "/c");
        w.finish(b_out, 0, "/b-out");
        w.finish(b_in, 0, "/b");
        w.finish(a_out, 0, "/a-out");
        w.finish(a_in, 0, "/a");
        assert_eq!(w.spans.len(), 5, "server_first={server_first}");
        assert_child(w.span("/a-out"), w.span("/a"));
        assert_child(w.span("/b"), w.span("/a-out"));
        assert_child(w.span("/b-out"), w.span("/b"));
        assert_child(w.span("/c"), w.span("/b-out"));
        assert!(w.span("/b").parent_remote);
        assert_eq!(w.span("/b").link, Link::Peer);
        assert_eq!(w.count(&w.stats.spans_linked_peer), 2);
        assert_eq!(w.linker.tracked(), 0);
    }
}

#[test]
fn keep_alive_peer_requests_pair_by_fingerprint_in_order() {
    let mut w = World::new();
    let a_out = conn(
        A,
        2,
        Role::Client,
        "127.0.0.1:41000",
        "127.0.0.1:8001",
        false,
    );
    let b_in = conn(
        B,
        3,
        Role::Server,
        "127.0.0.1:8001",
        "127.0.0.1:41000",
        true,
    );
    // The client's first request was never parsed on the server side (attached mid-stream).
    w.start(a_out, 0, 10, 100, Extracted::None);
    w.start(a_out, 1, 10, 200, Extracted::None);
    w.start(b_in, 0, 20, 200, Extracted::None);
    w.start(a_out, 2, 10, 200, Extracted::None);
    w.start(b_in, 1, 20, 200, Extracted::None);
    for (id, p) in [(0, "/a0"), (1, "/a1"), (2, "/a2")] {
        w.finish(a_out, id, p);
    }
    w.finish(b_in, 0, "/b0");
    w.finish(b_in, 1, "/b1");
    assert_child(w.span("/b0"), w.span("/a1"));
    assert_child(w.span("/b1"), w.span("/a2"));
}

#[test]
fn peer_that_never_shows_times_out_to_the_header_context() {
    let mut w = World::new();
    let b_in = conn(
        B,
        3,
        Role::Server,
        "127.0.0.1:8001",
        "127.0.0.1:41000",
        true,
    );
    let b_out = conn(B, 4, Role::Client, "127.0.0.1:42000", "10.1.1.1:80", false);
    w.start(b_in, 0, 20, 2, remote(TRACE, SENDER, true));
    w.start(b_out, 0, 20, 3, Extracted::None);
    w.finish(b_out, 0, "/b-out");
    w.finish(b_in, 0, "/b");
    assert!(
        w.spans.is_empty(),
        "held until the peer's record or the timeout"
    );
    w.tick_after(PEER_WAIT_NS / 2);
    assert!(w.spans.is_empty());
    w.tick_after(PEER_WAIT_NS);
    assert_eq!(w.spans.len(), 2);
    assert_eq!(w.span("/b").trace_id, TRACE);
    assert_eq!(w.span("/b").parent_span_id, Some(SENDER));
    assert_child(w.span("/b-out"), w.span("/b"));
    assert_eq!(w.count(&w.stats.link_peer_timeouts), 1);
    assert_eq!(w.linker.tracked(), 0);
}

#[test]
fn flush_emits_what_waits() {
    let mut w = World::new();
    let b_in = conn(
        B,
        3,
        Role::Server,
        "127.0.0.1:8001",
        "127.0.0.1:41000",
        true,
    );
    w.start(b_in, 0, 20, 2, Extracted::None);
    w.finish(b_in, 0, "/b");
    assert!(w.spans.is_empty());
    w.linker.flush(&mut w.processes, &w.stats, &mut w.spans);
    assert_eq!(w.spans.len(), 1);
}

#[test]
fn sampling_is_one_decision_per_trace() {
    // Parent-based: the remote flag decides for the whole trace, children included.
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
    w.start(srv, 0, 7, 1, remote(TRACE, SENDER, false));
    w.start(out, 0, 7, 2, Extracted::None);
    w.finish(out, 0, "/call");
    w.finish(srv, 0, "/in");
    assert!(!w.span("/in").sampled && !w.span("/call").sampled);

    // Ratio: many traces, each all-or-nothing, about half kept.
    let mut w = World::with(Sampler::ParentBased(Root::TraceIdRatio(0.5)));
    for i in 0..200u64 {
        let srv = conn(
            A,
            10 + 2 * i,
            Role::Server,
            "127.0.0.1:8080",
            "127.0.0.1:50000",
            false,
        );
        let out = conn(
            A,
            11 + 2 * i,
            Role::Client,
            "127.0.0.1:50001",
            "10.0.0.9:80",
            false,
        );
        w.start(srv, 0, 7, 1, Extracted::None);
        w.start(out, 0, 7, 2, Extracted::None);
        w.finish(out, 0, &format!("/call{i}"));
        w.finish(srv, 0, &format!("/in{i}"));
    }
    let mut kept = 0;
    for i in 0..200 {
        let (a, b) = (w.span(&format!("/in{i}")), w.span(&format!("/call{i}")));
        assert_eq!(a.sampled, b.sampled);
        kept += usize::from(a.sampled);
    }
    assert!((60..140).contains(&kept), "{kept}");

    // Non-parent-based ratio decides from the trace id, so children agree too.
    let mut w = World::with(Sampler::TraceIdRatio(0.5));
    for i in 0..50u64 {
        let srv = conn(
            A,
            1000 + 2 * i,
            Role::Server,
            "127.0.0.1:8080",
            "127.0.0.1:50000",
            false,
        );
        let out = conn(
            A,
            1001 + 2 * i,
            Role::Client,
            "127.0.0.1:50001",
            "10.0.0.9:80",
            false,
        );
        w.start(srv, 0, 7, 1, Extracted::None);
        w.start(out, 0, 7, 2, Extracted::None);
        w.finish(out, 0, &format!("/call{i}"));
        w.finish(srv, 0, &format!("/in{i}"));
        assert_eq!(
            w.span(&format!("/in{i}")).sampled,
            w.span(&format!("/call{i}")).sampled
        );
    }
}

#[test]
fn abandoned_requests_release_their_thread_and_state() {
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
    w.start(srv, 0, 7, 1, Extracted::None);
    w.feed(srv, Record::Abandoned { id: 0 });
    w.start(out, 0, 7, 2, Extracted::None);
    w.finish(out, 0, "/call");
    assert_eq!(w.span("/call").parent_span_id, None);
    assert_eq!(w.linker.tracked(), 0);
    // A record for a request never started (the table was full) still gives a span.
    w.finish(srv, 42, "/untracked");
    assert_eq!(w.span("/untracked").parent_span_id, None);
}

#[test]
fn malformed_context_is_counted_and_ignored() {
    let mut w = World::new();
    let srv = conn(
        A,
        1,
        Role::Server,
        "127.0.0.1:8080",
        "127.0.0.1:50000",
        false,
    );
    w.start(srv, 0, 7, 1, Extracted::Malformed(Format::B3));
    w.finish(srv, 0, "/in");
    assert_eq!(w.span("/in").parent_span_id, None);
    assert_eq!(w.span("/in").link, Link::Root);
    assert_eq!(w.count(&w.stats.context_malformed), 1);
}

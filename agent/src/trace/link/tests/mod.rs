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
        self.feed(conn, Record::finished(id, exchange));
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

mod peers;
mod threads;

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

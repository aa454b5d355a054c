//! Same-host linking: a SERVER span under the traced CLIENT span that sent its request.

use super::*;

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
    assert!(w.linker.waiting(), "a held span needs the timer");
    w.tick_after(PEER_WAIT_NS / 2);
    assert!(w.spans.is_empty());
    w.tick_after(PEER_WAIT_NS);
    assert_eq!(w.spans.len(), 2);
    assert_eq!(w.span("/b").trace_id, TRACE);
    assert_eq!(w.span("/b").parent_span_id, Some(SENDER));
    assert_child(w.span("/b-out"), w.span("/b"));
    assert_eq!(w.count(&w.stats.link_peer_timeouts), 1);
    assert_eq!(w.linker.tracked(), 0);
    // Nothing waits on the timer any more; the client request stays matchable a while, and
    // the housekeeping's tick forgets it.
    assert!(!w.linker.waiting(), "an idle linker lets the agent sleep");
    assert_eq!(w.linker.clients.len(), 1);
    w.tick_after(CLIENT_ENTRY_NS);
    assert!(w.linker.clients.is_empty());
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

//! Adversarial tests of the HTTP/1 parser: every split point, pipelining, chunked bodies, gaps,
//! garbage and truncation. The invariants: no panic, and no response paired with the wrong
//! request.

use super::*;
use crate::{
    conn::SyscallTime,
    protocol::{Exchange as AnyExchange, harness, http::Version},
};

/// The kernel time of the `n`-th syscall the harness feeds (`harness::Harness`).
fn t(n: u64) -> SyscallTime {
    SyscallTime {
        enter_ns: n * 10,
        exit_ns: n * 10 + 5,
        tid: n as u32,
    }
}

/// A connection under test: the parsers' common harness, with the HTTP/1 exchanges finished so
/// far kept aside (most tests look at them alone).
struct Harness {
    inner: harness::Harness<Http1>,
    /// The finished exchanges, in order.
    out: Vec<Exchange>,
    /// Records of `inner.out` already looked at.
    seen: usize,
}

impl Harness {
    fn new() -> Self {
        Self {
            inner: harness::Harness::new(Http1::new()),
            out: Vec::new(),
            seen: 0,
        }
    }

    /// Collects the exchanges finished since the last look.
    fn collect(&mut self) {
        for r in &self.inner.out[self.seen..] {
            if let Record::Finished { exchange, .. } = r
                && let AnyExchange::Http(exchange) = &**exchange
            {
                self.out.push(exchange.clone());
            }
        }
        self.seen = self.inner.out.len();
    }

    fn request(&mut self, bytes: &[u8]) {
        self.request_gap(bytes, bytes.len() as u64);
    }

    /// Like `request` but only `captured` bytes of `len` are known.
    fn request_gap(&mut self, captured: &[u8], len: u64) {
        self.inner.client_gap(captured, len);
        self.collect();
    }

    fn response(&mut self, bytes: &[u8]) {
        self.response_gap(bytes, bytes.len() as u64);
    }

    fn response_gap(&mut self, captured: &[u8], len: u64) {
        self.inner.server_gap(captured, len);
        self.collect();
    }

    fn close(&mut self) {
        let h = &mut self.inner;
        h.parser.close(&h.stats, &mut h.out);
        self.collect();
    }

    /// Every record, in order.
    fn records(&self) -> &[Record] {
        &self.inner.out
    }

    fn http(&mut self) -> &mut Http1 {
        &mut self.inner.parser
    }

    fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The requests reported as started, in order.
    fn starts(&self) -> Vec<&Start> {
        self.records()
            .iter()
            .filter_map(|r| match r {
                Record::Started(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn pairs(&self) -> Vec<(String, u16)> {
        self.out
            .iter()
            .map(|e| (e.request.target.to_string(), e.response.status))
            .collect()
    }
}

const GET: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: t/1\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
#[test]
fn simple_exchange_with_timing() {
    let mut h = Harness::new();
    h.request(GET);
    h.response(OK);
    assert_eq!(h.out.len(), 1);
    let e = &h.out[0];
    assert_eq!(e.request.method, "GET");
    assert_eq!(e.request.target, "/a?x=1");
    assert_eq!(e.request.headers.get("user-agent"), Some("t/1"));
    assert_eq!(e.response.status, 200);
    assert_eq!(e.response.body_len, 5);
    assert_eq!(e.request.first, t(1));
    assert_eq!(e.response.last, t(2));
}

#[test]
fn every_split_point_of_request_and_response() {
    for split in 1..GET.len() {
        for rsplit in 1..OK.len() {
            let mut h = Harness::new();
            h.request(&GET[..split]);
            h.request(&GET[split..]);
            h.response(&OK[..rsplit]);
            assert!(
                h.out.is_empty() || rsplit == OK.len(),
                "early completion at {rsplit}"
            );
            h.response(&OK[rsplit..]);
            assert_eq!(
                h.pairs(),
                vec![("/a?x=1".into(), 200)],
                "split {split}/{rsplit}"
            );
            assert_eq!(h.out[0].request.first, t(1));
            assert_eq!(h.out[0].response.first, t(3));
            assert_eq!(h.out[0].response.last, t(4));
        }
    }
}

#[test]
fn byte_by_byte() {
    let mut h = Harness::new();
    for b in GET {
        h.request(&[*b]);
    }
    for b in OK {
        h.response(&[*b]);
    }
    assert_eq!(h.pairs(), vec![("/a?x=1".into(), 200)]);
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut h = Harness::new();
    h.request(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno");
    h.response(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        h.pairs(),
        vec![("/1".into(), 200), ("/2".into(), 404), ("/3".into(), 500)]
    );
}

#[test]
fn keep_alive_sequence_with_bodies() {
    let mut h = Harness::new();
    for i in 0..5 {
        let body = "x".repeat(i * 10);
        h.request(
            format!(
                "POST /p{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        h.response(
            format!(
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let want: Vec<_> = (0..5).map(|i| (format!("/p{i}"), 201)).collect();
    assert_eq!(h.pairs(), want);
    assert_eq!(h.out[3].request.body_len, 30);
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";

#[test]
fn chunked_every_split() {
    for split in 1..CHUNKED.len() {
        let mut h = Harness::new();
        h.request(GET);
        h.response(&CHUNKED[..split]);
        assert!(h.out.is_empty(), "completed early at {split}");
        h.response(&CHUNKED[split..]);
        assert_eq!(h.pairs(), vec![("/a?x=1".into(), 200)], "split {split}");
        assert_eq!(h.out[0].response.body_len, 11);
        assert_eq!(h.out[0].response.last, t(3));
    }
}

#[test]
fn chunked_request_body_then_next_request() {
    let mut h = Harness::new();
    h.request(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.response(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(h.pairs(), vec![("/up".into(), 200), ("/next".into(), 204)]);
    assert_eq!(h.out[0].request.body_len, 3);
}

#[test]
fn body_in_a_gap_is_skipped_by_count() {
    let mut h = Harness::new();
    h.request(GET);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&[b'a'; 100]);
    // 100 000 body bytes, of which only the first 100 were captured.
    h.response_gap(&first, head.len() as u64 + 100_000);
    assert_eq!(h.pairs(), vec![("/a?x=1".into(), 200)]);
    h.request(b"GET /b HTTP/1.1\r\n\r\n");
    h.response(OK);
    assert_eq!(h.pairs()[1], ("/b".into(), 200));
}

#[test]
fn lost_chunk_framing_ends_at_next_response() {
    let mut h = Harness::new();
    h.request(GET);
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n";
    // The chunk data and the next size line fall into a gap.
    h.response_gap(head, head.len() as u64 + 0x2000 + 2);
    h.response_gap(b"", 50);
    assert!(h.out.is_empty());
    h.request(b"GET /b HTTP/1.1\r\n\r\n");
    h.response(OK);
    assert_eq!(h.pairs(), vec![("/a?x=1".into(), 200), ("/b".into(), 200)]);
    // The lost response ends with the last syscall before the next response.
    assert_eq!(h.out[0].response.last, t(3));
    assert!(
        h.stats()
            .http_resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[test]
fn head_and_no_body_statuses() {
    let mut h = Harness::new();
    h.request(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n");
    // HEAD response announces a length but has no body.
    h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    h.response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
    h.response(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(
        h.pairs(),
        vec![("/h".into(), 200), ("/n".into(), 304), ("/c".into(), 204)]
    );
}

#[test]
fn expect_continue_interim_response() {
    let mut h = Harness::new();
    h.request(b"PUT /f HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    h.response(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(h.out.is_empty());
    h.request(b"data");
    h.response(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.pairs(), vec![("/f".into(), 201)]);
    assert_eq!(h.out[0].request.body_len, 4);
}

#[test]
fn response_until_close() {
    let mut h = Harness::new();
    h.request(b"GET /old HTTP/1.0\r\n\r\n");
    h.response(b"HTTP/1.0 200 OK\r\n\r\nsome");
    h.response(b" more");
    assert!(h.out.is_empty());
    h.close();
    assert_eq!(h.pairs(), vec![("/old".into(), 200)]);
    assert_eq!(h.out[0].response.version, Version::Http10);
    assert_eq!(h.out[0].response.last, t(3));
}

#[test]
fn upgrade_stops_parsing() {
    let mut h = Harness::new();
    h.request(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    h.response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello");
    h.request(b"\x81\x85garbage");
    h.response(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(h.pairs(), vec![("/ws".into(), 101)]);
    assert!(h.http().is_tunnel());
}

#[test]
fn response_without_request_is_never_paired() {
    let mut h = Harness::new();
    h.response(OK);
    assert!(h.out.is_empty());
    assert_eq!(
        h.stats()
            .responses_unpaired
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    h.request(GET);
    h.response(b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.pairs(), vec![("/a?x=1".into(), 418)]);
}

#[test]
fn garbage_between_requests_resyncs() {
    let mut h = Harness::new();
    h.request(GET);
    h.response(OK);
    h.request(b"\x00\x01\x02 not http at all\r\n\r\n");
    h.request(b"GET /after HTTP/1.1\r\n\r\n");
    h.response(OK);
    assert_eq!(
        h.pairs(),
        vec![("/a?x=1".into(), 200), ("/after".into(), 200)]
    );
}

#[test]
fn truncated_messages_do_not_complete() {
    let mut h = Harness::new();
    h.request(GET);
    h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort");
    h.close();
    assert!(h.out.is_empty());
    assert_eq!(
        h.stats()
            .requests_unanswered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn looks_like_classifies() {
    assert_eq!(looks_like(b"GET / HTTP/1.1\r\n\r\n"), Looks::Request);
    assert_eq!(looks_like(b"POST /x HT"), Looks::Request);
    assert_eq!(looks_like(b"HTTP/1.1 200 OK\r\n"), Looks::Response);
    assert_eq!(looks_like(b"HTT"), Looks::Undecided);
    assert_eq!(looks_like(b"GE"), Looks::Undecided);
    assert_eq!(looks_like(b"\x16\x03\x01\x02\x00"), Looks::NotHttp);
    assert_eq!(looks_like(b"*2\r\n$3\r\nGET\r\n"), Looks::NotHttp);
}

/// Deterministic pseudo-random input: the parser must never panic, and every exchange it
/// produces must pair request i with response i.
#[test]
fn fuzz_random_splits_and_garbage() {
    let mut rnd = harness::rng(0x1234_5678_9abc_def0);
    for round in 0..300 {
        let mut h = Harness::new();
        let mut reqs = Vec::new();
        let mut resps = Vec::new();
        let n = 1 + rnd(5) as usize;
        for i in 0..n {
            reqs.extend_from_slice(
                format!("GET /r{round}-{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
            );
            let status = 200 + i;
            if rnd(2) == 0 {
                resps.extend_from_slice(
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
                );
            } else {
                resps.extend_from_slice(
                    format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").as_bytes(),
                );
            }
        }
        if round % 3 == 0 {
            // Corrupt one byte somewhere.
            let at = rnd(resps.len() as u64) as usize;
            resps[at] = rnd(256) as u8;
        }
        let mut i = 0;
        while i < reqs.len() {
            let k = 1 + rnd(40) as usize;
            let end = (i + k).min(reqs.len());
            h.request(&reqs[i..end]);
            i = end;
        }
        let mut i = 0;
        while i < resps.len() {
            let k = 1 + rnd(40) as usize;
            let end = (i + k).min(resps.len());
            if rnd(10) == 0 {
                // Part of this piece not captured.
                let cap = rnd((end - i) as u64) as usize;
                h.response_gap(&resps[i..i + cap], (end - i) as u64);
            } else {
                h.response(&resps[i..end]);
            }
            i = end;
        }
        h.close();
        h.inner.check_lifecycle();
        for e in &h.out {
            let idx = harness::target_index(&e.request.target);
            if round % 3 != 0 {
                assert_eq!(u32::from(e.response.status), 200 + idx, "round {round}");
            }
        }
        // Pure garbage on both sides.
        let mut h = Harness::new();
        let junk: Vec<u8> = (0..200).map(|_| rnd(256) as u8).collect();
        h.request(&junk);
        h.response(&junk);
        h.close();
        h.inner.check_lifecycle();
    }
}

#[test]
fn large_upload_in_a_gap_then_next_request() {
    let mut h = Harness::new();
    let head = b"PUT /upload HTTP/1.1\r\nContent-Length: 50000\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&[b'z'; 64]);
    // Only the head and 64 body bytes were captured of this large write.
    h.request_gap(&first, head.len() as u64 + 50_000);
    h.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.request(b"GET /after HTTP/1.1\r\n\r\n");
    h.response(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(
        h.pairs(),
        vec![("/upload".into(), 200), ("/after".into(), 204)]
    );
    assert_eq!(h.out[0].request.body_len, 50_000);
}

#[test]
fn h2c_upgrade_hands_the_request_over() {
    let mut h = Harness::new();
    h.request(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
    h.response(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert!(h.http().is_tunnel());
    let (id, req) = h.http().take_h2c().expect("upgraded request");
    assert_eq!(req.target, "/up");
    assert!(h.out.is_empty(), "its response is still to come, in HTTP/2");
    assert!(matches!(h.records()[0], Record::Started(Start { id: started, .. }) if started == id));
    // A websocket upgrade is an ordinary tunnel.
    let mut w = Harness::new();
    w.request(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    w.response(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    assert!(w.http().take_h2c().is_none());
    assert_eq!(w.pairs(), vec![("/ws".into(), 101)]);
}

mod heads;

//! The HTTP/2 parser on frames built here (header blocks from an independent HPACK encoder):
//! prior knowledge, gRPC with trailers, multiplexed streams, CONTINUATION, resets, a connection
//! first seen mid-stream, the h2c upgrade, capture gaps, and random splits.

use super::*;
use crate::protocol::{
    Record,
    harness::{self, Harness},
};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

struct Peer(fluke_hpack::Encoder<'static>);

impl Peer {
    fn new() -> Self {
        Peer(fluke_hpack::Encoder::new())
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.0
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn headers(&mut self, stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
        let b = self.block(fields);
        frame(HEADERS, flags | END_HEADERS, stream, &b)
    }
}

type H = Harness<Http2>;

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/items?id=3"),
    (":authority", "shop.local:8080"),
    ("user-agent", "h2-test/1"),
];

#[test]
fn prior_knowledge_get() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = H::new(Http2::new(true));
    let mut first = PREFACE.to_vec();
    first.extend(settings());
    first.extend(c.headers(1, END_STREAM, GET));
    h.client(&first);
    let mut answer = settings();
    answer.extend(s.headers(1, 0, &[(":status", "200"), ("content-type", "text/plain")]));
    answer.extend(frame(DATA, 0, 1, b"hello "));
    answer.extend(frame(DATA, END_STREAM | PADDED, 1, b"\x02world\0\0"));
    h.server(&answer);
    let ex = h.exchanges();
    assert_eq!(ex.len(), 1);
    let (id, e) = ex[0];
    assert_eq!(id, STREAM_ID_BASE | 1);
    assert_eq!(e.request.method, "GET");
    assert_eq!(e.request.target, "/items?id=3");
    assert_eq!(e.request.version, Version::Http2);
    assert_eq!(e.request.headers.get("host"), Some("shop.local:8080"));
    assert_eq!(e.request.headers.get("user-agent"), Some("h2-test/1"));
    assert_eq!(e.response.status, 200);
    assert_eq!(e.response.body_len, 11);
    assert!(matches!(
        h.out[0],
        Record::Started(Start {
            thread_affine: false,
            ..
        })
    ));
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn grpc_with_trailers_and_context() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = H::new(Http2::new(true));
    let mut req = PREFACE.to_vec();
    req.extend(c.headers(
        1,
        0,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/shop.v1.Catalog/GetItem"),
            (":authority", "catalog:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    ));
    req.extend(frame(DATA, END_STREAM, 1, b"\0\0\0\0\x02\x08\x01"));
    h.client(&req);
    let mut resp = s.headers(
        1,
        0,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    resp.extend(s.headers(
        1,
        END_STREAM,
        &[("grpc-status", "5"), ("grpc-message", "no such item")],
    ));
    h.server(&resp);
    let ex = h.exchanges();
    assert_eq!(ex.len(), 1);
    let e = ex[0].1;
    assert_eq!(e.request.body_len, 7);
    assert_eq!(e.response.trailers.get("grpc-status"), Some("5"));
    let Record::Started(start) = &h.out[0] else {
        panic!("a start first");
    };
    assert!(matches!(start.context, propagation::Extracted::Context(_)));
}

#[test]
fn multiplexed_streams_answered_out_of_order() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = H::new(Http2::new(true));
    let mut req = PREFACE.to_vec();
    for (stream, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        req.extend(c.headers(
            stream,
            END_STREAM,
            &[(":method", "GET"), (":scheme", "http"), (":path", path)],
        ));
    }
    h.client(&req);
    for (stream, status) in [(5, "404"), (1, "200"), (3, "500")] {
        h.server(&s.headers(stream, END_STREAM, &[(":status", status)]));
    }
    let got: Vec<_> = h
        .exchanges()
        .iter()
        .map(|(_, e)| (e.request.target.to_string(), e.response.status))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/c".to_string(), 404),
            ("/a".to_string(), 200),
            ("/b".to_string(), 500)
        ]
    );
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn continuation_and_resets() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = H::new(Http2::new(true));
    let block = c.block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/upload"),
        ("x-long", &"v".repeat(300)),
    ]);
    let mut req = PREFACE.to_vec();
    req.extend(frame(HEADERS, END_STREAM, 1, &block[..100]));
    req.extend(frame(CONTINUATION, 0, 1, &block[100..200]));
    req.extend(frame(CONTINUATION, END_HEADERS, 1, &block[200..]));
    req.extend(c.headers(
        3,
        END_STREAM,
        &[(":method", "GET"), (":scheme", "http"), (":path", "/slow")],
    ));
    h.client(&req);
    // Stream 3 is reset before any response; stream 1 after its response began.
    h.client(&frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()));
    h.server(&s.headers(1, 0, &[(":status", "200")]));
    h.server(&frame(RST_STREAM, 0, 1, &2u32.to_be_bytes()));
    let ex = h.exchanges();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].1.request.target, "/upload");
    assert_eq!(
        ex[0].1.request.headers.get("x-long").map(str::len),
        Some(300)
    );
    assert_eq!(ex[0].1.response.reset, Some(2));
    assert!(
        h.out
            .iter()
            .any(|r| matches!(r, Record::Abandoned { id } if *id == STREAM_ID_BASE | 3))
    );
    h.check_lifecycle();
}

/// A `:path` block as real encoders (nghttp2, Go, gRPC) write it: POST, http, then the path
/// as a literal with incremental indexing (name: static `:path`).
fn indexed_path_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x44, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b
}

#[test]
fn mid_stream_connection_never_guesses_names() {
    // Before the agent looked, the client inserted "/svc.A/Old" into its table (index 62).
    let mut h = H::new(Http2::new(false));
    let status_200 = frame(HEADERS, END_STREAM | END_HEADERS, 0, &[0x88]);
    let answer = |stream: u32| {
        let mut f = status_200.clone();
        f[5..9].copy_from_slice(&stream.to_be_bytes());
        f
    };
    // The same request again refers to index 62, an entry the agent never saw.
    h.client(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        7,
        &[0x83, 0x86, 0xbe],
    ));
    h.server(&answer(7));
    assert!(h.exchanges().is_empty(), "no span without a certain name");
    assert_eq!(
        h.stats
            .http2_streams_unnamed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A new path inserted while the agent watches takes index 62 (the old one moves to 63);
    // it is named, and so is the next request that refers to it.
    h.client(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        9,
        &indexed_path_block("/svc.A/New"),
    ));
    h.server(&answer(9));
    h.client(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        11,
        &[0x83, 0x86, 0xbe],
    ));
    h.server(&answer(11));
    h.client(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        13,
        &[0x83, 0x86, 0xbf],
    ));
    h.server(&answer(13));
    let targets: Vec<_> = h
        .exchanges()
        .iter()
        .map(|(_, e)| e.request.target.clone())
        .collect();
    assert_eq!(
        targets,
        ["/svc.A/New", "/svc.A/New"],
        "index 63 is still unknown"
    );
    assert_eq!(
        h.stats
            .http2_streams_unnamed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn h2c_upgrade_continues_stream_one() {
    let mut s = Peer::new();
    let request = Request {
        method: "GET".into(),
        target: "/up".into(),
        version: Version::Http11,
        headers: Headers::default(),
        first: SyscallTime::default(),
        last: SyscallTime::default(),
        body_len: 0,
    };
    let mut h = H::new(Http2::upgraded(0, request));
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    h.client(&client);
    let mut answer = settings();
    answer.extend(s.headers(1, END_STREAM, &[(":status", "200")]));
    h.server(&answer);
    let ex = h.exchanges();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].0, 0, "the HTTP/1.1 request's own id");
    assert_eq!(ex[0].1.response.version, Version::Http2);
}

#[test]
fn frame_header_in_a_gap_resyncs_and_forgets_the_table() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = H::new(Http2::new(true));
    let mut req = PREFACE.to_vec();
    req.extend(c.headers(1, END_STREAM, GET));
    h.client(&req);
    // The response's frames were not captured (a large write): framing lost.
    let mut big = s.headers(1, 0, &[(":status", "200")]);
    big.extend(frame(DATA, 0, 1, &[0; 100]));
    h.server_gap(&big[..3], 100_000);
    assert!(h.out.iter().any(|r| matches!(r, Record::Abandoned { .. })));
    h.client(&c.headers(3, END_STREAM, GET));
    h.server(&s.headers(3, END_STREAM, &[(":status", "200")]));
    let ex = h.exchanges();
    assert_eq!(ex.len(), 1);
    // Its status was encoded against table entries the agent lost: unknown, not guessed.
    assert!(ex[0].1.response.status == 200 || ex[0].1.response.status == 0);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn detection_helpers() {
    let mut c = Peer::new();
    let hdrs = c.headers(1, END_STREAM, GET);
    let mut frames = settings();
    frames.extend(hdrs.clone());
    assert!(looks_like_frames(&frames));
    assert_eq!(first_headers_is_request(&frames), Some(true));
    let mut s = Peer::new();
    assert_eq!(
        first_headers_is_request(&s.headers(1, 0, &[(":status", "200")])),
        Some(false)
    );
    assert!(!looks_like_frames(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(!looks_like_frames(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"));
}

#[test]
fn random_splits_and_garbage() {
    let mut rnd = harness::rng(0xabcd_ef01);
    for round in 0..200 {
        let (mut c, mut s) = (Peer::new(), Peer::new());
        let mut client = PREFACE.to_vec();
        let mut server = settings();
        let n = 1 + rnd(6) as u32;
        for i in 0..n {
            let stream = 1 + 2 * i;
            let path = format!("/r{round}-{i}");
            client.extend(c.headers(
                stream,
                END_STREAM,
                &[(":method", "GET"), (":scheme", "http"), (":path", &path)],
            ));
            let status = (200 + i).to_string();
            server.extend(s.headers(stream, 0, &[(":status", &status)]));
            server.extend(frame(DATA, END_STREAM, stream, b"body"));
        }
        if round % 4 == 0 {
            let at = rnd(server.len() as u64) as usize;
            server[at] = rnd(256) as u8;
        }
        let mut h = H::new(Http2::new(true));
        for (bytes, is_client) in [(&client, true), (&server, false)] {
            let mut i = 0;
            while i < bytes.len() {
                let end = (i + 1 + rnd(40) as usize).min(bytes.len());
                if !is_client && rnd(12) == 0 {
                    let cap = rnd((end - i) as u64) as usize;
                    h.server_gap(&bytes[i..i + cap], (end - i) as u64);
                } else if is_client {
                    h.client(&bytes[i..end]);
                } else {
                    h.server(&bytes[i..end]);
                }
                i = end;
            }
        }
        h.parser.close(&h.stats, &mut h.out);
        h.check_lifecycle();
        if round % 4 != 0 {
            for (_, e) in h.exchanges() {
                let i = harness::target_index(&e.request.target);
                assert!(
                    e.response.status == 0 || e.response.status as u32 == 200 + i,
                    "round {round}: {} got {}",
                    e.request.target,
                    e.response.status
                );
            }
        }
        let mut g = H::new(Http2::new(false));
        let junk: Vec<u8> = (0..300).map(|_| rnd(256) as u8).collect();
        g.client(&junk);
        g.server(&junk);
        g.parser.close(&g.stats, &mut g.out);
        g.check_lifecycle();
    }
}

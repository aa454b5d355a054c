//! What a parsed head keeps and reports: the request fields the agent reads (and only those),
//! their values, the trace context and fingerprint of each started request, and what a response
//! head's fields say about its framing (it keeps none of them).

use super::*;

#[test]
fn a_response_keeps_no_fields_and_is_framed_by_them() {
    let mut h = Harness::new();
    h.request(GET);
    h.response(
        b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: today\r\nTransfer-Encoding: gzip, chunked\r\n\
          ETag: \"1\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(h.out.len(), 1);
    let headers = &h.out[0].response.headers;
    assert!(headers.is_empty(), "{headers:?}");
    assert_eq!(h.out[0].response.body_len, 5);
}

fn scanned(head: &[u8]) -> head::StatusHead {
    match head::scan_response(head) {
        head::HeadResult::Done(h, n) => {
            assert_eq!(n, head.len(), "the head ends after its blank line");
            h
        }
        head::HeadResult::NeedMore => panic!("incomplete: {head:?}"),
        head::HeadResult::Invalid => panic!("invalid: {head:?}"),
    }
}

#[test]
fn a_response_is_framed_by_its_first_length_and_upgrade_and_its_last_coding() {
    let fields = |head: &[u8]| scanned(head).framed;
    let f = fields(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 12 \r\nContent-Length: 7\r\n\r\n");
    assert_eq!(f.content_length, Some(12));
    assert!(!f.chunked && !f.h2c);
    // A first length that is not a number leaves the body delimited by close, as before.
    let f = fields(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(f.content_length, None);
    let f = fields(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    assert!(!f.chunked, "chunked must be the last coding");
    let f =
        fields(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert!(f.chunked);
    let f = fields(b"HTTP/1.1 101 Switching\r\nUpgrade:  H2C \r\nUpgrade: websocket\r\n\r\n");
    assert!(f.h2c);
    let f = fields(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n");
    assert!(!f.h2c, "the first Upgrade decides");
    // A name that only starts like a framing field's, and a short one with a first letter in
    // common (`TE`).
    let f =
        fields(b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nContent-Length-X: 3\r\nTE: chunked\r\n\r\n");
    assert_eq!(f, head::Framed::default());
}

/// The fields the parser reads come out the same whichever reader reads them: the request
/// side's `httparse` fields, or the response side's scan.
#[test]
fn both_readers_of_framing_fields_agree() {
    let heads: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,chunked\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n",
        b"HTTP/1.0 204 No Content\r\n\r\n",
    ];
    for head in heads {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        assert!(r.parse(head).is_ok_and(|s| s.is_complete()));
        let h = scanned(head);
        assert_eq!(h.framed, head::Framed::of(r.headers), "{head:?}");
        assert_eq!(Some(h.status), r.code);
    }
}

#[test]
fn a_status_line_gives_the_status_and_version() {
    let h = scanned(b"HTTP/1.0 404 Not Found\r\n\r\n");
    assert_eq!((h.status, h.version), (404, Version::Http10));
    // No reason phrase, bare line feeds.
    let h = scanned(b"HTTP/1.1 503\nContent-Length: 0\n\n");
    assert_eq!((h.status, h.version), (503, Version::Http11));
    assert_eq!(h.framed.content_length, Some(0));
    // A reason phrase with bytes a strict parser refuses: the client took it.
    let h = scanned(b"HTTP/1.1 200 \x01fine\x7f\r\nContent-Length : 4\r\n\r\n");
    assert_eq!(h.status, 200);
    assert_eq!(h.framed.content_length, None, "a name ends at its colon");
}

#[test]
fn a_head_is_incomplete_until_its_blank_line_and_invalid_when_not_a_status_line() {
    let needs_more = |head: &[u8]| matches!(head::scan_response(head), head::HeadResult::NeedMore);
    let invalid = |head: &[u8]| matches!(head::scan_response(head), head::HeadResult::Invalid);
    let full = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    for end in 0..full.len() {
        assert!(needs_more(&full[..end]), "{:?}", &full[..end]);
    }
    assert!(invalid(b"HTTP/2 200 OK\r\n\r\n"));
    assert!(invalid(b"HTTP/1.1 20x OK\r\n\r\n"));
    assert!(invalid(b"HTTP/1.1 2000 OK\r\n\r\n"));
    assert!(invalid(b"HTTP/1.1 x"), "a wrong byte before the line ends");
    assert!(invalid(b"HTTP/1.1 20\r\n\r\n"));
    assert!(invalid(b"SSH-2.0-OpenSSH"));
}

/// A request keeps the fields its framing, its span and its trace context read; the others
/// count only in its fingerprint.
#[test]
fn only_the_request_fields_the_agent_reads_are_kept() {
    let mut h = Harness::new();
    let with_cookie = |cookie: &str| {
        format!(
            "POST /cart HTTP/1.1\r\nHost: shop\r\nCookie: {cookie}\r\nAccept: */*\r\n\
             User-Agent: t/1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
             tracestate: a=1\r\nX-B3-Sampled: 1\r\n\r\nok"
        )
    };
    h.request(with_cookie("id=1").as_bytes());
    h.request(with_cookie("id=2").as_bytes());
    h.request(with_cookie("id=1").as_bytes());
    let starts = h.starts();
    assert_eq!(starts.len(), 3);
    assert_ne!(starts[0].fingerprint, starts[1].fingerprint);
    assert_eq!(starts[0].fingerprint, starts[2].fingerprint);
    assert!(matches!(
        starts[0].context,
        propagation::Extracted::Context(_)
    ));
    for _ in 0..3 {
        h.response(OK);
    }
    assert_eq!(h.out.len(), 3);
    assert_eq!(h.out[0].request.body_len, 2);
    let names: Vec<&str> = h.out[0].request.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "Host",
            "User-Agent",
            "Content-Type",
            "traceparent",
            "tracestate",
            "X-B3-Sampled"
        ]
    );
}

#[test]
fn header_values_are_trimmed_and_invalid_utf8_replaced() {
    let mut h = Harness::new();
    h.request(
        b"GET / HTTP/1.1\r\nHost: a \t\r\nUser-Agent: caf\xe9 \xff\r\nContent-Type: \xc3\xa9t\xc3\xa9\r\n\r\n",
    );
    h.response(b"HTTP/1.1 204 No Content\r\n\r\n");
    let headers = &h.out[0].request.headers;
    assert_eq!(headers.get("host"), Some("a"));
    assert_eq!(headers.get("user-agent"), Some("caf\u{fffd} \u{fffd}"));
    assert_eq!(headers.get("content-type"), Some("\u{e9}t\u{e9}"));
}

#[test]
fn started_records_carry_context_and_fingerprint() {
    let mut h = Harness::new();
    let traced = b"GET /t HTTP/1.1\r\nHost: h\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    h.request(traced);
    h.request(GET);
    h.request(GET);
    let starts = h.starts();
    assert_eq!(starts.len(), 3);
    assert!(matches!(
        starts[0].context,
        propagation::Extracted::Context(_)
    ));
    assert_eq!(starts[1].context, propagation::Extracted::None);
    assert_eq!(starts[0].first, t(1));
    // The same head gives the same fingerprint; another head another one.
    assert_eq!(starts[1].fingerprint, starts[2].fingerprint);
    assert_ne!(starts[0].fingerprint, starts[1].fingerprint);
    h.close();
    h.inner.check_lifecycle();
    assert_eq!(
        h.records()
            .iter()
            .filter(|r| matches!(r, Record::Abandoned { .. }))
            .count(),
        3
    );
}

#[test]
fn a_content_length_is_digits_that_fit() {
    let length = |v: &[u8]| super::body::length_value(v);
    assert_eq!(length(b" 42 "), Some(42));
    assert_eq!(length(b"0"), Some(0));
    assert_eq!(length(b"18446744073709551615"), Some(u64::MAX));
    for bad in [
        &b""[..],
        b"  ",
        b"+5",
        b"-1",
        b"4 2",
        b"0x10",
        b"18446744073709551616",
    ] {
        assert_eq!(length(bad), None, "{bad:?}");
    }
}

//! Spans from exchanges: HTTP, gRPC and database semantic conventions, statuses and timing.

use super::*;
use crate::trace::route::Routes;
use crate::{
    conn::{Peer, SyscallTime},
    protocol::{
        db::{DbError, Operation, System},
        http::{Exchange as HttpExchange, Headers, Request, Response, Version},
    },
};

fn at(enter: u64, exit: u64) -> SyscallTime {
    SyscallTime {
        enter_ns: enter,
        exit_ns: exit,
        tid: 1,
    }
}

fn conn(role: Role) -> ConnMeta {
    ConnMeta {
        tgid: std::process::id(),
        id: 1,
        role,
        peer: Peer {
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
        },
        peer_traced: false,
        tls: None,
    }
}

fn placement() -> Placement {
    let r = &mut rand::rng();
    Placement {
        trace_id: new_trace_id(r),
        span_id: new_span_id(r),
        parent: None,
        parent_remote: false,
        sampled: true,
        trace_state: smol_str::SmolStr::default(),
        link: Link::Root,
    }
}

fn http(method: &str, target: &str, status: u16, headers: Headers) -> Exchange {
    Exchange::Http(HttpExchange {
        request: Request {
            method: method.into(),
            target: target.into(),
            version: Version::Http11,
            headers,
            first: at(1_000, 2_000),
            last: at(1_000, 2_000),
            body_len: 0,
        },
        response: Response {
            status,
            version: Version::Http11,
            headers: Headers::default(),
            trailers: Headers::default(),
            first: at(5_000, 6_000),
            last: at(7_000, 9_000),
            body_len: 12,
            reset: None,
        },
    })
}

fn web(method: &str, target: &str, status: u16) -> Exchange {
    http(
        method,
        target,
        status,
        [("Host", "shop.local:8080"), ("User-Agent", "curl/8")]
            .into_iter()
            .collect(),
    )
}

fn span(role: Role, e: &Exchange) -> Span {
    make_span(
        &conn(role),
        e,
        placement(),
        &mut Processes::new(8),
        &Routes::default(),
        crate::clock::wall_offset_ns(),
    )
}

#[test]
fn server_span_follows_semantic_conventions() {
    let sp = span(Role::Server, &web("GET", "/items/17?id=3", 200));
    assert_eq!(sp.kind, SpanKind::Server);
    assert_eq!(sp.name, "GET /items/{id}");
    assert_eq!(sp.attr_str("http.route"), Some("/items/{id}"));
    assert_eq!(sp.attr_str("url.path"), Some("/items/17"));
    assert_eq!(sp.attr_str("url.query"), Some("id=3"));
    assert_eq!(sp.attr_str("server.address"), Some("shop.local"));
    assert_eq!(sp.attr("server.port"), Some(&Value::Int(8080)));
    assert_eq!(sp.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(sp.attr("network.peer.port"), Some(&Value::Int(50000)));
    for absent in [
        "client.port",
        "network.protocol.name",
        "network.transport",
        "network.type",
    ] {
        assert_eq!(sp.attr(absent), None, "{absent}");
    }
    assert_eq!(sp.attr_str("user_agent.original"), Some("curl/8"));
    assert_eq!(sp.attr_str("network.protocol.version"), Some("1.1"));
    assert_eq!(sp.status, Status::Unset);
    assert_eq!(sp.duration_ns(), 7_000);
}

#[test]
fn statuses_follow_kind() {
    let srv404 = span(Role::Server, &web("GET", "/", 404));
    let srv503 = span(Role::Server, &web("GET", "/", 503));
    let cli404 = span(Role::Client, &web("GET", "/", 404));
    assert_eq!(srv404.status, Status::Unset);
    assert_eq!(srv503.status, Status::Error);
    assert_eq!(cli404.status, Status::Error);
    assert_eq!(cli404.attr_str("error.type"), Some("404"));
}

#[test]
fn client_span_uses_peer_port_and_write_start() {
    let sp = span(Role::Client, &web("POST", "/pay", 201));
    assert_eq!(sp.name, "POST", "a client knows no route");
    assert_eq!(sp.attr_str("http.route"), None);
    assert_eq!(sp.attr("server.port"), Some(&Value::Int(50000)));
    assert_eq!(sp.attr("network.local.port"), Some(&Value::Int(8080)));
    assert_eq!(
        sp.attr_str("client.address"),
        None,
        "not a client span's attribute"
    );
    assert_eq!(sp.attr_str("url.full"), Some("http://shop.local:8080/pay"));
    assert_eq!(sp.duration_ns(), 8_000);
}

#[test]
fn tls_connections_are_https() {
    let mut c = conn(Role::Client);
    c.tls = Some(crate::conn::TlsMeta {
        version: Some(crate::tls::hello::Version(0x0303)),
    });
    let sp = make_span(
        &c,
        &web("GET", "/pay", 200),
        placement(),
        &mut Processes::new(8),
        &Routes::default(),
        crate::clock::wall_offset_ns(),
    );
    assert_eq!(sp.attr_str("url.scheme"), Some("https"));
    assert_eq!(sp.attr_str("url.full"), Some("https://shop.local:8080/pay"));
    assert_eq!(sp.attr_str("tls.protocol.name"), Some("tls"));
    assert_eq!(sp.attr_str("tls.protocol.version"), Some("1.2"));
    let plain = span(Role::Client, &web("GET", "/pay", 200));
    assert_eq!(plain.attr_str("url.scheme"), Some("http"));
    assert_eq!(plain.attr_str("tls.protocol.name"), None);
}

#[test]
fn unknown_method_and_absolute_target() {
    let sp = span(Role::Server, &web("PURGE", "http://x/a/b?c", 200));
    assert_eq!(sp.name, "HTTP /a/b");
    assert_eq!(sp.attr_str("http.request.method"), Some("_OTHER"));
    assert_eq!(sp.attr_str("http.request.method_original"), Some("PURGE"));
    assert_eq!(sp.attr_str("url.path"), Some("/a/b"));
}

fn grpc(code: Option<&str>) -> Exchange {
    let Exchange::Http(mut e) = http(
        "POST",
        "/shop.v1.Catalog/GetItem",
        200,
        [
            ("content-type", "application/grpc"),
            ("host", "catalog:50051"),
        ]
        .into_iter()
        .collect(),
    ) else {
        unreachable!()
    };
    e.request.version = Version::Http2;
    if let Some(c) = code {
        e.response.trailers = [("grpc-status", c)].into_iter().collect();
    }
    Exchange::Http(e)
}

#[test]
fn grpc_names_attributes_and_statuses() {
    let ok = span(Role::Server, &grpc(Some("0")));
    assert_eq!(ok.name, "shop.v1.Catalog/GetItem");
    assert_eq!(ok.attr_str("rpc.system"), Some("grpc"));
    assert_eq!(ok.attr_str("rpc.service"), Some("shop.v1.Catalog"));
    assert_eq!(ok.attr_str("rpc.method"), Some("GetItem"));
    assert_eq!(ok.attr("rpc.grpc.status_code"), Some(&Value::Int(0)));
    assert_eq!(ok.attr_str("network.protocol.version"), Some("2"));
    assert_eq!(ok.attr_str("http.request.method"), None);
    assert_eq!(ok.status, Status::Unset);
    // NOT_FOUND is the caller's error, not the server's.
    assert_eq!(span(Role::Server, &grpc(Some("5"))).status, Status::Unset);
    let client = span(Role::Client, &grpc(Some("5")));
    assert_eq!(client.status, Status::Error);
    assert_eq!(client.attr_str("error.type"), Some("5"));
    assert_eq!(span(Role::Server, &grpc(Some("13"))).status, Status::Error);
    // No decodable status: not an error unless the stream was reset.
    assert_eq!(span(Role::Client, &grpc(None)).status, Status::Unset);
}

fn db(op: &str, collection: Option<&str>, error: Option<&str>) -> Exchange {
    Exchange::Db(Operation {
        system: System::Postgresql,
        operation: Some(op.into()),
        collection: collection.map(String::from),
        query: Some(format!("{op} * FROM t WHERE a = ?")),
        namespace: Some("shop".into()),
        error: error.map(|c| DbError {
            code: c.into(),
            message: "boom".into(),
        }),
        rows: Some(3),
        first: at(100, 200),
        last: at(900, 1_000),
    })
}

#[test]
fn database_spans() {
    let sp = span(Role::Client, &db("SELECT", Some("orders"), None));
    assert_eq!(sp.kind, SpanKind::Client);
    assert_eq!(sp.name, "SELECT orders");
    assert_eq!(sp.attr_str("db.system.name"), Some("postgresql"));
    assert_eq!(sp.attr_str("db.operation.name"), Some("SELECT"));
    assert_eq!(sp.attr_str("db.collection.name"), Some("orders"));
    assert_eq!(sp.attr_str("db.namespace"), Some("shop"));
    assert_eq!(
        sp.attr_str("db.query.text"),
        Some("SELECT * FROM t WHERE a = ?")
    );
    assert_eq!(sp.attr("db.response.returned_rows"), Some(&Value::Int(3)));
    assert_eq!(sp.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(sp.attr("server.port"), Some(&Value::Int(50000)));
    assert_eq!(sp.status, Status::Unset);
    assert_eq!(sp.duration_ns(), 900);
    let failed = span(Role::Client, &db("BEGIN", None, Some("42P01")));
    assert_eq!(failed.name, "BEGIN");
    assert_eq!(failed.status, Status::Error);
    assert_eq!(failed.attr_str("db.response.status_code"), Some("42P01"));
}

#[test]
fn terminal_lines_describe_each_protocol() {
    use crate::export::stdout::text_line;
    let line = text_line(&span(Role::Client, &grpc(Some("5"))));
    assert!(
        line.contains("grpc shop.v1.Catalog/GetItem  status=5 ERROR"),
        "{line}"
    );
    let line = text_line(&span(Role::Client, &db("SELECT", Some("orders"), None)));
    assert!(
        line.contains("postgresql SELECT orders  status=ok"),
        "{line}"
    );
    let line = text_line(&span(Role::Client, &db("BEGIN", None, Some("42P01"))));
    assert!(
        line.contains("postgresql BEGIN  status=42P01 ERROR"),
        "{line}"
    );
    let line = text_line(&span(
        Role::Server,
        &http("GET", "/a?b=1", 404, Headers::default()),
    ));
    assert!(line.contains("GET     /a?b=1  404"), "{line}");
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let mut ips: Vec<std::net::IpAddr> = [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.12.3",
        "::1",
        "fe80::1:2",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    ips.extend((0..1000).map(|_| std::net::IpAddr::from(rng.random::<[u8; 4]>())));
    // Twice over, and each one twice in a row: written, then found in the memo (or written
    // again after a colliding address took its slot).
    for ip in ips.iter().chain(&ips) {
        assert_eq!(ip_text(*ip), ip.to_string());
        assert_eq!(ip_text(*ip), ip.to_string());
    }
}

#[test]
fn concat_joins_parts_of_any_length() {
    assert_eq!(super::concat(&[]), "");
    assert_eq!(super::concat(&["GET", " ", "/cart"]), "GET /cart");
    // Past the 23 bytes a SmolStr holds inline, up to the stack buffer, and past it.
    let long = "é".repeat(100);
    assert_eq!(super::concat(&["a", &long, "z"]), format!("a{long}z"));
    let at_capacity = "x".repeat(256);
    assert_eq!(
        super::concat(&[&at_capacity[..200], &at_capacity[200..]]),
        at_capacity
    );
    let over = "y".repeat(300);
    assert_eq!(super::concat(&[&over[..1], &over[1..]]), over);
}

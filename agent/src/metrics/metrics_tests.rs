use std::sync::Arc;

use super::*;
use crate::{
    process::{NameSource, ProcessInfo, Runtime},
    trace::{Link, SpanKind, Status, Value},
};

pub(crate) fn process(pid: u32, name: &str) -> Arc<ProcessInfo> {
    Arc::new(ProcessInfo {
        pid,
        service_name: name.into(),
        name_source: NameSource::OtelServiceName,
        executable_name: "python3".into(),
        executable_path: "/usr/bin/python3".into(),
        command_line: "python3 app.py".into(),
        host_name: "host".into(),
        runtime: Runtime::Native,
        container_id: None,
        attributes: Vec::new(),
    })
}

/// A span of `ms` milliseconds.
fn span(
    kind: SpanKind,
    service: &Arc<ProcessInfo>,
    id: u8,
    ms: u64,
    attrs: &[(&'static str, Value)],
) -> Span {
    let start_ns = 1_700_000_000 * 1_000_000_000;
    Span {
        trace_id: [1; 16],
        span_id: [id; 8],
        parent_span_id: None,
        parent_remote: false,
        sampled: true,
        trace_state: SmolStr::default(),
        link: Link::Root,
        kind,
        name: "GET".into(),
        start_ns,
        end_ns: start_ns + ms * 1_000_000,
        attributes: attrs.to_vec(),
        status: Status::Unset,
        process: service.clone(),
    }
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

pub(crate) fn server(service: &Arc<ProcessInfo>, id: u8, route: &str, status: i64) -> Span {
    let mut sp = span(
        SpanKind::Server,
        service,
        id,
        3,
        &[
            ("http.request.method", s("GET")),
            ("http.route", s(route)),
            ("url.path", s("/users/42")),
            ("http.response.status_code", Value::Int(status)),
            ("client.address", s("10.0.0.9")),
            ("client.port", Value::Int(51234)),
        ],
    );
    if status >= 500 {
        sp.status = Status::Error;
        sp.attributes.push(("error.type", s(&status.to_string())));
    }
    sp
}

pub(crate) fn client(service: &Arc<ProcessInfo>, id: u8, host: &str, port: i64) -> Span {
    span(
        SpanKind::Client,
        service,
        id,
        5,
        &[
            ("http.request.method", s("GET")),
            ("server.address", s(host)),
            ("server.port", Value::Int(port)),
            ("http.response.status_code", Value::Int(200)),
        ],
    )
}

/// `server` as the peer child of `client`.
pub(crate) fn under(mut server: Span, client: &Span) -> Span {
    server.parent_span_id = Some(client.span_id);
    server.link = Link::Peer;
    server
}

fn edge<'a>(edges: &'a [(Edge, EdgeStats)], client: &str, server: &str) -> &'a EdgeStats {
    &edges
        .iter()
        .find(|(e, _)| &*e.client == client && &*e.server == server)
        .unwrap_or_else(|| panic!("no edge {client} -> {server} in {edges:#?}"))
        .1
}

#[test]
fn red_series_use_semantic_convention_attributes() {
    let m = Metrics::new(100, false);
    let api = process(1, "api");
    let now = Instant::now();
    m.observe(&server(&api, 1, "/users/{id}", 200), now);
    m.observe(&server(&api, 2, "/users/{id}", 200), now);
    m.observe(&server(&api, 3, "/users/{id}", 503), now);
    let snap = m.snapshot();
    assert_eq!(
        snap.red.len(),
        2,
        "ok and failed are two series: {:#?}",
        snap.red
    );
    let ok = snap
        .red
        .iter()
        .find(|(k, _)| !k.attributes.iter().any(|(n, _)| *n == "error.type"))
        .unwrap();
    assert_eq!(ok.0.instrument, red::Instrument::HttpServer);
    assert_eq!(&*ok.0.service, "api");
    assert_eq!(ok.1.count, 2);
    let names: Vec<&str> = ok.0.attributes.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "http.request.method",
            "http.route",
            "http.response.status_code"
        ]
    );
    let mut text = String::new();
    prometheus::render(&snap, &mut text);
    assert!(
        text.contains(
            "http_server_request_duration_seconds_count{service_name=\"api\",http_request_method=\"GET\",http_route=\"/users/{id}\",http_response_status_code=\"200\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    assert!(text.contains("le=\"+Inf\""));
}

#[test]
fn peers_on_this_host_pair_into_one_request_whatever_the_order() {
    let m = Metrics::new(100, false);
    let (front, back) = (process(1, "frontend"), process(2, "backend"));
    let now = Instant::now();
    // Server span first (it ends first), then its client.
    let c1 = client(&front, 10, "127.0.0.1", 8002);
    m.observe(&under(server(&back, 11, "/x", 200), &c1), now);
    m.observe(&c1, now);
    // Client first.
    let c2 = client(&front, 20, "127.0.0.1", 8002);
    m.observe(&c2, now);
    m.observe(&under(server(&back, 21, "/x", 500), &c2), now);
    let edges = m.edges();
    assert_eq!(edges.len(), 1, "{edges:#?}");
    let e = edge(&edges, "frontend", "backend");
    assert_eq!((e.requests, e.failed), (2, 1));
    assert_eq!((e.client.count, e.server.count), (2, 2));
    assert_eq!(m.snapshot().waiting, 0);
}

#[test]
fn unpaired_ends_are_named_by_address() {
    let m = Metrics::new(100, false);
    let api = process(1, "api");
    let now = Instant::now();
    // An untraced client calls the api: counted at once, client named by IP.
    m.observe(&server(&api, 1, "/", 200), now);
    // The api calls something untraced: counted once no server half came.
    m.observe(&client(&api, 2, "payments.example", 443), now);
    assert_eq!(m.edges().len(), 1);
    m.tick(now + graph::PAIR_WAIT / 2);
    assert_eq!(m.edges().len(), 1, "still waiting");
    m.tick(now + graph::PAIR_WAIT);
    let edges = m.edges();
    assert_eq!(edge(&edges, "10.0.0.9", "api").server.count, 1);
    let out = edge(&edges, "api", "payments.example:443");
    assert_eq!(
        (out.requests, out.client.count, out.server.count),
        (1, 1, 0)
    );
    // Databases are edges of their own kind, counted at once.
    let mut q = client(&api, 3, "127.0.0.1", 5432);
    q.attributes.push(("db.system.name", s("postgresql")));
    q.attributes.push(("db.operation.name", s("SELECT")));
    m.observe(&q, now);
    let edges = m.edges();
    let db = edges
        .iter()
        .find(|(e, _)| &*e.server == "127.0.0.1:5432")
        .unwrap();
    assert_eq!(db.0.connection_type, "database");
    let snap = m.snapshot();
    assert!(
        snap.red
            .iter()
            .any(|(k, _)| k.instrument == red::Instrument::DbClient)
    );
    let table = summary::table(&edges);
    assert!(table.contains("CLIENT"), "{table}");
    assert!(table.contains("payments.example:443"), "{table}");
    assert!(table.contains("database"), "{table}");
}

#[test]
fn series_past_the_limit_overflow_and_are_counted() {
    let m = Metrics::new(2, false);
    let api = process(1, "api");
    let now = Instant::now();
    for (i, route) in ["/a", "/b", "/c", "/d"].into_iter().enumerate() {
        m.observe(&server(&api, i as u8, route, 200), now);
    }
    let snap = m.snapshot();
    assert_eq!(snap.red.len(), 3, "two series and the overflow series");
    assert_eq!(snap.overflowed, 2);
    let overflow = snap
        .red
        .iter()
        .find(|(k, _)| {
            k.attributes
                .iter()
                .any(|(n, _)| *n == series::OVERFLOW_ATTRIBUTE)
        })
        .unwrap();
    assert_eq!(overflow.1.count, 2);
    let mut text = String::new();
    prometheus::render(&snap, &mut text);
    prometheus::render_health(&snap, &mut text);
    assert!(text.contains("otel_metric_overflow=\"true\""), "{text}");
    assert!(
        text.contains("agent_metric_series_overflow_total 2"),
        "{text}"
    );
}

#[test]
fn grpc_calls_use_the_rpc_instruments() {
    let m = Metrics::new(100, false);
    let svc = process(1, "catalog");
    let rpc = [
        ("rpc.system", s("grpc")),
        ("rpc.service", s("shop.v1.Catalog")),
        ("rpc.method", s("GetItem")),
        ("rpc.grpc.status_code", Value::Int(0)),
        ("url.path", s("/shop.v1.Catalog/GetItem")),
    ];
    m.observe(&span(SpanKind::Server, &svc, 1, 2, &rpc), Instant::now());
    let mut call = span(SpanKind::Client, &svc, 2, 4, &rpc);
    call.attributes.push(("server.address", s("10.0.0.2")));
    call.attributes.push(("server.port", Value::Int(50051)));
    m.observe(&call, Instant::now());
    let snap = m.snapshot();
    let server = snap
        .red
        .iter()
        .find(|(k, _)| k.instrument == red::Instrument::RpcServer)
        .unwrap();
    let names: Vec<&str> = server.0.attributes.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code"
        ],
        "never the path"
    );
    let client = snap
        .red
        .iter()
        .find(|(k, _)| k.instrument == red::Instrument::RpcClient)
        .unwrap();
    assert!(client.0.attributes.iter().any(|(n, _)| *n == "server.port"));
    let mut text = String::new();
    prometheus::render(&snap, &mut text);
    assert!(
        text.contains(
            "rpc_server_duration_seconds_count{service_name=\"catalog\",rpc_system=\"grpc\""
        ),
        "{text}"
    );
}

//! From exchanges to spans: where each span sits in its trace ([`link`], from propagated
//! context ([`propagation`]), threads and connections), whether it is kept ([`sampler`]),
//! timing, OpenTelemetry HTTP semantic-convention attributes and status. A SERVER span starts
//! when the first request byte was read and ends when the last response byte was written; a
//! CLIENT span starts when the first request byte was written and ends when the last response
//! byte was read.

pub mod link;
pub mod propagation;
pub mod sampler;
pub mod span;

use std::net::SocketAddr;

use rand::Rng;

pub use link::{Link, Linker, Placement};
pub use span::{Span, SpanKind, Status, Value};

use crate::{
    clock,
    conn::{ConnMeta, Role},
    process::Processes,
    protocol::Exchange,
};

/// Methods the HTTP semantic conventions name; others become `_OTHER`.
const KNOWN_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Random non-zero W3C ids.
pub fn new_trace_id(rng: &mut impl Rng) -> [u8; 16] {
    loop {
        let id: [u8; 16] = rng.random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random non-zero span id.
pub fn new_span_id(rng: &mut impl Rng) -> [u8; 8] {
    loop {
        let id: [u8; 8] = rng.random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`) from a Host header.
fn host_of(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Builds the span for one exchange, at its place in its trace.
pub fn make_span(
    conn: &ConnMeta,
    exchange: &Exchange,
    placement: Placement,
    processes: &mut Processes,
) -> Span {
    let req = &exchange.request;
    let resp = &exchange.response;
    let (kind, start_ns, end_ns) = match conn.role {
        Role::Server => (SpanKind::Server, req.first.exit_ns, resp.last.exit_ns),
        Role::Client => (SpanKind::Client, req.first.enter_ns, resp.last.exit_ns),
    };
    let end_ns = end_ns.max(start_ns);
    let offset = clock::wall_offset_ns();

    let method_known = KNOWN_METHODS.contains(&req.method.as_str());
    let method = if method_known {
        req.method.as_str()
    } else {
        "_OTHER"
    };
    let name = if method_known {
        req.method.clone()
    } else {
        "HTTP".to_string()
    };

    // Origin-form targets; an absolute-form (proxy) target keeps only its path and query.
    let target = match req.target.find("://") {
        Some(i) => {
            let rest = &req.target[i + 3..];
            rest.find('/').map_or("/", |p| &rest[p..])
        }
        None => req.target.as_str(),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let (server, client): (SocketAddr, SocketAddr) = match conn.role {
        Role::Server => (conn.peer.local, conn.peer.remote),
        Role::Client => (conn.peer.remote, conn.peer.local),
    };
    let host_header = req
        .headers
        .get("host")
        .map(host_of)
        .filter(|h| !h.is_empty());
    let server_address = host_header
        .map(str::to_string)
        .unwrap_or_else(|| server.ip().to_string());

    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(20);
    let s = |v: &str| Value::Str(v.to_string());
    a.push(("http.request.method", s(method)));
    if !method_known {
        a.push(("http.request.method_original", s(&req.method)));
    }
    a.push(("url.path", s(path)));
    if let Some(q) = query {
        a.push(("url.query", s(q)));
    }
    a.push(("url.scheme", s("http")));
    if kind == SpanKind::Client {
        // The authority the client asked for (Host header), else the peer it connected to.
        let authority = match req.headers.get("host").filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => server.to_string(),
        };
        a.push((
            "url.full",
            Value::Str(format!("http://{authority}{target}")),
        ));
    }
    a.push((
        "http.response.status_code",
        Value::Int(i64::from(resp.status)),
    ));
    a.push(("server.address", Value::Str(server_address)));
    a.push(("server.port", Value::Int(i64::from(server.port()))));
    a.push(("client.address", Value::Str(client.ip().to_string())));
    a.push(("client.port", Value::Int(i64::from(client.port()))));
    a.push((
        "network.peer.address",
        Value::Str(conn.peer.remote.ip().to_string()),
    ));
    a.push((
        "network.peer.port",
        Value::Int(i64::from(conn.peer.remote.port())),
    ));
    a.push(("network.transport", s("tcp")));
    a.push((
        "network.type",
        s(if conn.peer.remote.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        }),
    ));
    a.push((
        "network.protocol.version",
        s(if req.minor_version == 0 { "1.0" } else { "1.1" }),
    ));
    if let Some(ua) = req.headers.get("user-agent") {
        a.push(("user_agent.original", s(ua)));
    }
    a.push(("http.request.body.size", Value::Int(req.body_len as i64)));
    a.push(("http.response.body.size", Value::Int(resp.body_len as i64)));

    let error = match kind {
        SpanKind::Server => resp.status >= 500,
        SpanKind::Client => resp.status >= 400,
    };
    if error {
        a.push(("error.type", Value::Str(resp.status.to_string())));
    }
    if let Link::Propagated(format) = placement.link {
        // Which propagation format the trace context came from.
        a.push(("agent.propagation", s(format.as_str())));
    }

    Span {
        trace_id: placement.trace_id,
        span_id: placement.span_id,
        parent_span_id: placement.parent,
        parent_remote: placement.parent_remote,
        sampled: placement.sampled,
        trace_state: placement.trace_state,
        link: placement.link,
        kind,
        name,
        start: clock::to_wall_with(start_ns, offset),
        end: clock::to_wall_with(end_ns, offset),
        attributes: a,
        status: if error { Status::Error } else { Status::Unset },
        process: processes.get(conn.tgid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conn::{Peer, SyscallTime},
        protocol::http1::{Headers, Request, Response},
    };

    /// A test exchange on a connection of this test process.
    struct Case {
        conn: ConnMeta,
        exchange: Exchange,
    }

    fn root_placement() -> Placement {
        let r = &mut rand::rng();
        Placement {
            trace_id: new_trace_id(r),
            span_id: new_span_id(r),
            parent: None,
            parent_remote: false,
            sampled: true,
            trace_state: std::sync::Arc::from(""),
            link: Link::Root,
        }
    }

    fn span_of(c: &Case, p: &mut Processes) -> Span {
        make_span(&c.conn, &c.exchange, root_placement(), p)
    }

    fn exchange(role: Role, method: &str, target: &str, status: u16) -> Case {
        let at = |enter, exit| SyscallTime {
            enter_ns: enter,
            exit_ns: exit,
            tid: 1,
        };
        Case {
            conn: ConnMeta {
                tgid: std::process::id(),
                id: 1,
                role,
                peer: Peer {
                    local: "127.0.0.1:8080".parse().unwrap(),
                    remote: "127.0.0.1:50000".parse().unwrap(),
                },
                peer_traced: false,
            },
            exchange: Exchange {
                request: Request {
                    method: method.into(),
                    target: target.into(),
                    minor_version: 1,
                    headers: Headers(vec![
                        ("Host".into(), "shop.local:8080".into()),
                        ("User-Agent".into(), "curl/8".into()),
                    ]),
                    first: at(1_000, 2_000),
                    last: at(1_000, 2_000),
                    body_len: 0,
                },
                response: Response {
                    status,
                    minor_version: 1,
                    headers: Headers::default(),
                    first: at(5_000, 6_000),
                    last: at(7_000, 9_000),
                    body_len: 12,
                },
            },
        }
    }

    #[test]
    fn server_span_follows_semantic_conventions() {
        let mut p = Processes::new(8);
        let sp = span_of(&exchange(Role::Server, "GET", "/items?id=3", 200), &mut p);
        assert_eq!(sp.kind, SpanKind::Server);
        assert_eq!(sp.name, "GET");
        assert_eq!(sp.attr_str("url.path"), Some("/items"));
        assert_eq!(sp.attr_str("url.query"), Some("id=3"));
        assert_eq!(sp.attr_str("server.address"), Some("shop.local"));
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(8080)));
        assert_eq!(sp.attr("client.port"), Some(&Value::Int(50000)));
        assert_eq!(sp.attr_str("user_agent.original"), Some("curl/8"));
        assert_eq!(sp.attr_str("network.protocol.version"), Some("1.1"));
        assert_eq!(sp.status, Status::Unset);
        let d = sp.end.duration_since(sp.start).unwrap();
        assert_eq!(d.as_nanos(), 7_000);
        assert!(sp.trace_id != [0; 16] && sp.span_id != [0; 8]);
    }

    #[test]
    fn statuses_follow_kind() {
        let mut p = Processes::new(8);
        let srv404 = span_of(&exchange(Role::Server, "GET", "/", 404), &mut p);
        let srv503 = span_of(&exchange(Role::Server, "GET", "/", 503), &mut p);
        let cli404 = span_of(&exchange(Role::Client, "GET", "/", 404), &mut p);
        assert_eq!(srv404.status, Status::Unset);
        assert_eq!(srv503.status, Status::Error);
        assert_eq!(cli404.status, Status::Error);
        assert_eq!(cli404.attr_str("error.type"), Some("404"));
    }

    #[test]
    fn client_span_uses_peer_port_and_write_start() {
        let mut p = Processes::new(8);
        let sp = span_of(&exchange(Role::Client, "POST", "/pay", 201), &mut p);
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(50000)));
        assert_eq!(sp.attr_str("url.full"), Some("http://shop.local:8080/pay"));
        let d = sp.end.duration_since(sp.start).unwrap();
        assert_eq!(d.as_nanos(), 8_000);
    }

    #[test]
    fn unknown_method_and_absolute_target() {
        let mut p = Processes::new(8);
        let sp = span_of(
            &exchange(Role::Server, "PURGE", "http://x/a/b?c", 200),
            &mut p,
        );
        assert_eq!(sp.name, "HTTP");
        assert_eq!(sp.attr_str("http.request.method"), Some("_OTHER"));
        assert_eq!(sp.attr_str("http.request.method_original"), Some("PURGE"));
        assert_eq!(sp.attr_str("url.path"), Some("/a/b"));
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("a.b"), "a.b");
    }
}

//! The OpenTelemetry HTTP and gRPC semantic conventions for an exchange: span name, attributes
//! and error status. An HTTP/2 request with `content-type: application/grpc` is a gRPC call:
//! named `{package.Service}/{Method}`, with `rpc.*` attributes and its status from the
//! trailers.

use std::net::SocketAddr;

use smol_str::SmolStr;

use super::{Described, SpanKind, Value, network_attributes, route::Routes};
use crate::{
    conn::{ConnMeta, Role},
    protocol::http::{Exchange, Headers},
};

/// Methods the HTTP semantic conventions name; others become `_OTHER`.
const KNOWN_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// gRPC status codes that make a SERVER span an error (the others are the client's doing).
const GRPC_SERVER_ERRORS: &[i64] = &[2, 4, 12, 13, 14, 15];

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

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The request fields a span reads, in the order `Fields` holds them.
const READ_FIELDS: [&str; 3] = ["host", "content-type", "user-agent"];

/// Whether a span reads the request field `name` (HTTP/1 keeps only the fields something reads).
pub fn reads_field(name: &str) -> bool {
    READ_FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// The values of `READ_FIELDS`, found in one pass over the header fields (the first of each
/// name, as `Headers::get` gives) rather than a look-up each.
struct Fields<'a>([Option<&'a str>; READ_FIELDS.len()]);

impl<'a> Fields<'a> {
    fn of(headers: &'a Headers) -> Self {
        let mut values = [None; READ_FIELDS.len()];
        for (name, value) in headers.iter() {
            // Each comparison starts with the lengths: most names are turned down by them.
            if let Some(i) = READ_FIELDS
                .iter()
                .position(|f| name.eq_ignore_ascii_case(f))
            {
                values[i].get_or_insert(value);
            }
        }
        Fields(values)
    }

    fn host(&self) -> Option<&'a str> {
        self.0[0]
    }

    fn content_type(&self) -> Option<&'a str> {
        self.0[1]
    }

    fn user_agent(&self) -> Option<&'a str> {
        self.0[2]
    }
}

/// Describes one HTTP exchange. SERVER spans get an `http.route` from `routes` and are named
/// `{method} {http.route}`; CLIENT spans are named by the method alone (a client knows no
/// route).
pub fn describe(conn: &ConnMeta, kind: SpanKind, e: &Exchange, routes: &Routes) -> Described {
    let req = &e.request;
    let resp = &e.response;
    let (server, client): (SocketAddr, SocketAddr) = match conn.role {
        Role::Server => (conn.peer.local, conn.peer.remote),
        Role::Client => (conn.peer.remote, conn.peer.local),
    };
    // Origin-form targets; an absolute-form (proxy) target keeps only its path and query. The
    // searches run on every span: an origin-form target (the usual one) skips the substring
    // search, and `?` is looked for byte by byte, short targets costing less that way than a
    // searcher's set-up.
    let absolute = if req.target.starts_with('/') {
        None
    } else {
        req.target.find("://")
    };
    let target = match absolute {
        Some(i) => {
            let rest = &req.target[i + 3..];
            rest.find('/').map_or("/", |p| &rest[p..])
        }
        None => req.target.as_str(),
    };
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        // `?` is ASCII: both sides of it are on character boundaries.
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    let fields = Fields::of(&req.headers);
    let host_header = fields.host().filter(|h| !h.is_empty());
    let server_address = host_header
        .map(host_of)
        .filter(|h| !h.is_empty())
        .map(SmolStr::new)
        .unwrap_or_else(|| super::ip_text(server.ip()));

    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(20);
    let s = |v: &str| Value::Str(SmolStr::new(v));
    let is_grpc = fields
        .content_type()
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let grpc = if is_grpc { grpc_path(path) } else { None };

    let (name, error) = if let Some((service, method)) = grpc {
        a.push(("rpc.system", Value::text("grpc")));
        a.push(("rpc.service", s(service)));
        a.push(("rpc.method", s(method)));
        let code = resp
            .trailers
            .get("grpc-status")
            .or_else(|| resp.headers.get("grpc-status"))
            .and_then(|c| c.trim().parse::<i64>().ok());
        if let Some(code) = code {
            a.push(("rpc.grpc.status_code", Value::Int(code)));
        }
        let error = match (code, kind) {
            (Some(c), SpanKind::Server) => GRPC_SERVER_ERRORS.contains(&c),
            (Some(c), SpanKind::Client) => c != 0,
            // No status: a reset stream or a failed HTTP response is an error.
            (None, _) => resp.reset.is_some() || resp.status >= 500,
        };
        if error {
            let t = code.map_or_else(
                || SmolStr::new_static("RST_STREAM"),
                |c| SmolStr::new(itoa::Buffer::new().format(c)),
            );
            a.push(("error.type", Value::Str(t)));
        }
        (super::concat(&[service, "/", method]), error)
    } else {
        let known = KNOWN_METHODS.iter().find(|m| **m == req.method).copied();
        let method_known = known.is_some();
        a.push((
            "http.request.method",
            Value::text(known.unwrap_or("_OTHER")),
        ));
        if !method_known {
            a.push(("http.request.method_original", s(&req.method)));
        }
        a.push(("url.path", s(path)));
        let route = (kind == SpanKind::Server).then(|| routes.route(path));
        if let Some(r) = &route {
            a.push(("http.route", Value::Str(r.clone())));
        }
        if let Some(q) = query {
            a.push(("url.query", s(q)));
        }
        let scheme = if conn.tls.is_some() { "https" } else { "http" };
        a.push(("url.scheme", Value::text(scheme)));
        if kind == SpanKind::Client {
            // The authority the client asked for (Host header), else the peer it connected to.
            let server_addr;
            let authority = match host_header {
                Some(h) => h,
                None => {
                    server_addr = server.to_string();
                    &server_addr
                }
            };
            a.push((
                "url.full",
                Value::Str(super::concat(&[scheme, "://", authority, target])),
            ));
        }
        if resp.status != 0 {
            a.push((
                "http.response.status_code",
                Value::Int(i64::from(resp.status)),
            ));
        }
        if let Some(ua) = fields.user_agent() {
            a.push(("user_agent.original", s(ua)));
        }
        a.push(("http.request.body.size", Value::Int(req.body_len as i64)));
        a.push(("http.response.body.size", Value::Int(resp.body_len as i64)));
        let error = match kind {
            SpanKind::Server => resp.status >= 500,
            SpanKind::Client => resp.status >= 400,
        } || resp.reset.is_some();
        if error {
            let t = if resp.status >= 400 {
                SmolStr::new(itoa::Buffer::new().format(resp.status))
            } else {
                SmolStr::new_static("RST_STREAM")
            };
            a.push(("error.type", Value::Str(t)));
        }
        let method = if method_known { &req.method } else { "HTTP" };
        let name = match route {
            Some(r) => super::concat(&[method, " ", &r]),
            None => SmolStr::new(method),
        };
        (name, error)
    };
    a.push(("server.address", Value::Str(server_address)));
    a.push(("server.port", Value::Int(i64::from(server.port()))));
    // The semantic conventions' choice per kind: a server names its client (whose port,
    // opt-in, is `network.peer.port` already); a client's own side is the opt-in
    // `network.local.port`, kept because it tells which connection carried the call.
    // `network.protocol.name` is for protocols other than HTTP only (gRPC is HTTP/2 here).
    let peer = super::ip_text(conn.peer.remote.ip());
    match conn.role {
        // The client is the peer: one text for both keys.
        Role::Server => a.push(("client.address", Value::Str(peer.clone()))),
        Role::Client => a.push(("network.local.port", Value::Int(i64::from(client.port())))),
    }
    a.push((
        "network.protocol.version",
        Value::text(req.version.as_str()),
    ));
    network_attributes(conn, peer, &mut a);
    Described {
        name,
        attributes: a,
        error,
    }
}

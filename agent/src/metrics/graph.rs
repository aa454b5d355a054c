//! The service graph: who calls whom, built from spans the way Tempo's service-graph processor
//! and Beyla do, so that Grafana's service graph view works on the agent's metrics unchanged.
//!
//! An edge is one request from a client to a server. When both ends are traced on this host the
//! SERVER span is linked under its CLIENT span ([`Link::Peer`]); the two are paired here by span
//! id and counted once, with the client's and the server's view of the duration. Otherwise one
//! end is outside what the agent sees and is named by address: a SERVER span's client by its
//! IP, a CLIENT span's server by `address:port`. Database and cache calls are edges of
//! `connection_type="database"`.

use foldhash::HashMap;
use smol_str::SmolStr;
use std::time::{Duration, Instant};

use super::{red::seconds, series};
use crate::trace::{Link, Span, SpanKind, Status};

/// How long one half of a pair waits for the other before it counts alone.
pub const PAIR_WAIT: Duration = Duration::from_secs(2);

/// Most halves waiting for their pair; past it, halves count alone at once.
const MAX_WAITING: usize = 16_384;

/// One edge of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    pub client: SmolStr,
    pub server: SmolStr,
    /// `""` for service-to-service calls, `"database"` for databases and caches (Tempo's values).
    pub connection_type: &'static str,
}

impl Edge {
    /// The fingerprint its series is found by (`series::Mix`, as for the RED series).
    pub fn fingerprint(&self) -> u64 {
        let mut h = series::Mix::new(0);
        h.bytes(self.client.as_bytes());
        h.bytes(self.server.as_bytes());
        h.bytes(self.connection_type.as_bytes());
        h.finish()
    }
}

/// A request counted on an edge, with the durations its ends saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub edge: Edge,
    pub failed: bool,
    pub client_seconds: Option<f64>,
    pub server_seconds: Option<f64>,
}

#[derive(Debug)]
struct ClientHalf {
    /// When it started waiting.
    at: Instant,
    service: SmolStr,
    /// The server as named by address, should no SERVER span pair with this one.
    server_address: SmolStr,
    seconds: f64,
    failed: bool,
}

#[derive(Debug)]
struct ServerHalf {
    at: Instant,
    service: SmolStr,
    client_address: SmolStr,
    seconds: f64,
    failed: bool,
}

/// Pairs CLIENT and SERVER spans into requests on edges.
#[derive(Debug, Default)]
pub struct Pairing {
    /// CLIENT spans by span id, waiting for the SERVER span linked under them.
    clients: HashMap<[u8; 8], ClientHalf>,
    /// SERVER spans by parent span id, waiting for their CLIENT span.
    servers: HashMap<[u8; 8], ServerHalf>,
    /// Halves counted alone because the waiting table was full.
    pub unpaired_full: u64,
}

fn address_name(span: &Span, addr: &str, port: Option<&str>) -> SmolStr {
    let host = span.attr_str(addr).unwrap_or("unknown");
    match port {
        Some(p) => match span.attr(p) {
            Some(crate::trace::Value::Int(n)) => {
                crate::trace::concat(&[host, ":", itoa::Buffer::new().format(*n)])
            }
            _ => SmolStr::new(host),
        },
        None => SmolStr::new(host),
    }
}

impl Pairing {
    /// Takes one span; requests it completes are appended to `out`.
    pub fn observe(&mut self, span: &Span, service: SmolStr, now: Instant, out: &mut Vec<Request>) {
        let secs = seconds(span);
        let failed = span.status == Status::Error;
        match span.kind {
            SpanKind::Server => {
                let half = ServerHalf {
                    at: now,
                    service,
                    client_address: address_name(span, "client.address", None),
                    seconds: secs,
                    failed,
                };
                let parent = span.parent_span_id.filter(|_| span.link == Link::Peer);
                match parent {
                    Some(p) => match self.clients.remove(&p) {
                        Some(c) => out.push(paired(c, half)),
                        None if self.servers.len() < MAX_WAITING => {
                            self.servers.insert(p, half);
                        }
                        None => {
                            self.unpaired_full += 1;
                            out.push(server_alone(half));
                        }
                    },
                    None => out.push(server_alone(half)),
                }
            }
            SpanKind::Client => {
                let database = span.attr("db.system.name").is_some();
                let half = ClientHalf {
                    at: now,
                    service,
                    server_address: address_name(span, "server.address", Some("server.port")),
                    seconds: secs,
                    failed,
                };
                if database {
                    // The agent reads database protocols from the client's side only: no
                    // SERVER span will come.
                    out.push(client_alone(half, "database"));
                } else if let Some(s) = self.servers.remove(&span.span_id) {
                    out.push(paired(half, s));
                } else if self.clients.len() < MAX_WAITING {
                    self.clients.insert(span.span_id, half);
                } else {
                    self.unpaired_full += 1;
                    out.push(client_alone(half, ""));
                }
            }
        }
    }

    /// Counts alone the halves that waited longer than [`PAIR_WAIT`]. A scan of both tables
    /// (at most `2 × MAX_WAITING` entries, once a second) keeps memory bounded by the
    /// tables alone, however fast pairs complete.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Request>) {
        if self.waiting() == 0 {
            return;
        }
        let old = |at: Instant| now.saturating_duration_since(at) >= PAIR_WAIT;
        out.extend(
            self.clients
                .extract_if(|_, c| old(c.at))
                .map(|(_, c)| client_alone(c, "")),
        );
        out.extend(
            self.servers
                .extract_if(|_, s| old(s.at))
                .map(|(_, s)| server_alone(s)),
        );
    }

    /// Counts every waiting half alone (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<Request>) {
        out.extend(self.clients.drain().map(|(_, c)| client_alone(c, "")));
        out.extend(self.servers.drain().map(|(_, s)| server_alone(s)));
    }

    /// Halves waiting for their pair.
    pub fn waiting(&self) -> usize {
        self.clients.len() + self.servers.len()
    }
}

fn paired(c: ClientHalf, s: ServerHalf) -> Request {
    Request {
        edge: Edge {
            client: c.service,
            server: s.service,
            connection_type: "",
        },
        failed: c.failed || s.failed,
        client_seconds: Some(c.seconds),
        server_seconds: Some(s.seconds),
    }
}

fn client_alone(c: ClientHalf, connection_type: &'static str) -> Request {
    Request {
        edge: Edge {
            client: c.service,
            server: c.server_address,
            connection_type,
        },
        failed: c.failed,
        client_seconds: Some(c.seconds),
        server_seconds: None,
    }
}

fn server_alone(s: ServerHalf) -> Request {
    Request {
        edge: Edge {
            client: s.client_address,
            server: s.service,
            connection_type: "",
        },
        failed: s.failed,
        client_seconds: None,
        server_seconds: Some(s.seconds),
    }
}

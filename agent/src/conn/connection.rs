//! One connection: its two byte streams, its role, and the protocol parser its first bytes
//! chose ([`crate::protocol::detect`]). A connection the agent does not parse (unknown
//! protocol, TLS, a tunnel, a database seen from the server's side) is marked so that the
//! kernel stops shipping its bytes.

use super::{Peer, Role, Stream};
use crate::{
    capture::Direction,
    protocol::{
        Record,
        detect::{self, Hint, Protocol},
        http1::Http1,
        http2::Http2,
        mysql::Mysql,
        postgres::Postgres,
        redis::Redis,
    },
    stats::Stats,
    tls::hello::{self, Hello, Version},
};
use agent_common::{IGNORE_SOCKET, IGNORE_TLS};

/// Syscall starts examined on a connection first seen mid-stream before giving up on it.
const MAX_DETECT_TRIES: u8 = 8;

/// Protocol state of a connection.
#[derive(Debug)]
pub(super) enum Proto {
    /// Not yet known; `tries` counts syscall starts that matched nothing.
    Detecting {
        tries: u8,
    },
    Http1(Box<Http1>),
    Http2(Box<Http2>),
    Postgres(Box<Postgres>),
    Mysql(Box<Mysql>),
    Redis(Box<Redis>),
    /// TLS seen from the socket, waiting for the ServerHello's version before giving up the
    /// ciphertext.
    Tls,
    /// Not a protocol the agent parses: its bytes are dropped on arrival.
    Other,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) role: Option<Role>,
    /// Seen from its start (accept/connect), so its first bytes start a message.
    pub(super) from_start: bool,
    pub(super) peer: Peer,
    pub(super) ingress: Stream,
    pub(super) egress: Stream,
    pub(super) proto: Proto,
    pub(super) last_ns: u64,
    /// `IGNORE_*` bits the kernel was given for this connection.
    pub(super) ignored: u8,
    /// Bytes come from the TLS probes (plaintext); the socket's own bytes are ciphertext.
    pub(super) tls: bool,
    /// The TLS version the server chose, from the ServerHello seen on the socket.
    pub(super) tls_version: Option<Version>,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        role: Option<Role>,
        from_start: bool,
        peer: Peer,
        limit: usize,
        now: u64,
    ) -> Self {
        Conn {
            id,
            role,
            from_start,
            peer,
            ingress: Stream::new(limit),
            egress: Stream::new(limit),
            proto: Proto::Detecting { tries: 0 },
            last_ns: now,
            ignored: 0,
            tls: false,
            tls_version: None,
        }
    }

    /// The first plaintext from the TLS probes: parsing starts again on it. Whatever the socket
    /// showed (a handshake, ciphertext) is dropped, and so is any socket data from now on.
    pub(super) fn start_tls(&mut self) {
        self.tls = true;
        self.proto = Proto::Detecting { tries: 0 };
        self.ingress.clear();
        self.egress.clear();
    }

    /// The `IGNORE_*` bits the kernel should have: the socket's bytes once they are ciphertext
    /// or of an unparsed protocol, the TLS plaintext once it is of an unparsed protocol.
    pub(super) fn wanted_ignore(&self) -> u8 {
        let other = self.is_other();
        let mut bits = 0;
        if other || self.tls {
            bits |= IGNORE_SOCKET;
        }
        if other && self.tls {
            bits |= IGNORE_TLS;
        }
        bits
    }

    /// True once the connection's bytes are of no use.
    pub(super) fn is_other(&self) -> bool {
        matches!(self.proto, Proto::Other)
    }

    /// Runs the parser on what arrived.
    pub(super) fn process(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if let Proto::Detecting { .. } = self.proto {
            self.detect(stats);
        }
        let (req, resp) = match self.role {
            Some(Role::Server) => (&mut self.ingress, &mut self.egress),
            Some(Role::Client) => (&mut self.egress, &mut self.ingress),
            None => return,
        };
        let next = match &mut self.proto {
            Proto::Http1(h) => {
                h.feed_requests(req, stats, out);
                h.feed_responses(resp, stats, out);
                if !h.is_tunnel() {
                    return;
                }
                match h.take_h2c() {
                    // The rest is HTTP/2, continuing the upgraded request on stream 1.
                    Some((id, request)) => Proto::Http2(Box::new(Http2::upgraded(id, request))),
                    None => Proto::Other,
                }
            }
            Proto::Http2(h) => {
                h.feed_requests(req, stats, out);
                h.feed_responses(resp, stats, out);
                return;
            }
            Proto::Postgres(p) => {
                p.feed_requests(req, stats, out);
                p.feed_responses(resp, stats, out);
                if !p.is_opaque() {
                    return;
                }
                Proto::Other
            }
            Proto::Mysql(m) => {
                m.feed_requests(req, stats, out);
                m.feed_responses(resp, stats, out);
                if !m.is_opaque() {
                    return;
                }
                Proto::Other
            }
            Proto::Redis(r) => {
                r.feed_requests(req, stats, out);
                r.feed_responses(resp, stats, out);
                if !r.is_finished() {
                    return;
                }
                // Subscribed or monitoring (its confirmation paired), or framing lost.
                Proto::Other
            }
            Proto::Tls => {
                // Wait for the ServerHello (read in pieces, possibly), within reason.
                if hello::server_hello_incomplete(resp.head()) && resp.available() < 16_384 {
                    return;
                }
                if let Some(Hello::Server(Some(v))) = hello::sniff(resp.head()) {
                    self.tls_version = Some(v);
                }
                tracing::debug!(conn = self.id, peer = %self.peer.remote, version = ?self.tls_version,
                    "TLS: plaintext only through the TLS probes");
                Proto::Other
            }
            Proto::Detecting { .. } | Proto::Other => return,
        };
        let switched = matches!(next, Proto::Http2(_));
        self.proto = next;
        if switched {
            self.process(stats, out);
        } else {
            self.ingress.clear();
            self.egress.clear();
        }
    }

    /// What the bytes at the front of one direction say (only at a syscall start).
    fn hint(&self, dir: Direction) -> Hint {
        let s = match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        if s.available() == 0 {
            Hint::Undecided
        } else if !s.at_syscall_start() || s.at_gap() {
            Hint::Nothing
        } else {
            detect::classify(s.head(), self.from_start)
        }
    }

    fn has_bytes(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.ingress.available() > 0,
            Direction::Egress => self.egress.available() > 0,
        }
    }

    /// Settles role and protocol from the first bytes.
    fn detect(&mut self, stats: &Stats) {
        loop {
            let (ingress, egress) = (self.hint(Direction::Ingress), self.hint(Direction::Egress));
            if self.role.is_none() {
                self.role = match (ingress.from_client(), egress.from_client()) {
                    (Some(true), _) | (_, Some(false)) => Some(Role::Server),
                    (_, Some(true)) | (Some(false), _) => Some(Role::Client),
                    _ => None,
                };
            }
            let Some(role) = self.role else {
                // Neither side says anything yet: forget bytes that cannot start a message.
                let mut skipped = false;
                for (dir, hint) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
                    if hint == Hint::Nothing {
                        if !self.reject(dir, stats) {
                            return;
                        }
                        skipped = true;
                    }
                }
                if skipped {
                    continue;
                }
                return;
            };
            let (req_dir, resp_dir) = match role {
                Role::Server => (Direction::Ingress, Direction::Egress),
                Role::Client => (Direction::Egress, Direction::Ingress),
            };
            let (requests, answers) = (self.hint(req_dir), self.hint(resp_dir));
            if let Some(p) = detect::decide(requests, answers, self.from_start) {
                tracing::debug!(conn = self.id, ?role, protocol = ?p, peer = %self.peer.remote, "protocol detected");
                if p.is_client_only() && role == Role::Server {
                    // The traced process is the database: its clients' spans are not its own.
                    return self.give_up(stats);
                }
                if !self.from_start && matches!(p, Protocol::Http1) {
                    // Responses seen before any request cannot be paired.
                    let s = match resp_dir {
                        Direction::Ingress => &mut self.ingress,
                        Direction::Egress => &mut self.egress,
                    };
                    s.clear();
                }
                self.proto = match p {
                    Protocol::Http1 => Proto::Http1(Box::default()),
                    Protocol::Http2 { from_start } => {
                        Proto::Http2(Box::new(Http2::new(from_start)))
                    }
                    Protocol::Postgres => Proto::Postgres(Box::new(Postgres::new(self.from_start))),
                    Protocol::Mysql => Proto::Mysql(Box::new(Mysql::new(self.from_start))),
                    Protocol::Redis => Proto::Redis(Box::default()),
                    Protocol::Tls if self.tls => return self.give_up(stats), // TLS in TLS
                    Protocol::Tls => Proto::Tls,
                };
                return;
            }
            // Nothing decided. Bytes that start nothing are skipped (mid-stream) or end the
            // attempt (from the start); otherwise wait for more.
            let request_bytes = self.has_bytes(req_dir);
            if request_bytes && requests == Hint::Nothing {
                if !self.reject(req_dir, stats) {
                    return;
                }
                continue;
            }
            // (An HTTP/2 server's SETTINGS before the client's preface is a reason to wait.)
            if self.has_bytes(resp_dir) && answers == Hint::Nothing {
                if self.from_start || !request_bytes {
                    // A server that speaks first in a protocol the agent does not parse, or
                    // answers to requests the agent did not see.
                    if !self.reject(resp_dir, stats) {
                        return;
                    }
                    continue;
                }
                // Mid-stream answers before any request: not pairable.
                let s = match resp_dir {
                    Direction::Ingress => &mut self.ingress,
                    Direction::Egress => &mut self.egress,
                };
                s.clear();
            }
            return;
        }
    }

    /// The syscall's bytes at the front of `dir` cannot begin a message. A connection seen from
    /// its start, or that has had `MAX_DETECT_TRIES`, is given up (false); otherwise those bytes
    /// are skipped (true).
    fn reject(&mut self, dir: Direction, stats: &Stats) -> bool {
        let Proto::Detecting { tries } = &mut self.proto else {
            return false;
        };
        *tries += 1;
        if self.from_start || *tries >= MAX_DETECT_TRIES {
            self.give_up(stats);
            return false;
        }
        let s = match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        };
        if !s.skip_to_next_syscall() {
            s.clear();
        }
        true
    }

    fn give_up(&mut self, stats: &Stats) {
        tracing::debug!(
            conn = self.id,
            peer = %self.peer.remote,
            ingress = ?self.hint(Direction::Ingress),
            egress = ?self.hint(Direction::Egress),
            "protocol not recognised: its bytes will no longer be shipped"
        );
        stats.inc(&stats.conns_unrecognized);
        self.proto = Proto::Other;
        self.ingress.clear();
        self.egress.clear();
    }

    /// The connection closed: parsers finish what closing finishes.
    pub(super) fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        match &mut self.proto {
            Proto::Http1(h) => h.close(stats, out),
            Proto::Http2(h) => h.close(stats, out),
            Proto::Postgres(p) => p.close(stats, out),
            Proto::Mysql(m) => m.close(stats, out),
            Proto::Redis(r) => r.close(stats, out),
            Proto::Detecting { .. } | Proto::Tls | Proto::Other => {}
        }
    }
}

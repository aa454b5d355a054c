//! Which protocol a connection speaks, from its first bytes (never from its port), and which
//! way its requests go when the agent did not see it open.
//!
//! Each direction's bytes at a syscall start are classified alone ([`classify`]); [`decide`]
//! combines the two with what is known of the connection (its role, whether it was seen from
//! its start). A connection that matches nothing is given up at once when seen from its start,
//! and after a few syscall starts otherwise.

use super::{http1, http2, mysql, postgres, redis};
use crate::tls::hello::{self, Hello, Version};

/// What one direction's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Too few bytes to tell.
    Undecided,
    /// Nothing the agent parses.
    Nothing,
    Http1Request,
    Http1Response,
    /// The HTTP/2 client preface.
    Http2Preface,
    /// HTTP/2 frames met mid-stream; `Some(true)` when its first HEADERS carries a request.
    Http2Frames(Option<bool>),
    /// PostgreSQL startup or SSL request (from the start) or a query message (mid-stream).
    Postgres,
    /// The MySQL server's greeting.
    MysqlGreeting,
    /// A MySQL client command (mid-stream).
    MysqlCommand,
    RedisCommand,
    /// A TLS ClientHello.
    TlsClientHello,
    /// A TLS ServerHello, with the version it selects when captured.
    TlsServerHello(Option<Version>),
    /// A TLS application-data record (a TLS connection met mid-stream).
    TlsRecord,
}

impl Hint {
    /// Whether these bytes travel from client to server (`Some(true)`), the other way
    /// (`Some(false)`), or cannot say.
    pub fn from_client(self) -> Option<bool> {
        match self {
            Hint::Http1Request
            | Hint::Http2Preface
            | Hint::Postgres
            | Hint::MysqlCommand
            | Hint::RedisCommand
            | Hint::TlsClientHello => Some(true),
            Hint::Http1Response | Hint::MysqlGreeting | Hint::TlsServerHello(_) => Some(false),
            Hint::Http2Frames(r) => r,
            Hint::Undecided | Hint::Nothing | Hint::TlsRecord => None,
        }
    }
}

/// The protocol chosen for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// `from_start`: the client preface is still to come.
    Http2 {
        from_start: bool,
    },
    Postgres,
    Mysql,
    Redis,
    /// TLS seen from the socket: ciphertext, whose plaintext (if the process's TLS library is
    /// probed) arrives from the TLS probes.
    Tls,
}

impl Protocol {
    /// Database and cache protocols, parsed from the client's side only.
    pub fn is_client_only(self) -> bool {
        matches!(self, Protocol::Postgres | Protocol::Mysql | Protocol::Redis)
    }
}

/// Classifies the bytes at the start of a syscall.
pub fn classify(b: &[u8], from_start: bool) -> Hint {
    if b.is_empty() {
        return Hint::Undecided;
    }
    if b.starts_with(http2::PREFACE) {
        return Hint::Http2Preface;
    }
    match hello::sniff(b) {
        Some(Hello::Client) => return Hint::TlsClientHello,
        Some(Hello::Server(v)) => return Hint::TlsServerHello(v),
        None => {}
    }
    if !from_start && matches!(b, [23, 3, 1..=4, ..]) {
        return Hint::TlsRecord;
    }
    if b.len() < http2::PREFACE.len() && http2::PREFACE.starts_with(b) {
        return Hint::Undecided;
    }
    match http1::looks_like(b) {
        http1::Looks::Request => return Hint::Http1Request,
        http1::Looks::Response => return Hint::Http1Response,
        http1::Looks::Undecided if b.len() < 8 => return Hint::Undecided,
        _ => {}
    }
    if redis::looks_like_command(b) {
        return Hint::RedisCommand;
    }
    if postgres::looks_like(b, from_start) {
        return Hint::Postgres;
    }
    if from_start && mysql::looks_like_greeting(b) {
        return Hint::MysqlGreeting;
    }
    if !from_start && mysql::looks_like_command(b) {
        return Hint::MysqlCommand;
    }
    // Mid-stream HTTP/2, or an HTTP/2 server's SETTINGS sent before it read the preface.
    if http2::looks_like_frames(b) {
        return Hint::Http2Frames(http2::first_headers_is_request(b));
    }
    if b.len() < 8 {
        return Hint::Undecided;
    }
    Hint::Nothing
}

/// What the two directions say together, seen from the direction that carries requests.
/// `requests` and `answers` are the hints of the client→server and server→client directions.
pub fn decide(requests: Hint, answers: Hint, from_start: bool) -> Option<Protocol> {
    match (requests, answers) {
        (Hint::Http1Request, _) => Some(Protocol::Http1),
        (Hint::Http2Preface, _) => Some(Protocol::Http2 { from_start: true }),
        (Hint::Http2Frames(_), _) if !from_start => Some(Protocol::Http2 { from_start: false }),
        (Hint::Postgres, _) => Some(Protocol::Postgres),
        (Hint::MysqlCommand, _) | (_, Hint::MysqlGreeting) => Some(Protocol::Mysql),
        (Hint::RedisCommand, _) => Some(Protocol::Redis),
        (Hint::TlsClientHello | Hint::TlsRecord, _) | (_, Hint::TlsServerHello(_)) => {
            Some(Protocol::Tls)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_protocol() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            Hint::Http1Request
        );
        assert_eq!(classify(b"HTTP/1.1 200 OK\r\n", false), Hint::Http1Response);
        assert_eq!(classify(http2::PREFACE, true), Hint::Http2Preface);
        assert_eq!(classify(b"PRI * HTTP/2", true), Hint::Undecided);
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n", true), Hint::RedisCommand);
        let startup = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(classify(&startup, true), Hint::Postgres);
        assert_eq!(classify(b"Q\0\0\0\x0dselect 1\0", false), Hint::Postgres);
        let greeting = b"\x4a\0\0\0\x0a8.0.36\0\x07\0\0\0saltsalt\0";
        assert_eq!(classify(greeting, true), Hint::MysqlGreeting);
        assert_eq!(
            classify(b"\x09\0\0\0\x03select 1", false),
            Hint::MysqlCommand
        );
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", true),
            Hint::TlsClientHello
        );
        assert_eq!(
            classify(b"\x17\x03\x03\x00\x20abcdefgh", false),
            Hint::TlsRecord
        );
        assert_eq!(
            classify(b"\x17\x03\x03\x00\x20abcdefgh", true),
            Hint::Nothing
        );
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2p1\r\n", true), Hint::Nothing);
        assert_eq!(classify(b"", true), Hint::Undecided);
    }

    #[test]
    fn decisions() {
        assert_eq!(
            decide(Hint::Undecided, Hint::MysqlGreeting, true),
            Some(Protocol::Mysql)
        );
        assert_eq!(
            decide(Hint::Http1Request, Hint::Undecided, true),
            Some(Protocol::Http1)
        );
        assert_eq!(
            decide(Hint::Http2Frames(Some(true)), Hint::Undecided, true),
            None,
            "frames without a preface on a connection seen from its start"
        );
        assert_eq!(decide(Hint::Nothing, Hint::Nothing, true), None);
        // An HTTP/2 server speaks first (SETTINGS): wait for the client's preface.
        let settings = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64";
        assert_eq!(classify(settings, true), Hint::Http2Frames(None));
        assert_eq!(decide(Hint::Undecided, Hint::Http2Frames(None), true), None);
        assert!(Protocol::Redis.is_client_only());
        assert_eq!(Hint::MysqlGreeting.from_client(), Some(false));
    }
}

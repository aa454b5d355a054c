//! HTTP messages as both HTTP/1.x and HTTP/2 parsers report them, so that `trace` names and
//! describes them the same way whatever the wire format (gRPC included: it is HTTP/2 with
//! `content-type: application/grpc` and its status in the trailers).

use crate::{conn::SyscallTime, trace::propagation::Carrier};

/// Header fields of a message, names as sent (HTTP/2 names are lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// First value of a header, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A stable hash of a request head's fields (method, target, header fields in order): the
    /// two ends of one connection compute the same value for the same request.
    pub fn fingerprint(method: &str, target: &str, headers: &Headers) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        method.hash(&mut h);
        target.hash(&mut h);
        headers.0.hash(&mut h);
        h.finish()
    }
}

impl Carrier for Headers {
    fn values<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The HTTP version a message was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    Http2,
}

impl Version {
    /// `network.protocol.version`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
            Version::Http2 => "2",
        }
    }
}

/// A request as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target (path and query, or an absolute URI for proxies); `:path` in HTTP/2.
    pub target: String,
    pub version: Version,
    /// Header fields; in HTTP/2 `:authority` is reported as `host` when no `host` is sent.
    pub headers: Headers,
    /// Syscall that carried the first byte.
    pub first: SyscallTime,
    /// Syscall that carried the last byte seen.
    pub last: SyscallTime,
    pub body_len: u64,
}

/// A response as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// 0 when the status could not be decoded (HTTP/2 header state unknown).
    pub status: u16,
    pub version: Version,
    pub headers: Headers,
    /// HTTP/2 trailers (gRPC carries its status there).
    pub trailers: Headers,
    pub first: SyscallTime,
    pub last: SyscallTime,
    pub body_len: u64,
    /// HTTP/2: the stream was reset with this error code before the response ended.
    pub reset: Option<u32>,
}

/// A request and the response that answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Request,
    pub response: Response,
}

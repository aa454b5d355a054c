//! HTTP messages as both HTTP/1.x and HTTP/2 parsers report them, so that `trace` names and
//! describes them the same way whatever the wire format (gRPC included: it is HTTP/2 with
//! `content-type: application/grpc` and its status in the trailers).

use smol_str::SmolStr;

use crate::{conn::SyscallTime, trace::propagation::Carrier};

/// Header fields of a message, names as sent (HTTP/2 names are lowercase). Kept in one string
/// with the fields' end offsets: two allocations per message instead of two per field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every name and value, back to back.
    text: String,
    /// Where each field's name and value end in `text`; a field starts where the last ended.
    ends: Vec<(u32, u32)>,
}

impl Headers {
    /// Room for `fields` fields of `bytes` bytes in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len() as u32;
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len() as u32));
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(name_end, end)| {
            let (n, e) = (name_end as usize, end as usize);
            let field = (&self.text[start..n], &self.text[n..e]);
            start = e;
            field
        })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// First value of a header, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// A stable hash of a request head (method, target, header fields in order): the two ends of one
/// connection compute the same value for the same request, which links their spans. The fields
/// are bytes, so that HTTP/1 hashes its parsed head without copying it into `Headers`.
pub fn fingerprint<'a>(
    method: &str,
    target: &str,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    // A fixed seed: both ends of a connection are hashed by this agent, within one run.
    let mut h = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    method.hash(&mut h);
    target.hash(&mut h);
    for field in fields {
        field.hash(&mut h);
    }
    h.finish()
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Headers::default();
        for (n, v) in fields {
            headers.push(n.as_ref(), v.as_ref());
        }
        headers
    }
}

impl Carrier for Headers {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_order_and_bounds() {
        let h: Headers = [("Host", "a:1"), ("", ""), ("X-Empty", ""), ("host", "b")]
            .into_iter()
            .collect();
        assert_eq!(h.len(), 4);
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("Host", "a:1"), ("", ""), ("X-Empty", ""), ("host", "b")]
        );
        assert_eq!(h.get("HOST"), Some("a:1"));
        assert_eq!(h.get("x-empty"), Some(""));
        assert_eq!(h.values("host").collect::<Vec<_>>(), ["a:1", "b"]);
        assert_eq!(h.get("missing"), None);
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
    pub method: SmolStr,
    /// The request target (path and query, or an absolute URI for proxies); `:path` in HTTP/2.
    /// Most targets fit a `SmolStr` inline, saving an allocation per request.
    pub target: SmolStr,
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

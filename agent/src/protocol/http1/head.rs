//! Message heads: recognising where a message starts, parsing request heads with `httparse`,
//! and reading response heads for their status and framing (`scan_response`).

use std::{mem::MaybeUninit, ops::ControlFlow};

use smol_str::SmolStr;

use super::{
    body::{chunked_coding, length_value},
    headers_from,
    lines::line_ends,
    request_field,
};
use crate::{
    conn::{Stream, SyscallTime},
    protocol::http::{self, Headers, Request, Response, Version},
};

fn version(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    }
}

/// Largest head accepted; a longer one is treated as lost framing.
pub(super) const MAX_HEAD: usize = 32 * 1024;
/// Most headers kept per message.
pub(super) const MAX_HEADERS: usize = 64;

/// What the start of some bytes looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looks {
    Request,
    Response,
    /// Too short to tell yet.
    Undecided,
    NotHttp,
}

/// Classifies the first bytes of a stream.
pub fn looks_like(buf: &[u8]) -> Looks {
    let trimmed = trim_leading_crlf(buf);
    if trimmed.is_empty() {
        return Looks::Undecided;
    }
    const RESP: &[u8] = b"HTTP/1.";
    if trimmed.len() < RESP.len() && RESP.starts_with(trimmed) {
        return Looks::Undecided;
    }
    if trimmed.starts_with(RESP) {
        return Looks::Response;
    }
    let mut headers = no_headers();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(trimmed, &mut headers) {
        Ok(httparse::Status::Complete(_)) => Looks::Request,
        Ok(httparse::Status::Partial) => {
            // A partial parse is only trusted once the method and a space are there.
            match trimmed.iter().position(|&b| b == b' ') {
                Some(sp) if sp > 0 && trimmed[..sp].iter().all(|b| b.is_ascii_uppercase()) => {
                    Looks::Request
                }
                None if trimmed.len() < 16 && trimmed.iter().all(|b| b.is_ascii_uppercase()) => {
                    Looks::Undecided
                }
                _ => Looks::NotHttp,
            }
        }
        Err(httparse::Error::TooManyHeaders) => Looks::Request,
        Err(_) => Looks::NotHttp,
    }
}

/// Room for the fields of a head, left uninitialised: the parser writes those it finds, and
/// zeroing 64 of them first (2 KiB) was ~5% of the userspace cost of an HTTP/1 exchange.
fn no_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

fn trim_leading_crlf(buf: &[u8]) -> &[u8] {
    let n = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    &buf[n..]
}

/// Outcome of trying to parse one head.
pub(super) enum HeadResult<T> {
    Done(T, usize),
    NeedMore,
    Invalid,
}

/// Checks the head bytes at the front of `s` and decides whether to wait, give up or parse.
fn head_bytes(s: &Stream) -> Option<&[u8]> {
    let head = s.head();
    if head.is_empty() {
        return None; // in a gap
    }
    Some(head)
}

/// `NeedMore` unless the head can never complete (gap right after it, or too long).
fn need_more_or_invalid<T>(s: &Stream, head_len: usize) -> HeadResult<T> {
    if (head_len as u64) < s.available() || head_len > MAX_HEAD {
        HeadResult::Invalid
    } else {
        HeadResult::NeedMore
    }
}

/// Syscalls that carried the first and the last byte of a head ending `n` bytes after `pos`,
/// after `skipped` blank-line bytes.
fn head_times(s: &Stream, skipped: usize, n: usize) -> (SyscallTime, SyscallTime) {
    let time = |off: u64| s.time_at(off).unwrap_or_default();
    (time(s.pos() + skipped as u64), time(s.pos() + n as u64 - 1))
}

/// A request head, with the fingerprint of all its fields (it keeps only those the agent reads)
/// and its framing.
pub(super) fn parse_request(s: &Stream) -> HeadResult<(Request, u64, Framed)> {
    let Some(head) = head_bytes(s) else {
        return HeadResult::Invalid;
    };
    let mut headers = no_headers();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) => {
            let skipped = head.len() - trim_leading_crlf(head).len();
            let (first, last) = head_times(s, skipped, n);
            let (method, target) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
            let request = Request {
                method: SmolStr::new(method),
                target: SmolStr::new(target),
                version: version(req.version),
                headers: headers_from(req.headers, request_field),
                first,
                last,
                body_len: 0,
            };
            // Every field counts, values without surrounding whitespace, hashed from the
            // parser's slices: most are never copied.
            let fields = req.headers.iter().take(MAX_HEADERS);
            let fields = fields.map(|f| (f.name.as_bytes(), f.value.trim_ascii()));
            let fingerprint = http::fingerprint(method, target, fields);
            HeadResult::Done((request, fingerprint, Framed::of(req.headers)), n)
        }
        Ok(httparse::Status::Partial) => need_more_or_invalid(s, head.len()),
        Err(_) => HeadResult::Invalid,
    }
}

/// What a head's fields say that the parser acts on: how its body is framed and, for a response,
/// whether it switches to h2c. Read from the parsed fields in one pass, so that neither side
/// copies its framing fields: a response keeps no fields at all, as nothing after its framing
/// reads them (copying the few it needed cost two allocations, a UTF-8 check and two look-ups
/// per response, ~4% of the userspace work per request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Framed {
    /// A `Transfer-Encoding` whose last coding is `chunked`.
    pub chunked: bool,
    /// The first `Content-Length`, when it is a number.
    pub content_length: Option<u64>,
    /// The first `Upgrade` is `h2c`.
    pub h2c: bool,
}

impl Framed {
    pub(super) fn of(fields: &[httparse::Header<'_>]) -> Self {
        let mut read = FramingFields::default();
        for f in fields.iter().take(MAX_HEADERS) {
            read.field(f.name.as_bytes(), || f.value);
        }
        read.out
    }
}

/// Reads the framing fields of a head one field at a time: the first `Content-Length` and the
/// first `Upgrade` decide, and every `Transfer-Encoding` counts.
#[derive(Default)]
struct FramingFields {
    out: Framed,
    length_seen: bool,
    upgrade_seen: bool,
}

impl FramingFields {
    /// One field; `value` (surrounding whitespace included) is looked at only for the names
    /// that matter.
    fn field<'a>(&mut self, name: &[u8], value: impl FnOnce() -> &'a [u8]) {
        let value = || value().trim_ascii();
        // The length picks the one name to compare.
        match name.len() {
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.out.chunked |= chunked_coding(value());
            }
            14 if !self.length_seen && name.eq_ignore_ascii_case(b"content-length") => {
                self.length_seen = true;
                self.out.content_length = length_value(value());
            }
            7 if !self.upgrade_seen && name.eq_ignore_ascii_case(b"upgrade") => {
                self.upgrade_seen = true;
                self.out.h2c = value().eq_ignore_ascii_case(b"h2c");
            }
            _ => {}
        }
    }
}

/// A response head as the agent reads it: its status, version and framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatusHead {
    pub status: u16,
    pub version: Version,
    pub framed: Framed,
}

/// Reads a response head (after any blank lines) for its status line and framing fields only.
///
/// Why not `httparse`: a response keeps none of its fields, yet validating every byte of every
/// name and value as a token cost ~2,000 instructions per nginx response, a tenth of the
/// agent's work per request. This scan checks the status line, finds the line ends a block at a
/// time (`lines`), and looks closer only at fields whose first letter may start a framing name:
/// the whole head costs ~1,200 instructions where it cost ~2,900. It is lenient where `httparse` is strict (control bytes in a value, a space before a colon,
/// obsolete line folding): the client the agent watches accepted the response, so a head it
/// took is better measured than refused. Bare `\n` line ends are accepted, as by `httparse`.
pub(super) fn scan_response(buf: &[u8]) -> HeadResult<StatusHead> {
    let mut status = None;
    let mut read = FramingFields::default();
    let mut start = 0;
    let end = line_ends(buf, |eol| {
        let line = strip_cr(&buf[start..eol]);
        start = eol + 1;
        let Some((code, version)) = status else {
            status = status_line(line, true);
            return match status {
                Some(_) => ControlFlow::Continue(()),
                None => ControlFlow::Break(HeadResult::Invalid),
            };
        };
        let Some(&first) = line.first() else {
            let framed = read.out;
            let head = StatusHead {
                status: code,
                version,
                framed,
            };
            return ControlFlow::Break(HeadResult::Done(head, start));
        };
        // `Transfer-Encoding`, `Content-Length` and `Upgrade` only: most fields stop at their
        // first letter, the others at the byte where the colon would be.
        let name_len = match first | 0x20 {
            b't' => 17,
            b'c' => 14,
            b'u' => 7,
            _ => return ControlFlow::Continue(()),
        };
        if line.get(name_len) == Some(&b':') {
            read.field(&line[..name_len], || &line[name_len + 1..]);
        }
        ControlFlow::Continue(())
    });
    match end {
        Some(result) => result,
        None if status.is_some() || status_line(buf, false).is_some() => HeadResult::NeedMore,
        None => HeadResult::Invalid,
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x NNN[ reason]`: the status and version, or `None` when the line is not one. Of an
/// incomplete line (`complete` false), only the bytes there are are checked.
fn status_line(line: &[u8], complete: bool) -> Option<(u16, Version)> {
    const PATTERN: &[u8; 12] = b"HTTP/1.d ddd";
    if !complete {
        let fits = line.iter().zip(PATTERN).all(|(&b, &p)| match p {
            b'd' => b.is_ascii_digit(),
            _ => b == p,
        });
        return fits.then_some((0, Version::Http11));
    }
    let (start, reason) = line.split_first_chunk::<12>()?;
    let digit = |i: usize| {
        start[i]
            .is_ascii_digit()
            .then(|| u16::from(start[i] - b'0'))
    };
    if !start.starts_with(b"HTTP/1.")
        || start[8] != b' '
        || reason.first().is_some_and(|&b| b != b' ')
    {
        return None;
    }
    let minor = digit(7)?;
    let status = digit(9)? * 100 + digit(10)? * 10 + digit(11)?;
    Some((status, version(Some(minor as u8))))
}

pub(super) fn parse_response(s: &Stream) -> HeadResult<(Response, Framed)> {
    let Some(head) = head_bytes(s) else {
        return HeadResult::Invalid;
    };
    let skipped = head.len() - trim_leading_crlf(head).len();
    match scan_response(&head[skipped..]) {
        HeadResult::Done(h, n) => {
            let n = n + skipped;
            let (first, last) = head_times(s, skipped, n);
            let response = Response {
                status: h.status,
                version: h.version,
                headers: Headers::default(),
                trailers: Headers::default(),
                reset: None,
                first,
                last,
                body_len: 0,
            };
            HeadResult::Done((response, h.framed), n)
        }
        HeadResult::NeedMore => need_more_or_invalid(s, head.len()),
        HeadResult::Invalid => HeadResult::Invalid,
    }
}

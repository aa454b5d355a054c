//! Message bodies: framing rules (RFC 9112 §6.3) and the per-direction state that reads a body
//! by count, through chunked coding and through gaps.

use super::head::{Framed, Looks, MAX_HEAD, looks_like};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
    /// After 101 or a successful CONNECT: the bytes are no longer HTTP/1.
    Tunnel,
}

/// Where a side is within its current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Head,
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    ChunkEnd {
        remaining: u64,
    },
    Trailers,
    UntilClose,
    /// Framing lost: waiting for a syscall whose data starts a new message.
    Lost,
    /// Not HTTP/1 any more (upgrade, tunnel).
    Tunnel,
}

/// Framing state of one direction.
#[derive(Debug)]
pub(super) struct Side {
    pub(super) phase: Phase,
    /// Syscall that carried the last byte read of the message in progress.
    pub(super) last: SyscallTime,
    /// Body bytes read so far of the message in progress.
    pub(super) body: u64,
}

/// What reading a body came to.
pub(super) enum BodyProgress {
    Done,
    NeedMore,
    /// Framing lost; the side is now `Lost`.
    Lost,
}

impl Side {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Head,
            last: SyscallTime::default(),
            body: 0,
        }
    }

    /// Starts reading the body of a message whose head was just parsed.
    pub(super) fn start_body(&mut self, framing: Framing) {
        self.body = 0;
        self.phase = match framing {
            Framing::Empty | Framing::Length(0) => Phase::Head,
            Framing::Length(n) => Phase::Body { remaining: n },
            Framing::Chunked => Phase::ChunkSize,
            Framing::UntilClose => Phase::UntilClose,
            Framing::Tunnel => Phase::Tunnel,
        };
    }

    /// The head is unreadable or the framing broke: the rest of this syscall's bytes belong to
    /// the broken message.
    pub(super) fn lose(&mut self, s: &mut Stream, stats: &Stats) {
        stats.inc(&stats.http_resyncs);
        self.phase = Phase::Lost;
        lose(s, &mut self.last);
    }

    pub(super) fn advance(&mut self, s: &mut Stream, stats: &Stats) -> BodyProgress {
        let (phase, done) = advance_body(self.phase, s, &mut self.last, &mut self.body);
        self.phase = phase;
        if done {
            BodyProgress::Done
        } else if phase == Phase::Lost {
            self.lose(s, stats);
            BodyProgress::Lost
        } else {
            BodyProgress::NeedMore
        }
    }

    /// In `Lost`: consumes bytes until a syscall's data starts a message that looks like
    /// `wanted`. Returns true when one was found (the phase is then `Head`).
    pub(super) fn resync(&mut self, s: &mut Stream, wanted: Looks) -> bool {
        loop {
            if s.at_syscall_start() {
                match looks_like(s.head()) {
                    l if l == wanted => {
                        self.phase = Phase::Head;
                        return true;
                    }
                    Looks::Undecided if !s.at_gap() && s.head().len() as u64 == s.available() => {
                        return false;
                    }
                    _ => {}
                }
            }
            lose(s, &mut self.last);
            if s.available() == 0 {
                return false;
            }
        }
    }
}

/// Moves through a body, adding to `body` and updating `last` (the syscall of the last byte
/// read); returns the new phase and whether the body is complete.
fn advance_body(
    mut phase: Phase,
    s: &mut Stream,
    last: &mut SyscallTime,
    body: &mut u64,
) -> (Phase, bool) {
    loop {
        match phase {
            Phase::Body { remaining } | Phase::ChunkData { remaining } => {
                let n = take(s, remaining, last);
                if n == 0 {
                    return (phase, false);
                }
                *body += n;
                let left = remaining - n;
                phase = match (phase, left) {
                    (Phase::Body { .. }, 0) => return (Phase::Head, true),
                    (Phase::Body { .. }, _) => Phase::Body { remaining: left },
                    (_, 0) => Phase::ChunkEnd { remaining: 2 },
                    (_, _) => Phase::ChunkData { remaining: left },
                };
                if left > 0 {
                    return (phase, false);
                }
            }
            Phase::ChunkEnd { remaining } => {
                let n = take(s, remaining, last);
                if n == 0 {
                    return (phase, false);
                }
                let left = remaining - n;
                if left > 0 {
                    return (Phase::ChunkEnd { remaining: left }, false);
                }
                phase = Phase::ChunkSize;
            }
            Phase::ChunkSize | Phase::Trailers => {
                if s.at_gap() {
                    return (Phase::Lost, false);
                }
                let head = s.head();
                let max = if phase == Phase::ChunkSize {
                    MAX_CHUNK_LINE
                } else {
                    MAX_HEAD
                };
                let Some(eol) = find_crlf(head) else {
                    if head.len() > max || (head.len() as u64) < s.available() {
                        return (Phase::Lost, false);
                    }
                    return (phase, false);
                };
                let next = if phase == Phase::Trailers {
                    (eol == 0).then_some(Phase::Head)
                } else {
                    match parse_chunk_size(&head[..eol]) {
                        None => return (Phase::Lost, false),
                        Some(0) => Some(Phase::Trailers),
                        Some(size) => Some(Phase::ChunkData { remaining: size }),
                    }
                };
                if let Some(t) = s.time_at(s.pos() + eol as u64 + 1) {
                    *last = t;
                }
                s.consume(eol as u64 + 2);
                match next {
                    Some(Phase::Head) => return (Phase::Head, true),
                    Some(p) => phase = p,
                    None => {} // a trailer field line: keep reading trailers
                }
            }
            Phase::UntilClose => {
                *body += take(s, s.available(), last);
                return (phase, false);
            }
            Phase::Head | Phase::Lost | Phase::Tunnel => return (phase, false),
        }
    }
}

/// Consumes up to `want` bytes (captured or not), noting the syscall that carried the last one;
/// returns how many were consumed.
fn take(s: &mut Stream, want: u64, last: &mut SyscallTime) -> u64 {
    let n = want.min(s.available());
    if n > 0 {
        if let Some(t) = s.time_at(s.pos() + n - 1) {
            *last = t;
        }
        s.consume(n);
    }
    n
}

/// Entering `Lost`: the rest of the current syscall's bytes belong to the broken message.
fn lose(s: &mut Stream, last: &mut SyscallTime) {
    if let Some(t) = s.time_at(s.pos()) {
        *last = t;
    }
    if !s.skip_to_next_syscall() {
        s.clear();
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Whether a `Transfer-Encoding` value ends in the `chunked` coding.
pub(super) fn chunked_coding(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Length` value (`1*DIGIT`, RFC 9110 §8.6), when it is one that fits a `u64`.
/// Read digit by digit: a UTF-8 check and `str::parse` cost three times as much, once per
/// message.
pub(super) fn length_value(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// RFC 9112 §6.3 for requests: chunked, else Content-Length, else no body.
pub(super) fn request_framing(fields: &Framed) -> Framing {
    by_fields(fields, Framing::Empty)
}

/// Chunked, else `Content-Length`, else `otherwise`: the last steps of RFC 9112 §6.3 for both
/// sides.
fn by_fields(fields: &Framed, otherwise: Framing) -> Framing {
    if fields.chunked {
        Framing::Chunked
    } else {
        fields.content_length.map_or(otherwise, Framing::Length)
    }
}

/// RFC 9112 §6.3 for responses, which depend on the request method.
pub(super) fn response_framing(method: &str, status: u16, fields: &Framed) -> Framing {
    if status == 101 || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status)) {
        return Framing::Tunnel;
    }
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Framing::Empty;
    }
    by_fields(fields, Framing::UntilClose)
}

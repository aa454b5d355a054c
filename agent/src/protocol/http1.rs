//! HTTP/1.0 and HTTP/1.1: heads parsed with `httparse`, bodies framed by `Content-Length`,
//! chunked transfer coding or connection close (RFC 9112 §6), keep-alive and pipelining, and
//! requests paired with responses strictly in order.
//!
//! Bodies are skipped by count, so bytes the kernel did not capture (gaps) are no obstacle.
//! When framing is lost (a chunk-size line inside a gap, garbage), the side enters `Lost`: the
//! message ends at the last byte before the next syscall whose data starts a new message, or at
//! close. A response is never paired by guess: with no pending request it is counted and dropped,
//! and after a resync that may have skipped whole messages while other requests were waiting,
//! the connection is quarantined: pending requests are dropped (counted) and responses are not
//! paired until a new request is read while the response side is idle.

use std::collections::VecDeque;

use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

/// Largest head accepted; a longer one is treated as lost framing.
const MAX_HEAD: usize = 32 * 1024;
/// Most headers kept per message.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Pending requests kept per connection (pipelining depth).
const MAX_PENDING: usize = 64;

/// Header fields of a message, names as sent.
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

    fn from_parsed(headers: &[httparse::Header<'_>]) -> Self {
        Headers(
            headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect(),
        )
    }
}

/// A request as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target (path and query, or an absolute URI for proxies).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
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
    pub status: u16,
    pub minor_version: u8,
    pub headers: Headers,
    pub first: SyscallTime,
    pub last: SyscallTime,
    pub body_len: u64,
}

/// A request and the response that answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Request,
    pub response: Response,
}

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
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(trimmed) {
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

fn trim_leading_crlf(buf: &[u8]) -> &[u8] {
    let n = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    &buf[n..]
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
    /// After 101 or a successful CONNECT: the bytes are no longer HTTP/1.
    Tunnel,
}

/// Where a side is within its current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    id: u64,
    request: Request,
}

/// Framing state of one direction.
#[derive(Debug)]
struct Side {
    phase: Phase,
    /// Syscall that carried the last byte read of the message in progress.
    last: SyscallTime,
    /// Body bytes read so far of the message in progress.
    body: u64,
}

/// What reading a body came to.
enum BodyProgress {
    Done,
    NeedMore,
    /// Framing lost; the side is now `Lost`.
    Lost,
}

impl Side {
    fn new() -> Self {
        Self {
            phase: Phase::Head,
            last: SyscallTime::default(),
            body: 0,
        }
    }

    /// Starts reading the body of a message whose head was just parsed.
    fn start_body(&mut self, framing: Framing) {
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
    fn lose(&mut self, s: &mut Stream, stats: &Stats) {
        stats.inc(&stats.http_resyncs);
        self.phase = Phase::Lost;
        lose(s, &mut self.last);
    }

    fn advance(&mut self, s: &mut Stream, stats: &Stats) -> BodyProgress {
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
    fn resync(&mut self, s: &mut Stream, wanted: Looks) -> bool {
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

/// Parse state of one HTTP/1 connection (both directions).
#[derive(Debug)]
pub struct Http1 {
    req: Side,
    resp: Side,
    /// Id of the request whose body is being read, if any.
    req_current: Option<u64>,
    /// Response whose body is being read.
    resp_current: Option<Response>,
    pending: VecDeque<Pending>,
    next_id: u64,
    /// Pairing is uncertain after a resync: see the module documentation.
    quarantine: bool,
}

impl Default for Http1 {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of trying to parse one head.
enum HeadResult<T> {
    Done(T, usize),
    NeedMore,
    Invalid,
}

impl Http1 {
    pub fn new() -> Self {
        Self {
            req: Side::new(),
            resp: Side::new(),
            req_current: None,
            resp_current: None,
            pending: VecDeque::new(),
            next_id: 0,
            quarantine: false,
        }
    }

    /// True once the connection switched away from HTTP/1 (upgrade or tunnel).
    pub fn is_tunnel(&self) -> bool {
        self.resp.phase == Phase::Tunnel
    }

    /// Requests waiting for a response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Parses what the request side has. Requests are queued until their response arrives.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats) {
        while s.available() > 0 {
            match self.req.phase {
                Phase::Tunnel => s.clear(),
                Phase::Head => match parse_request(s) {
                    HeadResult::Done(request, consumed) => {
                        s.consume(consumed as u64);
                        self.queue_request(request, stats);
                    }
                    HeadResult::NeedMore => return,
                    HeadResult::Invalid => self.req.lose(s, stats),
                },
                Phase::Lost => {
                    if !self.req.resync(s, Looks::Request) {
                        return;
                    }
                    self.finish_request_body();
                    // Skipped bytes may have held whole requests: waiting ones lose their pair.
                    self.quarantine_if_pending(stats);
                }
                _ => match self.req.advance(s, stats) {
                    BodyProgress::Done => {
                        self.finish_request_body();
                        self.req.phase = Phase::Head;
                    }
                    BodyProgress::NeedMore => return,
                    BodyProgress::Lost => {}
                },
            }
        }
    }

    /// Queues a parsed request (unless pairing is quarantined) and starts on its body.
    fn queue_request(&mut self, request: Request, stats: &Stats) {
        let framing = request_framing(&request.headers);
        let connect = request.method.eq_ignore_ascii_case("CONNECT");
        self.req.last = request.last;
        let id = self.next_id;
        self.next_id += 1;
        if self.quarantine && self.pending.is_empty() && self.resp.phase == Phase::Head {
            self.quarantine = false;
        }
        if self.quarantine {
            stats.inc(&stats.requests_unanswered);
            self.req_current = None;
        } else {
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                stats.inc(&stats.requests_unanswered);
            }
            self.pending.push_back(Pending { id, request });
            self.req_current = Some(id);
        }
        // What follows a CONNECT is tunnelled once the proxy agrees (seen on the response).
        self.req
            .start_body(if connect { Framing::Empty } else { framing });
        if self.req.phase == Phase::Head {
            self.finish_request_body();
        }
    }

    /// Parses what the response side has; each complete response is paired with the oldest
    /// pending request and returned as an exchange.
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Exchange>) {
        while s.available() > 0 {
            match self.resp.phase {
                Phase::Tunnel => s.clear(),
                Phase::Head => match parse_response(s) {
                    HeadResult::Done(response, consumed) => {
                        s.consume(consumed as u64);
                        self.start_response(response, stats, out);
                    }
                    HeadResult::NeedMore => return,
                    HeadResult::Invalid => self.resp.lose(s, stats),
                },
                Phase::Lost => {
                    if !self.resp.resync(s, Looks::Response) {
                        return;
                    }
                    // The response whose head was parsed is certain; whatever else the skipped
                    // bytes held is not.
                    self.update_response();
                    self.complete_response(out);
                    // A skipped syscall can only have answered a request sent before it.
                    let skipped_until = self.resp.last.exit_ns;
                    if self
                        .pending
                        .iter()
                        .any(|p| p.request.first.enter_ns <= skipped_until)
                    {
                        self.quarantine_if_pending(stats);
                    }
                }
                _ => {
                    let progress = self.resp.advance(s, stats);
                    self.update_response();
                    match progress {
                        BodyProgress::Done => {
                            self.resp.phase = Phase::Head;
                            self.complete_response(out);
                        }
                        BodyProgress::NeedMore => return,
                        BodyProgress::Lost => {}
                    }
                }
            }
        }
    }

    /// A response head was parsed: pair it, or skip it when nothing can be paired with it.
    fn start_response(&mut self, response: Response, stats: &Stats, out: &mut Vec<Exchange>) {
        self.resp.last = response.last;
        let front = if self.quarantine {
            None
        } else {
            self.pending.front()
        };
        let Some(front) = front else {
            stats.inc(&stats.responses_unpaired);
            // Skip its body all the same, to stay in step.
            self.resp.start_body(response_framing("GET", &response));
            self.resp_current = None;
            return;
        };
        if (100..200).contains(&response.status) && response.status != 101 {
            // Interim response (100 Continue, 103 Early Hints): no body, the request is still
            // waiting for its final answer.
            return;
        }
        let framing = response_framing(&front.request.method, &response);
        self.resp_current = Some(response);
        self.resp.start_body(framing);
        if framing == Framing::Tunnel {
            self.complete_response(out);
            self.req.phase = Phase::Tunnel;
        } else if self.resp.phase == Phase::Head {
            self.complete_response(out);
        }
    }

    /// The connection closed: a response delimited by close (or whose framing was lost) ends
    /// here; requests still waiting are counted as unanswered.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Exchange>) {
        if matches!(self.resp.phase, Phase::UntilClose | Phase::Lost) {
            self.update_response();
            self.complete_response(out);
        }
        stats.add(&stats.requests_unanswered, self.pending.len() as u64);
        self.pending.clear();
        self.req.phase = Phase::Head;
        self.resp.phase = Phase::Head;
    }

    fn quarantine_if_pending(&mut self, stats: &Stats) {
        if !self.pending.is_empty() {
            stats.add(&stats.requests_unanswered, self.pending.len() as u64);
            self.pending.clear();
            self.req_current = None;
            self.quarantine = true;
        }
    }

    /// Records the request side's body length and last byte on the request being read.
    fn finish_request_body(&mut self) {
        if let Some(id) = self.req_current.take()
            && let Some(p) = self.pending.iter_mut().find(|p| p.id == id)
        {
            p.request.body_len = self.req.body;
            p.request.last = self.req.last;
        }
    }

    /// Copies the response side's progress onto the response being read.
    fn update_response(&mut self) {
        if let Some(r) = self.resp_current.as_mut() {
            r.body_len = self.resp.body;
            r.last = self.resp.last;
        }
    }

    /// Pairs the current response with the oldest pending request.
    fn complete_response(&mut self, out: &mut Vec<Exchange>) {
        let Some(response) = self.resp_current.take() else {
            return;
        };
        if let Some(p) = self.pending.pop_front() {
            if self.req_current == Some(p.id) {
                // Answered before its body was fully read (early response).
                self.req_current = None;
            }
            out.push(Exchange {
                request: p.request,
                response,
            });
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
                let n = remaining.min(s.available());
                if n == 0 {
                    return (phase, false);
                }
                if let Some(t) = s.time_at(s.pos() + n - 1) {
                    *last = t;
                }
                s.consume(n);
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
                let n = remaining.min(s.available());
                if n == 0 {
                    return (phase, false);
                }
                if let Some(t) = s.time_at(s.pos() + n - 1) {
                    *last = t;
                }
                s.consume(n);
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
                let n = s.available();
                if let Some(t) = s.time_at(s.pos() + n.saturating_sub(1)) {
                    *last = t;
                }
                s.consume(n);
                *body += n;
                return (phase, false);
            }
            Phase::Head | Phase::Lost | Phase::Tunnel => return (phase, false),
        }
    }
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

fn parse_request(s: &Stream) -> HeadResult<Request> {
    let Some(head) = head_bytes(s) else {
        return HeadResult::Invalid;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => {
            let time = |off: u64| s.time_at(off).unwrap_or_default();
            let skipped = head.len() - trim_leading_crlf(head).len();
            HeadResult::Done(
                Request {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    minor_version: req.version.unwrap_or(1),
                    headers: Headers::from_parsed(req.headers),
                    first: time(s.pos() + skipped as u64),
                    last: time(s.pos() + n as u64 - 1),
                    body_len: 0,
                },
                n,
            )
        }
        Ok(httparse::Status::Partial) => need_more_or_invalid(s, head.len()),
        Err(_) => HeadResult::Invalid,
    }
}

fn parse_response(s: &Stream) -> HeadResult<Response> {
    let Some(head) = head_bytes(s) else {
        return HeadResult::Invalid;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let skipped = head.len() - trim_leading_crlf(head).len();
    match resp.parse(&head[skipped..]) {
        Ok(httparse::Status::Complete(n)) => {
            let n = n + skipped;
            let time = |off: u64| s.time_at(off).unwrap_or_default();
            HeadResult::Done(
                Response {
                    status: resp.code.unwrap_or(0),
                    minor_version: resp.version.unwrap_or(1),
                    headers: Headers::from_parsed(resp.headers),
                    first: time(s.pos() + skipped as u64),
                    last: time(s.pos() + n as u64 - 1),
                    body_len: 0,
                },
                n,
            )
        }
        Ok(httparse::Status::Partial) => need_more_or_invalid(s, head.len()),
        Err(_) => HeadResult::Invalid,
    }
}

fn is_chunked(headers: &Headers) -> bool {
    headers.0.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding")
            && v.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

fn content_length(headers: &Headers) -> Option<u64> {
    headers.get("content-length")?.trim().parse().ok()
}

/// RFC 9112 §6.3 for requests: chunked, else Content-Length, else no body.
fn request_framing(headers: &Headers) -> Framing {
    if is_chunked(headers) {
        Framing::Chunked
    } else {
        content_length(headers).map_or(Framing::Empty, Framing::Length)
    }
}

/// RFC 9112 §6.3 for responses, which depend on the request method.
fn response_framing(method: &str, r: &Response) -> Framing {
    if r.status == 101 || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&r.status))
    {
        return Framing::Tunnel;
    }
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&r.status)
        || r.status == 204
        || r.status == 304
    {
        return Framing::Empty;
    }
    if is_chunked(&r.headers) {
        Framing::Chunked
    } else {
        content_length(&r.headers).map_or(Framing::UntilClose, Framing::Length)
    }
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;

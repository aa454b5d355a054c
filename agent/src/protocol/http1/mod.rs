//! HTTP/1.0 and HTTP/1.1: request heads parsed with `httparse`, response heads read for their
//! status and framing only (`head::scan_response`), bodies framed by `Content-Length`,
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

mod body;
mod head;
mod lines;

use body::{BodyProgress, Framing, Phase, Side, request_framing, response_framing};
use head::{Framed, HeadResult, parse_request, parse_response};
pub use head::{Looks, looks_like};

use super::{
    Record, Start,
    http::{Exchange, Headers, Request, Response},
};
use crate::{
    conn::Stream,
    stats::Stats,
    trace::{self, propagation},
};

/// Pending requests kept per connection (pipelining depth).
const MAX_PENDING: usize = 64;

/// The parsed header fields that `keep` selects, values without surrounding whitespace (RFC 9110
/// §5.5: OWS is spaces and tabs). Values are nearly always ASCII: `from_utf8` checks that
/// quickly, and only other bytes go through the slower lossy conversion. `keep` is generic, not
/// a function pointer, so that its name comparisons are inlined into the loop over the fields.
fn headers_from(parsed: &[httparse::Header<'_>], keep: impl Fn(&str) -> bool) -> Headers {
    // One pass to size the copy, the kept fields marked in a bit set: `keep` runs once per
    // field.
    const _: () = assert!(head::MAX_HEADERS <= 64, "the kept fields are a u64 bit set");
    let (mut mask, mut count, mut bytes) = (0u64, 0, 0);
    for (i, h) in parsed.iter().enumerate().take(head::MAX_HEADERS) {
        if keep(h.name) {
            mask |= 1 << i;
            count += 1;
            bytes += h.name.len() + h.value.len();
        }
    }
    let mut headers = Headers::with_capacity(count, bytes);
    let kept = parsed
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < head::MAX_HEADERS && mask & (1 << i) != 0)
        .map(|(_, h)| h);
    for h in kept {
        let value = h.value.trim_ascii();
        match std::str::from_utf8(value) {
            Ok(v) => headers.push(h.name, v),
            Err(_) => headers.push(h.name, &String::from_utf8_lossy(value)),
        }
    }
    headers
}

/// The request fields the agent keeps: what its span describes, and its trace context (its
/// framing is read in passing, `head::Framed`). The others (cookies, `Accept-*`, ...) are only
/// hashed into the request's fingerprint, straight from the parsed head (`head::parse_request`):
/// copying them cost time per request and memory per request waiting for its response.
fn request_field(name: &str) -> bool {
    trace::http::reads_field(name) || propagation::reads_field(name)
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    id: u64,
    request: Request,
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
    /// A request upgraded to HTTP/2 (`101` with `Upgrade: h2c`): its response comes on
    /// stream 1, which the HTTP/2 parser takes over.
    h2c: Option<Box<(u64, Request)>>,
}

impl Default for Http1 {
    fn default() -> Self {
        Self::new()
    }
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
            h2c: None,
        }
    }

    /// True once the connection switched away from HTTP/1 (upgrade or tunnel).
    pub fn is_tunnel(&self) -> bool {
        self.resp.phase == Phase::Tunnel
    }

    /// After an `Upgrade: h2c` was accepted: the upgraded request (still waiting for its
    /// response, which comes in HTTP/2) with its record id.
    pub fn take_h2c(&mut self) -> Option<(u64, Request)> {
        self.h2c.take().map(|b| *b)
    }

    /// Parses what the request side has. Requests are queued until their response arrives; each
    /// one queued is reported as started.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            match self.req.phase {
                Phase::Tunnel => s.clear(),
                Phase::Head => match parse_request(s) {
                    HeadResult::Done((request, fingerprint, fields), consumed) => {
                        s.consume(consumed as u64);
                        let framing = request_framing(&fields);
                        self.queue_request(request, fingerprint, framing, stats, out);
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
                    self.quarantine_if_pending(stats, out);
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
    fn queue_request(
        &mut self,
        request: Request,
        fingerprint: u64,
        framing: Framing,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
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
            if self.pending.len() >= MAX_PENDING
                && let Some(old) = self.pending.pop_front()
            {
                stats.inc(&stats.requests_unanswered);
                out.push(Record::Abandoned { id: old.id });
            }
            out.push(Record::Started(Start {
                id,
                first: request.first,
                context: propagation::extract(&request.headers),
                fingerprint,
                thread_affine: true,
            }));
            // Most connections never pipeline: room for one.
            crate::conn::stream::push_back_tight(&mut self.pending, Pending { id, request });
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
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            match self.resp.phase {
                Phase::Tunnel => s.clear(),
                Phase::Head => match parse_response(s) {
                    HeadResult::Done((response, fields), consumed) => {
                        s.consume(consumed as u64);
                        self.start_response(response, fields, stats, out);
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
                        self.quarantine_if_pending(stats, out);
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
    fn start_response(
        &mut self,
        response: Response,
        fields: Framed,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        self.resp.last = response.last;
        let front = if self.quarantine {
            None
        } else {
            self.pending.front()
        };
        let Some(front) = front else {
            stats.inc(&stats.responses_unpaired);
            // Skip its body all the same, to stay in step.
            self.resp
                .start_body(response_framing("GET", response.status, &fields));
            self.resp_current = None;
            return;
        };
        if (100..200).contains(&response.status) && response.status != 101 {
            // Interim response (100 Continue, 103 Early Hints): no body, the request is still
            // waiting for its final answer.
            return;
        }
        let framing = response_framing(&front.request.method, response.status, &fields);
        let to_h2c = response.status == 101 && fields.h2c;
        self.resp_current = Some(response);
        self.resp.start_body(framing);
        if framing == Framing::Tunnel {
            if to_h2c && let Some(p) = self.pending.pop_front() {
                self.resp_current = None;
                self.req_current = None;
                self.h2c = Some(Box::new((p.id, p.request)));
            } else {
                self.complete_response(out);
            }
            self.req.phase = Phase::Tunnel;
        } else if self.resp.phase == Phase::Head {
            self.complete_response(out);
        }
    }

    /// The connection closed: a response delimited by close (or whose framing was lost) ends
    /// here; requests still waiting are counted as unanswered.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if matches!(self.resp.phase, Phase::UntilClose | Phase::Lost) {
            self.update_response();
            self.complete_response(out);
        }
        self.abandon_pending(stats, out);
        self.req.phase = Phase::Head;
        self.resp.phase = Phase::Head;
    }

    fn quarantine_if_pending(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if !self.pending.is_empty() {
            self.abandon_pending(stats, out);
            self.req_current = None;
            self.quarantine = true;
        }
    }

    /// Every waiting request is given up: counted and reported.
    fn abandon_pending(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        stats.add(&stats.requests_unanswered, self.pending.len() as u64);
        out.extend(
            self.pending
                .drain(..)
                .map(|p| Record::Abandoned { id: p.id }),
        );
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
    fn complete_response(&mut self, out: &mut Vec<Record>) {
        let Some(response) = self.resp_current.take() else {
            return;
        };
        if let Some(p) = self.pending.pop_front() {
            if self.req_current == Some(p.id) {
                // Answered before its body was fully read (early response).
                self.req_current = None;
            }
            out.push(Record::finished(
                p.id,
                super::Exchange::Http(Exchange {
                    request: p.request,
                    response,
                }),
            ));
        }
    }
}

#[cfg(test)]
mod tests;

//! HTTP/2 (cleartext: prior knowledge, or `Upgrade: h2c` from HTTP/1.1), gRPC included: frames
//! read from both directions, header blocks decoded by [`hpack`] with each direction's own
//! table, one exchange per stream.
//!
//! A stream's request starts with the client's HEADERS (a `Started` record, once `:method` and
//! `:path` are known: a stream whose headers cannot be decoded gets no span and is counted);
//! its response is the server's HEADERS, DATA and trailers up to END_STREAM. A reset stream
//! ends with what it had. When a frame header falls in a capture gap, that direction waits for
//! a syscall that starts with a plausible frame; its header table is then marked as having
//! missed insertions, and streams waiting on it are given up.

mod frame;
pub mod hpack;

use foldhash::{HashMap, HashMapExt as _};
use std::collections::VecDeque;

use super::{
    Exchange, Record, Start,
    http::{self, Headers, Request, Response, Version},
    wire::{self, Msg},
};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
    trace::propagation,
};
use frame::*;
pub use frame::{first_headers_is_request, looks_like_frames};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Record ids of HTTP/2 streams: the stream id above this bit, so that they never meet the
/// HTTP/1 ids of an upgraded connection.
const STREAM_ID_BASE: u64 = 1 << 40;
/// Streams followed at once per connection.
const MAX_STREAMS: usize = 1024;
/// Longest header block assembled (HEADERS plus CONTINUATIONs).
const MAX_BLOCK: usize = 64 * 1024;

/// One stream's exchange in progress.
#[derive(Debug)]
struct StreamState {
    /// The record id (`None` when the request could not be named: no span).
    id: Option<u64>,
    request: Option<Request>,
    response: Option<Response>,
    /// The response headers came; later HEADERS are trailers.
    answered: bool,
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    kind: u8,
    end_stream: bool,
    bytes: Vec<u8>,
    /// Part of the block was not captured.
    truncated: bool,
    first: SyscallTime,
}

/// One direction of the connection.
#[derive(Debug, Default)]
struct Side {
    hpack: hpack::Decoder,
    block: Option<Block>,
    /// The 24-byte client preface is still to come (client side only).
    preface: bool,
    /// Framing lost: waiting for a syscall that starts with a plausible frame.
    lost: bool,
}

/// Which side of the connection a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Client,
    Server,
}

/// Parse state of one HTTP/2 connection.
#[derive(Debug)]
pub struct Http2 {
    client: Side,
    server: Side,
    streams: HashMap<u32, StreamState>,
    /// Stream ids in the order they opened, to bound the table.
    order: VecDeque<u32>,
}

impl Http2 {
    /// A connection whose client starts with the preface (prior knowledge, or after an h2c
    /// upgrade); `from_start` false when it was first seen mid-stream (no preface to wait for).
    pub fn new(from_start: bool) -> Self {
        Self {
            client: Side {
                preface: from_start,
                ..Side::default()
            },
            server: Side::default(),
            streams: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// After `Upgrade: h2c` was accepted: the HTTP/1.1 request (record `id`, already started)
    /// is stream 1, whose response comes in HTTP/2.
    pub fn upgraded(id: u64, request: Request) -> Self {
        let mut h = Self::new(true);
        h.streams.insert(
            1,
            StreamState {
                id: Some(id),
                request: Some(request),
                response: None,
                answered: false,
            },
        );
        h.order.push_back(1);
        h
    }

    /// Frames from the client.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        if self.client.preface {
            if s.available() < PREFACE.len() as u64 {
                return;
            }
            s.consume(PREFACE.len() as u64);
            self.client.preface = false;
        }
        self.feed(From::Client, s, stats, out);
    }

    /// Frames from the server.
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        self.feed(From::Server, s, stats, out);
    }

    fn side(&mut self, from: From) -> &mut Side {
        match from {
            From::Client => &mut self.client,
            From::Server => &mut self.server,
        }
    }

    fn feed(&mut self, from: From, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            if self.side(from).lost {
                if s.at_syscall_start() && plausible(s.head()) {
                    self.side(from).lost = false;
                } else {
                    if !s.skip_to_next_syscall() {
                        s.clear();
                    }
                    continue;
                }
            }
            let frame = match wire::message(s, 9, |h| {
                Some(9 + u32::from_be_bytes([0, h[0], h[1], h[2]]) as u64)
            }) {
                Msg::NeedMore => return,
                Msg::Lost => {
                    self.lose(from, stats, out);
                    continue;
                }
                Msg::Ready {
                    total,
                    bytes,
                    first,
                    last,
                } => {
                    let header = frame_header(bytes);
                    let payload = bytes[9..].to_vec();
                    let captured_all = payload.len() as u64 == total - 9;
                    s.consume(total);
                    (header, payload, captured_all, first, last)
                }
            };
            let (h, payload, captured_all, first, last) = frame;
            if !plausible_kind(h.kind) && self.side(from).block.is_none() {
                continue; // unknown frame types are ignored (RFC 9113 §5.5)
            }
            self.frame(from, h, payload, captured_all, first, last, stats, out);
        }
    }

    /// Framing lost on one side: its header table missed insertions, and the streams waiting
    /// on this side are given up.
    fn lose(&mut self, from: From, stats: &Stats, out: &mut Vec<Record>) {
        stats.inc(&stats.http_resyncs);
        let side = self.side(from);
        side.lost = true;
        side.block = None;
        side.hpack.mark_missed();
        let waiting: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, st)| from == From::Server || st.request.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.abandon(id, stats, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        from: From,
        h: FrameHeader,
        payload: Vec<u8>,
        captured_all: bool,
        first: SyscallTime,
        last: SyscallTime,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        // A header block in progress admits only its CONTINUATIONs.
        if let Some(block) = self.side(from).block.as_mut() {
            if h.kind != CONTINUATION || h.stream != block.stream {
                stats.inc(&stats.http_resyncs);
                self.side(from).block = None;
                self.side(from).hpack.mark_missed();
            } else {
                block.truncated |= !captured_all;
                if block.bytes.len() + payload.len() <= MAX_BLOCK {
                    block.bytes.extend_from_slice(&payload);
                } else {
                    block.truncated = true;
                }
                if h.flags & END_HEADERS != 0 {
                    let block = self.side(from).block.take();
                    if let Some(b) = block {
                        self.header_block(from, b, last, stats, out);
                    }
                }
                return;
            }
        }
        match h.kind {
            HEADERS | PUSH_PROMISE => {
                let mut fragment = if h.kind == HEADERS {
                    header_fragment(&payload, h.flags).map(<[u8]>::to_vec)
                } else {
                    // PUSH_PROMISE: padding, then the promised stream id.
                    header_fragment(&payload, h.flags & PADDED)
                        .and_then(|p| p.get(4..))
                        .map(<[u8]>::to_vec)
                };
                let truncated = !captured_all || fragment.is_none();
                let block = Block {
                    stream: h.stream,
                    kind: h.kind,
                    end_stream: h.kind == HEADERS && h.flags & END_STREAM != 0,
                    bytes: fragment.take().unwrap_or_default(),
                    truncated,
                    first,
                };
                if h.flags & END_HEADERS != 0 {
                    self.header_block(from, block, last, stats, out);
                } else {
                    self.side(from).block = Some(block);
                }
            }
            DATA => {
                let len = payload_len(h.len, h.flags, &payload);
                if let Some(st) = self.streams.get_mut(&h.stream) {
                    match from {
                        From::Client => {
                            if let Some(r) = st.request.as_mut() {
                                r.body_len += len;
                                r.last = last;
                            }
                        }
                        From::Server => {
                            if let Some(r) = st.response.as_mut() {
                                r.body_len += len;
                                r.last = last;
                            }
                        }
                    }
                }
                if from == From::Server && h.flags & END_STREAM != 0 {
                    self.complete(h.stream, None, out);
                }
            }
            RST_STREAM => {
                let code = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if self
                    .streams
                    .get(&h.stream)
                    .is_some_and(|st| st.response.is_some())
                {
                    if let Some(r) = self
                        .streams
                        .get_mut(&h.stream)
                        .and_then(|st| st.response.as_mut())
                    {
                        r.last = last;
                    }
                    self.complete(h.stream, Some(code), out);
                } else {
                    self.abandon(h.stream, stats, out);
                }
            }
            _ => {} // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY: nothing to pair
        }
    }

    /// A complete header block: decoded (always, to keep the table in step), then applied.
    fn header_block(
        &mut self,
        from: From,
        block: Block,
        last: SyscallTime,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        let side = self.side(from);
        let decoded = if block.truncated {
            side.hpack.decode_truncated(&block.bytes)
        } else {
            side.hpack.decode(&block.bytes)
        };
        stats.add(&stats.http2_headers_unknown, decoded.unknown as u64);
        if block.kind == PUSH_PROMISE {
            return; // pushed responses answer no request the agent saw
        }
        match from {
            From::Client => self.request_headers(block, decoded, last, stats, out),
            From::Server => self.response_headers(block, decoded, last, out),
        }
    }

    fn request_headers(
        &mut self,
        block: Block,
        decoded: hpack::Decoded,
        last: SyscallTime,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        if self.streams.contains_key(&block.stream) {
            // Request trailers: nothing the span needs.
            return;
        }
        let mut method = None;
        let mut path = None;
        let mut authority = None;
        let mut headers = Vec::new();
        for (n, v) in decoded.fields {
            match n.as_str() {
                ":method" => method = Some(v),
                ":path" => path = Some(v),
                ":authority" => authority = Some(v),
                n if n.starts_with(':') => {}
                _ => headers.push((n, v)),
            }
        }
        let mut headers: Headers = headers.into_iter().collect();
        if let Some(a) = authority
            && headers.get("host").is_none()
        {
            headers.push("host", &a);
        }
        let (Some(method), Some(target)) = (method, path) else {
            // Without a method and a path there is nothing certain to name: no span.
            stats.inc(&stats.http2_streams_unnamed);
            self.open_stream(block.stream, None, None, stats, out);
            return;
        };
        let request = Request {
            method: method.into(),
            target: target.into(),
            version: Version::Http2,
            headers,
            first: block.first,
            last,
            body_len: 0,
        };
        let id = STREAM_ID_BASE | u64::from(block.stream);
        out.push(Record::Started(Start {
            id,
            first: request.first,
            context: propagation::extract(&request.headers),
            fingerprint: http::fingerprint(
                &request.method,
                &request.target,
                request
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            ),
            // Streams of one connection are read by whichever thread runs its I/O.
            thread_affine: false,
        }));
        self.open_stream(block.stream, Some(id), Some(request), stats, out);
    }

    fn open_stream(
        &mut self,
        stream: u32,
        id: Option<u64>,
        request: Option<Request>,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        if self.streams.len() >= MAX_STREAMS
            && let Some(oldest) = self.order.pop_front()
        {
            self.abandon(oldest, stats, out);
        }
        self.streams.insert(
            stream,
            StreamState {
                id,
                request,
                response: None,
                answered: false,
            },
        );
        self.order.push_back(stream);
    }

    fn response_headers(
        &mut self,
        block: Block,
        decoded: hpack::Decoded,
        last: SyscallTime,
        out: &mut Vec<Record>,
    ) {
        let Some(st) = self.streams.get_mut(&block.stream) else {
            return; // a stream the agent did not see open
        };
        let fields: Headers = decoded.fields.into_iter().collect();
        if st.answered {
            if let Some(r) = st.response.as_mut() {
                r.trailers = fields;
                r.last = last;
            }
        } else {
            let status = fields
                .get(":status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            if (100..200).contains(&status) {
                return; // informational: the final response is still to come
            }
            let headers: Headers = fields.iter().filter(|(n, _)| !n.starts_with(':')).collect();
            st.response = Some(Response {
                status,
                version: Version::Http2,
                headers,
                trailers: Headers::default(),
                first: block.first,
                last,
                body_len: 0,
                reset: None,
            });
            st.answered = true;
        }
        if block.end_stream {
            self.complete(block.stream, None, out);
        }
    }

    /// The server ended the stream (or it was reset after its response began).
    fn complete(&mut self, stream: u32, reset: Option<u32>, out: &mut Vec<Record>) {
        let Some(st) = self.streams.remove(&stream) else {
            return;
        };
        self.order.retain(|s| *s != stream);
        let (Some(id), Some(request), Some(mut response)) = (st.id, st.request, st.response) else {
            if let Some(id) = st.id {
                out.push(Record::Abandoned { id });
            }
            return;
        };
        response.reset = reset;
        out.push(Record::finished(
            id,
            Exchange::Http(http::Exchange { request, response }),
        ));
    }

    fn abandon(&mut self, stream: u32, stats: &Stats, out: &mut Vec<Record>) {
        let Some(st) = self.streams.remove(&stream) else {
            return;
        };
        self.order.retain(|s| *s != stream);
        if let Some(id) = st.id {
            stats.inc(&stats.requests_unanswered);
            out.push(Record::Abandoned { id });
        }
    }

    /// The connection closed: open streams are given up.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        let open: Vec<u32> = self.order.iter().copied().collect();
        for stream in open {
            self.abandon(stream, stats, out);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

//! HTTP/2 frames (RFC 9113 §4, §6): headers, the checks that recognise frames mid-stream, and
//! the parts of a payload the parser reads.

use super::hpack;

// Frame types.
pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const CONTINUATION: u8 = 0x9;
// Frame flags.
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;

/// A frame header.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHeader {
    pub(super) len: u32,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

pub(super) fn frame_header(h: &[u8]) -> FrameHeader {
    FrameHeader {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    }
}

/// A frame header that the protocol allows: a known type on the right kind of stream, of a
/// reasonable size (used to resynchronise and to recognise HTTP/2 mid-stream).
pub(super) fn plausible(h: &[u8]) -> bool {
    if h.len() < 9 || h[5] & 0x80 != 0 {
        return false;
    }
    let f = frame_header(h);
    let on_stream = f.stream != 0;
    f.len <= 1 << 20
        && match f.kind {
            DATA | HEADERS | 0x2 | RST_STREAM | PUSH_PROMISE | CONTINUATION => on_stream,
            0x4 => !on_stream && f.len.is_multiple_of(6),
            0x6 => !on_stream && f.len == 8,
            0x7 => !on_stream && f.len >= 8,
            0x8 => f.len == 4,
            _ => false,
        }
}

/// Whether captured bytes that start a syscall are HTTP/2 frames: every frame header plausible
/// up to the end of the captured bytes, at least one frame whole.
pub fn looks_like_frames(b: &[u8]) -> bool {
    let mut pos = 0;
    let mut whole = 0;
    while pos + 9 <= b.len() {
        if !plausible(&b[pos..]) {
            return false;
        }
        let len = frame_header(&b[pos..]).len as usize;
        pos += 9 + len;
        if pos <= b.len() {
            whole += 1;
        }
    }
    whole >= 1 && (pos == b.len() || pos > b.len())
}

/// Which way the first HEADERS frame in `b` goes: `Some(true)` when it carries a request.
pub fn first_headers_is_request(b: &[u8]) -> Option<bool> {
    let mut pos = 0;
    while pos + 9 <= b.len() {
        let f = frame_header(&b[pos..]);
        if f.kind == HEADERS {
            let payload = &b[pos + 9..b.len().min(pos + 9 + f.len as usize)];
            return header_fragment(payload, f.flags).and_then(hpack::starts_request);
        }
        pos += 9 + f.len as usize;
    }
    None
}

/// The header block fragment of a HEADERS frame payload (padding and priority removed).
pub(super) fn header_fragment(p: &[u8], flags: u8) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = p.len();
    if flags & PADDED != 0 {
        let pad = *p.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    p.get(start..end)
}

/// Known frame types (RFC 9113 §6); others are skipped.
pub(super) fn plausible_kind(kind: u8) -> bool {
    kind <= CONTINUATION
}

/// Body bytes of a DATA frame: its length minus padding.
pub(super) fn payload_len(len: u32, flags: u8, payload: &[u8]) -> u64 {
    if flags & PADDED != 0 {
        let pad = payload.first().copied().unwrap_or(0) as u64;
        (len as u64).saturating_sub(1 + pad)
    } else {
        len as u64
    }
}

//! One direction of a connection as an ordered byte stream with known holes.
//!
//! The kernel sends, per syscall, the byte count and a bounded prefix of the bytes. Appended in
//! order, these form a stream in which every byte has an absolute offset; bytes that were not
//! captured are a gap whose length is known. Parsers read contiguous captured bytes at the front
//! (`head`), skip over bytes by count even through gaps (`consume`), and ask when the syscall
//! that carried a given byte happened (`time_at`).

use std::collections::VecDeque;

/// When the syscall that carried some bytes ran (monotonic ns), and on which thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyscallTime {
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub tid: u32,
}

/// A run of captured bytes starting at an absolute offset.
#[derive(Debug)]
struct Run {
    start: u64,
    bytes: Bytes,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// A run's bytes: the stream's own copy, or a record's payload read where the kernel wrote it.
///
/// Most records are parsed whole within the call that delivers them: a request or a response
/// head in one syscall. Copying each into the stream first (an allocation, a copy and a free per
/// record) was ~5% of the agent's CPU beside nginx. So `Stream::push_borrowed` keeps a pointer
/// to the payload, and `Stream::own` copies what the parser left unconsumed, usually nothing,
/// before the payload goes.
#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    /// Between `push_borrowed` and `own` only, within one call on one thread.
    Borrowed {
        ptr: *const u8,
        len: usize,
    },
}

// SAFETY: a borrowed run only exists between `push_borrowed` and `own`, within one call that
// runs on one thread without yielding; the stream is only ever sent with owned bytes.
unsafe impl Send for Bytes {}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            // SAFETY: `push_borrowed`'s caller keeps the payload valid until `own`, which turns
            // this into `Owned` (the contract of `push_borrowed`).
            Bytes::Borrowed { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }

    fn len(&self) -> usize {
        match self {
            Bytes::Owned(v) => v.len(),
            Bytes::Borrowed { len, .. } => *len,
        }
    }

    /// Appends `more`, in the run's own memory from then on.
    fn extend(&mut self, more: &[u8]) {
        match self {
            Bytes::Owned(v) => v.extend_from_slice(more),
            Bytes::Borrowed { .. } => {
                let mut v = Vec::with_capacity(self.len() + more.len());
                v.extend_from_slice(self.as_slice());
                v.extend_from_slice(more);
                *self = Bytes::Owned(v);
            }
        }
    }

    /// Forgets the first `n` bytes (fewer than the run holds).
    fn cut_front(&mut self, n: usize) {
        match self {
            Bytes::Owned(v) => {
                v.drain(..n);
            }
            Bytes::Borrowed { ptr, len } => {
                // SAFETY: `n < len`, so the pointer stays inside the payload.
                *ptr = unsafe { ptr.add(n) };
                *len -= n;
            }
        }
    }
}

/// An ordered byte stream with gaps. Captured bytes held are bounded by `limit`.
#[derive(Debug)]
pub struct Stream {
    /// Absolute offset of the first byte not yet consumed.
    pos: u64,
    /// Absolute offset just past the last byte appended.
    end: u64,
    /// Captured runs at or after `pos`, in order, never adjacent (adjacent runs are merged).
    runs: VecDeque<Run>,
    /// Start offset of each syscall's bytes with its time; the first covers `pos`.
    marks: VecDeque<(u64, SyscallTime)>,
    /// Captured bytes currently held.
    held: usize,
    limit: usize,
}

/// Appends to a per-connection queue, giving an empty one room for exactly one entry first: a
/// connection usually holds one message's worth at a time, and an idle connection keeps its
/// queues' capacity (at 10k connections, `VecDeque`'s first growth to 4 cost megabytes).
pub fn push_back_tight<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.capacity() == 0 {
        queue.reserve_exact(1);
    }
    queue.push_back(item);
}

impl Stream {
    /// A stream holding at most `limit` captured bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            pos: 0,
            end: 0,
            runs: VecDeque::new(),
            marks: VecDeque::new(),
            held: 0,
            limit,
        }
    }

    /// Appends one syscall's worth: `len` bytes of which `captured` is the prefix.
    /// Returns how many captured bytes had to be discarded to stay within the limit.
    pub fn push(&mut self, captured: &[u8], len: u64, time: SyscallTime) -> usize {
        self.append(captured, len, time, false)
    }

    /// `push`, reading `captured` in place rather than copying it, until `own`.
    ///
    /// # Safety
    ///
    /// `captured` must stay valid and unchanged until `own` is called on this stream, with no
    /// other call on it in between that could outlive the payload (the stream is not sent or
    /// awaited across).
    pub unsafe fn push_borrowed(&mut self, captured: &[u8], len: u64, time: SyscallTime) -> usize {
        self.append(captured, len, time, true)
    }

    /// Copies the borrowed bytes the parser left unconsumed into the stream's own memory, so
    /// that the payload `push_borrowed` read can go.
    pub fn own(&mut self) {
        if let Some(run) = self.runs.back_mut()
            && let Bytes::Borrowed { .. } = run.bytes
        {
            run.bytes = Bytes::Owned(run.bytes.as_slice().to_vec());
        }
    }

    fn append(&mut self, captured: &[u8], len: u64, time: SyscallTime, borrow: bool) -> usize {
        let len = len.max(captured.len() as u64);
        if len == 0 {
            return 0;
        }
        let start = self.end;
        push_back_tight(&mut self.marks, (start, time));
        if !captured.is_empty() {
            match self.runs.back_mut() {
                // Continues the bytes held: the parser needs them contiguous.
                Some(run) if run.end() == start => run.bytes.extend(captured),
                _ => push_back_tight(
                    &mut self.runs,
                    Run {
                        start,
                        bytes: if borrow {
                            Bytes::Borrowed {
                                ptr: captured.as_ptr(),
                                len: captured.len(),
                            }
                        } else {
                            Bytes::Owned(captured.to_vec())
                        },
                    },
                ),
            }
            self.held += captured.len();
        }
        self.end = start + len;
        let mut dropped = 0;
        if self.held > self.limit {
            // Too much unparsed data: forget the oldest bytes; the parser resynchronises.
            let excess = (self.held - self.limit) as u64;
            let before = self.held;
            self.consume_to(self.pos + excess.max(1));
            while self.held > self.limit {
                let next = self.runs.front().map(|r| r.end()).unwrap_or(self.end);
                self.consume_to(next);
            }
            dropped = before - self.held;
        }
        dropped
    }

    /// Absolute offset of the first unconsumed byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Absolute offset just past the last byte received.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes received but not consumed (captured or not).
    pub fn available(&self) -> u64 {
        self.end - self.pos
    }

    /// The captured bytes starting exactly at `pos`, up to the next gap. Empty when `pos` is in a
    /// gap or nothing is available.
    pub fn head(&self) -> &[u8] {
        match self.runs.front() {
            Some(run) if run.start <= self.pos && self.pos < run.end() => {
                &run.bytes.as_slice()[(self.pos - run.start) as usize..]
            }
            _ => &[],
        }
    }

    /// True when the byte at `pos` exists but was not captured.
    pub fn at_gap(&self) -> bool {
        self.available() > 0 && self.head().is_empty()
    }

    /// Consumes `n` bytes (captured or not). `n` is clamped to what is available.
    pub fn consume(&mut self, n: u64) {
        let target = self.pos.saturating_add(n).min(self.end);
        self.consume_to(target);
    }

    /// Consumes everything up to the start of the next syscall's bytes after `pos`, the natural
    /// place for a new message to begin. Returns false when there is no such start yet.
    pub fn skip_to_next_syscall(&mut self) -> bool {
        match self.marks.iter().find(|(start, _)| *start > self.pos) {
            Some(&(start, _)) => {
                self.consume_to(start);
                true
            }
            None => false,
        }
    }

    /// True when `pos` is the first byte of a syscall's data.
    pub fn at_syscall_start(&self) -> bool {
        self.marks
            .front()
            .is_some_and(|(start, _)| *start == self.pos)
    }

    /// Drops everything received so far.
    pub fn clear(&mut self) {
        self.consume_to(self.end);
    }

    fn consume_to(&mut self, target: u64) {
        let target = target.min(self.end);
        if target <= self.pos {
            return;
        }
        self.pos = target;
        while let Some(run) = self.runs.front_mut() {
            if run.end() <= target {
                self.held -= run.bytes.len();
                self.runs.pop_front();
            } else {
                if run.start < target {
                    let cut = (target - run.start) as usize;
                    run.bytes.cut_front(cut);
                    run.start = target;
                    self.held -= cut;
                }
                break;
            }
        }
        // Keep the mark covering `pos`, drop older ones.
        while self.marks.len() > 1 && self.marks[1].0 <= target {
            self.marks.pop_front();
        }
        if self.pos == self.end {
            self.marks.retain(|(start, _)| *start >= target);
        }
    }

    /// Time of the syscall that carried the byte at absolute `offset` (which must not have been
    /// consumed yet, or be the last consumed byte's syscall when still tracked).
    pub fn time_at(&self, offset: u64) -> Option<SyscallTime> {
        self.marks
            .iter()
            .take_while(|(start, _)| *start <= offset)
            .last()
            .map(|(_, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> SyscallTime {
        SyscallTime {
            enter_ns: n,
            exit_ns: n + 1,
            tid: 1,
        }
    }

    /// An empty queue grows to room for one, not to `VecDeque`'s usual four; later pushes
    /// grow it as usual.
    #[test]
    fn first_push_leaves_room_for_one() {
        let mut q = VecDeque::new();
        push_back_tight(&mut q, 1u64);
        assert!(q.capacity() < 4, "{}", q.capacity());
        push_back_tight(&mut q, 2);
        push_back_tight(&mut q, 3);
        assert_eq!(q, [1, 2, 3]);
    }

    #[test]
    fn contiguous_pushes_merge() {
        let mut s = Stream::new(1024);
        s.push(b"GET / HT", 8, t(1));
        s.push(b"TP/1.1\r\n", 8, t(2));
        assert_eq!(s.head(), b"GET / HTTP/1.1\r\n");
        assert_eq!(s.time_at(0), Some(t(1)));
        assert_eq!(s.time_at(8), Some(t(2)));
        s.consume(10);
        assert_eq!(s.head(), b"/1.1\r\n");
        assert_eq!(s.time_at(s.pos()), Some(t(2)));
    }

    #[test]
    fn gaps_are_skipped_by_count() {
        let mut s = Stream::new(1024);
        s.push(b"abc", 10, t(1)); // 7 bytes not captured
        s.push(b"xyz", 3, t(2));
        assert_eq!(s.available(), 13);
        s.consume(3);
        assert!(s.at_gap());
        assert!(s.head().is_empty());
        s.consume(7);
        assert_eq!(s.head(), b"xyz");
        assert_eq!(s.time_at(s.pos()), Some(t(2)));
    }

    #[test]
    fn consume_is_clamped_and_clear_empties() {
        let mut s = Stream::new(1024);
        s.push(b"abc", 3, t(1));
        s.consume(100);
        assert_eq!(s.available(), 0);
        assert_eq!(s.pos(), 3);
        s.push(b"de", 2, t(2));
        assert_eq!(s.head(), b"de");
        assert!(s.at_syscall_start());
        s.clear();
        assert_eq!(s.available(), 0);
        assert!(s.head().is_empty());
    }

    #[test]
    fn limit_bounds_memory() {
        let mut s = Stream::new(8);
        assert_eq!(s.push(b"12345", 5, t(1)), 0);
        let dropped = s.push(b"67890", 5, t(2));
        assert!(dropped > 0);
        assert!(s.head().len() <= 8);
        assert_eq!(s.end(), 10);
    }

    #[test]
    fn borrowed_bytes_are_owned_once_the_payload_goes() {
        let mut s = Stream::new(1024);
        let mut payload = b"GET / HTTP/1.1\r\n".to_vec();
        // SAFETY: `payload` is left alone until `own`.
        unsafe { s.push_borrowed(&payload, payload.len() as u64, t(1)) };
        assert_eq!(s.head(), b"GET / HTTP/1.1\r\n");
        s.consume(4);
        assert_eq!(s.head(), b"/ HTTP/1.1\r\n");
        s.own();
        payload.fill(b'x');
        assert_eq!(s.head(), b"/ HTTP/1.1\r\n", "a copy of what was left");
        s.push(b"Host: a\r\n", 9, t(2));
        assert_eq!(s.head(), b"/ HTTP/1.1\r\nHost: a\r\n", "contiguous with it");

        // Consumed whole: nothing is copied, nothing is left.
        let payload = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let mut s = Stream::new(1024);
        // SAFETY: as above.
        unsafe { s.push_borrowed(&payload, payload.len() as u64, t(3)) };
        s.consume(payload.len() as u64);
        s.own();
        assert_eq!(s.available(), 0);
        assert!(s.runs.is_empty());
    }

    #[test]
    fn skip_to_next_syscall() {
        let mut s = Stream::new(1024);
        s.push(b"garbage", 7, t(1));
        s.push(b"HTTP/1.1", 8, t(2));
        s.consume(2);
        assert!(s.skip_to_next_syscall());
        assert_eq!(s.head(), b"HTTP/1.1");
        assert!(!s.skip_to_next_syscall());
    }
}

//! Redis (RESP2 and RESP3), from the client's side: one CLIENT span per command, replies paired
//! with commands in order (pipelining included). RESP3 pushes (`>`) and attributes (`|`) are
//! not replies. A connection that subscribes or monitors stops being parsed: from then on the
//! server speaks without being asked.
//!
//! Values are read by a resumable parser that skips bulk strings by count, so large values in
//! capture gaps are no obstacle; only a header inside a gap loses framing. On the reply side the
//! reply being read then ends with the last read before the client's next command; on the
//! command side the number of outstanding replies becomes unknown, so the connection is given
//! up (counted) rather than paired by guess.

use std::collections::VecDeque;

use super::{
    Exchange, Record,
    db::{self, DbError, Operation, System},
};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

/// Deepest nesting of aggregates followed.
const MAX_DEPTH: usize = 32;
/// Longest line (type byte to CRLF) accepted.
const MAX_LINE: usize = 4096;
/// Commands waiting for their reply.
const MAX_PENDING: usize = 4096;

/// What reading a value came to.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A whole top-level value was read.
    Value,
    NeedMore,
    /// Framing lost (a header in a gap, or not RESP).
    Lost,
}

/// A resumable RESP value reader.
#[derive(Debug, Default)]
struct Reader {
    /// Elements still to read in each open aggregate.
    stack: Vec<u64>,
    /// Bytes of a bulk string (and its CRLF) still to skip.
    skip: u64,
    /// The type byte of the top-level value, once seen.
    top: Option<u8>,
    /// An attribute (`|`) precedes the value: the value after it is the real one.
    attribute: bool,
    /// The first line or bulk of the top-level value (a command name, an error text).
    first: Option<String>,
    /// The second bulk of a top-level array (a command's first argument), when short.
    second: Option<String>,
    /// Top-level array length (arguments of a command).
    count: u64,
    /// Syscall of the last byte read.
    last: SyscallTime,
    /// Syscall of the first byte of the value.
    start: Option<SyscallTime>,
}

/// What a finished top-level value left for the parser.
struct Value {
    top: Option<u8>,
    first: Option<String>,
    second: Option<String>,
    count: u64,
    start: Option<SyscallTime>,
    last: SyscallTime,
}

impl Reader {
    /// Back to the start of a value. The stack keeps its allocation: a connection reads one
    /// value after another, and the per-value `Vec` was an allocation per command and reply.
    fn reset(&mut self) {
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        *self = Reader {
            stack,
            ..Reader::default()
        };
    }

    /// The value just read (`Step::Value`), the reader reset for the next one.
    fn take(&mut self) -> Value {
        let value = Value {
            top: self.top,
            first: self.first.take(),
            second: self.second.take(),
            count: self.count,
            start: self.start,
            last: self.last,
        };
        self.reset();
        value
    }

    /// Reads as far as possible into the next value.
    fn read(&mut self, s: &mut Stream) -> Step {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(s.available());
                if n == 0 {
                    return Step::NeedMore;
                }
                if let Some(t) = s.time_at(s.pos() + n - 1) {
                    self.last = t;
                }
                s.consume(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Step::NeedMore;
                }
                if self.element_done() {
                    return Step::Value;
                }
                continue;
            }
            if s.available() == 0 {
                return Step::NeedMore;
            }
            let head = s.head();
            let Some(eol) = head.windows(2).position(|w| w == b"\r\n") else {
                return if head.is_empty()
                    || (head.len() as u64) < s.available()
                    || head.len() > MAX_LINE
                {
                    Step::Lost
                } else {
                    Step::NeedMore
                };
            };
            let line = &head[..eol];
            let Some((&kind, rest)) = line.split_first() else {
                return Step::Lost;
            };
            if self.start.is_none() {
                self.start = s.time_at(s.pos());
            }
            if let Some(t) = s.time_at(s.pos() + eol as u64 + 1) {
                self.last = t;
            }
            // Lengths and counts are read from the bytes: a `String` per line was most of the
            // parser's cost (five lines for a `GET key`).
            let number = || std::str::from_utf8(rest).ok()?.parse::<i64>().ok();
            let top = self.stack.is_empty();
            if top && kind != b'|' {
                self.top.get_or_insert(kind);
            }
            let consumed = eol as u64 + 2;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    // An error's text is its span's; a status (`+OK`) or number is not kept.
                    if top && kind == b'-' && self.first.is_none() {
                        self.first = Some(String::from_utf8_lossy(rest).into_owned());
                    }
                    s.consume(consumed);
                    if self.element_done() {
                        return Step::Value;
                    }
                }
                b'$' | b'=' | b'!' => {
                    let Some(n) = number() else { return Step::Lost };
                    if n < 0 {
                        s.consume(consumed);
                        if self.element_done() {
                            return Step::Value;
                        }
                        continue;
                    }
                    let n = n as u64;
                    // The first bulk of a value names it (a command, a bulk error); the second
                    // is a command's first argument, which only `SELECT`'s span reads. Short
                    // ones are read whole: wait for them. A reply that is a bulk string is
                    // skipped unread (its contents are never shown).
                    let at_top = top || self.stack.len() == 1;
                    let wanted = at_top
                        && !matches!(self.top, Some(b'$' | b'='))
                        && (self.first.is_none() && n <= 256
                            || self
                                .first
                                .as_deref()
                                .is_some_and(|f| f.eq_ignore_ascii_case("SELECT"))
                                && self.second.is_none()
                                && n <= 64);
                    let body = eol + 2;
                    if wanted && head.len() < body + n as usize && s.available() < (body as u64) + n
                    {
                        return Step::NeedMore;
                    }
                    if wanted {
                        let end = (body + n as usize).min(head.len());
                        let text = String::from_utf8_lossy(&head[body..end]).into_owned();
                        if self.first.is_none() {
                            self.first = Some(text);
                        } else {
                            self.second = Some(text);
                        }
                    }
                    s.consume(consumed);
                    self.skip = n + 2;
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let Some(n) = number() else { return Step::Lost };
                    s.consume(consumed);
                    if kind == b'|' && top {
                        self.attribute = true;
                    }
                    if top && kind != b'|' {
                        self.count = n.max(0) as u64;
                    }
                    let items = if matches!(kind, b'%' | b'|') {
                        n.saturating_mul(2)
                    } else {
                        n
                    };
                    if items <= 0 {
                        if self.element_done() {
                            return Step::Value;
                        }
                        continue;
                    }
                    if self.stack.len() >= MAX_DEPTH {
                        return Step::Lost;
                    }
                    self.stack.push(items as u64);
                }
                _ => return Step::Lost,
            }
        }
    }

    /// One element ended; returns true when the top-level value is complete.
    fn element_done(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return false;
            }
            self.stack.pop();
        }
        if self.attribute {
            // The attribute is over; the value it describes comes next.
            self.attribute = false;
            return false;
        }
        true
    }
}

#[derive(Debug)]
struct Pending {
    id: u64,
    name: String,
    args: u64,
    first: SyscallTime,
    /// A SELECT, whose success changes the database.
    select: Option<String>,
}

/// Parse state of one Redis connection, client side.
#[derive(Debug, Default)]
pub struct Redis {
    commands: Reader,
    replies: Reader,
    pending: VecDeque<Pending>,
    next_id: u64,
    database: Option<String>,
    /// The server now speaks unasked (SUBSCRIBE, MONITOR) or command framing was lost: parsing
    /// stops.
    done: bool,
    /// Reply framing lost: like PostgreSQL's (see there).
    reply_lost: Option<Option<u64>>,
    lost: Option<Pending>,
    last_read: SyscallTime,
}

impl Redis {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the connection can no longer be parsed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once parsing stopped and nothing waits for a reply any more.
    pub fn is_finished(&self) -> bool {
        self.done && self.pending.is_empty()
    }

    /// Parses commands.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while !self.done && s.available() > 0 {
            // An inline command (`PING\r\n`) is a line of words.
            if self.commands.stack.is_empty()
                && self.commands.skip == 0
                && s.head().first().is_some_and(|b| b.is_ascii_alphabetic())
            {
                let head = s.head();
                let Some(eol) = head.windows(2).position(|w| w == b"\r\n") else {
                    if (head.len() as u64) < s.available() || head.len() > MAX_LINE {
                        return self.give_up(stats, out);
                    }
                    return;
                };
                // The name and the first argument are kept (SELECT's database); the rest are
                // only counted.
                let (name, arg, count) = {
                    let line = String::from_utf8_lossy(&head[..eol]);
                    let mut words = line.split_whitespace();
                    let name = words.next().map(String::from);
                    let arg = words.next().map(String::from);
                    let rest = words.count() as u64;
                    let count = u64::from(name.is_some()) + u64::from(arg.is_some()) + rest;
                    (name, arg, count)
                };
                let first = s.time_at(s.pos()).unwrap_or_default();
                s.consume(eol as u64 + 2);
                if let Some(name) = name {
                    self.command(name, count, arg, first, stats, out);
                }
                continue;
            }
            match self.commands.read(s) {
                Step::NeedMore => return,
                Step::Lost => return self.give_up(stats, out),
                Step::Value => {
                    let r = self.commands.take();
                    let name = r.first.unwrap_or_default();
                    let first = r.start.unwrap_or_default();
                    self.command(name, r.count, r.second, first, stats, out);
                }
            }
        }
    }

    fn command(
        &mut self,
        mut name: String,
        args: u64,
        arg: Option<String>,
        first: SyscallTime,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        if self.reply_lost == Some(None) {
            if let Some(p) = self.lost.take() {
                let last = self.last_read;
                self.finish(p, last, None, out);
            }
            self.reply_lost = Some(Some(first.exit_ns));
        }
        name.make_ascii_uppercase();
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'|')
        {
            return self.give_up(stats, out);
        }
        if self.pending.len() >= MAX_PENDING {
            return self.give_up(stats, out);
        }
        let id = self.next_id;
        self.next_id += 1;
        out.push(db::started(id, first));
        let select = (name == "SELECT").then(|| arg.unwrap_or_default());
        let subscribes = matches!(
            name.as_str(),
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR"
        );
        self.pending.push_back(Pending {
            id,
            name,
            args: args.saturating_sub(1),
            first,
            select,
        });
        if subscribes {
            // Its confirmation ends this span; what follows is not answers.
            self.done = true;
        }
    }

    /// Parsing stops; waiting commands are given up.
    fn give_up(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if !self.done {
            stats.inc(&stats.db_resyncs);
        }
        self.done = true;
        self.abandon_all(stats, out);
    }

    fn abandon_all(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        stats.add(&stats.requests_unanswered, self.pending.len() as u64);
        out.extend(
            self.pending
                .drain(..)
                .map(|p| Record::Abandoned { id: p.id }),
        );
    }

    /// Parses replies.
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            if self.done && self.pending.is_empty() {
                return s.clear();
            }
            if let Some(resume) = self.reply_lost {
                let time = s.time_at(s.pos());
                let plausible = s
                    .head()
                    .first()
                    .is_some_and(|b| b"+-:$*_,#!=(%~".contains(b));
                match (resume, time) {
                    (Some(after), Some(t))
                        if s.at_syscall_start() && t.enter_ns >= after && plausible =>
                    {
                        self.reply_lost = None;
                        self.replies.reset();
                    }
                    _ => {
                        if let Some(t) = time {
                            self.last_read = t;
                        }
                        if !s.skip_to_next_syscall() {
                            s.clear();
                        }
                        continue;
                    }
                }
            }
            match self.replies.read(s) {
                Step::NeedMore => return,
                Step::Lost => {
                    stats.inc(&stats.db_resyncs);
                    self.reply_lost = Some(None);
                    self.lost = self.pending.pop_front();
                    self.last_read = self.replies.last;
                    self.replies.reset();
                    self.abandon_all(stats, out);
                }
                Step::Value => {
                    let r = self.replies.take();
                    self.last_read = r.last;
                    if r.top == Some(b'>') {
                        continue; // a RESP3 push: not a reply
                    }
                    let Some(p) = self.pending.pop_front() else {
                        continue;
                    };
                    let error = matches!(r.top, Some(b'-' | b'!')).then(|| {
                        let text = r.first.unwrap_or_default();
                        let code = text.split_whitespace().next().unwrap_or("ERR").to_string();
                        DbError {
                            code,
                            message: text,
                        }
                    });
                    if error.is_none()
                        && let Some(db) = &p.select
                        && !db.is_empty()
                    {
                        self.database = Some(db.clone());
                    }
                    self.finish(p, r.last, error, out);
                }
            }
        }
    }

    fn finish(
        &mut self,
        p: Pending,
        last: SyscallTime,
        error: Option<DbError>,
        out: &mut Vec<Record>,
    ) {
        let mut query = p.name.clone();
        for _ in 0..p.args.min(64) {
            query.push_str(" ?");
        }
        out.push(Record::finished(
            p.id,
            Exchange::Db(Operation {
                system: System::Redis,
                operation: Some(p.name),
                collection: None,
                query: Some(query),
                namespace: Some(self.database.clone().unwrap_or_else(|| "0".into())),
                error,
                rows: None,
                first: p.first,
                last,
            }),
        ));
    }

    /// The connection closed.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if let Some(p) = self.lost.take() {
            let last = self.last_read;
            self.finish(p, last, None, out);
        }
        self.abandon_all(stats, out);
    }
}

/// A RESP command array at the start of the client's bytes: `*N\r\n$M\r\n` and a command name.
pub fn looks_like_command(client: &[u8]) -> bool {
    let Some(rest) = client.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 6 || !rest[digits..].starts_with(b"\r\n$") {
        return false;
    }
    let rest = &rest[digits + 3..];
    let len_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if len_digits == 0 || !rest[len_digits..].starts_with(b"\r\n") {
        return false;
    }
    let name = &rest[len_digits + 2..];
    let n: usize = std::str::from_utf8(&rest[..len_digits])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    (1..=32).contains(&n) && name.iter().take(n).all(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;

//! The server's side of a PostgreSQL connection: each backend message answers the oldest
//! operation the client queued, and ends its unit (span) when the unit's last answer arrives.

use super::{OpKind, Postgres, Startup, typed_len};
use crate::{
    conn::{Stream, SyscallTime},
    protocol::{
        Record,
        db::{DbError, System},
        sql::Dialect,
        wire::{self, Msg},
    },
    stats::Stats,
};

impl Postgres {
    /// Parses server messages, ending units as their answers arrive.
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            match self.startup {
                Startup::AwaitEncryption => {
                    let Some(&answer) = s.head().first() else {
                        return s.clear();
                    };
                    s.consume(1);
                    // 'S'/'G': TLS or GSS follows, opaque to the agent; 'N': plain startup next.
                    self.startup = if answer == b'N' {
                        Startup::Expected
                    } else {
                        Startup::Opaque
                    };
                    continue;
                }
                Startup::Opaque => return s.clear(),
                Startup::Expected | Startup::Authenticating | Startup::Done => {}
            }
            if let Some(resume) = self.server_lost {
                let time = s.time_at(s.pos());
                match (resume, time) {
                    (Some(after), Some(t)) if s.at_syscall_start() && t.enter_ns >= after => {
                        self.server_lost = None;
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
            let (kind, total, body, last) = match wire::message(s, 5, typed_len) {
                Msg::NeedMore => return,
                Msg::Lost => {
                    self.lose_server(stats, out);
                    continue;
                }
                Msg::Ready {
                    total, bytes, last, ..
                } => (bytes[0], total, bytes[5..].to_vec(), last),
            };
            s.consume(total);
            self.last_read = last;
            self.server_message(kind, &body, last, out);
        }
    }

    /// Server framing lost in a large response: the unit being answered ends with the last read
    /// before the client's next message (or close); the other waiting ones cannot be paired.
    pub(super) fn lose_server(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        stats.inc(&stats.db_resyncs);
        self.server_lost = Some(None);
        self.lost_unit = self.answered_unit();
        self.abandon_all(stats, out);
    }

    /// The unit whose answer is being read: that of the oldest pending operation.
    pub(super) fn answered_unit(&self) -> Option<u64> {
        self.pending.iter().find_map(|op| op.unit)
    }

    pub(super) fn server_message(
        &mut self,
        kind: u8,
        body: &[u8],
        at: SyscallTime,
        out: &mut Vec<Record>,
    ) {
        match kind {
            // Notices, parameter status, notifications, key data, auth: no answer to pair.
            b'N' | b'S' | b'A' | b'K' | b'R' | b'v' => {}
            b'D' => {
                if let Some(unit) = self.front_unit()
                    && let Some(u) = self.units.get_mut(&unit)
                {
                    u.rows += 1;
                }
            }
            // An authentication failure answers no query (the server closes next).
            b'E' if self.startup == Startup::Authenticating => {}
            b'E' => {
                let error = error_fields(body);
                // With nothing pending: a startup error (authentication), before any query.
                if let Some(op) = self.pending.pop_front() {
                    if let Some(unit) = op.unit {
                        if let Some(u) = self.units.get_mut(&unit) {
                            u.error = Some(error);
                        }
                        self.finish(unit, at, out);
                    }
                    // The server skips the rest up to Sync (a Query ends at its 'Z').
                    self.skipping = op.kind != OpKind::Query;
                    if op.kind == OpKind::Query {
                        self.pending.push_front(op);
                    }
                }
            }
            b'Z' if self.startup == Startup::Authenticating => {
                self.startup = Startup::Done;
            }
            b'Z' => {
                // Everything before the Sync is over; units without an answer are given up.
                while let Some(op) = self.pending.pop_front() {
                    if let Some(unit) = op.unit {
                        if op.kind == OpKind::Query {
                            self.finish(unit, at, out);
                        } else if self.units.remove(&unit).is_some() {
                            out.push(Record::Abandoned { id: unit });
                        }
                    }
                    if matches!(op.kind, OpKind::Sync | OpKind::Query | OpKind::Other) {
                        break;
                    }
                }
                self.skipping = false;
                // The server is idle: a quarantined client side starts afresh.
                self.quarantined = false;
            }
            _ if self.skipping => {}
            b'1' | b'2' | b'3' | b'n' | b't' | b'T' => {
                // Answers to Parse, Bind, Close and Describe (`t` comes before `T`/`n`).
                if kind == b't' {
                    return;
                }
                if matches!(self.pending.front().map(|o| o.kind), Some(OpKind::Query)) {
                    return; // a simple query's row description
                }
                self.pending.pop_front();
            }
            b'C' | b'I' | b's' => {
                match self.pending.front().map(|o| (o.kind, o.unit)) {
                    // A simple query may hold several statements: it ends at 'Z'.
                    Some((OpKind::Query, _)) => {}
                    Some((OpKind::Execute, unit)) => {
                        self.pending.pop_front();
                        if let Some(unit) = unit {
                            self.finish(unit, at, out);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    pub(super) fn front_unit(&self) -> Option<u64> {
        self.pending
            .iter()
            .find(|op| matches!(op.kind, OpKind::Execute | OpKind::Query))
            .and_then(|op| op.unit)
    }

    /// Ends a unit: its span's exchange.
    pub(super) fn finish(&mut self, id: u64, last: SyscallTime, out: &mut Vec<Record>) {
        if let Some(u) = self.units.remove(&id) {
            out.push(u.finished(
                id,
                System::Postgresql,
                Dialect::Postgres,
                self.namespace.clone(),
                last,
            ));
        }
    }
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse.
fn error_fields(mut b: &[u8]) -> DbError {
    let mut e = DbError {
        code: String::new(),
        message: String::new(),
    };
    while let Some((&tag, rest)) = b.split_first() {
        if tag == 0 {
            break;
        }
        let value = wire::cstr_lossy(rest);
        let skip = value.len() + 1;
        match tag {
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
        b = rest.get(skip..).unwrap_or(&[]);
    }
    e
}

//! The server's side of a MySQL/MariaDB connection: the greeting (server version and
//! capabilities), then each command's answer (OK, ERR, result sets, prepared-statement
//! metadata), ending its unit (span) when the answer is complete.

use super::*;

impl Mysql {
    /// Parses server packets.
    pub fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            if self.phase == Phase::Opaque {
                return s.clear();
            }
            if let Some(resume) = self.server_lost {
                let time = s.time_at(s.pos());
                // An answer starts a syscall read after the command, at sequence number 1.
                let seq1 = s.head().get(3) == Some(&1);
                match (resume, time) {
                    (Some(after), Some(t))
                        if s.at_syscall_start() && t.enter_ns >= after && seq1 =>
                    {
                        self.server_lost = None;
                        self.answer = Answer::First;
                        self.expect_seq = 1;
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
            let commands = self.phase == Phase::Commands && !self.pending.is_empty();
            let out_of_sequence =
                commands && s.head().get(3).is_some_and(|&q| q != self.expect_seq);
            let (total, payload, last) = match wire::message(s, 4, packet_len) {
                Msg::NeedMore => return,
                Msg::Ready {
                    total, bytes, last, ..
                } if !out_of_sequence => (total, bytes.get(4..).unwrap_or(&[]).to_vec(), last),
                _ => {
                    // A header in a gap, or a packet out of sequence: framing is lost.
                    stats.inc(&stats.db_resyncs);
                    self.server_lost = Some(None);
                    self.lost_unit = self.pending.front().and_then(|c| c.unit);
                    self.abandon_all(stats, out);
                    continue;
                }
            };
            let full_len = total - 4;
            s.consume(total);
            self.last_read = last;
            if commands {
                self.expect_seq = self.expect_seq.wrapping_add(1);
            }
            match self.phase {
                Phase::Greeting => self.greeting(&payload),
                Phase::Authenticating => match payload.first() {
                    Some(0x00) | Some(0xff) => self.phase = Phase::Commands,
                    _ => {} // auth switch, more data
                },
                Phase::Commands => self.answer_packet(&payload, full_len, last, out),
                Phase::HandshakeResponse | Phase::Opaque => {}
            }
        }
    }

    pub(super) fn greeting(&mut self, p: &[u8]) {
        if p.first() != Some(&0x0a) {
            self.phase = Phase::Opaque;
            return;
        }
        if let Some((version, _)) = wire::cstr(&p[1..])
            && version.contains("MariaDB")
        {
            self.system = System::Mariadb;
        }
        self.phase = Phase::HandshakeResponse;
    }

    /// One packet of the answer to the oldest pending command.
    pub(super) fn answer_packet(
        &mut self,
        p: &[u8],
        len: u64,
        at: SyscallTime,
        out: &mut Vec<Record>,
    ) {
        let Some(cmd) = self.pending.front() else {
            return; // nothing asked: nothing to pair
        };
        let head = p.first().copied();
        let is_end = head == Some(0xfe) && len < 0xff_ffff;
        match self.answer {
            // The EOF that may close a prepare's definitions answers nothing new.
            Answer::First if is_end && len < 9 => {}
            Answer::First => match head {
                Some(0x00) if cmd.kind == COM_STMT_PREPARE && len >= 12 => {
                    // STMT_PREPARE_OK: id, columns, parameters.
                    let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                    let columns = u16::from_le_bytes([p[5], p[6]]) as u64;
                    let params = u16::from_le_bytes([p[7], p[8]]) as u64;
                    if let Some(sql) = self.pending.front_mut().and_then(|c| c.prepared_sql.take())
                    {
                        if self.statements.len() >= MAX_STATEMENTS {
                            self.statements.clear();
                        }
                        self.statements.insert(id, sql);
                    }
                    let defs = columns + params;
                    if defs == 0 {
                        self.done(at, None, out);
                    } else {
                        // Each definition list may end with an EOF (older protocol): skipped
                        // below as it comes.
                        self.answer = Answer::PrepareDefs(defs);
                    }
                }
                Some(0x00) => {
                    let more = ok_status(p) & SERVER_MORE_RESULTS_EXISTS != 0;
                    if let Some(db) = self.pending.front_mut().and_then(|c| c.init_db.take()) {
                        self.namespace = Some(db);
                    }
                    if !more {
                        self.done(at, None, out);
                    }
                }
                Some(0xff) => self.done(at, Some(err_fields(p)), out),
                Some(0xfb) => self.answer = Answer::LocalInfile,
                _ => match lenenc(p) {
                    Some((n, _)) if n > 0 => self.answer = Answer::Columns(n),
                    _ => self.done(at, None, out),
                },
            },
            Answer::Columns(n) => {
                self.answer = if n > 1 {
                    Answer::Columns(n - 1)
                } else {
                    Answer::AfterColumns
                };
            }
            Answer::AfterColumns if is_end && len < 9 => self.answer = Answer::Rows,
            Answer::AfterColumns | Answer::Rows => {
                if is_end {
                    let more = eof_status(p, len) & SERVER_MORE_RESULTS_EXISTS != 0;
                    if more {
                        self.answer = Answer::First;
                    } else {
                        self.done(at, None, out);
                    }
                } else if head == Some(0xff) {
                    self.done(at, Some(err_fields(p)), out);
                } else {
                    self.answer = Answer::Rows;
                    if let Some(unit) = cmd.unit
                        && let Some(u) = self.units.get_mut(&unit)
                    {
                        u.rows += 1;
                    }
                }
            }
            Answer::PrepareDefs(n) => {
                if !(is_end && len < 9) {
                    if n > 1 {
                        self.answer = Answer::PrepareDefs(n - 1);
                    } else {
                        self.done(at, None, out);
                    }
                }
            }
            Answer::LocalInfile => match head {
                Some(0x00) => self.done(at, None, out),
                Some(0xff) => self.done(at, Some(err_fields(p)), out),
                _ => {}
            },
        }
    }

    /// The oldest command is answered.
    pub(super) fn done(&mut self, at: SyscallTime, error: Option<DbError>, out: &mut Vec<Record>) {
        self.answer = Answer::First;
        self.expect_seq = 1;
        let Some(cmd) = self.pending.pop_front() else {
            return;
        };
        if let Some(unit) = cmd.unit {
            if let Some(u) = self.units.get_mut(&unit) {
                u.error = error;
            }
            self.finish(unit, at, out);
        }
    }

    pub(super) fn finish(&mut self, id: u64, last: SyscallTime, out: &mut Vec<Record>) {
        if let Some(u) = self.units.remove(&id) {
            out.push(u.finished(
                id,
                self.system,
                Dialect::Mysql,
                self.namespace.clone(),
                last,
            ));
        }
    }
}

/// Status flags of an OK packet (after affected rows and last insert id).
fn ok_status(p: &[u8]) -> u16 {
    let rest = p
        .get(1..)
        .and_then(lenenc)
        .and_then(|(_, r)| lenenc(r))
        .map(|(_, r)| r);
    rest.and_then(|r| r.get(..2))
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

/// Status flags of an EOF packet (warnings, then status), or of an OK packet sent with the
/// EOF header.
fn eof_status(p: &[u8], len: u64) -> u16 {
    if len < 9 {
        p.get(3..5).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    } else {
        ok_status(p)
    }
}

/// Error number (as `db.response.status_code`) and message of an ERR packet.
fn err_fields(p: &[u8]) -> DbError {
    let code = p.get(1..3).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let mut msg = p.get(3..).unwrap_or(&[]);
    if msg.first() == Some(&b'#') {
        msg = msg.get(6..).unwrap_or(&[]);
    }
    DbError {
        code: code.to_string(),
        message: String::from_utf8_lossy(msg).into_owned(),
    }
}

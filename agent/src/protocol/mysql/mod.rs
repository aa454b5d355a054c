//! MySQL and MariaDB client/server protocol, from the client's side: one CLIENT span per
//! `COM_QUERY` and per `COM_STMT_EXECUTE` (with the SQL of the statement `COM_STMT_PREPARE`
//! prepared), paired with the server's answers in order.
//!
//! Every packet is a 3-byte length, a sequence number and a payload. A command starts at
//! sequence 0; its answer is an OK, an ERR, or result sets (column count, column definitions,
//! an optional EOF, rows, a terminating EOF or OK), possibly several when the server says more
//! results follow. The handshake gives the server's flavour (MariaDB or MySQL) and the default
//! database; `COM_INIT_DB` changes it. When a packet header falls in a capture gap (large
//! results), the answer ends with the last read before the client's next command.

use std::collections::{HashMap, VecDeque};

use super::{
    Record,
    db::{self, DbError, System},
    sql::Dialect,
    wire::{self, Msg},
};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// Prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 256;

fn packet_len(h: &[u8]) -> Option<u64> {
    Some(u32::from_le_bytes([h[0], h[1], h[2], 0]) as u64 + 4)
}

/// A length-encoded integer and the bytes after it.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xfa => return Some((first as u64, rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), &rest[n..]))
}

/// Where the answer to the current command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The first packet decides: OK, ERR or a result set.
    First,
    /// `n` column definitions still to come.
    Columns(u64),
    /// After the column definitions: an EOF may come (older protocol), else rows.
    AfterColumns,
    Rows,
    /// A prepared statement's answer: parameter and column definitions to skip.
    PrepareDefs(u64),
    /// `LOAD DATA LOCAL`: the client sends a file; the server then says OK or ERR.
    LocalInfile,
}

#[derive(Debug)]
struct Command {
    kind: u8,
    /// The span of this command, if it has one.
    unit: Option<u64>,
    /// For a prepare: the SQL, remembered under the statement id the server gives.
    prepared_sql: Option<String>,
    /// For COM_INIT_DB: the database it switches to.
    init_db: Option<String>,
}

/// A span in progress.
type Unit = db::SqlUnit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// From the start: the server greets first.
    Greeting,
    /// The client answers the greeting (or asks for TLS).
    HandshakeResponse,
    /// Authentication round trips until the server's OK or ERR.
    Authenticating,
    Commands,
    /// TLS or a protocol the agent does not follow.
    Opaque,
}

/// Parse state of one MySQL connection, client side.
#[derive(Debug)]
pub struct Mysql {
    phase: Phase,
    system: System,
    namespace: Option<String>,
    statements: HashMap<u32, String>,
    pending: VecDeque<Command>,
    answer: Answer,
    /// Sequence number the next answer packet must carry (an answer starts at 1).
    expect_seq: u8,
    units: HashMap<u64, Unit>,
    next_id: u64,
    /// Server framing lost: like PostgreSQL's (see there).
    server_lost: Option<Option<u64>>,
    lost_unit: Option<u64>,
    last_read: SyscallTime,
}

impl Mysql {
    pub fn new(from_start: bool) -> Self {
        Self {
            phase: if from_start {
                Phase::Greeting
            } else {
                Phase::Commands
            },
            system: System::Mysql,
            namespace: None,
            statements: HashMap::new(),
            pending: VecDeque::new(),
            answer: Answer::First,
            expect_seq: 1,
            units: HashMap::new(),
            next_id: 0,
            server_lost: None,
            lost_unit: None,
            last_read: SyscallTime::default(),
        }
    }

    /// True once the connection turned to TLS: its bytes are opaque.
    pub fn is_opaque(&self) -> bool {
        self.phase == Phase::Opaque
    }

    /// Parses client packets.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        while s.available() > 0 {
            if self.phase == Phase::Opaque {
                return s.clear();
            }
            let (total, payload, first) = match wire::message(s, 4, packet_len) {
                Msg::NeedMore => return,
                Msg::Lost => {
                    // Resume at the next syscall; what is waiting cannot be paired any more.
                    stats.inc(&stats.db_resyncs);
                    self.abandon_all(stats, out);
                    if !s.skip_to_next_syscall() {
                        s.clear();
                    }
                    continue;
                }
                Msg::Ready {
                    total,
                    bytes,
                    first,
                    ..
                } => (total, bytes.get(4..).unwrap_or(&[]).to_vec(), first),
            };
            s.consume(total);
            if self.server_lost == Some(None) {
                if let Some(unit) = self.lost_unit.take() {
                    let last = self.last_read;
                    self.finish(unit, last, out);
                }
                self.server_lost = Some(Some(first.exit_ns));
            }
            match self.phase {
                Phase::HandshakeResponse => self.handshake_response(&payload),
                // Authentication data and anything before the greeting answer no command.
                Phase::Greeting | Phase::Authenticating | Phase::Opaque => {}
                Phase::Commands => self.command(&payload, first, out),
            }
        }
    }

    /// The client's answer to the greeting: its capabilities and default database.
    fn handshake_response(&mut self, p: &[u8]) {
        let Some(caps) = p
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return;
        };
        if caps & CLIENT_SSL != 0 && p.len() <= 32 {
            // An SSLRequest: TLS follows.
            self.phase = Phase::Opaque;
            return;
        }
        self.phase = Phase::Authenticating;
        let Some(rest) = p.get(32..) else {
            return;
        };
        let Some((_user, rest)) = wire::cstr(rest) else {
            return;
        };
        let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
            lenenc(rest).and_then(|(n, r)| r.get(n as usize..))
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.split_first().and_then(|(&n, r)| r.get(n as usize..))
        } else {
            wire::cstr(rest).map(|(_, r)| r)
        };
        if caps & CLIENT_CONNECT_WITH_DB != 0
            && let Some((db, _)) = rest.and_then(wire::cstr)
            && !db.is_empty()
        {
            self.namespace = Some(db.to_string());
        }
    }

    fn command(&mut self, p: &[u8], first: SyscallTime, out: &mut Vec<Record>) {
        let Some((&kind, body)) = p.split_first() else {
            return;
        };
        let text = || String::from_utf8_lossy(body).into_owned();
        let cmd = match kind {
            COM_QUERY => {
                let unit = self.start_unit(Some(text()), first, out);
                Command {
                    kind,
                    unit: Some(unit),
                    prepared_sql: None,
                    init_db: None,
                }
            }
            COM_STMT_PREPARE => Command {
                kind,
                unit: None,
                prepared_sql: Some(text()),
                init_db: None,
            },
            COM_STMT_EXECUTE => {
                let query = body
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .and_then(|id| self.statements.get(&id).cloned());
                let unit = self.start_unit(query, first, out);
                Command {
                    kind,
                    unit: Some(unit),
                    prepared_sql: None,
                    init_db: None,
                }
            }
            COM_INIT_DB => Command {
                kind,
                unit: None,
                prepared_sql: None,
                init_db: Some(text()),
            },
            COM_STMT_CLOSE => {
                if let Some(b) = body.get(..4) {
                    self.statements
                        .remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                return; // no answer
            }
            // No answer either.
            COM_QUIT | COM_STMT_SEND_LONG_DATA => return,
            _ => Command {
                kind,
                unit: None,
                prepared_sql: None,
                init_db: None,
            },
        };
        self.pending.push_back(cmd);
    }

    fn start_unit(
        &mut self,
        query: Option<String>,
        first: SyscallTime,
        out: &mut Vec<Record>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        out.push(db::started(id, first));
        self.units.insert(id, Unit::new(query, first));
        id
    }

    fn abandon_all(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        self.pending.clear();
        self.answer = Answer::First;
        self.expect_seq = 1;
        db::abandon_units(&mut self.units, self.lost_unit, stats, out);
    }

    /// The connection closed.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if let Some(unit) = self.lost_unit.take() {
            let last = self.last_read;
            self.finish(unit, last, out);
        }
        self.abandon_all(stats, out);
    }
}

/// Whether the first bytes look like MySQL: the server's greeting (from the connection's
/// start, on the server's side) or a client command of sequence 0 filling its packet
/// (mid-stream, on the client's side).
pub fn looks_like_greeting(server: &[u8]) -> bool {
    if server.len() < 6 || server[3] != 0 || server[4] != 0x0a {
        return false;
    }
    let len = u32::from_le_bytes([server[0], server[1], server[2], 0]) as usize;
    let version = &server[5..server.len().min(5 + len.saturating_sub(1))];
    let end = version.iter().position(|&c| c == 0);
    (10..1024).contains(&len)
        && end.is_some_and(|e| e >= 3 && version[..e].iter().all(|c| c.is_ascii_graphic()))
}

/// A client command of sequence 0, exactly one packet (mid-stream detection).
pub fn looks_like_command(client: &[u8]) -> bool {
    if client.len() < 5 || client[3] != 0 {
        return false;
    }
    let len = u32::from_le_bytes([client[0], client[1], client[2], 0]) as usize;
    if len + 4 != client.len() {
        return false;
    }
    match client[4] {
        COM_QUERY | COM_STMT_PREPARE => {
            len >= 5
                && client[5..]
                    .iter()
                    .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace() || c >= 0x80)
        }
        _ => false,
    }
}

mod server;
#[cfg(test)]
mod tests;

//! PostgreSQL frontend/backend protocol v3, from the client's side: one CLIENT span per simple
//! query (`Q`) and per extended-protocol execution (`Parse`/`Bind`/`Execute`, prepared
//! statements by name included), paired with the server's answers strictly in order.
//!
//! Client messages are queued as operations, each tagged with the span ("unit") it belongs to;
//! every server message answers the oldest operation (`1` a Parse, `2` a Bind, `C`/`I`/`s` an
//! Execute, `Z` a Sync or a Query). After an error the server skips everything up to the next
//! Sync, and so does the pairing. When a server message header falls in a capture gap (large
//! results), the response ends with the last read before the client's next message; when client
//! framing is lost, pairing stops until the server is idle (`Z`). The database name comes from
//! the startup message, when the connection was seen from its start.

use std::collections::{HashMap, VecDeque};

use super::{
    Record, db,
    wire::{self, Msg, cstr},
};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Longest startup message accepted.
const MAX_STARTUP: u32 = 10_000;
/// Named statements and portals remembered per connection.
const MAX_NAMES: usize = 256;
/// Operations waiting for the server, per connection.
const MAX_PENDING: usize = 1024;

/// Client message types that get an answer of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    Other,
}

#[derive(Debug)]
struct Op {
    kind: OpKind,
    /// The span this operation belongs to, if any.
    unit: Option<u64>,
}

/// A span in progress.
type Unit = db::SqlUnit;

/// How the start of the connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    /// Seen from its start: a startup message (or SSL/GSS request) comes first.
    Expected,
    /// SSL or GSS encryption asked for: the server's one-byte answer decides.
    AwaitEncryption,
    /// Startup message sent: the server authenticates until its first `Z`, which answers
    /// no query.
    Authenticating,
    /// Messages are typed from here on.
    Done,
    /// Encrypted (or a cancel request): nothing more to read.
    Opaque,
}

/// Parse state of one PostgreSQL connection, client side.
#[derive(Debug)]
pub struct Postgres {
    startup: Startup,
    namespace: Option<String>,
    /// Statement name → SQL ("" is the unnamed statement).
    statements: HashMap<String, String>,
    /// Portal name → statement name.
    portals: HashMap<String, String>,
    pending: VecDeque<Op>,
    /// A unit being prepared (Parse/Bind/Describe seen, no Execute yet): its id and first
    /// message.
    open: Option<(u64, SyscallTime)>,
    /// Units started (reported) and not yet ended.
    units: HashMap<u64, Unit>,
    next_id: u64,
    /// After an error: answers are skipped up to the next Sync's `Z`.
    skipping: bool,
    /// Client framing lost: client messages are skipped until the server is idle (`Z`).
    quarantined: bool,
    /// Server framing lost: `Some(None)` until the client's next message, then
    /// `Some(Some(t))`: the server is read again from a syscall entered at or after `t`.
    server_lost: Option<Option<u64>>,
    /// The unit whose answer was being read when server framing was lost: it ends with the
    /// last read before the client's next message.
    lost_unit: Option<u64>,
    /// The syscall of the last server bytes read.
    last_read: SyscallTime,
}

fn typed_len(h: &[u8]) -> Option<u64> {
    let n = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    (4..1 << 30).contains(&n).then_some(n as u64 + 1)
}

/// Remembers `name → value`, bounded.
fn remember(map: &mut HashMap<String, String>, name: &str, value: String) {
    if map.len() >= MAX_NAMES && !map.contains_key(name) {
        map.clear();
    }
    map.insert(name.to_string(), value);
}

impl Postgres {
    /// `from_start`: the connection was seen from its first byte (the startup message).
    pub fn new(from_start: bool) -> Self {
        Self {
            startup: if from_start {
                Startup::Expected
            } else {
                Startup::Done
            },
            namespace: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            open: None,
            units: HashMap::new(),
            next_id: 0,
            skipping: false,
            quarantined: false,
            server_lost: None,
            lost_unit: None,
            last_read: SyscallTime::default(),
        }
    }

    /// True once the connection turned to TLS/GSS (or was a cancel request): its bytes are
    /// opaque.
    pub fn is_opaque(&self) -> bool {
        self.startup == Startup::Opaque
    }

    /// Parses client messages.
    pub fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
        loop {
            match self.startup {
                Startup::Opaque => return s.clear(),
                Startup::AwaitEncryption => return,
                Startup::Expected => {
                    if !self.read_startup(s) {
                        return;
                    }
                    continue;
                }
                Startup::Authenticating | Startup::Done => {}
            }
            if s.available() == 0 {
                return;
            }
            if self.quarantined {
                // Resumes with the first message the client sends after the server is idle.
                return s.clear();
            }
            let (kind, total, body, first) = match wire::message(s, 5, typed_len) {
                Msg::NeedMore => return,
                Msg::Lost => {
                    self.lose_client(stats, out);
                    continue;
                }
                Msg::Ready {
                    total,
                    bytes,
                    first,
                    ..
                } => (bytes[0], total, bytes[5..].to_vec(), first),
            };
            s.consume(total);
            if self.server_lost == Some(None) {
                // The lost answer ended before this message; the server's next read is new.
                if let Some(unit) = self.lost_unit.take() {
                    let last = self.last_read;
                    self.finish(unit, last, out);
                }
                self.server_lost = Some(Some(first.exit_ns));
            }
            self.client_message(kind, &body, first, stats, out);
        }
    }

    /// The startup message (or an SSL/GSS/cancel request). Returns false to wait for more.
    fn read_startup(&mut self, s: &mut Stream) -> bool {
        let untyped = |h: &[u8]| {
            let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            (8..=MAX_STARTUP).contains(&n).then_some(n as u64)
        };
        let (total, bytes) = match wire::message(s, 8, untyped) {
            Msg::NeedMore => return false,
            Msg::Lost => {
                self.startup = Startup::Opaque;
                return true;
            }
            Msg::Ready { total, bytes, .. } => (total, bytes.to_vec()),
        };
        s.consume(total);
        let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        self.startup = match code {
            PROTOCOL_3 => {
                self.read_parameters(&bytes[8..]);
                Startup::Authenticating
            }
            SSL_REQUEST | GSSENC_REQUEST => Startup::AwaitEncryption,
            _ => Startup::Opaque,
        };
        true
    }

    /// `user` and `database` from the startup parameters; the database defaults to the user.
    fn read_parameters(&mut self, mut b: &[u8]) {
        let (mut user, mut database) = (None, None);
        while let Some((key, rest)) = cstr(b) {
            if key.is_empty() {
                break;
            }
            let Some((value, rest)) = cstr(rest) else {
                break;
            };
            match key {
                "user" => user = Some(value.to_string()),
                "database" => database = Some(value.to_string()),
                _ => {}
            }
            b = rest;
        }
        self.namespace = database.or(user);
    }

    fn client_message(
        &mut self,
        kind: u8,
        body: &[u8],
        first: SyscallTime,
        stats: &Stats,
        out: &mut Vec<Record>,
    ) {
        let op = match kind {
            b'Q' => {
                self.open = None;
                let id = self.start_unit(Some(wire::cstr_lossy(body)), first, out);
                return self.push(OpKind::Query, Some(id), stats, out);
            }
            b'P' => {
                if let Some((name, rest)) = cstr(body) {
                    remember(&mut self.statements, name, wire::cstr_lossy(rest));
                }
                OpKind::Parse
            }
            b'B' => {
                if let Some((portal, rest)) = cstr(body)
                    && let Some((stmt, _)) = cstr(rest)
                {
                    remember(&mut self.portals, portal, stmt.to_string());
                }
                OpKind::Bind
            }
            b'E' => {
                let portal = cstr(body).map_or("", |(p, _)| p);
                let query = self
                    .portals
                    .get(portal)
                    .and_then(|stmt| self.statements.get(stmt))
                    .cloned();
                // The unit began with the message that prepared it.
                let (id, start) = self.open.take().unwrap_or_else(|| {
                    let id = self.next_id;
                    self.next_id += 1;
                    (id, first)
                });
                self.report_start(id, query, start, out);
                return self.push(OpKind::Execute, Some(id), stats, out);
            }
            b'D' => OpKind::Describe,
            b'C' => OpKind::Close,
            b'S' => {
                // A prepare without an execute gives no span.
                self.open = None;
                OpKind::Sync
            }
            // Flush and copy messages get no answer of their own; Terminate ends it all.
            b'H' | b'd' | b'c' | b'f' | b'X' => return,
            _ => OpKind::Other,
        };
        let unit = match op {
            OpKind::Parse | OpKind::Bind | OpKind::Describe => {
                let next = &mut self.next_id;
                let (id, _) = *self.open.get_or_insert_with(|| {
                    let id = *next;
                    *next += 1;
                    (id, first)
                });
                Some(id)
            }
            _ => None,
        };
        self.push(op, unit, stats, out);
    }

    /// A new unit, reported as started.
    fn start_unit(
        &mut self,
        query: Option<String>,
        first: SyscallTime,
        out: &mut Vec<Record>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.report_start(id, query, first, out);
        id
    }

    fn report_start(
        &mut self,
        id: u64,
        query: Option<String>,
        first: SyscallTime,
        out: &mut Vec<Record>,
    ) {
        out.push(db::started(id, first));
        self.units.insert(id, Unit::new(query, first));
    }

    fn push(&mut self, kind: OpKind, unit: Option<u64>, stats: &Stats, out: &mut Vec<Record>) {
        if self.pending.len() >= MAX_PENDING {
            // The server is not answering what we think: start over.
            self.lose_client(stats, out);
            return;
        }
        self.pending.push_back(Op { kind, unit });
    }

    /// Client framing lost: every waiting unit is given up and pairing waits for the server to
    /// be idle.
    fn lose_client(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        stats.inc(&stats.db_resyncs);
        self.abandon_all(stats, out);
        self.quarantined = true;
    }

    /// Gives up every unit waiting for an answer (except one whose answer was lost in a gap,
    /// which still ends).
    fn abandon_all(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        self.pending.clear();
        self.open = None;
        self.skipping = false;
        db::abandon_units(&mut self.units, self.lost_unit, stats, out);
    }

    /// The connection closed: an answer cut short by a gap ends here; units still waiting are
    /// given up.
    pub fn close(&mut self, stats: &Stats, out: &mut Vec<Record>) {
        if let Some(unit) = self.lost_unit.take() {
            let last = self.last_read;
            self.finish(unit, last, out);
        }
        self.abandon_all(stats, out);
    }
}

/// Whether the first bytes of the client's side look like PostgreSQL: a startup message or SSL
/// request (from the connection's start), or a simple-query / parse message (mid-stream).
pub fn looks_like(client: &[u8], from_start: bool) -> bool {
    if from_start {
        if client.len() < 8 {
            return false;
        }
        let len = u32::from_be_bytes([client[0], client[1], client[2], client[3]]);
        let code = u32::from_be_bytes([client[4], client[5], client[6], client[7]]);
        return match code {
            PROTOCOL_3 => (8..=MAX_STARTUP).contains(&len),
            SSL_REQUEST | GSSENC_REQUEST => len == 8,
            _ => false,
        };
    }
    // Mid-stream: a whole Query or Parse message with a printable, NUL-terminated statement.
    let Some((&kind, rest)) = client.split_first() else {
        return false;
    };
    if !matches!(kind, b'Q' | b'P') || rest.len() < 5 {
        return false;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len < 5 || len > client.len() - 1 && client.len() < 4096 {
        return false;
    }
    let body = &rest[4..len.min(rest.len())];
    let text = if kind == b'P' {
        body.iter()
            .position(|&c| c == 0)
            .map_or(&[][..], |i| &body[i + 1..])
    } else {
        body
    };
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    end >= 4
        && text[..end]
            .iter()
            .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace() || c >= 0x80)
}

mod server;
#[cfg(test)]
mod tests;

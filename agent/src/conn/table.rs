//! The table of live connections. Each socket event lands on its connection: data goes into the
//! direction's [`Stream`], the connection's role is settled (from accept/connect, or from which
//! side sends requests), its protocol detected, and the parser's exchanges handed out together
//! with who talked to whom.

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{AF_INET, ConnInfo, ROLE_CLIENT, ROLE_SERVER};

use super::{SyscallTime, connection::Conn};
use crate::{
    capture::{Direction, EventKind, SocketEvent},
    protocol::Record,
    stats::Stats,
    tls::hello::Version,
};

/// Which end of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// It accepted the connection: it receives requests.
    Server,
    /// It connected: it sends requests.
    Client,
}

/// Identity of a connection: the process, its fd, and the kernel socket (so a reused fd number
/// starts a new connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
    pub sock: u64,
}

/// An address and port.
pub type Endpoint = SocketAddr;

/// Both ends of a connection, seen from the traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub local: Endpoint,
    pub remote: Endpoint,
}

impl Peer {
    /// The connection as (client end, server end), whichever end the traced process is.
    pub fn tuple(&self, role: Role) -> Tuple {
        match role {
            Role::Client => Tuple {
                client: self.local,
                server: self.remote,
            },
            Role::Server => Tuple {
                client: self.remote,
                server: self.local,
            },
        }
    }
}

/// A TCP connection as (client end, server end): the key under which the two traced processes
/// of one connection find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub client: Endpoint,
    pub server: Endpoint,
}

/// Two words per tuple: the derived hash of two `SocketAddr`s fed the hasher a dozen times
/// (variant, address bytes with their length, port), ~130 instructions, and an exchange
/// between traced processes looks its tuple up several times.
impl std::hash::Hash for Tuple {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // An address with its port in the top 16 bits (an IPv4 address takes the low 32, an
        // IPv6 one is folded). Equal tuples hash alike; flow label and scope are left out.
        let word = |e: &Endpoint| {
            let ip = match e.ip() {
                IpAddr::V4(v4) => u128::from(v4.to_bits()),
                IpAddr::V6(v6) => v6.to_bits(),
            };
            ip ^ (u128::from(e.port()) << 112)
        };
        h.write_u128(word(&self.client));
        h.write_u128(word(&self.server));
    }
}

/// The connection a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnMeta {
    pub tgid: u32,
    /// Unique for the agent's lifetime: this instance of the connection.
    pub id: u64,
    pub role: Role,
    pub peer: Peer,
    /// On a server connection: the client end is a connection of a traced process on this host
    /// (so its CLIENT span will be seen too).
    pub peer_traced: bool,
    /// The bytes came from the TLS probes: the connection is encrypted.
    pub tls: Option<TlsMeta>,
}

/// What is known of an encrypted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsMeta {
    /// The version the server chose, when its ServerHello was seen.
    pub version: Option<Version>,
}

/// A protocol record with the connection it travelled on.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub conn: ConnMeta,
    pub record: Record,
}

/// Limits of the table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections tracked at once; the least recently active is evicted beyond it.
    pub max_conns: usize,
    /// Most captured bytes buffered per direction of a connection.
    pub stream_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_conns: 16_384,
            stream_bytes: 64 * 1024,
        }
    }
}

/// All live connections of the traced processes.
#[derive(Debug)]
pub struct ConnTable {
    conns: HashMap<ConnKey, Conn>,
    /// (tgid, fd) → the socket it currently refers to.
    fds: HashMap<(u32, i32), u64>,
    /// (local, remote) of every live client connection of a traced process.
    clients: HashSet<Tuple>,
    /// Connections whose bytes are of no use, for the kernel to stop shipping.
    ignored: Vec<(ConnKey, u8)>,
    /// Records a connection just completed, before they get its metadata (kept to reuse).
    records: Vec<Record>,
    next_id: u64,
    limits: Limits,
}

/// Converts the kernel's address bytes.
fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> Endpoint {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        let v6 = Ipv6Addr::from(*addr);
        // An IPv4 peer of a dual-stack socket is shown as IPv4, as users expect.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    SocketAddr::new(ip, port)
}

fn peer_of(info: &ConnInfo) -> Peer {
    Peer {
        local: endpoint(info.family, &info.laddr, info.lport),
        remote: endpoint(info.family, &info.raddr, info.rport),
    }
}

fn role_of(info: &ConnInfo) -> Option<Role> {
    match info.role {
        ROLE_SERVER => Some(Role::Server),
        ROLE_CLIENT => Some(Role::Client),
        _ => None,
    }
}

impl ConnTable {
    pub fn new(limits: Limits) -> Self {
        Self {
            conns: HashMap::new(),
            fds: HashMap::new(),
            clients: HashSet::new(),
            ignored: Vec::new(),
            records: Vec::new(),
            next_id: 0,
            limits,
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Applies one event; the records it completes are appended to `out`.
    pub fn handle(&mut self, ev: &SocketEvent, stats: &Stats, out: &mut Vec<ConnRecord>) {
        tracing::trace!(
            pid = ev.tgid,
            tid = ev.tid,
            fd = ev.fd,
            kind = ?ev.kind,
            len = ev.len,
            captured = ev.payload.len(),
            "socket event"
        );
        let key = ConnKey {
            tgid: ev.tgid,
            fd: ev.fd,
            sock: ev.conn.sock,
        };
        // A data record of a known connection (the common case) needs one lookup: its fd still
        // refers to its socket, since any record of another socket on that fd removed it.
        if let EventKind::Data { direction } = ev.kind
            && self.conns.contains_key(&key)
        {
            return self.data(key, ev, direction, stats, out);
        }
        // A new socket behind a known fd: the old connection is over.
        if let Some(old) = self.fds.insert((ev.tgid, ev.fd), ev.conn.sock)
            && old != ev.conn.sock
        {
            self.remove(ConnKey { sock: old, ..key }, stats, out);
        }
        match ev.kind {
            EventKind::Open => {
                self.remove(key, stats, out);
                self.insert(key, ev, true, stats, out);
            }
            EventKind::Close => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.last_ns = ev.exit_ns;
                }
                self.fds.remove(&(ev.tgid, ev.fd));
                self.remove(key, stats, out);
            }
            EventKind::Data { direction } => {
                self.insert(key, ev, false, stats, out);
                self.data(key, ev, direction, stats, out);
            }
        }
    }

    /// Bytes of the connection `key`, which is in the table: one lookup, and the records it
    /// completes go out with its metadata.
    fn data(
        &mut self,
        key: ConnKey,
        ev: &SocketEvent,
        direction: Direction,
        stats: &Stats,
        out: &mut Vec<ConnRecord>,
    ) {
        let ConnTable {
            conns,
            clients,
            ignored,
            records,
            ..
        } = self;
        let Some(conn) = conns.get_mut(&key) else {
            return;
        };
        conn.last_ns = ev.exit_ns;
        if ev.tls && !conn.tls {
            conn.start_tls();
            stats.inc(&stats.conns_tls);
        }
        // Ciphertext (the plaintext comes from the TLS probes), or an unparsed protocol.
        if (conn.tls && !ev.tls) || conn.is_other() {
            return;
        }
        let time = SyscallTime {
            enter_ns: ev.enter_ns,
            exit_ns: ev.exit_ns,
            tid: ev.tid,
        };
        let stream = match direction {
            Direction::Ingress => &mut conn.ingress,
            Direction::Egress => &mut conn.egress,
        };
        // SAFETY: `ev.payload` stays where the kernel wrote it until this call returns, and
        // `own` below is called before that; nothing in between sends or awaits.
        let dropped = unsafe { stream.push_borrowed(ev.payload, ev.len, time) };
        stats.add(&stats.stream_bytes_dropped, dropped as u64);
        let had_role = conn.role.is_some();
        conn.process(stats, records);
        match direction {
            Direction::Ingress => conn.ingress.own(),
            Direction::Egress => conn.egress.own(),
        }
        if !had_role && conn.role == Some(Role::Client) {
            clients.insert(conn.peer.tuple(Role::Client));
        }
        let wanted = conn.wanted_ignore();
        if wanted & !conn.ignored != 0 {
            conn.ignored = wanted;
            if ignored.len() < 4096 {
                ignored.push((key, wanted));
            }
        }
        attach_conn(clients, key.tgid, conn, records, out);
    }

    /// Connections found of no use since the last call, for the kernel to stop shipping
    /// their bytes.
    pub fn take_ignored(&mut self) -> Vec<(ConnKey, u8)> {
        std::mem::take(&mut self.ignored)
    }

    /// Ends every connection (at shutdown): responses delimited by close are completed.
    pub fn close_all(&mut self, stats: &Stats, out: &mut Vec<ConnRecord>) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, stats, out);
        }
        self.fds.clear();
    }

    /// Ends every connection of a process that exited (its sockets closed without `close`).
    pub fn drop_process(&mut self, tgid: u32, stats: &Stats, out: &mut Vec<ConnRecord>) {
        let keys: Vec<_> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for key in keys {
            stats.inc(&stats.conns_ended_by_exit);
            self.fds.remove(&(key.tgid, key.fd));
            self.remove(key, stats, out);
        }
    }

    /// Drops connections idle since before `cutoff_ns` (monotonic) or whose process is gone;
    /// returns the processes found gone.
    pub fn expire(
        &mut self,
        cutoff_ns: u64,
        alive: impl Fn(u32) -> bool,
        stats: &Stats,
        out: &mut Vec<ConnRecord>,
    ) -> Vec<u32> {
        let mut living: HashMap<u32, bool> = HashMap::new();
        let stale: Vec<_> = self
            .conns
            .iter()
            .filter(|(k, c)| {
                c.last_ns < cutoff_ns || !*living.entry(k.tgid).or_insert_with(|| alive(k.tgid))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.fds.remove(&(key.tgid, key.fd));
            self.remove(key, stats, out);
        }
        living
            .into_iter()
            .filter(|(_, alive)| !alive)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    fn insert(
        &mut self,
        key: ConnKey,
        ev: &SocketEvent,
        from_start: bool,
        stats: &Stats,
        out: &mut Vec<ConnRecord>,
    ) {
        if self.conns.len() >= self.limits.max_conns
            && let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_ns)
                .map(|(k, _)| *k)
        {
            stats.inc(&stats.conns_evicted);
            self.remove(oldest, stats, out);
        }
        let role = role_of(&ev.conn);
        let peer = peer_of(&ev.conn);
        if role == Some(Role::Client) {
            self.clients.insert(peer.tuple(Role::Client));
        }
        self.next_id += 1;
        self.conns.insert(
            key,
            Conn::new(
                self.next_id,
                role,
                from_start,
                peer,
                self.limits.stream_bytes,
                ev.exit_ns,
            ),
        );
    }

    fn remove(&mut self, key: ConnKey, stats: &Stats, out: &mut Vec<ConnRecord>) {
        if let Some(mut conn) = self.conns.remove(&key) {
            if conn.role == Some(Role::Client) {
                self.clients.remove(&conn.peer.tuple(Role::Client));
            }
            conn.close(stats, &mut self.records);
            attach_conn(&self.clients, key.tgid, &conn, &mut self.records, out);
        }
    }
}

/// Moves a connection's records to `out`, each with the connection's metadata.
fn attach_conn(
    clients: &HashSet<Tuple>,
    tgid: u32,
    conn: &Conn,
    records: &mut Vec<Record>,
    out: &mut Vec<ConnRecord>,
) {
    if records.is_empty() {
        return;
    }
    let Some(role) = conn.role else {
        records.clear();
        return;
    };
    let peer_traced = role == Role::Server && clients.contains(&conn.peer.tuple(Role::Server));
    let meta = ConnMeta {
        tgid,
        id: conn.id,
        role,
        peer: conn.peer,
        peer_traced,
        tls: conn.tls.then_some(TlsMeta {
            version: conn.tls_version,
        }),
    };
    out.extend(
        records
            .drain(..)
            .map(|record| ConnRecord { conn: meta, record }),
    );
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;

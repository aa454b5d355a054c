//! The records of one benchmark run, byte for byte as the kernel writes them into the ring
//! buffer. Two workloads, chosen with `PIPELINE_WORKLOAD`:
//!
//! - `nginx` (the default): nginx's side of `wrk -c50`, a 51-byte request read and a 251-byte
//!   response written on 50 keep-alive connections, one SERVER span a request;
//! - `service`: the Python service of `cargo xtask bench` as the agent sees it, each request
//!   read on one of 8 worker threads calling an HTTP backend (`requests`' headers) and Redis
//!   (`GET`) on that thread's own keep-alive connections before it answers: a SERVER span and
//!   two CLIENT spans, its children, a request. This is the path of client, database and
//!   in-process linking work that the nginx workload never takes.

use agent_common::{
    AF_INET, ConnInfo, DIR_EGRESS, DIR_INGRESS, EVENT_DATA, EVENT_OPEN, EventHeader, ROLE_CLIENT,
    ROLE_SERVER, syscall,
};

/// Which traffic a run replays.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Nginx,
    Service,
}

/// One socket of the traced process, as its records carry it.
#[derive(Clone, Copy)]
struct Socket {
    tid: u32,
    fd: i32,
    role: u8,
    lport: u16,
    rport: u16,
}

/// Keep-alive connections of the nginx workload, as `wrk -c50`.
const NGINX_CONNECTIONS: u32 = 50;
/// Kernel time between two nginx requests (40 000 requests a second).
const NGINX_GAP_NS: u64 = 25_000;
/// What `wrk` sends.
const NGINX_REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";
/// What nginx answers (its headers for a 3-byte static file).
const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Mon, 30 Nov 2026 16:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\
Last-Modified: Mon, 30 Nov 2026 15:00:00 GMT\r\nConnection: keep-alive\r\n\
ETag: \"6925e9e0-3\"\r\nAccept-Ranges: bytes\r\n\r\nok\n";

/// Worker threads of the service workload (waitress's default is 4; the benchmark runs 8).
const SERVICE_THREADS: u32 = 8;
/// Kernel time between two service requests.
const SERVICE_GAP_NS: u64 = 50_000;

impl Workload {
    /// From `PIPELINE_WORKLOAD` (`nginx` when unset).
    pub fn from_env() -> Self {
        match std::env::var("PIPELINE_WORKLOAD").as_deref() {
            Err(_) | Ok("nginx") => Workload::Nginx,
            Ok("service") => Workload::Service,
            Ok(other) => panic!("PIPELINE_WORKLOAD is nginx or service, not {other:?}"),
        }
    }

    /// What a run replays, for the benchmark's heading.
    pub fn describe(self) -> String {
        match self {
            Workload::Nginx => {
                format!("nginx-like HTTP/1.1 exchanges on {NGINX_CONNECTIONS} connections")
            }
            Workload::Service => format!(
                "a service's requests on {SERVICE_THREADS} threads, each calling HTTP and Redis \
                 (3 spans a request)"
            ),
        }
    }

    /// Requests per measured run (about the same work per run for both).
    pub fn requests(self) -> u32 {
        match self {
            Workload::Nginx => 50_000,
            Workload::Service => 20_000,
        }
    }

    /// Spans every request makes.
    pub fn spans_per_request(self) -> u64 {
        match self {
            Workload::Nginx => 1,
            Workload::Service => 3,
        }
    }

    /// The records of one run, starting at kernel time `start_ns`: each connection opened,
    /// then the requests.
    pub fn records(self, start_ns: u64) -> Vec<Vec<u8>> {
        match self {
            Workload::Nginx => nginx(start_ns),
            Workload::Service => service(start_ns),
        }
    }
}

fn nginx(start_ns: u64) -> Vec<Vec<u8>> {
    let tgid = std::process::id();
    let requests = Workload::Nginx.requests();
    let socket = |i: u32| {
        let fd = 10 + (i % NGINX_CONNECTIONS) as i32;
        Socket {
            tid: tgid,
            fd,
            role: ROLE_SERVER,
            lport: 18080,
            rport: 40_000 + fd as u16,
        }
    };
    let mut out = Vec::with_capacity(2 * requests as usize + NGINX_CONNECTIONS as usize);
    for i in 0..NGINX_CONNECTIONS {
        out.push(opened(tgid, socket(i), start_ns));
    }
    for i in 0..requests {
        let at = start_ns + u64::from(i + 1) * NGINX_GAP_NS;
        let s = socket(i);
        out.push(data(
            tgid,
            s,
            DIR_INGRESS,
            syscall::RECVFROM,
            at,
            NGINX_REQUEST,
        ));
        out.push(data(
            tgid,
            s,
            DIR_EGRESS,
            syscall::WRITEV,
            at + 10_000,
            NGINX_RESPONSE,
        ));
    }
    out
}

fn service(start_ns: u64) -> Vec<Vec<u8>> {
    let tgid = std::process::id();
    let requests = Workload::Service.requests();
    // A worker's three connections: the request it serves, the backend, Redis.
    let sockets = |w: u32| {
        let tid = tgid + 1 + w;
        let w16 = w as u16;
        let fd = 10 + w as i32;
        (
            Socket {
                tid,
                fd,
                role: ROLE_SERVER,
                lport: 18090,
                rport: 41_000 + w16,
            },
            Socket {
                tid,
                fd: fd + 20,
                role: ROLE_CLIENT,
                lport: 51_000 + w16,
                rport: 18091,
            },
            Socket {
                tid,
                fd: fd + 40,
                role: ROLE_CLIENT,
                lport: 52_000 + w16,
                rport: 16379,
            },
        )
    };
    let mut out = Vec::with_capacity(6 * requests as usize + 3 * SERVICE_THREADS as usize);
    for w in 0..SERVICE_THREADS {
        let (server, backend, redis) = sockets(w);
        for s in [server, backend, redis] {
            out.push(opened(tgid, s, start_ns));
        }
    }
    for i in 0..requests {
        let (server, backend, redis) = sockets(i % SERVICE_THREADS);
        let at = start_ns + u64::from(i + 1) * SERVICE_GAP_NS;
        let item = i % 1000;
        let price = (item * 3).to_string();
        let body = format!("item {item} price {price} stock 5\n");
        let steps: [(Socket, u8, u8, Vec<u8>); 6] = [
            (
                server,
                DIR_INGRESS,
                syscall::RECVFROM,
                format!("GET /item/{item} HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n").into(),
            ),
            (
                backend,
                DIR_EGRESS,
                syscall::SENDTO,
                format!(
                    "GET /price/{item} HTTP/1.1\r\nHost: 127.0.0.1:18091\r\n\
                     User-Agent: python-requests/2.28.1\r\nAccept-Encoding: gzip, deflate\r\n\
                     Accept: */*\r\nConnection: keep-alive\r\n\r\n"
                )
                .into(),
            ),
            (backend, DIR_INGRESS, syscall::RECVFROM, waitress(&price)),
            (
                redis,
                DIR_EGRESS,
                syscall::SENDTO,
                format!(
                    "*2\r\n$3\r\nGET\r\n${}\r\nstock:{item}\r\n",
                    6 + item.to_string().len()
                )
                .into(),
            ),
            (
                redis,
                DIR_INGRESS,
                syscall::RECVFROM,
                b"$1\r\n5\r\n".to_vec(),
            ),
            (server, DIR_EGRESS, syscall::SENDTO, waitress(&body)),
        ];
        for (step, (s, direction, sc, payload)) in steps.into_iter().enumerate() {
            let t = at + step as u64 * 5_000;
            out.push(data(tgid, s, direction, sc, t, &payload));
        }
    }
    out
}

/// A waitress response carrying `body`.
fn waitress(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Date: Mon, 30 Nov 2026 16:00:00 GMT\r\nServer: waitress\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The record of a connection accepted or connected.
fn opened(tgid: u32, s: Socket, at: u64) -> Vec<u8> {
    let sc = if s.role == ROLE_SERVER {
        syscall::ACCEPT
    } else {
        syscall::CONNECT
    };
    record(tgid, s, EVENT_OPEN, 0, sc, at, &[])
}

/// The record of bytes read or written.
fn data(tgid: u32, s: Socket, direction: u8, sc: u8, at: u64, payload: &[u8]) -> Vec<u8> {
    record(tgid, s, EVENT_DATA, direction, sc, at, payload)
}

fn record(
    tgid: u32,
    s: Socket,
    kind: u32,
    direction: u8,
    sc: u8,
    at: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let header = EventHeader {
        kind,
        captured: payload.len() as u32,
        tgid,
        tid: s.tid,
        fd: s.fd,
        direction,
        syscall: sc,
        enter_ns: at,
        exit_ns: at + 2_000,
        len: payload.len() as u64,
        conn: ConnInfo {
            file: 0xffff_0000 + s.fd as u64,
            sock: 0xffff_8000_0000 + s.fd as u64,
            laddr: addr,
            raddr: addr,
            lport: s.lport,
            rport: s.rport,
            family: AF_INET,
            role: s.role,
            is_tcp: 1,
            ..ConnInfo::default()
        },
        ..EventHeader::default()
    };
    // SAFETY: `EventHeader` is `#[repr(C)]` plain data with explicit padding (agent-common
    // asserts its size); these are exactly the bytes the kernel copies into the ring buffer.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&header as *const EventHeader).cast::<u8>(),
            size_of::<EventHeader>(),
        )
    };
    let mut out = bytes.to_vec();
    out.extend_from_slice(payload);
    out
}

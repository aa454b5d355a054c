use agent_common::{AF_INET6, IGNORE_SOCKET, IGNORE_TLS, ROLE_UNKNOWN};

use super::*;

fn info(sock: u64, role: u8) -> ConnInfo {
    let mut laddr = [0u8; 16];
    laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut raddr = [0u8; 16];
    raddr[..4].copy_from_slice(&[127, 0, 0, 2]);
    ConnInfo {
        file: 1,
        sock,
        laddr,
        raddr,
        lport: 8080,
        rport: 40000,
        family: AF_INET,
        role,
        is_tcp: 1,
        ..ConnInfo::default()
    }
}

fn ev(kind: EventKind, fd: i32, conn: ConnInfo, payload: &[u8], at: u64) -> SocketEvent<'_> {
    SocketEvent {
        kind,
        tgid: 42,
        tid: 43,
        fd,
        enter_ns: at,
        exit_ns: at + 1,
        len: payload.len() as u64,
        conn,
        tls: false,
        payload,
    }
}

/// Plaintext from the TLS probes.
fn tls_data(dir: Direction, fd: i32, conn: ConnInfo, payload: &[u8], at: u64) -> SocketEvent<'_> {
    SocketEvent {
        tls: true,
        ..data(dir, fd, conn, payload, at)
    }
}

fn data(dir: Direction, fd: i32, conn: ConnInfo, payload: &[u8], at: u64) -> SocketEvent<'_> {
    ev(EventKind::Data { direction: dir }, fd, conn, payload, at)
}

/// The finished exchanges among the records, with their connection.
fn finished(out: &[ConnRecord]) -> Vec<(ConnMeta, &crate::protocol::Exchange)> {
    out.iter()
        .filter_map(|r| match &r.record {
            Record::Finished { exchange, .. } => Some((r.conn, &**exchange)),
            _ => None,
        })
        .collect()
}

const REQ: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#[test]
fn accepted_connection_gives_server_exchange() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let c = info(1, ROLE_SERVER);
    t.handle(&ev(EventKind::Open, 5, c, b"", 1), &s, &mut out);
    t.handle(&data(Direction::Ingress, 5, c, REQ, 2), &s, &mut out);
    t.handle(&data(Direction::Egress, 5, c, RESP, 3), &s, &mut out);
    assert!(matches!(out[0].record, Record::Started(_)));
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    let (meta, exchange) = done[0];
    assert_eq!(meta.role, Role::Server);
    assert_eq!(meta.peer.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(meta.peer.remote, "127.0.0.2:40000".parse().unwrap());
    assert!(!meta.peer_traced);
    let crate::protocol::Exchange::Http(e) = exchange else {
        panic!("an HTTP exchange");
    };
    assert_eq!(e.request.first.exit_ns, 3);
    t.handle(&ev(EventKind::Close, 5, c, b"", 4), &s, &mut out);
    assert!(t.is_empty());
}

#[test]
fn role_inferred_mid_stream() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let c = info(1, ROLE_UNKNOWN);
    // Tail of an earlier body, then a request written by the process: it is a client.
    t.handle(
        &data(Direction::Ingress, 5, c, b"dy of something", 1),
        &s,
        &mut out,
    );
    t.handle(&data(Direction::Egress, 5, c, REQ, 2), &s, &mut out);
    t.handle(&data(Direction::Ingress, 5, c, RESP, 3), &s, &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0.role, Role::Client);
}

#[test]
fn server_end_of_a_traced_client_connection_is_marked() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let server = info(1, ROLE_SERVER);
    // The same connection seen from the client process: addresses swapped.
    let mut client = info(2, ROLE_CLIENT);
    std::mem::swap(&mut client.laddr, &mut client.raddr);
    std::mem::swap(&mut client.lport, &mut client.rport);
    let client_ev = |kind, payload: &'static [u8], at| SocketEvent {
        tgid: 7,
        ..ev(kind, 9, client, payload, at)
    };
    t.handle(&client_ev(EventKind::Open, b"", 1), &s, &mut out);
    t.handle(&ev(EventKind::Open, 5, server, b"", 2), &s, &mut out);
    t.handle(
        &client_ev(
            EventKind::Data {
                direction: Direction::Egress,
            },
            REQ,
            3,
        ),
        &s,
        &mut out,
    );
    t.handle(&data(Direction::Ingress, 5, server, REQ, 4), &s, &mut out);
    let starts: Vec<_> = out
        .iter()
        .filter(|r| matches!(r.record, Record::Started(_)))
        .map(|r| r.conn)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0].role, Role::Client);
    assert_eq!(starts[1].role, Role::Server);
    assert!(starts[1].peer_traced, "the client end is traced");
    assert_eq!(
        starts[0].peer.tuple(Role::Client),
        starts[1].peer.tuple(Role::Server)
    );
    assert_ne!(starts[0].id, starts[1].id);
    // Once the client's connection is closed, a server connection is no longer marked.
    t.handle(&client_ev(EventKind::Close, b"", 5), &s, &mut out);
    assert!(!t.clients.contains(&starts[0].peer.tuple(Role::Client)));
}

#[test]
fn reused_fd_starts_a_new_connection() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let a = info(1, ROLE_SERVER);
    let b = info(2, ROLE_SERVER);
    t.handle(&ev(EventKind::Open, 5, a, b"", 1), &s, &mut out);
    t.handle(&data(Direction::Ingress, 5, a, REQ, 2), &s, &mut out);
    // fd 5 now refers to another socket, whose response must not pair with a's request.
    t.handle(&ev(EventKind::Open, 5, b, b"", 3), &s, &mut out);
    t.handle(&data(Direction::Egress, 5, b, RESP, 4), &s, &mut out);
    assert!(finished(&out).is_empty());
    assert!(
        out.iter()
            .any(|r| matches!(r.record, Record::Abandoned { .. })),
        "a's request is given up: {out:?}"
    );
    assert_eq!(t.len(), 1);
}

#[test]
fn unrecognized_connection_is_ignored_in_the_kernel_too() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let c = info(1, ROLE_CLIENT);
    t.handle(&ev(EventKind::Open, 5, c, b"", 1), &s, &mut out);
    // An SSH client: nothing the agent parses.
    let banner = b"SSH-2.0-OpenSSH_9.2p1\r\n";
    t.handle(&data(Direction::Egress, 5, c, banner, 2), &s, &mut out);
    t.handle(&data(Direction::Egress, 5, c, REQ, 3), &s, &mut out);
    t.handle(&data(Direction::Ingress, 5, c, RESP, 4), &s, &mut out);
    assert!(out.is_empty());
    assert_eq!(
        s.conns_unrecognized
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let ignored = t.take_ignored();
    assert_eq!(ignored.len(), 1, "the kernel is told once");
    let (key, bits) = ignored[0];
    assert_eq!(
        (key.tgid, key.fd, key.sock, bits),
        (42, 5, 1, IGNORE_SOCKET)
    );
    assert!(t.take_ignored().is_empty());
}

/// A TLS 1.3 ServerHello record (version in `supported_versions`).
fn server_hello() -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([9u8; 32]);
    body.extend([0, 0x13, 0x01, 0, 0, 6, 0, 43, 0, 2, 3, 4]);
    let mut rec = vec![22, 3, 3, 0, body.len() as u8 + 4, 2, 0, 0, body.len() as u8];
    rec.extend(body);
    rec
}

#[test]
fn tls_plaintext_replaces_the_ciphertext() {
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let c = info(1, ROLE_CLIENT);
    t.handle(&ev(EventKind::Open, 5, c, b"", 1), &s, &mut out);
    let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03random-bytes";
    t.handle(
        &data(Direction::Egress, 5, c, client_hello, 2),
        &s,
        &mut out,
    );
    // The client reads the record header, then its body.
    let hello = server_hello();
    t.handle(
        &data(Direction::Ingress, 5, c, &hello[..5], 3),
        &s,
        &mut out,
    );
    assert!(t.take_ignored().is_empty(), "still waiting for the version");
    t.handle(
        &data(Direction::Ingress, 5, c, &hello[5..], 4),
        &s,
        &mut out,
    );
    assert_eq!(
        t.take_ignored(),
        [(
            ConnKey {
                tgid: 42,
                fd: 5,
                sock: 1
            },
            IGNORE_SOCKET
        )]
    );
    // Plaintext from the probes, ciphertext of the same bytes from the socket in between.
    t.handle(&tls_data(Direction::Egress, 5, c, REQ, 5), &s, &mut out);
    t.handle(
        &data(
            Direction::Egress,
            5,
            c,
            b"\x17\x03\x03\x00\x30ciphertext",
            6,
        ),
        &s,
        &mut out,
    );
    t.handle(
        &data(
            Direction::Ingress,
            5,
            c,
            b"\x17\x03\x03\x00\x40ciphertext",
            7,
        ),
        &s,
        &mut out,
    );
    t.handle(&tls_data(Direction::Ingress, 5, c, RESP, 8), &s, &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 1, "{out:?}");
    assert_eq!(
        done[0].0.tls,
        Some(TlsMeta {
            version: Some(Version(0x0304))
        })
    );
    assert_eq!(
        s.conns_unrecognized
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(s.conns_tls.load(std::sync::atomic::Ordering::Relaxed), 1);
    // An unparsed protocol inside TLS: the plaintext is given up too.
    let c2 = info(2, ROLE_CLIENT);
    t.handle(&ev(EventKind::Open, 6, c2, b"", 9), &s, &mut out);
    t.handle(
        &tls_data(Direction::Egress, 6, c2, b"SSH-2.0-x\r\n", 10),
        &s,
        &mut out,
    );
    assert_eq!(
        t.take_ignored(),
        [(
            ConnKey {
                tgid: 42,
                fd: 6,
                sock: 2
            },
            IGNORE_SOCKET | IGNORE_TLS
        )]
    );
}

/// Each protocol is recognised from its first bytes, on a client connection seen from its start.
#[test]
fn protocols_are_detected_by_content() {
    let pg_startup: &[u8] = b"\0\0\0\x17\0\x03\0\0user\0u\0database\0d\0\0";
    let cases: [(&[u8], &[u8], &str); 3] = [
        (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", "redis"),
        (pg_startup, b"", "postgresql"),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
            b"",
            "http2",
        ),
    ];
    for (i, (request, answer, name)) in cases.into_iter().enumerate() {
        let mut t = ConnTable::new(Limits::default());
        let s = Stats::default();
        let mut out = Vec::new();
        let c = info(10 + i as u64, ROLE_CLIENT);
        t.handle(&ev(EventKind::Open, 5, c, b"", 1), &s, &mut out);
        t.handle(&data(Direction::Egress, 5, c, request, 2), &s, &mut out);
        if !answer.is_empty() {
            t.handle(&data(Direction::Ingress, 5, c, answer, 3), &s, &mut out);
        }
        assert!(t.take_ignored().is_empty(), "{name} is parsed");
        assert_eq!(
            s.conns_unrecognized
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{name}"
        );
    }
    // A database seen from its server's side is not parsed.
    let mut t = ConnTable::new(Limits::default());
    let s = Stats::default();
    let mut out = Vec::new();
    let c = info(20, ROLE_SERVER);
    t.handle(&ev(EventKind::Open, 5, c, b"", 1), &s, &mut out);
    t.handle(
        &data(Direction::Ingress, 5, c, b"*1\r\n$4\r\nPING\r\n", 2),
        &s,
        &mut out,
    );
    assert_eq!(t.take_ignored().len(), 1);
}

#[test]
fn ipv4_mapped_ipv6_shown_as_ipv4() {
    let mut c = info(1, ROLE_SERVER);
    c.family = AF_INET6;
    c.laddr = std::net::Ipv4Addr::new(10, 0, 0, 1)
        .to_ipv6_mapped()
        .octets();
    c.raddr = std::net::Ipv6Addr::LOCALHOST.octets();
    let p = peer_of(&c);
    assert_eq!(p.local, "10.0.0.1:8080".parse().unwrap());
    assert_eq!(p.remote, "[::1]:40000".parse().unwrap());
}

#[test]
fn table_is_bounded() {
    let mut t = ConnTable::new(Limits {
        max_conns: 4,
        stream_bytes: 1024,
    });
    let s = Stats::default();
    let mut out = Vec::new();
    for i in 0..10 {
        let c = info(100 + i, ROLE_SERVER);
        t.handle(&ev(EventKind::Open, i as i32, c, b"", i), &s, &mut out);
    }
    assert_eq!(t.len(), 4);
    assert_eq!(
        s.conns_evicted.load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

//! The MySQL parser on hand-built packets: handshake, queries with result sets (with and
//! without EOF packets), prepared statements, errors, INIT_DB, TLS, gaps and random input.

use super::*;
use crate::protocol::harness::{self, Harness};

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

fn greeting(version: &str) -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"saltsalt\0");
    p.extend_from_slice(&[0xff, 0xf7, 0x21, 0x02, 0, 0xff, 0x81, 21]);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"saltsaltsalt\0mysql_native_password\0");
    pkt(0, &p)
}

fn handshake_response(db: &str) -> Vec<u8> {
    let caps = CLIENT_CONNECT_WITH_DB | CLIENT_SECURE_CONNECTION | 0x0200;
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(33);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"shop\0");
    p.push(20);
    p.extend_from_slice(&[7; 20]);
    p.extend_from_slice(db.as_bytes());
    p.push(0);
    pkt(1, &p)
}

fn ok(seq: u8) -> Vec<u8> {
    pkt(seq, &[0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00])
}

fn err(seq: u8, code: u16) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.extend_from_slice(b"#42S02Table 'shop.nope' doesn't exist");
    pkt(seq, &p)
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(sql.as_bytes());
    pkt(0, &p)
}

fn eof(seq: u8) -> Vec<u8> {
    pkt(seq, &[0xfe, 0, 0, 0x02, 0])
}

/// A result set of one column and `rows` rows, with or without EOF packets.
fn result_set(rows: usize, with_eof: bool) -> Vec<u8> {
    let mut v = pkt(1, &[1]);
    v.extend(pkt(
        2,
        b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c\x21\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00",
    ));
    let mut seq = 3;
    if with_eof {
        v.extend(eof(seq));
        seq += 1;
    }
    for i in 0..rows {
        v.extend(pkt(seq, format!("\x01{}", i % 10).as_bytes()));
        seq += 1;
    }
    if with_eof {
        v.extend(eof(seq));
    } else {
        v.extend(pkt(seq, &[0xfe, 0, 0, 0x02, 0, 0, 0]));
    }
    v
}

type H = Harness<Mysql>;

fn connected(version: &str) -> H {
    let mut h = H::new(Mysql::new(true));
    h.server(&greeting(version));
    h.client(&handshake_response("shop"));
    h.server(&ok(2));
    h
}

#[test]
fn queries_with_and_without_eof_packets() {
    for with_eof in [true, false] {
        let mut h = connected("8.0.36");
        h.client(&query("SELECT a FROM t WHERE b = 'x' AND c = 3"));
        h.server(&result_set(3, with_eof));
        h.client(&query("UPDATE t SET a = 1"));
        h.server(&ok(1));
        let ops = h.ops();
        assert_eq!(ops.len(), 2, "with_eof={with_eof}");
        assert_eq!(ops[0].system, System::Mysql);
        assert_eq!(ops[0].namespace.as_deref(), Some("shop"));
        assert_eq!(
            ops[0].query.as_deref(),
            Some("SELECT a FROM t WHERE b = ? AND c = ?")
        );
        assert_eq!(ops[0].collection.as_deref(), Some("t"));
        assert_eq!(ops[0].rows, Some(3));
        assert_eq!(ops[1].operation.as_deref(), Some("UPDATE"));
        h.parser.close(&h.stats, &mut h.out);
        h.check_lifecycle();
    }
}

#[test]
fn mariadb_errors_init_db_and_prepared_statements() {
    let mut h = connected("5.5.5-10.11.6-MariaDB-0+deb12u1");
    h.client(&query("SELECT * FROM nope"));
    h.server(&err(1, 1146));
    let mut init = vec![COM_INIT_DB];
    init.extend_from_slice(b"billing");
    h.client(&pkt(0, &init));
    h.server(&ok(1));
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT name FROM invoices WHERE id = ?");
    h.client(&pkt(0, &prepare));
    // STMT_PREPARE_OK: id 9, 1 column, 1 parameter; then the definitions with EOFs.
    let mut prep_ok = pkt(1, &[0, 9, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    prep_ok.extend(pkt(
        2,
        b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00",
    ));
    prep_ok.extend(eof(3));
    prep_ok.extend(pkt(4, b"\x03def\x04shop\x01i\x01i\x04name\x04name\x0c\x21\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00"));
    prep_ok.extend(eof(5));
    h.server(&prep_ok);
    assert!(h.ops().len() == 1, "a prepare alone makes no span");
    let mut exec = vec![COM_STMT_EXECUTE];
    exec.extend_from_slice(&9u32.to_le_bytes());
    exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 8, 0, 42, 0, 0, 0, 0, 0, 0, 0]);
    h.client(&pkt(0, &exec));
    h.server(&result_set(1, true));
    let ops = h.ops();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0].system, System::Mariadb);
    assert_eq!(ops[0].error.as_ref().map(|e| e.code.as_str()), Some("1146"));
    assert_eq!(
        ops[1].query.as_deref(),
        Some("SELECT name FROM invoices WHERE id = ?")
    );
    assert_eq!(ops[1].namespace.as_deref(), Some("billing"));
    assert_eq!(ops[1].rows, Some(1));
    assert!(ops[1].error.is_none());
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn tls_request_makes_it_opaque() {
    let mut h = H::new(Mysql::new(true));
    h.server(&greeting("8.0.36"));
    let mut ssl = (CLIENT_SSL | CLIENT_SECURE_CONNECTION)
        .to_le_bytes()
        .to_vec();
    ssl.extend_from_slice(&[0; 28]);
    h.client(&pkt(1, &ssl));
    assert!(h.parser.is_opaque());
    h.client(b"\x16\x03\x01\x02\x00encrypted");
    assert!(h.out.is_empty());
}

#[test]
fn large_result_in_a_gap_ends_before_the_next_command() {
    let mut h = connected("8.0.36");
    h.client(&query("SELECT * FROM big"));
    let rs = result_set(2, true);
    h.server_gap(&rs[..30], 5_000_000);
    assert!(h.ops().is_empty());
    let last = h.clock;
    h.client(&query("SELECT 1"));
    assert_eq!(h.ops().len(), 1);
    assert_eq!(h.ops()[0].last.enter_ns, last);
    h.server(&result_set(1, true));
    assert_eq!(h.ops().len(), 2);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn detection() {
    assert!(looks_like_greeting(&greeting("8.0.36")));
    assert!(looks_like_greeting(&greeting("5.5.5-10.11.6-MariaDB")));
    assert!(!looks_like_greeting(b"HTTP/1.1 200 OK\r\n"));
    assert!(looks_like_command(&query("select 1")));
    assert!(!looks_like_command(&pkt(1, b"\x03select 1")));
    assert!(!looks_like_command(b"GET / HTTP/1.1\r\n\r\n"));
}

#[test]
fn fuzz_no_panic_no_mispairing() {
    let mut rnd = harness::rng(0x5eed_f0a1);
    for round in 0..300 {
        let mut h = connected("8.0.36");
        let mut client = Vec::new();
        let mut server = Vec::new();
        let n = 1 + rnd(5);
        for i in 0..n {
            let fails = rnd(3) == 0;
            client.extend(query(&format!(
                "select {} from t{i}",
                if fails { "fail" } else { "ok" }
            )));
            if fails {
                server.extend(err(1, 1064));
            } else {
                server.extend(result_set(rnd(4) as usize, rnd(2) == 0));
            }
        }
        // Commands one by one, each answer before the next command, split at random.
        let mut ci = 0;
        let mut si = 0;
        let cmds: Vec<usize> = {
            let mut v = Vec::new();
            let mut i = 0;
            while i < client.len() {
                let len =
                    u32::from_le_bytes([client[i], client[i + 1], client[i + 2], 0]) as usize + 4;
                v.push(len);
                i += len;
            }
            v
        };
        let corrupt = round % 4 == 0;
        if corrupt {
            let at = rnd(server.len() as u64) as usize;
            server[at] = rnd(256) as u8;
        }
        for len in cmds {
            h.client(&client[ci..ci + len]);
            ci += len;
            let take = (1 + rnd(60) as usize).min(server.len() - si);
            if take > 0 {
                if rnd(10) == 0 {
                    let cap = rnd(take as u64) as usize;
                    h.server_gap(&server[si..si + cap], take as u64);
                } else {
                    h.server(&server[si..si + take]);
                }
                si += take;
            }
        }
        if si < server.len() {
            h.server(&server[si..]);
        }
        h.parser.close(&h.stats, &mut h.out);
        h.check_lifecycle();
        if !corrupt {
            for op in h.ops() {
                let q = op.query.as_deref().unwrap_or("");
                if op.error.is_some() {
                    assert!(q.contains("fail"), "round {round}: {q}");
                }
            }
        }
        let mut g = H::new(Mysql::new(round % 2 == 0));
        let junk: Vec<u8> = (0..200).map(|_| rnd(256) as u8).collect();
        g.server(&junk);
        g.client(&junk);
        g.parser.close(&g.stats, &mut g.out);
        g.check_lifecycle();
    }
}

//! The PostgreSQL parser on hand-built messages: simple and extended queries, named prepared
//! statements, errors, pipelining, SSL negotiation, capture gaps, and random input.

use super::*;
use crate::protocol::db::System;
use crate::protocol::harness::{self, Harness};

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cz(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend(cz(&["user", user, "database", db, ""]));
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cz(&[sql]))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cz(&[name, sql]);
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'P', &b)
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cz(&[portal, stmt]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cz(&[portal]);
    b.extend_from_slice(&0u32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cz(&[tag]))
}

fn row() -> Vec<u8> {
    msg(b'D', &[0, 1, 0, 0, 0, 1, b'x'])
}

fn error(code: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(cz(&["ERROR"]));
    b.push(b'C');
    b.extend(cz(&[code]));
    b.push(b'M');
    b.extend(cz(&["relation \"nope\" does not exist"]));
    b.push(0);
    msg(b'E', &b)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

type H = Harness<Postgres>;

#[test]
fn simple_query_from_startup() {
    let mut h = H::new(Postgres::new(true));
    h.client(&startup("shop", "orders_db"));
    h.server(&cat(&[msg(b'R', &[0, 0, 0, 0]), ready()]));
    h.client(&query(
        "SELECT id, total FROM orders WHERE customer = 'alice' AND total > 10",
    ));
    h.server(&cat(&[
        msg(b'T', &[0, 0]),
        row(),
        row(),
        complete("SELECT 2"),
        ready(),
    ]));
    let ops = h.ops();
    assert_eq!(ops.len(), 1);
    let op = ops[0];
    assert_eq!(op.system, System::Postgresql);
    assert_eq!(op.operation.as_deref(), Some("SELECT"));
    assert_eq!(op.collection.as_deref(), Some("orders"));
    assert_eq!(
        op.query.as_deref(),
        Some("SELECT id, total FROM orders WHERE customer = ? AND total > ?")
    );
    assert_eq!(op.namespace.as_deref(), Some("orders_db"));
    assert_eq!(op.rows, Some(2));
    assert!(op.error.is_none());
    assert!(op.first.enter_ns < op.last.enter_ns);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn extended_protocol_with_named_statement() {
    let mut h = H::new(Postgres::new(false));
    // Prepared once by name (no execute: no span), executed twice later.
    h.client(&cat(&[
        parse("find_user", "select * from users where id = $1"),
        sync(),
    ]));
    h.server(&cat(&[msg(b'1', b""), ready()]));
    assert!(h.ops().is_empty());
    for _ in 0..2 {
        h.client(&cat(&[bind("", "find_user"), execute(""), sync()]));
        h.server(&cat(&[
            msg(b'2', b""),
            row(),
            complete("SELECT 1"),
            ready(),
        ]));
    }
    let ops = h.ops();
    assert_eq!(ops.len(), 2);
    for op in ops {
        assert_eq!(
            op.query.as_deref(),
            Some("select * from users where id = $1")
        );
        assert_eq!(op.collection.as_deref(), Some("users"));
        assert_eq!(op.rows, Some(1));
    }
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn errors_and_skipped_operations() {
    let mut h = H::new(Postgres::new(false));
    h.client(&query("SELECT * FROM nope"));
    h.server(&cat(&[error("42P01"), ready()]));
    // A pipelined batch whose first statement fails: the second is never run.
    h.client(&cat(&[
        parse("", "insert into a values (1)"),
        bind("", ""),
        execute(""),
        parse("", "insert into b values (2)"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    h.server(&cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        error("23505"),
        ready(),
    ]));
    // A parse error fails the execution it prepared.
    h.client(&cat(&[
        parse("", "SELEC 1"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    h.server(&cat(&[error("42601"), ready()]));
    let codes: Vec<_> = h
        .ops()
        .iter()
        .map(|o| o.error.as_ref().map(|e| e.code.clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            Some("42P01".to_string()),
            Some("23505".to_string()),
            Some("42601".to_string())
        ]
    );
    assert_eq!(h.abandoned(), 1, "the skipped insert");
    assert_eq!(h.ops()[0].operation.as_deref(), Some("SELECT"));
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn pipelined_executions_pair_in_order() {
    let mut h = H::new(Postgres::new(false));
    h.client(&cat(&[
        parse("", "select 1 from t1"),
        bind("", ""),
        execute(""),
        parse("", "update t2 set a = 1"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    // The answers arrive split at every byte.
    let answers = cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        row(),
        complete("SELECT 1"),
        msg(b'1', b""),
        msg(b'2', b""),
        complete("UPDATE 3"),
        ready(),
    ]);
    for b in answers.chunks(1) {
        h.server(b);
    }
    let names: Vec<_> = h.ops().iter().map(|o| o.collection.clone()).collect();
    assert_eq!(names, vec![Some("t1".to_string()), Some("t2".to_string())]);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn ssl_negotiation() {
    let mut refused = H::new(Postgres::new(true));
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    refused.client(&ssl);
    refused.server(b"N");
    refused.client(&startup("u", "d"));
    refused.server(&ready());
    refused.client(&query("select 1"));
    refused.server(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(refused.ops().len(), 1);
    assert_eq!(refused.ops()[0].namespace.as_deref(), Some("d"));
    let mut accepted = H::new(Postgres::new(true));
    accepted.client(&ssl);
    accepted.server(b"S");
    assert!(accepted.parser.is_opaque());
    accepted.client(b"\x16\x03\x01 encrypted");
    accepted.server(b"\x16\x03\x03 encrypted");
    assert!(accepted.out.is_empty());
}

#[test]
fn large_result_in_a_gap_ends_before_the_next_query() {
    let mut h = H::new(Postgres::new(false));
    h.client(&query("SELECT * FROM big"));
    // 1 MB of rows: only the first bytes captured, then the rest (tail with C and Z) unseen.
    let head = cat(&[msg(b'T', &[0, 0]), row()]);
    h.server_gap(&head, 1_000_000);
    h.server_gap(b"", 500_000);
    assert!(h.ops().is_empty(), "not over until the client moves on");
    let last_read = h.clock;
    h.client(&query("SELECT 1"));
    assert_eq!(h.ops().len(), 1);
    assert_eq!(h.ops()[0].last.enter_ns, last_read);
    h.server(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(h.ops().len(), 2);
    assert_eq!(h.ops()[1].query.as_deref(), Some("SELECT ?"));
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn detection() {
    assert!(looks_like(&startup("u", "d"), true));
    assert!(looks_like(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], true));
    assert!(!looks_like(b"GET / HTTP/1.1\r\n", true));
    assert!(looks_like(&query("select * from t"), false));
    assert!(looks_like(&parse("s", "select 1 + 1"), false));
    assert!(!looks_like(b"Q\0\0\0\x05\x01", false));
    assert!(!looks_like(b"GET / HTTP/1.1\r\n", false));
}

/// Random splits, gaps and corruption: no panic, a well-formed record lifecycle, and no answer
/// given to the wrong query (each query's outcome is known from its text).
#[test]
fn fuzz_no_panic_no_mispairing() {
    let mut rnd = harness::rng(0x0bad_5eed_1234_5678);
    for round in 0..400 {
        let mut h = H::new(Postgres::new(round % 2 == 0));
        let mut client = if round % 2 == 0 {
            startup("u", "db")
        } else {
            Vec::new()
        };
        let mut server = Vec::new();
        if round % 2 == 0 {
            server.extend(ready());
        }
        let n = 1 + rnd(6);
        for i in 0..n {
            let fails = rnd(3) == 0;
            let sql = format!("select {} from t{i}", if fails { "fail" } else { "ok" });
            if rnd(2) == 0 {
                client.extend(query(&sql));
                if fails {
                    server.extend(error("XX000"));
                } else {
                    server.extend(cat(&[row(), complete("SELECT 1")]));
                }
                server.extend(ready());
            } else {
                client.extend(cat(&[parse("", &sql), bind("", ""), execute(""), sync()]));
                if fails {
                    server.extend(cat(&[msg(b'1', b""), msg(b'2', b""), error("XX000")]));
                } else {
                    server.extend(cat(&[msg(b'1', b""), msg(b'2', b""), complete("SELECT 1")]));
                }
                server.extend(ready());
            }
        }
        let corrupt = round % 5 == 0;
        if corrupt {
            let at = rnd(server.len() as u64) as usize;
            server[at] = rnd(256) as u8;
        }
        h.client_in_pieces(&client, 30, &mut rnd);
        h.server_in_pieces(&server, 30, 12, &mut rnd);
        h.parser.close(&h.stats, &mut h.out);
        h.check_lifecycle();
        if !corrupt {
            for op in h.ops() {
                let q = op.query.as_deref().unwrap_or("");
                if let Some(e) = &op.error {
                    assert!(q.contains("fail"), "round {round}: {q} got {e:?}");
                } else if op.rows == Some(1) {
                    assert!(
                        q.contains("ok") || q.is_empty(),
                        "round {round}: {q}\nclient {:?}\nserver {:?}\n{:#?}",
                        String::from_utf8_lossy(&client),
                        String::from_utf8_lossy(&server),
                        h.out
                    );
                }
            }
        }
        // Pure garbage on both sides.
        let mut g = H::new(Postgres::new(round % 3 == 0));
        let junk: Vec<u8> = (0..300).map(|_| rnd(256) as u8).collect();
        g.client(&junk);
        g.server(&junk);
        g.parser.close(&g.stats, &mut g.out);
        g.check_lifecycle();
    }
}

//! The Redis parser: RESP2 and RESP3 replies, pipelining, errors, SELECT, inline commands,
//! pushes, subscriptions, large values in gaps, and random input.

use super::*;
use crate::protocol::harness::{self, Harness};

fn cmd(parts: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        v.extend(format!("${}\r\n{p}\r\n", p.len()).bytes());
    }
    v
}

type H = Harness<Redis>;

#[test]
fn pipelined_commands_errors_and_select() {
    let mut h = H::new(Redis::new());
    let batch = [
        cmd(&["SET", "user:1", "alice"]),
        cmd(&["GET", "user:1"]),
        cmd(&["LPUSH", "k", "a", "b", "c"]),
        cmd(&["NOSUCH"]),
        cmd(&["SELECT", "3"]),
        cmd(&["HGETALL", "h"]),
    ]
    .concat();
    h.client(&batch);
    let replies = b"+OK\r\n$5\r\nalice\r\n:3\r\n-ERR unknown command 'NOSUCH'\r\n+OK\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
    for b in replies.chunks(3) {
        h.server(b);
    }
    let ops = h.ops();
    let names: Vec<_> = ops.iter().map(|o| o.operation.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["SET", "GET", "LPUSH", "NOSUCH", "SELECT", "HGETALL"]
    );
    assert_eq!(ops[0].query.as_deref(), Some("SET ? ?"));
    assert_eq!(ops[2].query.as_deref(), Some("LPUSH ? ? ? ?"));
    assert_eq!(ops[3].error.as_ref().map(|e| e.code.as_str()), Some("ERR"));
    assert!(
        ops.iter()
            .enumerate()
            .all(|(i, o)| o.error.is_some() == (i == 3))
    );
    assert_eq!(ops[0].namespace.as_deref(), Some("0"));
    assert_eq!(ops[5].namespace.as_deref(), Some("3"), "after SELECT 3");
    assert_eq!(ops[0].system, System::Redis);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn resp3_maps_attributes_pushes_and_bulk_errors() {
    let mut h = H::new(Redis::new());
    h.client(&cmd(&["HELLO", "3"]));
    h.server(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n");
    h.client(&cmd(&["GET", "a"]));
    // A push arrives before the reply, and the reply comes with an attribute.
    h.server(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n$1\r\nv\r\n");
    h.client(&cmd(&["EVAL", "x", "0"]));
    h.server(b"!21\r\nSYNTAX invalid syntax\r\n");
    h.client(&cmd(&["EXISTS", "a"]));
    h.server(b"#t\r\n");
    let ops = h.ops();
    assert_eq!(ops.len(), 4);
    assert!(ops[1].error.is_none());
    assert_eq!(
        ops[2].error.as_ref().map(|e| e.code.as_str()),
        Some("SYNTAX")
    );
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn inline_commands_subscriptions_and_large_values() {
    let mut h = H::new(Redis::new());
    h.client(b"PING\r\n");
    h.server(b"+PONG\r\n");
    // Inline commands with arguments (telnet, `redis-cli` scripts): counted, and SELECT's kept.
    h.client(b"SELECT  5\r\n");
    h.server(b"+OK\r\n");
    h.client(b"set k  some-value EX 10\r\n");
    h.server(b"+OK\r\n");
    h.client(&cmd(&["GET", "big"]));
    // A 5 MB value: header captured, the rest in a gap, skipped by count.
    let mut head = b"$5000000\r\n".to_vec();
    head.extend_from_slice(&[b'x'; 100]);
    h.server_gap(&head, 10 + 5_000_000 + 2);
    h.client(&cmd(&["SUBSCRIBE", "news"]));
    h.server(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    h.server(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
    let names: Vec<_> = h
        .ops()
        .iter()
        .map(|o| o.operation.clone().unwrap())
        .collect();
    assert_eq!(names, ["PING", "SELECT", "SET", "GET", "SUBSCRIBE"]);
    let ops = h.ops();
    assert_eq!(ops[0].query.as_deref(), Some("PING"));
    assert_eq!(ops[2].query.as_deref(), Some("SET ? ? ? ?"));
    assert_eq!(ops[0].namespace.as_deref(), Some("0"));
    assert_eq!(ops[2].namespace.as_deref(), Some("5"), "after SELECT 5");
    assert!(h.parser.is_done());
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn reply_header_in_a_gap_ends_at_the_next_command() {
    let mut h = H::new(Redis::new());
    h.client(&cmd(&["LRANGE", "l", "0", "-1"]));
    // An array of many elements: element headers beyond the capture are lost.
    let mut reply = b"*100000\r\n".to_vec();
    reply.extend(b"$1\r\na\r\n".repeat(10));
    h.server_gap(&reply, 700_009);
    let last = h.clock;
    h.client(&cmd(&["GET", "k"]));
    assert_eq!(h.ops().len(), 1);
    assert_eq!(h.ops()[0].last.enter_ns, last);
    h.server(b"$1\r\nv\r\n");
    assert_eq!(h.ops().len(), 2);
    h.parser.close(&h.stats, &mut h.out);
    h.check_lifecycle();
}

#[test]
fn detection() {
    assert!(looks_like_command(&cmd(&["GET", "k"])));
    assert!(looks_like_command(&cmd(&["CLIENT", "SETNAME", "x"])));
    assert!(!looks_like_command(b"*2\r\n:1\r\n"));
    assert!(!looks_like_command(b"GET / HTTP/1.1\r\n"));
    assert!(!looks_like_command(b"*1\r\n$3\r\n\x00\x01\x02\r\n"));
}

#[test]
fn fuzz_no_panic_no_mispairing() {
    let mut rnd = harness::rng(0xfeed_f00d);
    for round in 0..400 {
        let mut h = H::new(Redis::new());
        let n = 1 + rnd(8);
        let mut client = Vec::new();
        let mut server = Vec::new();
        for i in 0..n {
            let fails = rnd(3) == 0;
            let name = if fails { "FAILCMD" } else { "OKCMD" };
            client.extend(cmd(&[name, &format!("k{i}")]));
            if fails {
                server.extend(b"-ERR boom\r\n");
            } else {
                match rnd(4) {
                    0 => server.extend(b"+OK\r\n"),
                    1 => server.extend(b"*2\r\n$1\r\na\r\n*1\r\n:5\r\n"),
                    2 => server.extend(b"$-1\r\n"),
                    _ => server.extend(b"%1\r\n+k\r\n$3\r\nabc\r\n"),
                }
            }
        }
        let corrupt = round % 5 == 0;
        if corrupt {
            let at = rnd(server.len() as u64) as usize;
            server[at] = rnd(256) as u8;
        }
        h.client_in_pieces(&client, 20, &mut rnd);
        h.server_in_pieces(&server, 20, 15, &mut rnd);
        h.parser.close(&h.stats, &mut h.out);
        h.check_lifecycle();
        if !corrupt {
            for op in h.ops() {
                let failed_cmd = op.operation.as_deref() == Some("FAILCMD");
                if op.error.is_some() {
                    assert!(failed_cmd, "round {round}: {op:?}");
                }
            }
        }
        let mut g = H::new(Redis::new());
        let junk: Vec<u8> = (0..200).map(|_| rnd(256) as u8).collect();
        g.client(&junk);
        g.server(&junk);
        g.parser.close(&g.stats, &mut g.out);
        g.check_lifecycle();
    }
}

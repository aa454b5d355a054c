//! Database and cache CLIENT spans from real servers (PostgreSQL, MariaDB, Redis from Debian's
//! packages) and real clients (Python drivers from PyPI; psql, mariadb and redis-cli): names,
//! `db.*` attributes, literal-free query text, statuses, and errors marked as errors.

use std::{process::Command, time::Duration};

use agent_e2e::{
    Agent, Proc, eventually, peer,
    receiver::{Receiver, RecvSpan},
    servers::{Mariadb, Postgres, Redis},
    wait_ready,
};

const CLIENT: i32 = 3;
const ERROR: i32 = 2;

/// Runs one scenario of db_client.py under the agent; returns the spans and the client's
/// report (one JSON object per operation).
fn run_client(kind: &str, port: u16, expected: usize) -> (Vec<RecvSpan>, Vec<serde_json::Value>) {
    let mut client = Proc::spawn(
        Command::new("python3")
            .arg(peer("db_client.py"))
            .args([kind, &port.to_string()])
            .env("OTEL_SERVICE_NAME", format!("{kind}-client")),
    );
    wait_ready(&client, "database client");
    let rx = Receiver::grpc();
    let agent = Agent::start(
        &rx.agent_args(client.pid()),
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    client.send_line("go");
    assert!(
        client.wait(Duration::from_secs(60)).success(),
        "{kind} client failed: {:?}",
        client.stderr.get()
    );
    eventually(Duration::from_secs(20), || {
        (rx.spans().len() >= expected).then_some(())
    })
    .unwrap_or_else(|| panic!("expected {expected} spans: {:#?}", rx.spans()));
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    let report = client
        .stdout
        .get()
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("client JSON"))
        .collect();
    (rx.spans(), report)
}

fn named<'a>(spans: &'a [RecvSpan], name: &str) -> Vec<&'a RecvSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [RecvSpan], name: &str) -> &'a RecvSpan {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

fn check_common(s: &RecvSpan, system: &str, port: u16) {
    assert_eq!(s.kind, CLIENT, "{s:#?}");
    assert_eq!(s.attr("db.system.name"), Some(system));
    assert_eq!(s.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(s.attr("server.port"), Some(port.to_string().as_str()));
    assert!(s.start_ns < s.end_ns);
}

#[test]
fn postgres_simple_query_protocol_with_psycopg2() {
    let pg = Postgres::start();
    let (spans, report) = run_client("pg", pg.port, 5);
    assert_eq!(report.len(), 5, "{report:?}");
    for s in &spans {
        check_common(s, "postgresql", pg.port);
        assert_eq!(
            s.attr("db.namespace"),
            Some("shop"),
            "from the startup message"
        );
        let q = s.attr("db.query.text").unwrap_or("");
        assert!(!q.contains("secret-widget"), "no literal in {q}");
    }
    let insert = one(&spans, "INSERT items");
    assert_eq!(insert.attr("db.operation.name"), Some("INSERT"));
    assert_eq!(insert.attr("db.collection.name"), Some("items"));
    assert_eq!(
        insert.attr("db.query.text"),
        Some("INSERT INTO items VALUES(?, ?)")
    );
    assert_eq!(insert.status, 0);
    let select = one(&spans, "SELECT items");
    assert_eq!(
        select.attr("db.query.text"),
        Some("SELECT name FROM items WHERE id = ?")
    );
    assert_eq!(select.attr("db.response.returned_rows"), Some("1"));
    one(&spans, "CREATE items");
    let syntax = one(&spans, "SELEC");
    assert_eq!(syntax.status, ERROR);
    assert_eq!(syntax.attr("db.response.status_code"), Some("42601"));
    let missing = one(&spans, "SELECT missing_table");
    assert_eq!(missing.status, ERROR);
    assert_eq!(missing.attr("db.response.status_code"), Some("42P01"));
    assert_eq!(missing.attr("error.type"), Some("42P01"));
}

#[test]
fn postgres_extended_protocol_and_named_prepared_statements_with_psycopg3() {
    let pg = Postgres::start();
    let (spans, report) = run_client("pg3", pg.port, 6);
    assert_eq!(report.len(), 4, "{report:?}");
    let selects = named(&spans, "SELECT items");
    assert_eq!(
        selects.len(),
        3,
        "extended, then prepared twice: {spans:#?}"
    );
    for s in &selects {
        check_common(s, "postgresql", pg.port);
        assert_eq!(
            s.attr("db.query.text"),
            Some("SELECT name FROM items WHERE id = $1")
        );
        assert_eq!(s.attr("db.response.returned_rows"), Some("1"));
        assert_eq!(s.status, 0);
    }
    let missing = one(&spans, "SELECT missing_table");
    assert_eq!(missing.status, ERROR);
    assert_eq!(missing.attr("db.response.status_code"), Some("42P01"));
}

#[test]
fn mariadb_queries_and_errors_with_pymysql() {
    let db = Mariadb::start();
    let (spans, report) = run_client("mysql", db.port, 5);
    assert_eq!(report.len(), 5, "{report:?}");
    for s in &spans {
        check_common(s, "mariadb", db.port);
        assert_eq!(s.attr("db.namespace"), Some("shop"), "from the handshake");
        assert!(
            !s.attr("db.query.text")
                .unwrap_or("")
                .contains("secret-widget")
        );
    }
    let insert = one(&spans, "INSERT items");
    assert_eq!(
        insert.attr("db.query.text"),
        Some("INSERT INTO items VALUES(?, ?)")
    );
    let select = one(&spans, "SELECT items");
    assert_eq!(select.attr("db.response.returned_rows"), Some("1"));
    assert_eq!(select.status, 0);
    let syntax = one(&spans, "SELEC");
    assert_eq!(syntax.status, ERROR);
    assert_eq!(syntax.attr("db.response.status_code"), Some("1064"));
    let missing = one(&spans, "SELECT missing_table");
    assert_eq!(missing.attr("db.response.status_code"), Some("1146"));
    assert_eq!(missing.status, ERROR);
}

#[test]
fn mariadb_server_side_prepared_statements_with_mysql_connector() {
    let db = Mariadb::start();
    // The table the prepared statements read.
    let (_, setup) = run_client("mysql", db.port, 5);
    assert_eq!(setup.len(), 5);
    let (spans, report) = run_client("mysqlprep", db.port, 2);
    assert_eq!(report.len(), 2, "{report:?}");
    let prepared: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("db.query.text") == Some("SELECT name FROM items WHERE id = ?"))
        .collect();
    assert_eq!(prepared.len(), 2, "one span per execution: {spans:#?}");
    for s in prepared {
        check_common(s, "mariadb", db.port);
        assert_eq!(s.name, "SELECT items");
        assert_eq!(s.attr("db.response.returned_rows"), Some("1"));
    }
}

#[test]
fn redis_commands_pipeline_and_errors_with_redis_py() {
    let redis = Redis::start();
    let (spans, report) = run_client("redis", redis.port, 8);
    assert_eq!(report.len(), 5, "{report:?}");
    for s in &spans {
        check_common(s, "redis", redis.port);
    }
    let set = one(&spans, "SET");
    assert_eq!(set.attr("db.operation.name"), Some("SET"));
    assert_eq!(
        set.attr("db.query.text"),
        Some("SET ? ?"),
        "no key or value"
    );
    assert_eq!(set.attr("db.namespace"), Some("2"), "after SELECT 2");
    // redis-py's incr() sends INCRBY.
    assert_eq!(
        named(&spans, "INCRBY").len(),
        2,
        "pipelined commands, one span each"
    );
    assert_eq!(named(&spans, "GET").len(), 2);
    let unknown = one(&spans, "NOSUCHCMD");
    assert_eq!(unknown.status, ERROR);
    assert_eq!(unknown.attr("db.response.status_code"), Some("ERR"));
    let wrong = one(&spans, "LPUSH");
    assert_eq!(wrong.attr("db.response.status_code"), Some("WRONGTYPE"));
    assert_eq!(one(&spans, "SELECT").status, 0);
}

/// The command-line clients, selected by the server port they connect to, and named even when
/// they have exited before the agent could read their `/proc` entry.
#[test]
fn command_line_clients() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let db = Mariadb::start();
    let rx = Receiver::grpc();
    let agent = Agent::start(
        &[
            "--port".into(),
            pg.port.to_string(),
            "--port".into(),
            redis.port.to_string(),
            "--port".into(),
            db.port.to_string(),
            "--otlp-endpoint".into(),
            rx.endpoint.clone(),
            "--otlp-protocol".into(),
            "grpc".into(),
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let ok = |cmd: &mut Command| {
        let out = cmd.output().expect("client runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "shop",
        ])
        .args(["-c", "SELECT 40 + 2 AS answer"]));
    // The agent is frozen while redis-cli runs: the client has exited, and its `/proc` entry
    // is gone, before the agent reads the record that made it traced.
    agent.proc.signal(libc::SIGSTOP);
    ok(Command::new("redis-cli").args(["-p", &redis.port.to_string(), "INCRBY", "hits", "5"]));
    agent.proc.signal(libc::SIGCONT);
    ok(Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &db.port.to_string(),
            "-u",
            "shop",
            "-pshop",
            "--skip-ssl",
            "shop",
        ])
        .args(["-e", "SELECT 40 + 2"]));
    let spans = eventually(Duration::from_secs(20), || {
        let s = rx.spans();
        let have = |q: &str| s.iter().any(|x| x.attr("db.query.text") == Some(q));
        (have("SELECT ? + ? AS answer") && have("INCRBY ? ?") && have("SELECT ? + ?")).then_some(s)
    })
    .unwrap_or_else(|| panic!("missing spans: {:#?}", rx.spans()));
    agent.stop();
    let by_query = |q: &str| {
        spans
            .iter()
            .find(|s| s.attr("db.query.text") == Some(q))
            .expect("span")
    };
    let psql = by_query("SELECT ? + ? AS answer");
    check_common(psql, "postgresql", pg.port);
    assert!(
        psql.resource
            .get("process.executable.name")
            .is_some_and(|e| e == "psql")
    );
    let incr = by_query("INCRBY ? ?");
    check_common(incr, "redis", redis.port);
    assert_eq!(incr.service(), "redis-cli", "named by the kernel's record");
    assert_eq!(
        incr.resource
            .get("process.executable.name")
            .map(String::as_str),
        Some("redis-cli")
    );
    let maria = by_query("SELECT ? + ?");
    check_common(maria, "mariadb", db.port);
    assert_eq!(maria.attr("db.namespace"), Some("shop"));
}

#[test]
fn queries_made_while_serving_a_request_are_its_children() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let port = agent_e2e::free_port();
    let service = Proc::spawn(
        Command::new("python3")
            .arg(peer("db_service.py"))
            .args([port, pg.port, redis.port].map(|p| p.to_string()))
            .env("OTEL_SERVICE_NAME", "items"),
    );
    wait_ready(&service, "db service");
    let rx = Receiver::grpc();
    let agent = Agent::start(
        &rx.agent_args(service.pid()),
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    // Five clients at once, four requests each: handler threads interleave their queries.
    let clients: Vec<_> = (0..5)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..4 {
                    let (status, body) = agent_e2e::http_get(
                        "127.0.0.1",
                        port,
                        &format!("/item/{}", c * 10 + i),
                        &[],
                    );
                    assert_eq!((status, body), (200, (c * 10 + i + 1).to_string()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    // Per request: the SERVER span, SELECT and GET, and the handshake commands of the new
    // handler thread's connections (redis-py's HELLO and CLIENT SETINFO).
    let count = |s: &[RecvSpan], kind: i32, name: &str| {
        s.iter()
            .filter(|x| x.kind == kind && x.name == name)
            .count()
    };
    let spans = eventually(Duration::from_secs(20), || {
        let s = rx.spans();
        (count(&s, 2, "GET /item/{id}") >= 20
            && count(&s, CLIENT, "SELECT") >= 20
            && count(&s, CLIENT, "GET") >= 20)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("expected 20 requests: {:#?}", rx.spans()));
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    assert_eq!(rx.spans().len(), spans.len(), "nothing late");
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 20);
    for server in &servers {
        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_hex() == server.span_hex())
            .collect();
        for name in ["SELECT", "GET"] {
            let n = children.iter().filter(|c| c.name == name).count();
            assert_eq!(n, 1, "one {name} under {server:#?}: {children:#?}");
        }
        for child in children {
            assert_eq!(child.kind, CLIENT);
            assert_eq!(child.trace_hex(), server.trace_hex());
        }
    }
    // And every database or cache call has one of the requests as its parent.
    for s in spans.iter().filter(|s| s.kind == CLIENT) {
        assert!(
            servers.iter().any(|p| p.span_hex() == s.parent_hex()),
            "orphan or misplaced: {s:#?}"
        );
    }
}

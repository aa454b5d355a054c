//! HTTP/2 and gRPC end to end: a grpcio service and client (OK and NOT_FOUND, traceparent in
//! metadata), a Node.js h2c pair with multiplexed streams, curl's `Upgrade: h2c` against
//! hypercorn; and a protocol the agent does not parse, whose bytes the kernel stops shipping.

use std::{process::Command, time::Duration};

use agent_e2e::{
    Agent, Proc, eventually, free_port, peer,
    receiver::{Receiver, RecvSpan},
    wait_ready,
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

fn find<'a>(spans: &'a [RecvSpan], kind: i32, name: &str) -> &'a RecvSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == kind && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name} in {spans:#?}");
    found[0]
}

#[test]
fn grpc_unary_ok_and_not_found_with_metadata_context() {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("python3")
            .arg(peer("grpc_peer.py"))
            .args(["server", &port.to_string()])
            .env("OTEL_SERVICE_NAME", "catalog"),
    );
    wait_ready(&server, "gRPC server");
    let (trace, parent) = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174");
    let mut client = Proc::spawn(
        Command::new("python3")
            .arg(peer("grpc_peer.py"))
            .args([
                "client",
                &port.to_string(),
                &format!("00-{trace}-{parent}-01"),
            ])
            .env("OTEL_SERVICE_NAME", "frontend"),
    );
    wait_ready(&client, "gRPC client");
    let rx = Receiver::grpc();
    let agent = Agent::tracing(&[server.pid(), client.pid()], &rx);
    client.send_line("go");
    assert!(
        client.wait(Duration::from_secs(30)).success(),
        "{:?}",
        client.stderr.get()
    );
    let codes: Vec<String> = client
        .stdout
        .get()
        .into_iter()
        .filter(|l| l.starts_with('{'))
        .collect();
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert!(codes[1].contains("NOT_FOUND"));
    let spans = rx.settle(4);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for s in &spans {
        assert_eq!(s.attr("rpc.system"), Some("grpc"));
        assert_eq!(s.attr("rpc.service"), Some("demo.v1.Catalog"));
        assert_eq!(s.attr("network.protocol.version"), Some("2"));
        assert_eq!(s.attr("server.port"), Some(port.to_string().as_str()));
    }
    let get_client = find(&spans, CLIENT, "demo.v1.Catalog/GetItem");
    let get_server = find(&spans, SERVER, "demo.v1.Catalog/GetItem");
    assert_eq!(get_client.attr("rpc.method"), Some("GetItem"));
    assert_eq!(get_client.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(get_client.status, 0);
    assert_eq!(get_client.service(), "frontend");
    assert_eq!(get_server.service(), "catalog");
    // The traceparent the client sent in its metadata: its span id is the CLIENT span's own,
    // and the SERVER span is its child, in that trace.
    assert_eq!(get_client.trace_hex(), trace);
    assert_eq!(get_client.span_hex(), parent);
    assert_eq!(get_server.trace_hex(), trace);
    assert_eq!(get_server.parent_hex(), parent);
    let lookup_client = find(&spans, CLIENT, "demo.v1.Catalog/Lookup");
    let lookup_server = find(&spans, SERVER, "demo.v1.Catalog/Lookup");
    assert_eq!(lookup_client.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(
        lookup_client.status, ERROR,
        "NOT_FOUND is an error for the caller"
    );
    assert_eq!(lookup_server.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(lookup_server.status, 0, "and not the server's fault");
    assert_eq!(
        lookup_server.parent_hex(),
        lookup_client.span_hex(),
        "same host, linked"
    );
    assert_eq!(lookup_server.trace_hex(), lookup_client.trace_hex());
}

#[test]
fn h2c_prior_knowledge_node_pair_with_multiplexed_streams() {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("node")
            .arg(peer("node_h2.js"))
            .args(["server", &port.to_string()]),
    );
    wait_ready(&server, "node h2 server");
    let mut client = Proc::spawn(Command::new("node").arg(peer("node_h2.js")).args([
        "client",
        &port.to_string(),
        "/hello",
        "/missing",
        "/items?id=7",
    ]));
    wait_ready(&client, "node h2 client");
    let rx = Receiver::http();
    let agent = Agent::tracing(&[server.pid(), client.pid()], &rx);
    client.send_line("go");
    assert!(
        client.wait(Duration::from_secs(30)).success(),
        "{:?}",
        client.stderr.get()
    );
    let spans = rx.settle(6);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    for path in ["/hello", "/missing", "/items"] {
        let pair: Vec<_> = spans
            .iter()
            .filter(|s| s.attr("url.path") == Some(path))
            .collect();
        assert_eq!(pair.len(), 2, "{path}: {spans:#?}");
        let server_span = pair.iter().find(|s| s.kind == SERVER).expect("server span");
        let client_span = pair.iter().find(|s| s.kind == CLIENT).expect("client span");
        assert_eq!(server_span.name, format!("GET {path}"));
        assert_eq!(client_span.name, "GET");
        for s in &pair {
            assert_eq!(s.attr("network.protocol.version"), Some("2"));
            assert_eq!(s.attr("http.request.method"), Some("GET"));
        }
        let status = if path == "/missing" { "404" } else { "200" };
        assert_eq!(server_span.attr("http.response.status_code"), Some(status));
        assert_eq!(client_span.attr("http.response.status_code"), Some(status));
        assert_eq!(client_span.status == ERROR, path == "/missing");
        assert_eq!(server_span.status, 0);
        assert_eq!(
            client_span.attr("user_agent.original"),
            Some("node-h2-client")
        );
        assert_eq!(
            server_span.parent_hex(),
            client_span.span_hex(),
            "{path}: linked"
        );
    }
    let items = spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/items"))
        .expect("items");
    assert_eq!(items.attr("url.query"), Some("id=7"));
}

#[test]
fn h2c_upgrade_and_prior_knowledge_with_curl_and_hypercorn() {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("hypercorn")
            .args(["h2c_app:app", "--bind", &format!("127.0.0.1:{port}")])
            .current_dir(peer("")),
    );
    agent_e2e::wait_port(port);
    let rx = Receiver::grpc();
    let agent = Agent::tracing(&[server.pid()], &rx);
    let curl = |flag: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-s", flag, &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("--http2", "/up"), "hello over 2");
    assert_eq!(curl("--http2-prior-knowledge", "/pk"), "hello over 2");
    let spans = rx.settle(2);
    agent.stop();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let up = spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/up"))
        .expect("upgraded");
    assert_eq!(up.kind, SERVER);
    assert_eq!(
        up.attr("http.response.status_code"),
        Some("200"),
        "the HTTP/2 answer, not 101"
    );
    assert_eq!(up.attr("http.response.body.size"), Some("12"));
    let pk = spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/pk"))
        .expect("prior knowledge");
    assert_eq!(pk.attr("network.protocol.version"), Some("2"));
    assert_eq!(pk.attr("http.response.status_code"), Some("200"));
}

#[test]
fn unrecognized_protocol_stops_being_shipped() {
    // A binary protocol the agent does not parse: many small messages on one connection.
    let port = free_port();
    let script = format!(
        "import socket, threading\n\
         srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         srv.bind(('127.0.0.1', {port})); srv.listen(1)\n\
         def echo():\n    c, _ = srv.accept()\n    while (d := c.recv(4096)):\n        c.sendall(d)\n\
         threading.Thread(target=echo, daemon=True).start()\n\
         print('ready', flush=True); input()\n\
         import time\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         for i in range(5000):\n    s.sendall(b'\\x00\\x01\\xfe' + bytes([i % 256]) * 13); s.recv(64); time.sleep(0.001)\n\
         s.close(); print('done', flush=True)\n"
    );
    let mut app = Proc::spawn(Command::new("python3").args(["-c", &script]));
    wait_ready(&app, "binary echo");
    let rx = Receiver::grpc();
    let agent = Agent::tracing(&[app.pid()], &rx);
    app.send_line("go");
    eventually(Duration::from_secs(20), || {
        app.stdout.get().iter().any(|l| l == "done").then_some(())
    })
    .expect("exchange done");
    std::thread::sleep(Duration::from_millis(300));
    let (_, stderr) = agent.stop();
    let counter = |name: &str| -> u64 {
        stderr
            .iter()
            .find_map(|l| l.split(&format!("{name} = ")).nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(rx.spans().is_empty());
    assert_eq!(counter("conns_unrecognized"), 2, "both ends: {stderr:#?}");
    // 20 000 syscalls over more than five seconds (5000 writes and 5000 reads on each end). The
    // first record wakes the reader (it follows a quiet spell); the accepted end's first records
    // ride along until the next look, at most the ride-along window of an exporting agent plus
    // the backstop's margin (`EXPORT_WAKEUP_WINDOW_NS`, ~1.01 s: under a fifth of the exchange,
    // at most ~4000 syscalls of both ends). Once userspace has seen a connection's first bytes,
    // the kernel copies nothing more of it.
    let (skipped, sent) = (
        counter("kernel_skipped_ignored"),
        counter("kernel_events_sent"),
    );
    assert!(skipped >= 15_000, "skipped {skipped}: {stderr:#?}");
    assert!(sent < 5000, "sent {sent}: {stderr:#?}");
}

//! TLS through the OpenSSL uprobes, with certificates made for each test: Python's `ssl`
//! (libssl, loaded after the agent started) in a chain of two services, nginx with curl,
//! `openssl s_server`/`s_client`, and Node.js (OpenSSL linked into the executable, memory
//! BIOs). Spans are those of cleartext: same paths, statuses and links, `url.scheme = https`,
//! and exactly one span per request (the ciphertext is never parsed as well).

use std::{process::Command, time::Duration};

use agent_e2e::{
    Agent, Proc, curl, eventually, free_port, peer,
    receiver::{Receiver, RecvSpan},
    servers::{Cert, Nginx},
    wait_ready,
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

fn one<'a>(spans: &'a [RecvSpan], kind: i32, service: &str, path: &str) -> &'a RecvSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == kind && s.service() == service && s.attr("url.path") == Some(path))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span of {service} for {path}: {spans:#?}"
    );
    found[0]
}

fn check_tls(s: &RecvSpan) {
    assert_eq!(s.attr("url.scheme"), Some("https"), "{s:#?}");
    assert_eq!(s.attr("tls.protocol.name"), Some("tls"), "{s:#?}");
}

fn python_service(port: u16, cert: &Cert, extra: &[String], service: &str) -> Proc {
    Proc::spawn(
        Command::new("python3")
            .arg(peer("tls_service.py"))
            .arg(port.to_string())
            .arg(&cert.cert)
            .arg(&cert.key)
            .args(extra)
            .env("OTEL_SERVICE_NAME", service),
    )
}

#[test]
fn python_chain_over_tls_loaded_after_the_agent_started() {
    let cert = Cert::new();
    let (front_port, back_port) = (free_port(), free_port());
    let back = python_service(back_port, &cert, &[], "inventory");
    wait_ready(&back, "back service");
    let extra = [
        "--downstream".to_string(),
        back_port.to_string(),
        "--late".into(),
    ];
    let mut front = python_service(front_port, &cert, &extra, "storefront");
    wait_ready_line(&front, "waiting");
    let rx = Receiver::grpc();
    let agent = Agent::tracing(&[front.pid(), back.pid()], &rx);
    // Only now does the front service load libssl (dlopen of Python's _ssl module).
    front.send_line("go");
    wait_ready(&front, "front service");
    agent.wait_log(&["probing TLS library", &format!("pid={}", front.pid())]);
    let url = |p: &str| format!("https://localhost:{front_port}{p}");
    let ca = cert.cert.to_string_lossy().into_owned();
    for (path, status) in [("/items/1", 200), ("/missing/2", 404), ("/items/3", 200)] {
        let call = curl(&url(path), &["--cacert", &ca]);
        assert_eq!(call.status, status, "{path}");
    }
    let spans = rx.settle(9);
    let (_, stderr) = agent.stop();
    assert_eq!(
        spans.len(),
        9,
        "three spans per request, no more: {spans:#?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("conns_tls")),
        "{stderr:#?}"
    );
    // Before its late `import ssl`, the front service had no TLS library: said, not hidden.
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("tls_processes_without_library")),
        "{stderr:#?}"
    );
    for (path, status) in [
        ("/items/1", "200"),
        ("/missing/2", "404"),
        ("/items/3", "200"),
    ] {
        let front_server = one(&spans, SERVER, "storefront", path);
        let front_client = one(&spans, CLIENT, "storefront", path);
        let back_server = one(&spans, SERVER, "inventory", path);
        for s in [front_server, front_client, back_server] {
            check_tls(s);
            assert_eq!(s.attr("http.response.status_code"), Some(status), "{s:#?}");
            assert_eq!(s.attr("tls.protocol.version"), Some("1.3"), "{s:#?}");
            assert_eq!(s.trace_hex(), front_server.trace_hex(), "{path}: one trace");
        }
        assert_eq!(
            front_client.attr("url.full"),
            Some(format!("https://localhost:{back_port}{path}").as_str())
        );
        assert_eq!(
            front_client.parent_hex(),
            front_server.span_hex(),
            "{path}: in-process link"
        );
        assert_eq!(
            back_server.parent_hex(),
            front_client.span_hex(),
            "{path}: same-host link"
        );
        assert_eq!(front_client.status == ERROR, status == "404");
        assert_eq!(front_server.status, 0);
    }
}

fn wait_ready_line(p: &Proc, line: &str) {
    eventually(Duration::from_secs(20), || {
        p.stdout.get().iter().any(|l| l == line).then_some(())
    })
    .unwrap_or_else(|| panic!("no {line:?} from {:?}", p.stderr.get()));
}

#[test]
fn nginx_over_tls_with_curl() {
    let cert = Cert::new();
    let nginx = Nginx::start_tls(&cert);
    let rx = Receiver::http();
    let agent = Agent::tracing(&[nginx.server.pid()], &rx);
    // The worker (a child of the master) maps libssl: it is probed as a traced descendant.
    agent.wait_log(&["probing TLS library", "libssl"]);
    let ca = cert.cert.to_string_lossy().into_owned();
    let base = format!("https://localhost:{}", nginx.port);
    // HTTP/2 (chosen by ALPN) and HTTP/1.1 inside TLS.
    let get =
        |path: &str, version: &str| curl(&format!("{base}{path}"), &["--cacert", &ca, version]);
    assert_eq!(get("/index.html", "--http2").status, 200);
    assert_eq!(get("/missing", "--http2").status, 404);
    assert_eq!(get("/index.html", "--http1.1").status, 200);
    let spans = rx.settle(3);
    agent.stop();
    assert_eq!(spans.len(), 3, "one span per request: {spans:#?}");
    for s in &spans {
        assert_eq!(s.kind, SERVER);
        check_tls(s);
        assert_eq!(s.attr("server.port"), Some(nginx.port.to_string().as_str()));
    }
    let missing: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.path") == Some("/missing"))
        .collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].attr("http.response.status_code"), Some("404"));
    let count =
        |key: &str, value: &str| spans.iter().filter(|s| s.attr(key) == Some(value)).count();
    assert_eq!(count("network.protocol.version", "2"), 2, "{spans:#?}");
    assert_eq!(count("network.protocol.version", "1.1"), 1, "{spans:#?}");
    let ok = spans
        .iter()
        .filter(|s| s.attr("http.response.status_code") == Some("200"))
        .count();
    assert_eq!(ok, 2, "{spans:#?}");
}

#[test]
fn openssl_s_server_and_s_client() {
    // s_server relays between the TLS connection and its stdin/stdout with SSL_read and
    // SSL_write; the test plays the HTTP server through it. (Its -www mode reads through
    // OpenSSL's SSL BIO, which calls the library's internals, not SSL_read: see the README.)
    let cert = Cert::new();
    let port = free_port();
    let mut server = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key),
    );
    agent_e2e::wait_port(port);
    // Selected by executable: the server now, the client when it starts.
    let rx = Receiver::grpc();
    let agent = Agent::start(
        &[
            "--exe".into(),
            "openssl".into(),
            "--otlp-endpoint".into(),
            rx.endpoint.clone(),
            "--otlp-protocol".into(),
            rx.protocol.into(),
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    agent.wait_log(&["probing TLS library", &format!("pid={}", server.pid())]);
    let mut client = Proc::spawn(
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-servername", "localhost", "-CAfile"])
            .arg(&cert.cert),
    );
    agent.wait_log(&["probing TLS library", &format!("pid={}", client.pid())]);
    // Each message is one write (s_server reads some one-letter lines as commands).
    client.send_line("GET /status HTTP/1.0\r\nHost: localhost\r\n\r");
    eventually(Duration::from_secs(10), || {
        server
            .stdout
            .get()
            .iter()
            .any(|l| l.starts_with("GET /status"))
            .then_some(())
    })
    .expect("the request went through");
    server.send_line("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nok\r");
    eventually(Duration::from_secs(10), || {
        client
            .stdout
            .get()
            .iter()
            .any(|l| l.starts_with("ok"))
            .then_some(())
    })
    .expect("the response went through");
    let spans = rx.settle(2);
    agent.stop();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server_span = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .expect("server span");
    let client_span = spans
        .iter()
        .find(|s| s.kind == CLIENT)
        .expect("client span");
    for s in [server_span, client_span] {
        check_tls(s);
        assert_eq!(s.attr("url.path"), Some("/status"));
        assert_eq!(s.attr("http.response.status_code"), Some("200"));
    }
    // The client may handshake before its exec is selected: its version is then unknown (not
    // guessed); the server's handshake was seen.
    assert_eq!(server_span.attr("tls.protocol.version"), Some("1.3"));
    assert_eq!(
        server_span.parent_hex(),
        client_span.span_hex(),
        "same-host link"
    );
}

/// Runs node_https.js as a server and as a client in `mode` requesting `paths`, both traced;
/// returns the spans of the exchange (a SERVER and a CLIENT span per path).
fn node_https(mode: &str, paths: &[&str], rx: Receiver) -> Vec<RecvSpan> {
    let cert = Cert::new();
    let port = free_port();
    let server = Proc::spawn(
        Command::new("node")
            .arg(peer("node_https.js"))
            .args(["server", &port.to_string()])
            .arg(&cert.cert)
            .arg(&cert.key),
    );
    wait_ready(&server, "node https server");
    let mut client = Proc::spawn(
        Command::new("node")
            .arg(peer("node_https.js"))
            .args([mode, &port.to_string()])
            .arg(&cert.cert)
            .args(paths),
    );
    wait_ready(&client, "node https client");
    let agent = Agent::tracing(&[server.pid(), client.pid()], &rx);
    agent.wait_log(&["probing TLS library", &format!("pid={}", client.pid())]);
    client.send_line("go");
    assert!(
        client.wait(Duration::from_secs(30)).success(),
        "{:?}",
        client.stderr.get()
    );
    let spans = rx.settle(2 * paths.len());
    agent.stop();
    assert_eq!(spans.len(), 2 * paths.len(), "{spans:#?}");
    spans
}

#[test]
fn node_https_pair_with_memory_bios() {
    let spans = node_https(
        "client",
        &["/hello", "/missing", "/items?id=7"],
        Receiver::http(),
    );
    for path in ["/hello", "/missing", "/items"] {
        let pair: Vec<_> = spans
            .iter()
            .filter(|s| s.attr("url.path") == Some(path))
            .collect();
        assert_eq!(pair.len(), 2, "{path}: {spans:#?}");
        let server_span = pair.iter().find(|s| s.kind == SERVER).expect("server span");
        let client_span = pair.iter().find(|s| s.kind == CLIENT).expect("client span");
        let status = if path == "/missing" { "404" } else { "200" };
        for s in [server_span, client_span] {
            check_tls(s);
            assert_eq!(s.attr("http.response.status_code"), Some(status));
        }
        assert_eq!(
            client_span.attr("user_agent.original"),
            Some("node-https-client")
        );
        assert_eq!(client_span.status == ERROR, path == "/missing");
        assert_eq!(
            server_span.parent_hex(),
            client_span.span_hex(),
            "{path}: linked"
        );
    }
}

#[test]
fn node_https_new_connection_per_request() {
    // Each request on its own TLS connection: OpenSSL objects are freed and allocated again,
    // often at the same address; each must be tied to its own connection.
    let paths = ["/a", "/b", "/c", "/d", "/e"];
    let spans = node_https("fresh-client", &paths, Receiver::grpc());
    let mut ports = std::collections::HashSet::new();
    for path in paths {
        let server_span = one(&spans, SERVER, "node", path);
        let client_span = one(&spans, CLIENT, "node", path);
        check_tls(server_span);
        check_tls(client_span);
        assert_eq!(
            server_span.parent_hex(),
            client_span.span_hex(),
            "{path}: linked"
        );
        ports.insert(client_span.attr("network.local.port").map(str::to_string));
    }
    assert_eq!(
        ports.len(),
        paths.len(),
        "one connection per request: {spans:#?}"
    );
}

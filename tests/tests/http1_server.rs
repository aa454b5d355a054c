//! SERVER spans: real Python and Node.js servers traced by the real agent, spans received by a
//! real OTLP receiver over gRPC and http/protobuf.

use std::process::Command;

use agent_e2e::{
    Agent, Call, Proc, curl, free_port, peer,
    receiver::{Receiver, RecvSpan},
    servers::Nginx,
    wait_port,
};

const SERVER: i32 = 2;

/// Finds the one span for a call (by path and query) and checks everything common to SERVER
/// spans, including that its duration lies inside the client's own measured window.
fn check_server_span<'a>(spans: &'a [RecvSpan], call: &Call, port: u16) -> &'a RecvSpan {
    let url = call
        .url
        .split_once(&format!(":{port}"))
        .expect("url has the port")
        .1;
    let (path, query) = url
        .split_once('?')
        .map_or((url, None), |(p, q)| (p, Some(q)));
    let matching: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.path") == Some(path) && s.attr("url.query") == query)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one span for {}: {spans:#?}",
        call.url
    );
    let s = matching[0];
    assert_eq!(s.kind, SERVER);
    assert_eq!(s.trace_id.len(), 16);
    assert_eq!(s.span_id.len(), 8);
    assert!(s.trace_id.iter().any(|&b| b != 0) && s.span_id.iter().any(|&b| b != 0));
    assert!(
        s.parent_span_id.is_empty(),
        "no context propagated: a root span"
    );
    assert_eq!(
        s.attr("http.response.status_code"),
        Some(call.status.to_string().as_str())
    );
    assert_eq!(s.attr("url.scheme"), Some("http"));
    assert_eq!(s.attr("server.port"), Some(port.to_string().as_str()));
    assert_eq!(s.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(s.attr("client.address"), Some("127.0.0.1"));
    assert_eq!(s.attr("network.peer.address"), Some("127.0.0.1"));
    assert!(s.attr("network.peer.port").is_some());
    assert_ne!(s.attr("network.peer.port"), Some(port.to_string().as_str()));
    // Opt-in or HTTP-implied attributes stay out (they would cost every span bytes).
    for absent in [
        "client.port",
        "network.protocol.name",
        "network.transport",
        "network.type",
    ] {
        assert_eq!(s.attr(absent), None, "{absent}");
    }
    assert_eq!(s.attr("network.protocol.version"), Some("1.1"));
    assert!(
        s.attr("user_agent.original")
            .is_some_and(|ua| ua.starts_with("curl/"))
    );
    assert!(
        call.start_ns <= s.start_ns && s.start_ns <= s.end_ns && s.end_ns <= call.end_ns,
        "span [{}, {}] outside the client's window [{}, {}]",
        s.start_ns,
        s.end_ns,
        call.start_ns,
        call.end_ns
    );
    s
}

/// The Python test server on a free port (`py_server.py` with `extra` arguments), traced by an
/// agent (with `agent_extra` arguments) exporting over gRPC: its port, the server, the receiver
/// and the agent.
fn traced_python_server(
    extra: &[&str],
    env: &[(&str, &str)],
    agent_extra: &[&str],
) -> (u16, Proc, Receiver, Agent) {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("python3")
            .arg(peer("py_server.py"))
            .arg(port.to_string())
            .args(extra)
            .envs(env.iter().copied()),
    );
    wait_port(port);
    let rx = Receiver::grpc();
    let mut args = rx.agent_args(server.pid());
    args.extend(agent_extra.iter().map(|a| a.to_string()));
    let agent = Agent::start(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    (port, server, rx, agent)
}

#[test]
fn python_server_spans_over_grpc() {
    let (port, server, rx, agent) =
        traced_python_server(&[], &[("OTEL_SERVICE_NAME", "py-shop")], &[]);

    let base = format!("http://127.0.0.1:{port}");
    let calls = [
        curl(&format!("{base}/hello?lang=en&x=1"), &[]),
        curl(&format!("{base}/fail"), &[]),
        curl(&format!("{base}/missing"), &[]),
        curl(&format!("{base}/chunked"), &[]),
        curl(&format!("{base}/big"), &[]),
        curl(&format!("{base}/echo"), &["-d", "payload=123"]),
    ];
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![200, 500, 404, 200, 200, 201]
    );

    let spans = rx.wait_spans(calls.len());
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), calls.len(), "one span per request: {spans:#?}");

    let hello = check_server_span(&spans, &calls[0], port);
    assert_eq!(hello.name, "GET /hello");
    assert_eq!(hello.attr("http.route"), Some("/hello"));
    assert_eq!(hello.attr("http.request.method"), Some("GET"));
    assert_eq!(hello.attr("url.query"), Some("lang=en&x=1"));
    assert_eq!(hello.status, 0);
    assert_eq!(
        hello.resource.get("service.name").map(String::as_str),
        Some("py-shop")
    );
    assert_eq!(
        hello.resource.get("process.pid").map(String::as_str),
        Some(server.pid().to_string().as_str())
    );
    assert!(
        hello
            .resource
            .get("process.executable.name")
            .is_some_and(|e| e.starts_with("python"))
    );
    assert!(
        hello
            .resource
            .get("process.command_line")
            .is_some_and(|c| c.contains("py_server.py"))
    );
    assert!(hello.resource.contains_key("host.name"));
    assert!(hello.resource.contains_key("telemetry.sdk.name"));

    let fail = check_server_span(&spans, &calls[1], port);
    assert_eq!(fail.status, 2, "5xx is an error on a SERVER span");
    let missing = check_server_span(&spans, &calls[2], port);
    assert_eq!(missing.status, 0, "4xx is not an error on a SERVER span");
    let chunked = check_server_span(&spans, &calls[3], port);
    assert_eq!(chunked.attr("http.response.body.size"), Some("10000"));
    let big = check_server_span(&spans, &calls[4], port);
    assert_eq!(big.attr("http.response.body.size"), Some("200000"));
    let post = check_server_span(&spans, &calls[5], port);
    assert_eq!(post.name, "POST /echo");
    assert_eq!(post.attr("http.request.body.size"), Some("11"));
    assert!(
        stderr.iter().any(|l| l.contains("spans_exported = 6")),
        "{stderr:#?}"
    );
}

#[test]
fn node_server_spans_over_http_protobuf_with_keep_alive() {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("node")
            .arg(peer("node_server.js"))
            .arg(port.to_string()),
    );
    wait_port(port);
    let rx = Receiver::http();
    let agent = Agent::start(
        &rx.agent_args(server.pid()),
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );

    let base = format!("http://127.0.0.1:{port}");
    let single = [
        curl(&format!("{base}/hello"), &[]),
        curl(&format!("{base}/stream"), &[]),
        curl(&format!("{base}/fail"), &[]),
    ];
    // Three requests on one keep-alive connection.
    let start = agent_e2e::now_ns();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{base}/hello?k=1"))
        .arg(format!("{base}/hello?k=2"))
        .arg(format!("{base}/stream?k=3"))
        .output()
        .expect("curl");
    assert!(out.status.success());
    let end = agent_e2e::now_ns();

    let spans = rx.wait_spans(6);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    check_server_span(&spans, &single[0], port);
    let stream = check_server_span(&spans, &single[1], port);
    assert_eq!(stream.attr("http.response.body.size"), Some("22"));
    // The streamed response ends after its second write, 20 ms later.
    assert!(stream.end_ns - stream.start_ns >= 15_000_000, "{stream:#?}");
    let fail = check_server_span(&spans, &single[2], port);
    assert_eq!(fail.status, 2);
    assert_eq!(
        fail.resource.get("service.name").map(String::as_str),
        Some("node"),
        "no OTEL_SERVICE_NAME: the executable's name"
    );

    let keep_alive: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.query").is_some())
        .collect();
    assert_eq!(keep_alive.len(), 3);
    let ports: std::collections::BTreeSet<_> = keep_alive
        .iter()
        .map(|s| s.attr("network.peer.port").unwrap_or(""))
        .collect();
    assert_eq!(ports.len(), 1, "one connection carried the three requests");
    for s in &keep_alive {
        assert!(start <= s.start_ns && s.end_ns <= end);
    }
    let mut queries: Vec<_> = keep_alive
        .iter()
        .map(|s| s.attr("url.query").unwrap_or(""))
        .collect();
    queries.sort();
    assert_eq!(queries, ["k=1", "k=2", "k=3"]);
}

/// A server that peeks at each connection's first bytes (`MSG_PEEK` through `recv` and
/// `recvmsg`) before reading them, as proxies' protocol inspectors do: peeked bytes are read
/// again later, so they must not enter the stream twice.
#[test]
fn peeked_bytes_are_not_taken_for_data() {
    peeked_bytes_with(&[]);
}

/// The same with the bytes read at the syscall tracepoints (kernels before 6.3), where the
/// flags come from the call's arguments rather than from the socket tracepoint.
#[test]
fn peeked_bytes_are_not_taken_for_data_at_syscalls() {
    peeked_bytes_with(&["--syscall-tracepoints"]);
}

fn peeked_bytes_with(agent_extra: &[&str]) {
    let (port, _server, rx, agent) = traced_python_server(&["--peek"], &[], agent_extra);

    let base = format!("http://127.0.0.1:{port}");
    let first = curl(&format!("{base}/hello?peeked=1"), &[]);
    let post = curl(&format!("{base}/echo?peeked=2"), &["-d", "payload=123"]);
    // Two requests on one keep-alive connection: only its start was peeked at.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(format!("{base}/hello?peeked=3"))
        .arg(format!("{base}/missing?peeked=4"))
        .output()
        .expect("curl");
    assert!(out.status.success());
    assert_eq!((first.status, post.status), (200, 201));

    let spans = rx.wait_spans(4);
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), 4, "one span per request: {spans:#?}");
    check_server_span(&spans, &first, port);
    let echo = check_server_span(&spans, &post, port);
    assert_eq!(echo.name, "POST /echo");
    assert_eq!(echo.attr("http.request.body.size"), Some("11"));
    assert_eq!(
        rows(&spans, &["url.query", "http.response.status_code"]),
        [
            ["GET /hello", "peeked=1", "200"],
            ["GET /hello", "peeked=3", "200"],
            ["GET /missing", "peeked=4", "404"],
            ["POST /echo", "peeked=2", "201"],
        ]
    );
    assert_in_step(&stderr);
}

/// Each span's name and its values of `attrs` ("-" where it has none), sorted.
fn rows<'a>(spans: impl IntoIterator<Item = &'a RecvSpan>, attrs: &[&str]) -> Vec<Vec<&'a str>> {
    let mut rows: Vec<Vec<&str>> = spans
        .into_iter()
        .map(|s| {
            std::iter::once(s.name.as_str())
                .chain(attrs.iter().map(|a| s.attr(a).unwrap_or("-")))
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

/// The agent's exit log shows no request, response or stream lost to a parse out of step.
fn assert_in_step(stderr: &[String]) {
    for lost in ["http_resyncs", "requests_unanswered", "responses_unpaired"] {
        assert!(!stderr.iter().any(|l| l.contains(lost)), "{stderr:#?}");
    }
}

/// A server that throws request bodies away in the kernel (`recv` with `MSG_TRUNC`: the bytes
/// leave the socket without reaching the process), between heads read a byte a call: the
/// agent sees each body as a gap of known size, and the requests after it stay in step.
#[test]
fn bodies_discarded_by_msg_trunc_are_gaps() {
    discarded_bodies_with(&[]);
}

/// The same with the bytes read at the syscall tracepoints (kernels before 6.3).
#[test]
fn bodies_discarded_by_msg_trunc_are_gaps_at_syscalls() {
    discarded_bodies_with(&["--syscall-tracepoints"]);
}

fn discarded_bodies_with(agent_extra: &[&str]) {
    let (port, _server, rx, agent) = traced_python_server(&["--discard-bodies"], &[], agent_extra);
    let base = format!("http://127.0.0.1:{port}");
    let body = "b".repeat(3000);
    // Two bodies and a GET on one keep-alive connection.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-d", &body])
        .arg(format!("{base}/echo?n=1"))
        .args(["--next", "-s", "-o", "/dev/null", "-d", &body])
        .arg(format!("{base}/echo?n=2"))
        .args(["--next", "-s", "-o", "/dev/null"])
        .arg(format!("{base}/hello?n=3"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");

    let spans = rx.settle(3);
    let (_, stderr) = agent.stop();
    let attrs = [
        "url.query",
        "http.response.status_code",
        "http.request.body.size",
    ];
    assert_eq!(
        rows(&spans, &attrs),
        [
            ["GET /hello", "n=3", "200", "0"],
            ["POST /echo", "n=1", "201", "3000"],
            ["POST /echo", "n=2", "201", "3000"],
        ],
        "{spans:#?}"
    );
    assert_in_step(&stderr);
}

/// nginx sending static files with `sendfile(2)` (their bytes go from the page cache to the
/// socket, never through the worker's memory: the agent sees only their count), several on one
/// keep-alive connection, one larger than a round of the kernel's splice: each response is
/// paired with its request and its body measured.
#[test]
fn nginx_static_files_by_sendfile() {
    nginx_sendfile_with(&[]);
}

/// The same with the bytes read at the syscall tracepoints (kernels before 6.3), where a
/// `sendfile` is one record rather than one per round.
#[test]
fn nginx_static_files_by_sendfile_at_syscalls() {
    nginx_sendfile_with(&["--syscall-tracepoints"]);
}

fn nginx_sendfile_with(agent_extra: &[&str]) {
    let big = vec![b'x'; 300_000];
    let nginx = Nginx::start_plain(&[("small.txt", b"hello\n"), ("big.bin", &big)]);
    let rx = Receiver::grpc();
    let mut args = rx.agent_args(nginx.server.pid());
    args.extend(agent_extra.iter().map(|a| a.to_string()));
    let agent = Agent::start(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);

    let base = format!("http://127.0.0.1:{}", nginx.port);
    let paths = ["/big.bin", "/small.txt", "/missing", "/small.txt?again=1"];
    let out = Command::new("curl")
        .arg("-s")
        .args(paths.iter().flat_map(|_| ["-o", "/dev/null"]))
        .args(paths.iter().map(|p| format!("{base}{p}")))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");

    let spans = rx.settle(paths.len());
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), paths.len(), "one span per request: {spans:#?}");
    assert_eq!(
        rows(&spans, &["url.query", "http.response.status_code"]),
        [
            ["GET /big.bin", "-", "200"],
            ["GET /missing", "-", "404"],
            ["GET /small.txt", "-", "200"],
            ["GET /small.txt", "again=1", "200"],
        ],
        "{spans:#?}"
    );
    // nginx's own 404 page is not ours to size: the files' sizes are.
    let files = spans
        .iter()
        .filter(|s| s.attr("http.response.status_code") == Some("200"));
    assert_eq!(
        rows(files, &["url.query", "http.response.body.size"]),
        [
            ["GET /big.bin", "-", "300000"],
            ["GET /small.txt", "-", "6"],
            ["GET /small.txt", "again=1", "6"],
        ],
        "{spans:#?}"
    );
    assert_in_step(&stderr);
}

//! CLIENT spans: an application making outbound requests, traced by the agent, while the server
//! it calls is not traced.

use std::{process::Command, time::Duration};

use agent_e2e::{Agent, Proc, eventually, free_port, peer, receiver::Receiver, wait_port};

const CLIENT: i32 = 3;

#[test]
fn python_client_spans() {
    let stderr = python_client_spans_with(&[]);
    assert!(
        !stderr.iter().any(|l| l.contains("syscall tracepoints")),
        "this kernel has the socket tracepoints: bytes are read there: {stderr:#?}"
    );
}

/// The same, with the bytes read at the syscall tracepoints: what kernels without the socket
/// tracepoints (before 6.3) run.
#[test]
fn python_client_spans_read_at_syscalls() {
    let stderr = python_client_spans_with(&["--syscall-tracepoints"]);
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("bytes read at the syscall tracepoints")),
        "{stderr:#?}"
    );
}

/// Traces a Python client's four requests and checks their spans; returns the agent's stderr.
fn python_client_spans_with(extra_args: &[&str]) -> Vec<String> {
    let port = free_port();
    let _server = Proc::spawn(
        Command::new("python3")
            .arg(peer("py_server.py"))
            .arg(port.to_string()),
    );
    wait_port(port);
    let mut client = Proc::spawn(
        Command::new("python3")
            .arg(peer("py_client.py"))
            .arg(port.to_string())
            .args(["/hello?q=1", "/missing", "/fail", "/chunked"])
            .env("OTEL_SERVICE_NAME", "py-client"),
    );
    eventually(Duration::from_secs(10), || {
        client
            .stdout
            .get()
            .iter()
            .any(|l| l == "ready")
            .then_some(())
    })
    .expect("client ready");

    let rx = Receiver::grpc();
    let mut args = rx.agent_args(client.pid());
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let agent = Agent::start(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    client.send_line("go");
    assert!(client.wait(Duration::from_secs(20)).success());
    let results: Vec<serde_json::Value> = client
        .stdout
        .get()
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("client JSON"))
        .collect();
    assert_eq!(results.len(), 4);

    let spans = rx.wait_spans(4);
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");

    for r in &results {
        let full = r["path"].as_str().expect("path");
        let (path, query) = full
            .split_once('?')
            .map_or((full, None), |(p, q)| (p, Some(q)));
        let s = spans
            .iter()
            .find(|s| s.attr("url.path") == Some(path))
            .unwrap_or_else(|| panic!("no span for {full}"));
        assert_eq!(s.kind, CLIENT);
        assert_eq!(s.name, "GET");
        assert_eq!(s.attr("url.query"), query);
        let status = r["status"].as_u64().expect("status");
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(status.to_string().as_str())
        );
        assert_eq!(
            s.status == 2,
            status >= 400,
            "4xx and 5xx are errors on CLIENT spans"
        );
        assert_eq!(s.attr("server.port"), Some(port.to_string().as_str()));
        assert_eq!(s.attr("network.peer.port"), Some(port.to_string().as_str()));
        assert_eq!(s.attr("server.address"), Some("127.0.0.1"));
        assert_eq!(
            s.attr("url.full"),
            Some(format!("http://127.0.0.1:{port}{full}").as_str())
        );
        assert_eq!(s.attr("user_agent.original"), Some("e2e-client/1.0"));
        assert_eq!(
            s.resource.get("service.name").map(String::as_str),
            Some("py-client")
        );
        let (start, end) = (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap());
        assert!(
            start <= s.start_ns && s.start_ns <= s.end_ns && s.end_ns <= end,
            "span [{}, {}] outside the client's window [{start}, {end}]",
            s.start_ns,
            s.end_ns
        );
    }
    // One keep-alive connection: one local port for all.
    let ports: std::collections::BTreeSet<_> = spans
        .iter()
        .map(|s| s.attr("network.local.port").unwrap_or(""))
        .collect();
    assert_eq!(ports.len(), 1);
    stderr
}

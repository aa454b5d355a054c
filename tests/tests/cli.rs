//! The agent as a person runs it: spans on stdout with no endpoint, JSON lines, flush on SIGTERM,
//! and one clear error line for what cannot work.

use std::{process::Command, time::Duration};

use agent_e2e::{Agent, Proc, agent_bin, curl, eventually, free_port, peer, wait_port};

fn python_server() -> (Proc, u16) {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("python3")
            .arg(peer("py_server.py"))
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", "stdout-demo"),
    );
    wait_port(port);
    (server, port)
}

#[test]
fn prints_readable_lines_without_endpoint() {
    let (server, port) = python_server();
    let agent = Agent::start(&["--pid".into(), server.pid().to_string()], &[]);
    let call = curl(&format!("http://127.0.0.1:{port}/hello?a=b"), &[]);
    assert_eq!(call.status, 200);
    let line = eventually(Duration::from_secs(10), || {
        agent
            .proc
            .stdout
            .get()
            .into_iter()
            .find(|l| l.contains("/hello"))
    })
    .expect("a span line on stdout");
    let (stdout, stderr) = agent.stop();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("printing spans on stdout"))
    );
    assert_eq!(stdout.len(), 1, "{stdout:#?}");
    for field in [
        "stdout-demo",
        "SERVER",
        "GET",
        "/hello?a=b",
        "200",
        "ms",
        "trace=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    let field = |name: &str| {
        line.split(&format!(" {name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} missing in {line}"))
    };
    for (name, len) in [("trace", 32), ("span", 16)] {
        let id = field(name);
        assert_eq!(id.len(), len, "{line}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    }
    assert_eq!(field("parent"), "-", "a root span: {line}");
}

#[test]
fn prints_json_and_flushes_on_sigterm() {
    let (server, port) = python_server();
    // A long batch delay would hold OTLP spans; stdout prints at once, and SIGTERM must still
    // end with every finished request printed.
    let agent = Agent::start(
        &[
            "--pid".into(),
            server.pid().to_string(),
            "--format".into(),
            "json".into(),
        ],
        &[],
    );
    for i in 0..5 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{port}/hello?i={i}"), &[]).status,
            200
        );
    }
    let (stdout, _) = agent.stop_with(libc::SIGTERM);
    let spans: Vec<serde_json::Value> = stdout
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(spans.len(), 5);
    for s in &spans {
        assert_eq!(s["kind"], "SERVER");
        assert_eq!(s["service.name"], "stdout-demo");
        assert_eq!(s["attributes"]["http.response.status_code"], 200);
        assert_eq!(s["trace_id"].as_str().map(str::len), Some(32));
        assert_eq!(s["span_id"].as_str().map(str::len), Some(16));
    }
}

#[test]
fn otlp_spans_are_flushed_on_sigint() {
    let (server, port) = python_server();
    let rx = agent_e2e::receiver::Receiver::http();
    // Batches every 60 s: only the shutdown flush can deliver these spans.
    let agent = Agent::start(
        &[
            "--pid".into(),
            server.pid().to_string(),
            "--otlp-endpoint".into(),
            rx.endpoint.clone(),
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    );
    for i in 0..3 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{port}/hello?i={i}"), &[]).status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.spans().is_empty(),
        "nothing exported before the batch delay"
    );
    agent.stop();
    assert_eq!(rx.spans().len(), 3);
}

fn run_agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("agent runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_pid_is_one_clear_error() {
    let (code, stderr) = run_agent(&["--pid", "999999999"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot trace pid 999999999"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn own_pid_is_refused() {
    // `exec` keeps the shell's pid, so `$$` is the agent's own pid.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {} --pid $$", agent_bin().display()))
        .output()
        .expect("sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("never traces itself"), "{stderr}");
}

#[test]
fn not_root_is_one_clear_error() {
    let (server, _) = python_server();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(agent_bin())
        .args(["--pid", &server.pid().to_string()])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(stderr.contains("sudo"), "{stderr}");
}

#[test]
fn bad_btf_is_one_clear_error() {
    let (server, _) = python_server();
    let (code, stderr) = run_agent(&[
        "--pid",
        &server.pid().to_string(),
        "--btf",
        "/nonexistent/vmlinux",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("BTF"), "{stderr}");
}

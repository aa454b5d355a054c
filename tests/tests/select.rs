//! Choosing what to trace and naming it: executable globs (before and after the agent starts,
//! with exclusions, from the config file), ports, forking servers, containers, `--all`, the
//! service-name order, and Kubernetes metadata from a recorded API.
//!
//! Servers are real Python processes; a copy of the interpreter under another name (a hard link)
//! gives each service an executable of its own.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent_e2e::{
    Agent, Proc,
    container::FakeContainer,
    curl, eventually, free_port, peer,
    receiver::{Receiver, RecvSpan},
    wait_ready, workspace,
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The real Python interpreter (`python3` may be a shim that execs it).
fn python_real() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// The Python interpreter under another name: a hard link (a copy if links cannot cross).
fn python_named(name: &str) -> PathBuf {
    let real = python_real();
    let dir = workspace().join("target/e2e-exe");
    std::fs::create_dir_all(&dir).expect("exe dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    if std::fs::hard_link(&real, &path).is_err() {
        std::fs::copy(&real, &path).expect("copy python");
    }
    path
}

fn py_server(exe: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.arg(peer("py_server.py")).arg(port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Proc::spawn(&mut cmd);
    wait_ready(&p, &format!("{} on {port}", exe.display()));
    p
}

fn otlp(rx: &Receiver, mut args: Vec<String>) -> Vec<String> {
    args.extend(rx.export_args());
    args
}

fn start(args: Vec<String>) -> Agent {
    Agent::start(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")])
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Waits until the agent logged that it traces `pid`.
fn wait_traced(agent: &Agent, pid: u32) {
    eventually(Duration::from_secs(10), || {
        agent
            .proc
            .stderr
            .get()
            .iter()
            .any(|l| l.contains("tracing (") && l.contains(&format!("pid={pid} ")))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("pid {pid} not traced: {:#?}", agent.proc.stderr.get()));
}

fn hello(port: u16, tag: &str) {
    let call = curl(&format!("http://127.0.0.1:{port}/hello?{tag}"), &[]);
    assert_eq!(call.status, 200, "request to {port}");
}

fn servers(spans: &[RecvSpan]) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.kind == SERVER)
        .map(|s| s.attr("server.port").unwrap_or("").to_string())
        .collect()
}

fn res<'a>(s: &'a RecvSpan, k: &str) -> Option<&'a str> {
    s.resource.get(k).map(String::as_str)
}

#[test]
fn exe_selection_before_and_after_start_with_exclusion_and_config_file() {
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    let shop1 = py_server(&python_named("agt-shop-1"), p1, &[]);
    let config = workspace().join("target/e2e-exe/select.yaml");
    std::fs::write(&config, "select:\n  - exe: \"agt-shop-*\"\n").expect("config");
    let rx = Receiver::grpc();
    let agent = start(otlp(
        &rx,
        s(&[
            "--config",
            config.to_str().unwrap(),
            "--exclude-exe",
            "*-canary",
        ]),
    ));
    wait_traced(&agent, shop1.pid());
    // Started after the agent: found at exec.
    let shop2 = py_server(&python_named("agt-shop-2"), p2, &[]);
    let canary = py_server(&python_named("agt-shop-canary"), p3, &[]);
    let billing = py_server(&python_named("agt-billing"), p4, &[]);
    wait_traced(&agent, shop2.pid());
    for (i, p) in [p1, p2, p3, p4].into_iter().enumerate() {
        hello(p, &format!("i={i}"));
    }
    let spans = rx.settle(2);
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(
        servers(&spans),
        BTreeSet::from([p1.to_string(), p2.to_string()])
    );
    for (port, proc, exe) in [(p1, &shop1, "agt-shop-1"), (p2, &shop2, "agt-shop-2")] {
        let sp = spans
            .iter()
            .find(|s| s.attr("server.port") == Some(port.to_string().as_str()))
            .expect("span");
        assert_eq!(
            res(sp, "process.pid"),
            Some(proc.pid().to_string().as_str())
        );
        assert_eq!(res(sp, "process.executable.name"), Some(exe));
        assert_eq!(sp.service(), exe, "no other name source: the executable");
    }
    let logs = stderr.join("\n");
    assert!(!logs.contains(&format!("pid={} ", canary.pid())), "{logs}");
    assert!(!logs.contains(&format!("pid={} ", billing.pid())), "{logs}");
}

#[test]
fn port_selection_listeners_and_connectors() {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let python = python_named("agt-port-srv");
    let s1 = py_server(&python, p1, &[]);
    let s2 = py_server(&python, p2, &[]);
    let rx = Receiver::grpc();
    let agent = start(otlp(
        &rx,
        s(&["--port", &p2.to_string(), "--port", &p3.to_string()]),
    ));
    wait_traced(&agent, s2.pid());
    // Not traced until it accepts a connection on the selected port.
    let s3 = py_server(&python, p3, &[]);
    for (i, p) in [p1, p2, p3].into_iter().enumerate() {
        hello(p, &format!("i={i}"));
    }
    // SERVER spans of the two listeners, CLIENT spans of the curl processes that connected.
    let spans = rx.settle(4);
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(
        servers(&spans),
        BTreeSet::from([p2.to_string(), p3.to_string()])
    );
    let clients: BTreeSet<_> = spans
        .iter()
        .filter(|s| s.kind == CLIENT)
        .map(|s| s.attr("server.port").unwrap_or("").to_string())
        .collect();
    assert_eq!(clients, BTreeSet::from([p2.to_string(), p3.to_string()]));
    for s in spans.iter().filter(|s| s.kind == CLIENT) {
        assert!(res(s, "process.executable.name").is_some_and(|e| e.starts_with("curl")));
    }
    let logs = stderr.join("\n");
    assert!(logs.contains(&format!("pid={} ", s3.pid())), "{logs}");
    assert!(logs.contains(&format!("uses port {p3}")), "{logs}");
    assert!(!logs.contains(&format!("pid={} ", s1.pid())), "{logs}");
}

#[test]
fn forking_servers_children_are_traced_and_exits_end_connections() {
    let (pre_port, per_port, admin) = (free_port(), free_port(), free_port());
    let prefork = Proc::spawn(
        Command::new("python3")
            .arg(peer("fork_server.py"))
            .args(["prefork", &pre_port.to_string(), "2"])
            .env("OTEL_SERVICE_NAME", "prefork-svc"),
    );
    let per_request = Proc::spawn(
        Command::new("python3")
            .arg(peer("fork_server.py"))
            .args(["per-request", &per_port.to_string()])
            .env("OTEL_SERVICE_NAME", "fork-svc"),
    );
    wait_ready(&per_request, "per-request server");
    let workers: BTreeSet<String> = eventually(Duration::from_secs(10), || {
        prefork
            .stdout
            .get()
            .iter()
            .find_map(|l| l.strip_prefix("ready "))
            .map(|w| w.split_whitespace().map(String::from).collect())
    })
    .expect("prefork workers");
    let rx = Receiver::grpc();
    let agent = start(otlp(
        &rx,
        s(&[
            "--pid",
            &prefork.pid().to_string(),
            "--pid",
            &per_request.pid().to_string(),
            "--prometheus-port",
            &admin.to_string(),
        ]),
    ));
    for i in 0..6 {
        hello(pre_port, &format!("pre={i}"));
    }
    for i in 0..3 {
        hello(per_port, &format!("per={i}"));
    }
    let spans = rx.settle(9);
    // Every connection ended: the per-request children exited without closing theirs.
    let metrics = eventually(Duration::from_secs(10), || {
        let (_, body) = agent_e2e::http_get("127.0.0.1", admin, "/metrics", &[]);
        body.lines()
            .any(|l| l == "agent_connections 0")
            .then_some(body)
    })
    .unwrap_or_else(|| panic!("connections left open"));
    let (_, stderr) = agent.stop();
    assert!(metrics.contains("agent_kernel_events_total{outcome=\"sent\"}"));
    let ended_by_exit: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agent_conns_ended_by_exit_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        ended_by_exit >= 3,
        "the children's exits ended their connections: {metrics}"
    );
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let pre: Vec<_> = spans
        .iter()
        .filter(|s| s.service() == "prefork-svc")
        .collect();
    assert_eq!(pre.len(), 6);
    for sp in &pre {
        let pid = res(sp, "process.pid").unwrap_or("").to_string();
        assert!(
            workers.contains(&pid),
            "a worker forked before the agent: {pid}"
        );
    }
    let per: Vec<_> = spans.iter().filter(|s| s.service() == "fork-svc").collect();
    assert_eq!(per.len(), 3);
    let children: BTreeSet<_> = per
        .iter()
        .map(|s| res(s, "process.pid").unwrap_or(""))
        .collect();
    assert_eq!(children.len(), 3, "one child per request: {per:#?}");
    assert!(!children.contains(per_request.pid().to_string().as_str()));
    for sp in &per {
        let body = sp.attr("http.response.body.size").unwrap_or("0");
        assert!(
            body.parse::<u64>().unwrap_or(0) > 10,
            "ended by the exit: {sp:#?}"
        );
    }
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("child of {}", prefork.pid())))
    );
}

#[test]
fn service_names_from_the_process_environment() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let python = python_named("agt-naming");
    let sa = py_server(
        &python,
        a,
        &[
            ("OTEL_SERVICE_NAME", "svc-env"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,deployment.environment=e2e",
            ),
        ],
    );
    let sb = py_server(
        &python,
        b,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=svc-attrs,team=pay%20ments",
        )],
    );
    let sc = py_server(&python, c, &[]);
    let rx = Receiver::http();
    let pids: Vec<String> = [&sa, &sb, &sc]
        .iter()
        .flat_map(|p| ["--pid".to_string(), p.pid().to_string()])
        .collect();
    let agent = start(otlp(&rx, pids));
    for p in [a, b, c] {
        hello(p, "n=1");
    }
    let spans = rx.settle(3);
    agent.stop();
    let by_port = |p: u16| {
        spans
            .iter()
            .find(|s| s.attr("server.port") == Some(p.to_string().as_str()))
            .expect("span")
    };
    let (x, y, z) = (by_port(a), by_port(b), by_port(c));
    assert_eq!(x.service(), "svc-env");
    assert_eq!(res(x, "deployment.environment"), Some("e2e"));
    assert_eq!(y.service(), "svc-attrs");
    assert_eq!(res(y, "team"), Some("pay ments"));
    assert_eq!(z.service(), "agt-naming");
    assert_eq!(res(z, "team"), None);
}

#[test]
fn container_selection_before_and_after_start() {
    let box1 = FakeContainer::docker(1);
    let (a, b, c) = (free_port(), free_port(), free_port());
    let in_a = Proc::spawn(
        box1.command("python3")
            .arg(peer("py_server.py"))
            .arg(a.to_string()),
    );
    wait_ready(&in_a, "server in the container");
    let rx = Receiver::grpc();
    let agent = start(otlp(&rx, s(&["--container", &box1.id[..12]])));
    wait_traced(&agent, in_a.pid());
    let in_b = Proc::spawn(
        box1.command("python3")
            .arg(peer("py_server.py"))
            .arg(b.to_string()),
    );
    let outside = py_server(Path::new("python3"), c, &[]);
    wait_ready(&in_b, "second server in the container");
    wait_traced(&agent, in_b.pid());
    for p in [a, b, c] {
        hello(p, "c=1");
    }
    let spans = rx.settle(2);
    let (_, stderr) = agent.stop();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(
        servers(&spans),
        BTreeSet::from([a.to_string(), b.to_string()])
    );
    for sp in &spans {
        assert_eq!(res(sp, "container.id"), Some(box1.id.as_str()));
    }
    assert!(
        !stderr
            .join("\n")
            .contains(&format!("pid={} ", outside.pid()))
    );
}

#[test]
fn all_with_exclusions() {
    let (shop, billing) = (free_port(), free_port());
    let s1 = py_server(&python_named("agt-all-shop"), shop, &[]);
    let _s2 = py_server(&python_named("agt-all-billing"), billing, &[]);
    let rx = Receiver::grpc();
    // The test process itself hosts the receiver: excluded too.
    let agent = start(otlp(
        &rx,
        s(&[
            "--all",
            "--exclude-exe",
            "agt-all-billing",
            "--exclude-pid",
            &std::process::id().to_string(),
        ]),
    ));
    hello(shop, "a=1");
    hello(billing, "a=2");
    rx.settle(1);
    agent.stop();
    let spans = rx.spans();
    let to_billing: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("server.port") == Some(billing.to_string().as_str()))
        .collect();
    assert!(
        to_billing.iter().all(|s| s.kind == CLIENT),
        "the billing server is excluded (curl, its client, is not): {to_billing:#?}"
    );
    let shop_server: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.attr("server.port") == Some(shop.to_string().as_str()))
        .collect();
    assert_eq!(shop_server.len(), 1, "{spans:#?}");
    assert_eq!(
        res(shop_server[0], "process.pid"),
        Some(s1.pid().to_string().as_str())
    );
}

const POD_UID: &str = "8e3c5a1d-2f4b-4c6d-9e8f-0a1b2c3d4e5f";

/// A kubeconfig for the fake API on `port`.
fn kubeconfig(port: u16) -> PathBuf {
    let path = workspace().join(format!("target/e2e-exe/kubeconfig-{port}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: agent\n  user:\n    token: e2e-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
             current-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    path
}

fn fake_api(container_id: &str, deny: bool) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(peer("fake_kube_api.py"))
        .arg(port.to_string())
        .arg(workspace().join("tests/fixtures/k8s"))
        .arg(container_id);
    if deny {
        cmd.arg("--deny");
    }
    let api = Proc::spawn(&mut cmd);
    wait_ready(&api, "fake Kubernetes API");
    (api, port)
}

#[test]
fn kubernetes_metadata_from_the_api() {
    let pod = FakeContainer::kubernetes(3, POD_UID);
    let (api, api_port) = fake_api(&pod.id, false);
    let (a, b) = (free_port(), free_port());
    let plain = Proc::spawn(
        pod.command("python3")
            .arg(peer("py_server.py"))
            .arg(a.to_string()),
    );
    let named = Proc::spawn(
        pod.command("python3")
            .arg(peer("py_server.py"))
            .arg(b.to_string())
            .env("OTEL_SERVICE_NAME", "checkout-canary"),
    );
    wait_ready(&plain, "server in the pod");
    wait_ready(&named, "second server in the pod");
    let rx = Receiver::grpc();
    let config = kubeconfig(api_port);
    let agent = start(otlp(
        &rx,
        s(&[
            "--container",
            &pod.id,
            "--kubeconfig",
            config.to_str().unwrap(),
            "--node-name",
            "node-1",
        ]),
    ));
    eventually(Duration::from_secs(20), || {
        agent
            .proc
            .stderr
            .get()
            .iter()
            .any(|l| l.contains("Kubernetes pods of this node listed"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("pods never listed: {:#?}", agent.proc.stderr.get()));
    hello(a, "k=1");
    hello(b, "k=2");
    let spans = rx.settle(2);
    agent.stop();
    assert_eq!(spans.len(), 2);
    let requests = api.stdout.get().join("\n");
    assert!(
        requests.contains("fieldSelector=spec.nodeName%3Dnode-1"),
        "{requests}"
    );
    for sp in &spans {
        assert_eq!(res(sp, "k8s.pod.name"), Some("checkout-7d9f8b-x2x4q"));
        assert_eq!(res(sp, "k8s.pod.uid"), Some(POD_UID));
        assert_eq!(res(sp, "k8s.namespace.name"), Some("shop"));
        assert_eq!(res(sp, "k8s.node.name"), Some("node-1"));
        assert_eq!(res(sp, "k8s.container.name"), Some("app"));
        assert_eq!(res(sp, "k8s.replicaset.name"), Some("checkout-7d9f8b"));
        assert_eq!(res(sp, "k8s.deployment.name"), Some("checkout"));
        assert_eq!(res(sp, "container.id"), Some(pod.id.as_str()));
    }
    let by_port = |p: u16| {
        spans
            .iter()
            .find(|s| s.attr("server.port") == Some(p.to_string().as_str()))
            .expect("span")
    };
    assert_eq!(
        by_port(a).service(),
        "checkout",
        "the app.kubernetes.io/name label"
    );
    assert_eq!(
        by_port(b).service(),
        "checkout-canary",
        "the process's own name wins"
    );
}

#[test]
fn kubernetes_rbac_denied_degrades_with_a_warning() {
    let pod = FakeContainer::kubernetes(4, POD_UID);
    let (_api, api_port) = fake_api(&pod.id, true);
    let a = free_port();
    let server = Proc::spawn(
        pod.command("python3")
            .arg(peer("py_server.py"))
            .arg(a.to_string()),
    );
    wait_ready(&server, "server in the pod");
    let rx = Receiver::grpc();
    let config = kubeconfig(api_port);
    let agent = start(otlp(
        &rx,
        s(&[
            "--container",
            &pod.id,
            "--kubeconfig",
            config.to_str().unwrap(),
        ]),
    ));
    hello(a, "k=1");
    let spans = rx.settle(1);
    let (_, stderr) = agent.stop();
    let warning = stderr
        .iter()
        .find(|l| l.contains("WARN") && l.contains("denied listing pods"))
        .unwrap_or_else(|| panic!("no RBAC warning: {stderr:#?}"));
    assert!(warning.contains("rbac.yaml"), "{warning}");
    let exe = python_real();
    let exe_name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert_eq!(spans[0].service(), exe_name, "the executable's name");
    assert_eq!(res(&spans[0], "k8s.pod.name"), None);
    assert_eq!(res(&spans[0], "container.id"), Some(pod.id.as_str()));
}

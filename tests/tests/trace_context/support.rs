//! What the trace-context tests share: the three-service chain, the agent as they start it, and
//! ways to name and find spans by their role in a request.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use agent_e2e::{
    Agent, Proc, free_port, http_get, peer, receiver::Receiver, receiver::RecvSpan, wait_ready,
};

pub(crate) const SERVER: i32 = 2;
pub(crate) const CLIENT: i32 = 3;

/// Three services, A → B → C, each with its own `OTEL_SERVICE_NAME`.
pub(crate) struct ChainServices {
    pub(crate) a: Proc,
    pub(crate) b: Proc,
    pub(crate) c: Proc,
    pub(crate) a_port: u16,
}

impl ChainServices {
    pub(crate) fn start() -> Self {
        let (a_port, b_port, c_port) = (free_port(), free_port(), free_port());
        let c = Proc::spawn(
            Command::new("node")
                .arg(peer("node_server.js"))
                .arg(c_port.to_string())
                .env("OTEL_SERVICE_NAME", "svc-c"),
        );
        let b = Proc::spawn(
            Command::new("java")
                .arg(peer("Chain.java"))
                .arg(b_port.to_string())
                .arg(format!("http://127.0.0.1:{c_port}"))
                .env("OTEL_SERVICE_NAME", "svc-b"),
        );
        let a = Proc::spawn(
            Command::new("python3")
                .arg(peer("chain.py"))
                .arg(a_port.to_string())
                .arg(format!("http://127.0.0.1:{b_port}"))
                .env("OTEL_SERVICE_NAME", "svc-a"),
        );
        wait_ready(&c, "node leaf");
        wait_ready(&b, "java service");
        wait_ready(&a, "python service");
        ChainServices { a, b, c, a_port }
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        vec![self.a.pid(), self.b.pid(), self.c.pid()]
    }

    pub(crate) fn get(&self, path: &str, headers: &[(&str, &str)]) {
        let (status, body) = http_get("127.0.0.1", self.a_port, path, headers);
        assert_eq!(status, 200, "{path}: {body}");
    }
}

pub(crate) fn start_agent(pids: &[u32], rx: &Receiver, env: &[(&str, &str)]) -> Agent {
    let mut args = Vec::new();
    for pid in pids {
        args.push("--pid".to_string());
        args.push(pid.to_string());
    }
    args.extend([
        "--otlp-endpoint".to_string(),
        rx.endpoint.clone(),
        "--otlp-protocol".into(),
        rx.protocol.into(),
    ]);
    let mut env = env.to_vec();
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200"));
    Agent::start(&args, &env)
}

/// The value of `key` in a span's query string.
pub(crate) fn query_param<'a>(s: &'a RecvSpan, key: &str) -> Option<&'a str> {
    s.attr("url.query")?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A span's role in the chain: (service, SERVER/CLIENT, leg).
pub(crate) type Role = (String, i32, String);

pub(crate) fn role(s: &RecvSpan) -> Role {
    (
        s.service().to_string(),
        s.kind,
        query_param(s, "leg").unwrap_or("-").to_string(),
    )
}

pub(crate) fn r(service: &str, kind: i32, leg: &str) -> Role {
    (service.to_string(), kind, leg.to_string())
}

/// The spans of request `id`, by role; panics when a role appears twice.
pub(crate) fn by_role(spans: &[RecvSpan], id: &str) -> BTreeMap<Role, RecvSpan> {
    let mut out = BTreeMap::new();
    for s in spans.iter().filter(|s| query_param(s, "id") == Some(id)) {
        if let Some(dup) = out.insert(role(s), s.clone()) {
            panic!(
                "two spans for {:?} of request {id}: {dup:#?} {s:#?}",
                role(s)
            );
        }
    }
    out
}

/// Parent → child edges of one plain chain request.
pub(crate) fn chain_edges(leg: &str) -> Vec<(Role, Role)> {
    vec![
        (r("svc-a", CLIENT, leg), r("svc-b", SERVER, leg)),
        (r("svc-b", SERVER, leg), r("svc-b", CLIENT, leg)),
        (r("svc-b", CLIENT, leg), r("svc-c", SERVER, leg)),
    ]
}

/// Checks the spans of one request: exactly the expected roles, one trace, every edge.
pub(crate) fn check_request(
    spans: &[RecvSpan],
    id: &str,
    fanout: bool,
    trace: Option<&str>,
) -> String {
    let got = by_role(spans, id);
    let mut edges = Vec::new();
    let mut roles = BTreeSet::from([r("svc-a", SERVER, "-")]);
    let legs: &[&str] = if fanout { &["1", "2"] } else { &["-"] };
    for leg in legs {
        edges.push((r("svc-a", SERVER, "-"), r("svc-a", CLIENT, leg)));
        edges.extend(chain_edges(leg));
    }
    for (p, c) in &edges {
        roles.insert(p.clone());
        roles.insert(c.clone());
    }
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        roles,
        "spans of request {id}: {got:#?}"
    );
    let root = &got[&r("svc-a", SERVER, "-")];
    let trace_id = root.trace_hex();
    if let Some(t) = trace {
        assert_eq!(trace_id, t, "request {id} keeps the propagated trace id");
    }
    for s in got.values() {
        assert_eq!(
            s.trace_hex(),
            trace_id,
            "request {id}: {s:#?} in another trace"
        );
    }
    for (p, c) in &edges {
        assert_eq!(
            got[c].parent_hex(),
            got[p].span_hex(),
            "request {id}: {c:?} must be the child of {p:?}"
        );
        // A CLIENT span starts when its request starts to be written, before the server it
        // calls can have read it; a SERVER span, before the calls it makes.
        assert!(
            got[p].start_ns <= got[c].start_ns,
            "request {id}: {c:?} starts before its parent {p:?}: {:#?}",
            (&got[p], &got[c])
        );
    }
    trace_id
}

pub(crate) fn counter(stderr: &[String], name: &str) -> u64 {
    stderr
        .iter()
        .find_map(|l| l.split(&format!("{name} = ")).nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

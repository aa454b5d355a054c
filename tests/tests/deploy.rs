//! The deployment artefacts: every Kubernetes manifest renders with `kubectl kustomize` and
//! validates offline against the Kubernetes schemas (`kubernetes-validate --strict`); the
//! DaemonSet asks for what the agent needs; and the agent, run with the shipped configuration,
//! answers the probes the DaemonSet makes.

use std::{path::Path, process::Command, time::Duration};

use agent_e2e::{Agent, eventually, free_port, http_get, workspace};
use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (cargo xtask setup installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(dir: &str) -> String {
    run(Command::new("kubectl")
        .arg("kustomize")
        .arg(workspace().join(dir)))
}

/// Validates YAML (one or many documents) against the Kubernetes schemas, strictly.
fn validate(yaml: &str, name: &str) {
    let path = workspace().join(format!("target/{name}.yaml"));
    std::fs::write(&path, yaml).expect("write rendered manifests");
    run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&path));
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect()
}

fn daemonset(docs: &[Value]) -> &Value {
    docs.iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

#[test]
fn manifests_render_and_validate() {
    let base = render("deploy/kubernetes");
    validate(&base, "rendered-base");
    let privileged = render("deploy/kubernetes/privileged");
    validate(&privileged, "rendered-privileged");
    for entry in std::fs::read_dir(workspace().join("deploy/kubernetes/base")).expect("base dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "agent.yaml" {
            run(Command::new("kubernetes-validate")
                .args(["--strict", "--quiet"])
                .arg(&path));
        }
    }

    let docs = documents(&base);
    let kinds: Vec<_> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let ds = daemonset(&docs);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"], false,
        "capabilities, not blanket privileged"
    );
    let caps: Vec<_> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"] {
        assert!(caps.contains(&cap), "{cap} missing: {caps:?}");
    }
    assert!(!caps.contains(&"SYS_ADMIN"));
    let mounts: Vec<_> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for m in [
        "/sys/kernel/tracing",
        "/sys/fs/bpf",
        "/sys/kernel/btf",
        "/etc/agent",
    ] {
        assert!(mounts.contains(&m), "{m} not mounted: {mounts:?}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let env: Vec<_> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"OTEL_EXPORTER_OTLP_ENDPOINT") && env.contains(&"NODE_NAME"));
    // The ConfigMap carries the shipped configuration file, which the args point to.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let shipped = std::fs::read_to_string(workspace().join("deploy/kubernetes/base/agent.yaml"))
        .expect("agent.yaml");
    assert_eq!(cm["data"]["agent.yaml"].as_str(), Some(shipped.as_str()));
    assert_eq!(
        c["args"],
        serde_json::json!(["--config", "/etc/agent/agent.yaml"])
    );

    let p = documents(&privileged);
    assert_eq!(
        daemonset(&p)["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
}

#[test]
fn shipped_config_runs_and_answers_the_probes() {
    let port = free_port();
    let config = workspace().join("deploy/kubernetes/base/agent.yaml");
    assert!(Path::new(&config).exists());
    // The shipped file traces every process; the test process (and its children) stay out.
    let agent = Agent::start(
        &[
            "--config".into(),
            config.display().to_string(),
            "--prometheus-port".into(),
            port.to_string(),
            "--kubernetes".into(),
            "off".into(),
            "--exclude-pid".into(),
            std::process::id().to_string(),
        ],
        &[],
    );
    let ready = eventually(Duration::from_secs(10), || {
        let (status, _) = http_get("127.0.0.1", port, "/readyz", &[]);
        (status == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz never answered 200");
    assert_eq!(http_get("127.0.0.1", port, "/healthz", &[]).0, 200);
    let (status, metrics) = http_get("127.0.0.1", port, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("agent_kernel_events_total{outcome=\"lost_ringbuf_full\"}"));
    assert!(metrics.contains("agent_spans_dropped_queue_total"));
    // The ring buffer is the queue in front of the parsers: its fill level is a gauge.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agent_ring_buffer_queued_bytes ")),
        "{metrics}"
    );
    let (_, stderr) = agent.stop();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("ready: tracing all; excluding")),
        "{stderr:#?}"
    );
}

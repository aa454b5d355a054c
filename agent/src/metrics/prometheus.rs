//! The metrics in the Prometheus text format, for `/metrics`: RED histograms named the way the
//! OpenTelemetry-to-Prometheus conversion names them (`http.server.request.duration` in
//! seconds becomes `http_server_request_duration_seconds`, attributes `http_route`, ...), with
//! `service_name`, and the service graph exactly as Tempo writes it.

use std::fmt::Write as _;

use super::{
    EdgeStats, Snapshot,
    histogram::{BOUNDS, Histogram},
    red::{Instrument, Key},
    series::OVERFLOW_ATTRIBUTE,
};
use crate::trace::Value;

/// A label value, escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// An attribute name as a Prometheus label name.
fn label_name(k: &str) -> String {
    k.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `name{labels}` pairs rendered as `a="x",b="y"`.
fn labels(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn histogram(out: &mut String, name: &str, base: &str, h: &Histogram) {
    let sep = if base.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        let le = BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{base}{sep}le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{base}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{base}}} {}", h.count);
}

fn red_labels(k: &Key) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(k.attributes.len() + 1);
    if !k.service.is_empty() {
        pairs.push(("service_name".to_string(), k.service.to_string()));
    }
    for (name, v) in &k.attributes {
        let v = match v {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
        };
        pairs.push((label_name(name), v));
    }
    pairs
}

fn edge_labels(e: &super::graph::Edge) -> Vec<(String, String)> {
    if e.client.is_empty() && e.server.is_empty() {
        return vec![(label_name(OVERFLOW_ATTRIBUTE), "true".into())];
    }
    vec![
        ("client".into(), e.client.to_string()),
        ("server".into(), e.server.to_string()),
        ("connection_type".into(), e.connection_type.to_string()),
    ]
}

/// Renders the RED histograms and the service graph.
pub fn render(snap: &Snapshot, out: &mut String) {
    for instrument in Instrument::ALL {
        let mut series: Vec<_> = snap
            .red
            .iter()
            .filter(|(k, _)| k.instrument == instrument)
            .map(|(k, h)| (labels(&red_labels(k)), h))
            .collect();
        if series.is_empty() {
            continue;
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let name = format!("{}_seconds", label_name(instrument.name()));
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} histogram",
            instrument.description()
        );
        for (base, h) in series {
            histogram(out, &name, &base, h);
        }
    }
    let mut edges: Vec<_> = snap
        .edges
        .iter()
        .map(|(e, s)| (labels(&edge_labels(e)), s))
        .collect();
    if edges.is_empty() {
        return;
    }
    edges.sort_by(|a, b| a.0.cmp(&b.0));
    let counter = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&EdgeStats) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (base, s) in &edges {
            let _ = writeln!(out, "{name}{{{base}}} {}", f(s));
        }
    };
    counter(
        out,
        "traces_service_graph_request_total",
        "Requests between two nodes of the service graph.",
        &|s| s.requests,
    );
    counter(
        out,
        "traces_service_graph_request_failed_total",
        "Failed requests between two nodes of the service graph.",
        &|s| s.failed,
    );
    for (side, help) in [
        ("server", "Request durations as the server saw them."),
        ("client", "Request durations as the client saw them."),
    ] {
        let name = format!("traces_service_graph_request_{side}_seconds");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (base, s) in &edges {
            let h = if side == "server" {
                &s.server
            } else {
                &s.client
            };
            histogram(out, &name, base, h);
        }
    }
}

/// One unlabelled sample with its help and type.
fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The aggregation's own health.
pub fn render_health(snap: &Snapshot, out: &mut String) {
    sample(
        out,
        "agent_metric_series_overflow_total",
        "counter",
        "Measurements recorded in an overflow series because the series limit was reached.",
        snap.overflowed,
    );
    sample(
        out,
        "agent_metric_series",
        "gauge",
        "Metric series held (RED and service graph).",
        snap.red.len() + snap.edges.len(),
    );
    sample(
        out,
        "agent_service_graph_unpaired_total",
        "counter",
        "Client or server halves counted alone because the pairing table was full.",
        snap.unpaired_full,
    );
    sample(
        out,
        "agent_service_graph_waiting",
        "gauge",
        "Client or server halves waiting for their other half.",
        snap.waiting,
    );
}

//! Spans on the terminal: one readable line each, or one JSON object per line (`--format json`).

use std::{io::Write, sync::Arc};

use anyhow::Result;
use serde_json::{Map, json};
use tokio::sync::mpsc;

use crate::{
    stats::Stats,
    trace::{Span, Status, Value},
};

/// How spans are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A time in nanoseconds since the Unix epoch, to the millisecond.
fn rfc3339(nanos: u64) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let millis = (nanos / 1_000_000) % 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn duration_ms(s: &Span) -> f64 {
    s.duration_ns() as f64 / 1e6
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match s.attr(key)? {
        Value::Int(i) => Some(*i),
        Value::Str(_) => None,
    }
}

/// What the span did and how it ended, by protocol: `GET /a?b 200`, `grpc
/// demo.v1.Catalog/GetItem status=5`, `postgresql SELECT users status=42P01`.
fn what_and_outcome(s: &Span) -> (String, String) {
    if let Some(system) = s.attr_str("rpc.system") {
        let code = int_attr(s, "rpc.grpc.status_code").map_or("-".into(), |c| c.to_string());
        return (format!("{system} {}", s.name), format!("status={code}"));
    }
    if let Some(system) = s.attr_str("db.system.name") {
        let code = s.attr_str("db.response.status_code").unwrap_or("ok");
        return (format!("{system} {}", s.name), format!("status={code}"));
    }
    let method = s.attr_str("http.request.method").unwrap_or(&s.name);
    let path = s.attr_str("url.path").unwrap_or("");
    let query = s
        .attr_str("url.query")
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let status = int_attr(s, "http.response.status_code").map_or("-".into(), |c| c.to_string());
    (format!("{method:<7} {path}{query}"), status)
}

/// One human-readable line.
pub fn text_line(s: &Span) -> String {
    let (what, status) = what_and_outcome(s);
    let peer = match (
        s.attr_str("network.peer.address"),
        s.attr("network.peer.port"),
    ) {
        (Some(a), Some(Value::Int(p))) => format!("{a}:{p}"),
        _ => String::new(),
    };
    format!(
        "{}  {:<16} {:<6} {}  {}{}  {:.3}ms  peer={}  trace={} span={} parent={}",
        rfc3339(s.start_ns),
        s.process.service_name,
        s.kind.as_str(),
        what,
        status,
        if s.status == Status::Error {
            " ERROR"
        } else {
            ""
        },
        duration_ms(s),
        peer,
        hex::encode(s.trace_id),
        hex::encode(s.span_id),
        s.parent_span_id
            .map_or_else(|| "-".to_string(), hex::encode),
    )
}

/// One JSON object, with OpenTelemetry names for ids, kind and attributes.
pub fn json_line(s: &Span) -> String {
    let mut attrs = Map::new();
    for (k, v) in &s.attributes {
        attrs.insert(
            (*k).to_string(),
            match v {
                Value::Str(x) => json!(x.as_str()),
                Value::Int(i) => json!(i),
            },
        );
    }
    json!({
        "time": rfc3339(s.start_ns),
        "trace_id": hex::encode(s.trace_id),
        "span_id": hex::encode(s.span_id),
        "parent_span_id": s.parent_span_id.map(hex::encode),
        "trace_state": (!s.trace_state.is_empty()).then(|| s.trace_state.to_string()),
        "kind": s.kind.as_str(),
        "name": s.name.as_str(),
        "start_time_unix_nano": s.start_ns,
        "end_time_unix_nano": s.end_ns,
        "duration_ms": duration_ms(s),
        "status": if s.status == Status::Error { "ERROR" } else { "UNSET" },
        "service.name": s.process.service_name.as_str(),
        "process.pid": s.process.pid,
        "attributes": attrs,
    })
    .to_string()
}

pub async fn run(format: Format, mut rx: mpsc::Receiver<Span>, stats: Arc<Stats>) -> Result<()> {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut out = std::io::stdout().lock();
        for s in batch.drain(..) {
            let line = match format {
                Format::Text => text_line(&s),
                Format::Json => json_line(&s),
            };
            if writeln!(out, "{line}").is_err() {
                stats.inc(&stats.spans_export_failed);
            } else {
                stats.inc(&stats.spans_exported);
            }
        }
        let _ = out.flush();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = 1_795_000_000_123 * 1_000_000;
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
    }
}

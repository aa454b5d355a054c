//! The agent's own HTTP endpoint (`--prometheus-port`): `/metrics` in the Prometheus text
//! format (RED metrics and the service graph of the traced services, and the agent's health
//! counters: events lost by reason, spans dropped, parse failures, queue depths), `/healthz` (the process answers) and `/readyz` (programs attached and
//! processes selected). The Kubernetes DaemonSet probes the last two.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::{
    metrics::{Metrics, prometheus},
    stats::Stats,
    web,
};

/// Binds the endpoint (all interfaces, so that Prometheus and the kubelet reach it) and serves
/// it until the agent exits.
pub async fn serve(port: u16, stats: Arc<Stats>, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("::", port))
        .await
        .or(TcpListener::bind(("0.0.0.0", port)).await)
        .with_context(|| format!("cannot listen on port {port} for /metrics"))?;
    let addr = listener.local_addr()?;
    web::spawn(
        listener,
        "admin",
        Arc::new(move |req| respond(req, &stats, &metrics)),
    );
    Ok(addr)
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<web::Body> {
    web::response(status, content_type, body)
}

fn respond<B>(req: &Request<B>, stats: &Stats, metrics: &Metrics) -> Response<web::Body> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(stats, metrics),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if stats.is_ready() => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The metrics and the health counters in the Prometheus text format.
pub fn render(stats: &Stats, metrics: &Metrics) -> String {
    let mut out = String::new();
    let snap = metrics.snapshot();
    prometheus::render(&snap, &mut out);
    prometheus::render_health(&snap, &mut out);
    let _ = writeln!(
        out,
        "# HELP agent_kernel_events_total Kernel records by outcome: sent, or lost and why.\n\
         # TYPE agent_kernel_events_total counter"
    );
    for (name, value) in stats.kernel_snapshot() {
        let _ = writeln!(
            out,
            "agent_kernel_events_total{{outcome=\"{name}\"}} {value}"
        );
    }
    for (name, value) in stats.snapshot() {
        let _ = writeln!(
            out,
            "# TYPE agent_{name}_total counter\nagent_{name}_total {value}"
        );
    }
    for (name, value) in stats.gauges() {
        let _ = writeln!(out, "# TYPE agent_{name} gauge\nagent_{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_probes() {
        let stats = Arc::new(Stats::default());
        stats.inc(&stats.spans_dropped_queue);
        let metrics = Arc::new(Metrics::new(10, false));
        let addr = serve(0, stats.clone(), metrics).await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
                .await
                .unwrap();
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        stats.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(
            metrics.contains("agent_spans_dropped_queue_total 1"),
            "{metrics}"
        );
        assert!(metrics.contains("agent_kernel_events_total{outcome=\"lost_ringbuf_full\"} 0"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}

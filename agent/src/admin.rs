//! The agent's own HTTP endpoint (`--prometheus-port`): `/metrics` in the Prometheus text
//! format (the agent's health counters: events lost by reason, spans dropped, parse failures,
//! queue depths), `/healthz` (the process answers) and `/readyz` (programs attached and
//! processes selected). The Kubernetes DaemonSet probes the last two.

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::stats::Stats;

/// Binds the endpoint (all interfaces, so that Prometheus and the kubelet reach it) and serves
/// it until the agent exits.
pub async fn serve(port: u16, stats: Arc<Stats>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("::", port))
        .await
        .or(TcpListener::bind(("0.0.0.0", port)).await)
        .with_context(|| format!("cannot listen on port {port} for /metrics"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let stats = stats.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let stats = stats.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &stats)) }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%err, "admin connection");
                }
            });
        }
    });
    Ok(addr)
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn respond<B>(req: &Request<B>, stats: &Stats) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(stats),
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

/// The health counters in the Prometheus text format.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
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
        let addr = serve(0, stats.clone()).await.unwrap();
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

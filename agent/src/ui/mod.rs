//! The local web view (`--ui 127.0.0.1:PORT`): one page, embedded in the binary (no CDN, no
//! backend), that draws the live service map ([`map`]), lists the slowest and failed recent
//! traces ([`recent`]) and shows a trace's waterfall when one is clicked. The page polls three
//! JSON endpoints:
//!
//! - `/api/map`: nodes and edges, with request rate, error ratio and p50/p95 over the last
//!   minute;
//! - `/api/traces`: the slowest and the failed recent traces;
//! - `/api/traces/{trace_id}`: one trace's spans.

pub mod map;
pub mod recent;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{metrics::Metrics, web};

pub use recent::Recent;

/// The page, its script and its style.
const INDEX: &str = include_str!("index.html");

/// What the view reads.
struct State {
    metrics: Arc<Metrics>,
    recent: Arc<Recent>,
    history: map::History,
}

/// Binds `addr` and serves the view until the agent exits; samples the service graph for the
/// map's window meanwhile.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    recent: Arc<Recent>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the web view (--ui)"))?;
    let bound = listener.local_addr()?;
    let state = Arc::new(State {
        metrics,
        recent,
        history: map::History::default(),
    });
    let sampler = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(map::SAMPLE_EVERY);
        loop {
            tick.tick().await;
            sampler.history.sample(&sampler.metrics, Instant::now());
        }
    });
    web::spawn(listener, "ui", Arc::new(move |req| respond(req, &state)));
    Ok(bound)
}

fn json(value: &impl Serialize) -> Response<web::Body> {
    match serde_json::to_vec(value) {
        Ok(body) => web::response(StatusCode::OK, "application/json", body),
        Err(err) => web::response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{err}\n"),
        ),
    }
}

fn not_found() -> Response<web::Body> {
    web::response(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

fn respond<B>(req: &Request<B>, st: &State) -> Response<web::Body> {
    if req.method() != Method::GET {
        return web::response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    match path {
        "/" | "/index.html" => web::response(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/api/map" => json(&st.history.map(&st.metrics, Instant::now())),
        "/api/traces" => json(&st.recent.lists()),
        _ => match path.strip_prefix("/api/traces/").map(trace_id) {
            Some(Some(id)) => match st.recent.trace(&id) {
                Some(spans) => json(&spans),
                None => not_found(),
            },
            Some(None) => web::response(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "a trace id is 32 hex digits\n",
            ),
            None => not_found(),
        },
    }
}

/// A trace id from its 32 hex digits.
fn trace_id(hex_id: &str) -> Option<[u8; 16]> {
    let bytes = hex::decode(hex_id).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::tests::{process, server};

    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_page_and_its_api() {
        let metrics = Arc::new(Metrics::new(100, false));
        let recent = Arc::new(Recent::default());
        let span = server(&process(1, "shop"), 1, "/cart/{id}", 200);
        metrics.observe(&span, Instant::now());
        recent.observe(&span);
        let addr = serve("127.0.0.1:0".parse().unwrap(), metrics, recent)
            .await
            .unwrap();
        let page = request(addr, "GET", "/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("text/html") && page.contains("<svg id=\"graph\""));
        let map = request(addr, "GET", "/api/map").await;
        assert!(
            map.contains("\"client\":\"10.0.0.9\",\"server\":\"shop\""),
            "{map}"
        );
        assert!(
            map.contains("{\"id\":\"shop\",\"kind\":\"service\"}"),
            "{map}"
        );
        let lists = request(addr, "GET", "/api/traces").await;
        let id = hex::encode(span.trace_id);
        assert!(lists.contains(&id), "{lists}");
        let trace = request(addr, "GET", &format!("/api/traces/{id}")).await;
        assert!(trace.contains("\"http.route\",\"/cart/{id}\""), "{trace}");
        let unknown = request(addr, "GET", &format!("/api/traces/{}", "0".repeat(32))).await;
        assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
        let bad = request(addr, "GET", "/api/traces/xyz").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let post = request(addr, "POST", "/api/map").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }
}

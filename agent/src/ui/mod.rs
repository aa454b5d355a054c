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

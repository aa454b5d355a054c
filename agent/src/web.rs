//! The small HTTP/1.1 server behind the agent's own endpoints (`admin`: `/metrics` and the
//! probes; `ui`: the local web view). Handlers are plain functions from a request to a
//! response: everything they serve is in memory already.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// A response body.
pub type Body = Full<Bytes>;

/// A request handler.
pub type Handler = Arc<dyn Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync>;

/// Serves `listener` with `handler` until the agent exits.
pub fn spawn(listener: TcpListener, what: &'static str, handler: Handler) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let r = handler(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%err, "{what} connection");
                }
            });
        }
    });
}

/// A response with a body and its content type.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

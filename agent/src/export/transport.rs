//! Sends encoded OTLP requests, traces or metrics: gRPC (the signal's `Export`, one unary call
//! over tonic's HTTP/2 channel) or HTTP/protobuf (a `POST` with reqwest). Headers and the
//! timeout come from the standard variables (`endpoint::Target`); a collector that is busy or
//! briefly away gets the request again, twice, with a short backoff.
//!
//! The gRPC call is framed here rather than by tonic's codec: the batcher leaves room for the
//! 5-byte message prefix in front of the request it encodes (`prefix_len`), `seal` fills it in,
//! and the body goes to the channel as it is. Tonic's codec would copy every request into its
//! own buffer, a copy of each exported byte.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceResponse, trace::v1::ExportTraceServiceResponse,
};
use prost::Message as _;
use tonic::{
    Code,
    codegen::{
        Service as _,
        http::{self, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri},
    },
    transport::{Channel, Endpoint},
};

use super::endpoint::{Protocol, Signal, Target};

/// The gRPC method each signal is exported with.
fn export_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    }
}

/// A gRPC message's prefix: a compression flag and the length, big-endian.
const GRPC_PREFIX: usize = 5;

/// Delays before the second and third attempt of a request the collector could not take.
const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// What the collector said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Spans or data points the collector refused although the request succeeded (OTLP
    /// partial success).
    pub rejected: u64,
}

/// A failed export, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExportError {
    message: String,
    retryable: bool,
}

/// An OTLP destination of one signal.
#[derive(Clone)]
pub struct Transport {
    signal: Signal,
    way: Way,
}

/// How requests reach the collector.
#[derive(Clone)]
enum Way {
    Grpc {
        channel: Channel,
        /// The endpoint with the method's path (the channel fills in scheme and authority).
        uri: Uri,
        /// gRPC's own request headers, the deadline and the user's `OTEL_*_HEADERS`.
        headers: HeaderMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// Bytes to leave in front of an encoded request for `Transport::seal` (gRPC's message prefix).
pub fn prefix_len(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Grpc => GRPC_PREFIX,
        Protocol::HttpProtobuf => 0,
    }
}

impl Transport {
    /// Checks the configuration; connections are made on first use.
    pub fn new(target: &Target) -> Result<Self> {
        target.check_compression()?;
        let url = target.resolved_url();
        let headers = target.headers()?;
        let timeout = target.timeout()?;
        let way = match target.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(url.clone())
                    .with_context(|| format!("invalid OTLP gRPC endpoint {url:?}"))?
                    .timeout(timeout);
                Way::Grpc {
                    channel: endpoint.connect_lazy(),
                    uri: Uri::from_static(export_path(target.signal)),
                    headers: grpc_headers(&headers, timeout)?,
                }
            }
            Protocol::HttpProtobuf => {
                let parsed = reqwest::Url::parse(&url)
                    .with_context(|| format!("invalid OTLP HTTP endpoint {url:?}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    bail!("invalid OTLP HTTP endpoint {url:?}: not an http(s) URL");
                }
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .context("cannot build the OTLP HTTP client")?;
                Way::Http {
                    client,
                    url,
                    headers,
                }
            }
        };
        Ok(Transport {
            signal: target.signal,
            way,
        })
    }

    /// The body to send: `buf` is `prefix_len` reserved bytes and the encoded request.
    pub fn seal(&self, mut buf: Vec<u8>) -> Bytes {
        if let Way::Grpc { .. } = self.way
            && buf.len() >= GRPC_PREFIX
        {
            // Uncompressed. A batch is a few MiB at most (spans are bounded by the capture
            // size, batches by `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), far below 4 GiB.
            let len = u32::try_from(buf.len() - GRPC_PREFIX).unwrap_or(u32::MAX);
            buf[0] = 0;
            buf[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
        }
        Bytes::from(buf)
    }

    /// Sends one export request of the transport's signal, trying again after a retryable
    /// failure.
    pub async fn send(&self, body: Bytes) -> Result<Outcome, ExportError> {
        let mut attempt = 0;
        loop {
            match self.send_once(body.clone()).await {
                Err(e) if e.retryable && attempt < BACKOFF.len() => {
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once(&self, body: Bytes) -> Result<Outcome, ExportError> {
        let reply = match &self.way {
            Way::Grpc {
                channel,
                uri,
                headers,
            } => grpc_call(channel.clone(), uri, headers, body).await?,
            Way::Http {
                client,
                url,
                headers,
            } => {
                let mut request = client
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(body);
                for (k, v) in headers {
                    request = request.header(k, v);
                }
                let response = request.send().await.map_err(|e| ExportError {
                    message: format!("OTLP HTTP request failed: {e}"),
                    retryable: e.is_connect() || e.is_timeout(),
                })?;
                let status = response.status();
                let bytes = response.bytes().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(ExportError {
                        message: format!(
                            "OTLP HTTP export refused: {status} {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ),
                        retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    });
                }
                bytes.to_vec()
            }
        };
        Ok(outcome(self.signal, &reply))
    }
}

/// The request headers of every export: what gRPC over HTTP/2 requires (`te: trailers` and its
/// content type), the deadline the collector should give up at (`grpc-timeout`, the same as the
/// agent's own), and the user's headers (`OTEL_EXPORTER_OTLP_HEADERS`).
fn grpc_headers(user: &[(String, String)], timeout: Duration) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    // At most 8 digits (the gRPC limit); milliseconds cover any sensible OTLP timeout.
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    headers.insert(
        "grpc-timeout",
        HeaderValue::from_str(&format!("{millis}m")).context("grpc-timeout")?,
    );
    for (k, v) in user {
        let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .with_context(|| format!("invalid OTLP header name {k:?}"))?;
        let value = HeaderValue::from_str(v)
            .with_context(|| format!("invalid value of OTLP header {k:?}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// One unary `Export` call: the sealed body out, then the reply's message and the gRPC status
/// (in the trailers, or in the headers of a trailers-only reply).
async fn grpc_call(
    mut channel: Channel,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, ExportError> {
    let unreachable = |e: &(dyn std::error::Error + 'static)| ExportError {
        message: format!("OTLP gRPC endpoint not reachable: {}", with_causes(e)),
        retryable: true,
    };
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| unreachable(&e))?;
    let mut request = http::Request::new(tonic::body::Body::new(Full::new(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    let response = channel.call(request).await.map_err(|e| unreachable(&e))?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| ExportError {
        message: format!("OTLP gRPC reply cut short: {}", with_causes(&e)),
        retryable: true,
    })?;
    let status = grpc_status(&parts.headers)
        .or_else(|| collected.trailers().and_then(grpc_status))
        .unwrap_or_else(|| (code_of_http(parts.status), String::new()));
    if status.0 != Code::Ok {
        return Err(grpc_error(status.0, &status.1));
    }
    let data = collected.to_bytes();
    Ok(data.get(GRPC_PREFIX..).unwrap_or_default().to_vec())
}

/// An error and its causes, `: `-separated (a transport error alone says only "transport error").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The `grpc-status` and `grpc-message` of a header block, if it has a status. The message is
/// percent-encoded on the wire (gRPC over HTTP/2); bytes that do not decode are kept as they are.
fn grpc_status(headers: &HeaderMap) -> Option<(Code, String)> {
    let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    let message = headers
        .get("grpc-message")
        .map_or_else(String::new, |m| crate::percent::decode(m.as_bytes()));
    Some((code, message))
}

/// The gRPC code of a reply without a status (a proxy's error page, say), as gRPC maps HTTP
/// statuses; a 200 without a status is `Unknown`.
fn code_of_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Spans or data points a reply says were rejected. A reply that does not decode (some
/// collectors answer an HTTP export with an empty or non-protobuf body) is taken as full
/// success, as the status was.
fn outcome(signal: Signal, reply: &[u8]) -> Outcome {
    let rejected = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(reply)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans),
        Signal::Metrics => ExportMetricsServiceResponse::decode(reply)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
    };
    Outcome {
        rejected: rejected.map_or(0, |n| n.max(0) as u64),
    }
}

fn grpc_error(code: Code, message: &str) -> ExportError {
    // The codes the OTLP specification lists as retryable.
    let retryable = matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    );
    ExportError {
        message: format!("OTLP gRPC export failed: {code:?} {message}"),
        retryable,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::{
        metrics::v1::ExportMetricsPartialSuccess, trace::v1::ExportTracePartialSuccess,
    };

    use super::*;

    #[test]
    fn partial_success_counts_rejected_spans() {
        let reply = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(outcome(Signal::Traces, &reply), Outcome { rejected: 3 });
        assert_eq!(outcome(Signal::Traces, &[]), Outcome { rejected: 0 });
        assert_eq!(
            outcome(Signal::Traces, b"<html>ok</html>"),
            Outcome { rejected: 0 }
        );
        let reply = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 5,
                error_message: "bad unit".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(outcome(Signal::Metrics, &reply), Outcome { rejected: 5 });
    }

    #[tokio::test]
    async fn each_signal_has_its_grpc_method() {
        let t = Transport::new(&Target {
            signal: Signal::Metrics,
            endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: Protocol::Grpc,
        })
        .unwrap();
        match t.way {
            Way::Grpc { uri, .. } => assert_eq!(
                uri.path(),
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
            ),
            Way::Http { .. } => panic!("gRPC expected"),
        }
    }

    #[test]
    fn only_the_specified_grpc_codes_are_retried() {
        assert!(grpc_error(Code::Unavailable, "down").retryable);
        assert!(!grpc_error(Code::InvalidArgument, "bad").retryable);
        assert!(!grpc_error(Code::Unauthenticated, "who").retryable);
    }

    #[test]
    fn grpc_status_and_message_come_from_the_header_block() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None, "no status: look elsewhere");
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("too%20many%E2%80%A6%zz%"),
        );
        let (code, message) = grpc_status(&h).unwrap();
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(message, "too many\u{2026}%zz%");
        assert_eq!(
            code_of_http(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(code_of_http(StatusCode::OK), Code::Unknown);
    }

    #[tokio::test]
    async fn a_sealed_body_is_framed_for_grpc_and_left_alone_for_http() {
        let transport = |protocol| {
            Transport::new(&Target {
                signal: Signal::Traces,
                endpoint: Some("http://127.0.0.1:4317".into()),
                protocol,
            })
            .unwrap()
        };
        let grpc = transport(Protocol::Grpc);
        let mut buf = vec![0xff; prefix_len(Protocol::Grpc)];
        buf.extend_from_slice(&[7; 300]);
        let body = grpc.seal(buf);
        assert_eq!(&body[..5], &[0, 0, 0, 1, 44], "uncompressed, 300 bytes");
        assert_eq!(&body[5..], &[7; 300]);

        let http = transport(Protocol::HttpProtobuf);
        assert_eq!(prefix_len(Protocol::HttpProtobuf), 0);
        assert_eq!(&http.seal(vec![7; 3])[..], &[7, 7, 7]);
    }
}

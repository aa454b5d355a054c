//! Sends encoded OTLP trace requests: gRPC (`TraceService/Export` over tonic, with a codec that
//! passes the agent's own protobuf bytes through) or HTTP/protobuf (a `POST` with reqwest).
//! Headers and the timeout come from the standard variables (`endpoint::Target`); a collector
//! that is busy or briefly away gets the request again, twice, with a short backoff.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::endpoint::{Protocol, Target};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Delays before the second and third attempt of a request the collector could not take.
const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// What the collector said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Spans the collector refused although the request succeeded (OTLP partial success).
    pub rejected: u64,
}

/// A failed export, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExportError {
    message: String,
    retryable: bool,
}

/// An OTLP trace destination.
#[derive(Clone)]
pub enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
}

impl Transport {
    /// Checks the configuration; connections are made on first use.
    pub fn new(target: &Target) -> Result<Self> {
        target.check_compression()?;
        let url = target.resolved_url();
        let headers = target.headers()?;
        let timeout = target.timeout()?;
        Ok(match target.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(url.clone())
                    .with_context(|| format!("invalid OTLP gRPC endpoint {url:?}"))?
                    .timeout(timeout);
                let mut metadata = MetadataMap::new();
                for (k, v) in &headers {
                    let key = MetadataKey::from_bytes(k.as_bytes())
                        .with_context(|| format!("invalid OTLP header name {k:?}"))?;
                    let value = MetadataValue::try_from(v.as_str())
                        .with_context(|| format!("invalid value of OTLP header {k:?}"))?;
                    metadata.insert(key, value);
                }
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                    timeout,
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
                Transport::Http {
                    client,
                    url,
                    headers,
                }
            }
        })
    }

    /// Sends one `ExportTraceServiceRequest`, trying again after a retryable failure.
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
        let reply = match self {
            Transport::Grpc {
                channel,
                metadata,
                timeout,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.map_err(|e| ExportError {
                    message: format!("OTLP gRPC endpoint not reachable: {e}"),
                    retryable: true,
                })?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(request, path, Raw)
                    .await
                    .map_err(grpc_error)?
                    .into_inner()
            }
            Transport::Http {
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
        Ok(outcome(&reply))
    }
}

/// Spans a reply says were rejected. A reply that does not decode (some collectors answer an
/// HTTP export with an empty or non-protobuf body) is taken as full success, as the status was.
fn outcome(reply: &[u8]) -> Outcome {
    let rejected = ExportTraceServiceResponse::decode(reply)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64);
    Outcome { rejected }
}

fn grpc_error(s: Status) -> ExportError {
    // The codes the OTLP specification lists as retryable.
    let retryable = matches!(
        s.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    );
    ExportError {
        message: format!("OTLP gRPC export failed: {:?} {}", s.code(), s.message()),
        retryable,
    }
}

/// A gRPC codec for bytes already encoded (the request) or decoded later (the reply).
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

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
        assert_eq!(outcome(&reply), Outcome { rejected: 3 });
        assert_eq!(outcome(&[]), Outcome { rejected: 0 });
        assert_eq!(outcome(b"<html>ok</html>"), Outcome { rejected: 0 });
    }

    #[test]
    fn only_the_specified_grpc_codes_are_retried() {
        assert!(grpc_error(Status::unavailable("down")).retryable);
        assert!(!grpc_error(Status::invalid_argument("bad")).retryable);
        assert!(!grpc_error(Status::unauthenticated("who")).retryable);
    }
}

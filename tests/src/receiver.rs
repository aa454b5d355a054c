//! A real OTLP trace receiver for the tests: gRPC through the official `opentelemetry-proto`
//! service definitions (tonic), and http/protobuf through a small HTTP/1.1 server that decodes
//! the same `ExportTraceServiceRequest` messages. Every span received is kept, flattened, with
//! its resource.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, metrics_service_server::MetricsServiceServer,
    },
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use prost::Message as _;

use crate::metrics::{self, RecvPoint};

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct RecvSpan {
    pub resource: BTreeMap<String, String>,
    pub attrs: BTreeMap<String, String>,
    pub name: String,
    /// OTLP SpanKind: 2 = SERVER, 3 = CLIENT.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub trace_state: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// OTLP StatusCode: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl RecvSpan {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }

    /// The `service.name` of the span's resource.
    pub fn service(&self) -> &str {
        service_name(&self.resource)
    }

    pub fn trace_hex(&self) -> String {
        hex::encode(&self.trace_id)
    }

    pub fn span_hex(&self) -> String {
        hex::encode(&self.span_id)
    }

    pub fn parent_hex(&self) -> String {
        hex::encode(&self.parent_span_id)
    }
}

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The `service.name` of a flattened resource ("" without one).
pub(crate) fn service_name(resource: &BTreeMap<String, String>) -> &str {
    resource
        .get("service.name")
        .map(String::as_str)
        .unwrap_or("")
}

pub(crate) fn flatten(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

fn collect(req: &ExportTraceServiceRequest, into: &Mutex<Vec<RecvSpan>>) {
    let mut out = into.lock().expect("receiver lock");
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| flatten(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(RecvSpan {
                    resource: resource.clone(),
                    attrs: flatten(&s.attributes),
                    name: s.name.clone(),
                    kind: s.kind,
                    trace_id: s.trace_id.clone(),
                    span_id: s.span_id.clone(),
                    parent_span_id: s.parent_span_id.clone(),
                    trace_state: s.trace_state.clone(),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                });
            }
        }
    }
}

/// A running receiver.
pub struct Receiver {
    /// Base endpoint to give the agent (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// "grpc" or "http/protobuf".
    pub protocol: &'static str,
    spans: Arc<Mutex<Vec<RecvSpan>>>,
    points: Arc<Mutex<Vec<RecvPoint>>>,
}

struct Grpc(Arc<Mutex<Vec<RecvSpan>>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(request.get_ref(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// The agent's flags to export here: `--otlp-endpoint` and `--otlp-protocol`.
    pub fn export_args(&self) -> Vec<String> {
        vec![
            "--otlp-endpoint".into(),
            self.endpoint.clone(),
            "--otlp-protocol".into(),
            self.protocol.into(),
        ]
    }

    /// The agent's flags to trace `pid` and export here.
    pub fn agent_args(&self, pid: u32) -> Vec<String> {
        let mut args = vec!["--pid".into(), pid.to_string()];
        args.extend(self.export_args());
        args
    }

    /// Waits until at least `n` spans arrived (30 s at most: passing tests return as soon as
    /// they are there) and returns all received so far; panics with what arrived otherwise.
    pub fn wait_spans(&self, n: usize) -> Vec<RecvSpan> {
        crate::eventually(std::time::Duration::from_secs(30), || {
            let s = self.spans();
            (s.len() >= n).then_some(s)
        })
        .unwrap_or_else(|| {
            let got = self.spans();
            panic!("expected {n} spans, got {}: {got:#?}", got.len())
        })
    }

    /// Waits for `n` spans, then a little longer so that extra spans would show: longer than the
    /// ride-along window of an exporting agent (records wait up to ~1 s in the ring buffer) and
    /// the tests' 200 ms export batches.
    pub fn settle(&self, n: usize) -> Vec<RecvSpan> {
        crate::eventually(std::time::Duration::from_secs(20), || {
            (self.spans().len() >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("expected {n} spans, got {:#?}", self.spans()));
        std::thread::sleep(std::time::Duration::from_millis(1300));
        self.spans()
    }

    /// Starts an OTLP/gRPC receiver on a free loopback port.
    pub fn grpc() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let points = Arc::new(Mutex::new(Vec::new()));
        let metrics = MetricsServiceServer::new(metrics::Grpc(points.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tonic::transport::Server::builder()
                    .add_service(service)
                    .add_service(metrics)
                    .serve_with_incoming(incoming)
                    .await
                    .expect("grpc receiver");
            });
        });
        Receiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            protocol: "grpc",
            spans,
            points,
        }
    }

    /// Starts an OTLP http/protobuf receiver (POST /v1/traces) on a free loopback port.
    pub fn http() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let points = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let (sink, metrics) = (spans.clone(), points.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (sink, metrics) = (sink.clone(), metrics.clone());
                std::thread::spawn(move || serve_http(conn, &sink, &metrics));
            }
        });
        Receiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            protocol: "http/protobuf",
            spans,
            points,
        }
    }

    /// Metric data points received so far.
    pub fn points(&self) -> Vec<RecvPoint> {
        self.points.lock().expect("receiver lock").clone()
    }

    /// Spans received so far.
    pub fn spans(&self) -> Vec<RecvSpan> {
        self.spans.lock().expect("receiver lock").clone()
    }
}

/// Serves OTLP/HTTP requests on one keep-alive connection.
fn serve_http(conn: TcpStream, sink: &Mutex<Vec<RecvSpan>>, metrics: &Mutex<Vec<RecvPoint>>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let traces = line.starts_with("POST /v1/traces ");
        let metrics_path = line.starts_with("POST /v1/metrics ");
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, v)) = h.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // Both responses are empty messages: one encoding serves both paths.
        let status = if traces {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    collect(&req, sink);
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else if metrics_path {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    metrics::collect(&req, metrics);
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        let resp = ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            resp.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&resp).is_err() {
            return;
        }
    }
}

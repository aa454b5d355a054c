//! The metrics half of the test receiver: OTLP `ExportMetricsServiceRequest`s flattened into
//! one [`RecvPoint`] per data point, with the resource's `service.name`.

use std::{collections::BTreeMap, sync::Mutex};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::MetricsService,
    },
    metrics::v1::{metric::Data, number_data_point},
};

use crate::receiver::{flatten, service_name};

/// One received data point.
#[derive(Debug, Clone)]
pub struct RecvPoint {
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub unit: String,
    pub attrs: BTreeMap<String, String>,
    /// A sum's value, or a histogram's count.
    pub value: f64,
    /// A histogram's explicit bounds (empty for sums).
    pub bounds: Vec<f64>,
    pub time_ns: u64,
}

impl RecvPoint {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }

    /// The `service.name` of the point's resource.
    pub fn service(&self) -> &str {
        service_name(&self.resource)
    }
}

/// Flattens one request into `into`.
pub fn collect(req: &ExportMetricsServiceRequest, into: &Mutex<Vec<RecvPoint>>) {
    let mut out = into.lock().expect("receiver lock");
    for rm in &req.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| flatten(&r.attributes))
            .unwrap_or_default();
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let point = |attrs, value, bounds, time_ns| RecvPoint {
                    resource: resource.clone(),
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    attrs,
                    value,
                    bounds,
                    time_ns,
                };
                match &m.data {
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            let v = match p.value {
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                None => 0.0,
                            };
                            out.push(point(
                                flatten(&p.attributes),
                                v,
                                Vec::new(),
                                p.time_unix_nano,
                            ));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            out.push(point(
                                flatten(&p.attributes),
                                p.count as f64,
                                p.explicit_bounds.clone(),
                                p.time_unix_nano,
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The gRPC metrics service.
pub struct Grpc(pub std::sync::Arc<Mutex<Vec<RecvPoint>>>);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        collect(request.get_ref(), &self.0);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The latest value of each series of metric `name` (cumulative temporality: the latest point
/// is the total), keyed by service and attributes.
pub fn latest<'a>(
    points: &'a [RecvPoint],
    name: &str,
) -> BTreeMap<(String, BTreeMap<String, String>), &'a RecvPoint> {
    let mut out: BTreeMap<(String, BTreeMap<String, String>), &RecvPoint> = BTreeMap::new();
    for p in points.iter().filter(|p| p.name == name) {
        let key = (p.service().to_string(), p.attrs.clone());
        match out.get(&key) {
            Some(prev) if prev.time_ns > p.time_ns => {}
            _ => {
                out.insert(key, p);
            }
        }
    }
    out
}

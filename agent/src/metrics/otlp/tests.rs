//! The requests are decoded with `opentelemetry-proto`'s generated types, as a collector would.

use std::time::Instant;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue as PAnyValue, KeyValue, any_value},
    metrics::v1::{HistogramDataPoint, Metric, NumberDataPoint, metric::Data},
};
use prost::Message as _;

use super::{
    encode::{REQUEST_BYTES, agent_resource, encode},
    *,
};
use crate::metrics::tests::{client, process, server, under};
use crate::metrics::{histogram::BOUNDS, series::OVERFLOW_ATTRIBUTE};

const NOW: u64 = 1_800_000_000_000_000_000;

fn text(kv: &[KeyValue], key: &str) -> Option<String> {
    kv.iter()
        .find(|k| k.key == key)
        .and_then(|k| match &k.value {
            Some(PAnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.clone()),
            Some(PAnyValue {
                value: Some(any_value::Value::IntValue(i)),
            }) => Some(i.to_string()),
            _ => None,
        })
}

/// Every metric of every request, with its resource's attributes.
fn decode(requests: &[Vec<u8>], prefix: usize) -> Vec<(Vec<KeyValue>, Metric)> {
    let mut out = Vec::new();
    for body in requests {
        let req = ExportMetricsServiceRequest::decode(&body[prefix..]).expect("decodes");
        for rm in req.resource_metrics {
            let resource = rm.resource.expect("resource").attributes;
            for sm in rm.scope_metrics {
                assert_eq!(sm.scope.expect("scope").name, env!("CARGO_PKG_NAME"));
                for m in sm.metrics {
                    out.push((resource.clone(), m));
                }
            }
        }
    }
    out
}

fn histograms<'a>(
    all: &'a [(Vec<KeyValue>, Metric)],
    name: &str,
) -> Vec<(&'a [KeyValue], &'a HistogramDataPoint, i32)> {
    all.iter()
        .filter(|(_, m)| m.name == name)
        .flat_map(|(r, m)| match &m.data {
            Some(Data::Histogram(h)) => h
                .data_points
                .iter()
                .map(|p| (r.as_slice(), p, h.aggregation_temporality))
                .collect::<Vec<_>>(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

fn counters<'a>(all: &'a [(Vec<KeyValue>, Metric)], name: &str) -> Vec<&'a NumberDataPoint> {
    all.iter()
        .filter(|(_, m)| m.name == name)
        .flat_map(|(_, m)| match &m.data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic, "{name}");
                s.data_points.iter().collect::<Vec<_>>()
            }
            other => panic!("{name} is not a sum: {other:?}"),
        })
        .collect()
}

fn export(m: &Metrics, t: Temporality, now: u64, alive: bool) -> Vec<(Vec<KeyValue>, Metric)> {
    let points = m.otlp_points(t, now, |_| alive);
    decode(&encode(&points, &agent_resource(), t, now, 5), 5)
}

#[test]
fn red_series_go_under_their_process_and_the_graph_under_the_agent() {
    let m = Metrics::new(100, true);
    let (front, back) = (process(1, "frontend"), process(2, "backend"));
    let now = Instant::now();
    for id in 0..3 {
        let c = client(&front, 10 + id, "127.0.0.1", 8002);
        m.observe(&under(server(&back, 20 + id, "/users/{id}", 200), &c), now);
        m.observe(&c, now);
    }
    m.observe(&server(&back, 30, "/users/{id}", 503), now);

    let all = export(&m, Temporality::Cumulative, NOW, true);
    let red = histograms(&all, "http.server.request.duration");
    assert_eq!(red.len(), 2, "ok and failed: {red:#?}");
    for (resource, p, temporality) in &red {
        assert_eq!(text(resource, "service.name").as_deref(), Some("backend"));
        assert_eq!(text(resource, "process.pid").as_deref(), Some("2"));
        assert_eq!(*temporality, 2, "cumulative");
        assert_eq!(p.explicit_bounds, BOUNDS);
        assert_eq!(p.bucket_counts.len(), BOUNDS.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(p.time_unix_nano, NOW);
        assert!(p.start_time_unix_nano > 0 && p.start_time_unix_nano <= wall_ns());
        assert_eq!(
            text(&p.attributes, "http.route").as_deref(),
            Some("/users/{id}")
        );
    }
    let ok = red
        .iter()
        .find(|(_, p, _)| text(&p.attributes, "error.type").is_none())
        .expect("the ok series");
    assert_eq!(ok.1.count, 3);
    assert!((ok.1.sum.expect("sum") - 0.009).abs() < 1e-9, "3 x 3 ms");
    let unit = all
        .iter()
        .find(|(_, m)| m.name == "http.server.request.duration")
        .map(|(_, m)| m.unit.as_str());
    assert_eq!(unit, Some("s"));
    let client_red = histograms(&all, "http.client.request.duration");
    assert_eq!(client_red.len(), 1);
    assert_eq!(
        text(client_red[0].0, "service.name").as_deref(),
        Some("frontend")
    );

    let total = counters(&all, "traces_service_graph_request_total");
    let paired = total
        .iter()
        .find(|p| text(&p.attributes, "client").as_deref() == Some("frontend"))
        .expect("frontend -> backend");
    assert_eq!(
        text(&paired.attributes, "server").as_deref(),
        Some("backend")
    );
    assert_eq!(
        paired.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(3))
    );
    let graph_resource = &all
        .iter()
        .find(|(_, m)| m.name == "traces_service_graph_request_total")
        .expect("graph")
        .0;
    assert_eq!(
        text(graph_resource, "service.name").as_deref(),
        Some(env!("CARGO_PKG_NAME"))
    );
    let client_seconds = histograms(&all, "traces_service_graph_request_client_seconds");
    assert_eq!(client_seconds.len(), 1, "only the paired edge has a client");
    assert_eq!(client_seconds[0].1.count, 3);

    // Cumulative: the next export carries the totals, from the same start.
    m.observe(&server(&back, 40, "/users/{id}", 200), now);
    let again = export(&m, Temporality::Cumulative, NOW + 1, true);
    let ok2 = histograms(&again, "http.server.request.duration")
        .into_iter()
        .find(|(_, p, _)| text(&p.attributes, "error.type").is_none())
        .expect("the ok series");
    assert_eq!(ok2.1.count, 4);
    assert_eq!(ok2.1.start_time_unix_nano, ok.1.start_time_unix_nano);
}

#[test]
fn delta_exports_carry_what_is_new_since_the_last_one() {
    let m = Metrics::new(100, true);
    let api = process(1, "api");
    let now = Instant::now();
    m.observe(&server(&api, 1, "/a", 200), now);
    m.observe(&server(&api, 2, "/a", 200), now);
    let first = export(&m, Temporality::Delta, NOW, true);
    let red = histograms(&first, "http.server.request.duration");
    assert_eq!((red.len(), red[0].1.count, red[0].2), (1, 2, 1));
    let edges = counters(&first, "traces_service_graph_request_total");
    assert_eq!(edges.len(), 1, "the api's untraced caller");

    let quiet = export(&m, Temporality::Delta, NOW + 10, true);
    assert!(
        histograms(&quiet, "http.server.request.duration").is_empty()
            && counters(&quiet, "traces_service_graph_request_total").is_empty(),
        "nothing new, no points: {quiet:#?}"
    );

    m.observe(&server(&api, 3, "/a", 200), now);
    let third = export(&m, Temporality::Delta, NOW + 20, true);
    let red = histograms(&third, "http.server.request.duration");
    assert_eq!(red[0].1.count, 1);
    assert_eq!(
        red[0].1.start_time_unix_nano,
        NOW + 10,
        "since the previous export"
    );
    let edges = counters(&third, "traces_service_graph_request_total");
    assert_eq!(
        edges[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
    );
    assert_eq!(edges[0].start_time_unix_nano, NOW + 10);
}

#[test]
fn a_process_that_is_gone_is_exported_once_more_then_forgotten() {
    let m = Metrics::new(100, true);
    let api = process(7, "api");
    m.observe(&server(&api, 1, "/a", 200), Instant::now());
    let last = export(&m, Temporality::Cumulative, NOW, false);
    assert_eq!(histograms(&last, "http.server.request.duration").len(), 1);
    let after = export(&m, Temporality::Cumulative, NOW + 1, true);
    assert!(histograms(&after, "http.server.request.duration").is_empty());
    // The aggregation's own series (Prometheus, the UI) are not OTLP's to forget.
    assert_eq!(m.snapshot().red[0].1.count, 1);
}

#[test]
fn processes_past_the_share_limit_go_to_the_series_overflow_share() {
    let m = Metrics::new(100, true);
    let now = Instant::now();
    for pid in 1..=MAX_SHARES as u32 + 2 {
        m.observe(&server(&process(pid, "api"), 1, "/a", 200), now);
    }
    let all = export(&m, Temporality::Cumulative, NOW, true);
    let red = histograms(&all, "http.server.request.duration");
    assert_eq!(red.len(), MAX_SHARES + 1);
    let overflow: Vec<_> = red
        .iter()
        .filter(|(_, p, _)| text(&p.attributes, OVERFLOW_ATTRIBUTE).as_deref() == Some("true"))
        .collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].1.count, 2);
    assert_eq!(
        text(overflow[0].0, "service.name").as_deref(),
        Some(env!("CARGO_PKG_NAME")),
        "under the agent's resource"
    );
    assert_eq!(m.snapshot().overflowed, 2, "counted");
}

#[test]
fn a_large_export_is_split_into_requests_of_bounded_size() {
    let series = 3000;
    let m = Metrics::new(series + 10, true);
    let api = process(1, "api");
    let now = Instant::now();
    for i in 0..series {
        m.observe(&server(&api, 1, &format!("/route/{i}"), 200), now);
    }
    let points = m.otlp_points(Temporality::Cumulative, NOW, |_| true);
    let requests = encode(&points, &agent_resource(), Temporality::Cumulative, NOW, 0);
    assert!(requests.len() > 1, "{} bytes", requests[0].len());
    for r in &requests {
        assert!(r.len() < REQUEST_BYTES + (1 << 19), "{} bytes", r.len());
    }
    let all = decode(&requests, 0);
    assert_eq!(
        histograms(&all, "http.server.request.duration").len(),
        series
    );
}

#[test]
fn the_temporality_preference_is_read_as_the_specification_says() {
    for (value, want) in [
        (None, Temporality::Cumulative),
        (Some("cumulative"), Temporality::Cumulative),
        (Some("Delta"), Temporality::Delta),
        (Some(" lowmemory "), Temporality::Delta),
        (Some("weekly"), Temporality::Cumulative),
    ] {
        assert_eq!(Temporality::parse(value), want, "{value:?}");
    }
}

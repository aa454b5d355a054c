//! The live service map the page draws: nodes (traced services, and the external peers and
//! databases they talk to) and edges with their recent request rate, error rate and latency.
//! "Recent" is a sliding window over snapshots of the service graph taken every few seconds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::metrics::{EdgeStats, Metrics, graph::Edge};

/// How far back rates and percentiles look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often the graph is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// A node of the map.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    pub id: String,
    /// `service` (traced), `database`, or `external`.
    pub kind: &'static str,
}

/// An edge of the map.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeView {
    pub client: String,
    pub server: String,
    pub connection_type: &'static str,
    /// Since the agent started.
    pub requests: u64,
    pub failed: u64,
    /// Over the window.
    pub rate_per_second: f64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// The map.
#[derive(Debug, Clone, Serialize)]
pub struct Map {
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<EdgeView>,
}

/// Snapshots of the service graph over the window.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<(Instant, HashMap<Edge, EdgeStats>)>>,
}

impl History {
    /// Takes a snapshot now; forgets those older than the window needs.
    pub fn sample(&self, metrics: &Metrics, now: Instant) {
        let edges: HashMap<Edge, EdgeStats> = metrics.edges().into_iter().collect();
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.push_back((now, edges));
        while s.len() > 2
            && s.get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
        {
            s.pop_front();
        }
    }

    /// The map from the current graph and the oldest snapshot in the window.
    pub fn map(&self, metrics: &Metrics, now: Instant) -> Map {
        let snap = metrics.snapshot();
        let services: BTreeSet<String> = snap
            .red
            .iter()
            .map(|(k, _)| k.service.to_string())
            .collect();
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let empty = HashMap::new();
        let (since, base) = samples.front().map_or((now, &empty), |(t, e)| (*t, e));
        let window = now.duration_since(since).as_secs_f64().max(1.0);
        let mut nodes: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut edges = Vec::with_capacity(snap.edges.len());
        for (edge, total) in &snap.edges {
            if edge.client.is_empty() && edge.server.is_empty() {
                continue; // the overflow series is not an edge
            }
            let recent = base
                .get(edge)
                .map_or_else(|| total.clone(), |b| total.since(b));
            let h = if recent.requests > 0 {
                recent.latency()
            } else {
                total.latency()
            };
            let ms = |q: f64| h.quantile(q).map(|s| (s * 1e5).round() / 100.0);
            let kind_of = |name: &str, server_side: bool| {
                if services.contains(name) {
                    "service"
                } else if server_side && edge.connection_type == "database" {
                    "database"
                } else {
                    "external"
                }
            };
            nodes
                .entry(edge.client.to_string())
                .or_insert(kind_of(&edge.client, false));
            nodes
                .entry(edge.server.to_string())
                .or_insert(kind_of(&edge.server, true));
            edges.push(EdgeView {
                client: edge.client.to_string(),
                server: edge.server.to_string(),
                connection_type: edge.connection_type,
                requests: total.requests,
                failed: total.failed,
                rate_per_second: recent.requests as f64 / window,
                error_ratio: if recent.requests > 0 {
                    recent.failed as f64 / recent.requests as f64
                } else {
                    0.0
                },
                p50_ms: ms(0.5),
                p95_ms: ms(0.95),
            });
        }
        edges.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        Map {
            window_seconds: window,
            nodes: nodes
                .into_iter()
                .map(|(id, kind)| Node { id, kind })
                .collect(),
            edges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{client, process, server, under};

    #[test]
    fn rates_and_percentiles_cover_the_window() {
        let metrics = Metrics::new(100, false);
        let (front, back) = (process(1, "front"), process(2, "back"));
        let t0 = Instant::now();
        let call = |id: u8| {
            let c = client(&front, id, "127.0.0.1", 8002);
            metrics.observe(&under(server(&back, id + 100, "/b", 200), &c), t0);
            metrics.observe(&c, t0);
        };
        call(1);
        let history = History::default();
        history.sample(&metrics, t0);
        for id in 2..=11 {
            call(id);
        }
        let mut db = client(&back, 50, "127.0.0.1", 5432);
        db.attributes.push((
            "db.system.name",
            crate::trace::Value::Str("postgresql".into()),
        ));
        metrics.observe(&db, t0);
        let map = history.map(&metrics, t0 + Duration::from_secs(10));
        assert_eq!(map.window_seconds, 10.0);
        let e = map
            .edges
            .iter()
            .find(|e| e.client == "front" && e.server == "back")
            .unwrap();
        assert_eq!(e.requests, 11, "totals since start");
        assert!((e.rate_per_second - 1.0).abs() < 1e-9, "10 in the window");
        assert!(e.p50_ms.is_some_and(|p| p > 0.0 && p <= 5.0), "{e:?}");
        let kinds: Vec<(&str, &str)> = map.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert!(kinds.contains(&("front", "service")));
        assert!(kinds.contains(&("back", "service")));
        assert!(kinds.contains(&("127.0.0.1:5432", "database")));
    }
}

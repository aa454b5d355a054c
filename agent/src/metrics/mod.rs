//! Metrics from spans: RED duration histograms per service ([`red`]) and the service graph
//! ([`graph`]), aggregated in bounded series ([`series`]) and read by the Prometheus endpoint
//! ([`prometheus`]), the OTLP metrics exporter ([`otlp`]), the local UI and the exit summary
//! ([`summary`]).
//!
//! Every span is measured, sampled or not, before the sampler drops any: sampling thins traces,
//! never counts.

pub mod graph;
pub mod histogram;
pub mod otlp;
pub mod prometheus;
pub mod red;
pub mod series;
pub mod summary;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use graph::{Edge, Pairing, Request};
use histogram::Histogram;
use series::Series;

use crate::trace::Span;

/// Default limit of series per family (RED, service graph).
pub const DEFAULT_SERIES_LIMIT: usize = 2000;

/// What one edge of the service graph has carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeStats {
    pub requests: u64,
    pub failed: u64,
    /// Durations the clients saw (when the client is traced).
    pub client: Histogram,
    /// Durations the servers saw (when the server is traced).
    pub server: Histogram,
}

impl EdgeStats {
    /// The histogram that best describes the edge's latency: the client's view when there is
    /// one (it includes the network), else the server's.
    pub fn latency(&self) -> &Histogram {
        if self.client.count > 0 {
            &self.client
        } else {
            &self.server
        }
    }

    /// What was carried since `earlier`.
    pub fn since(&self, earlier: &EdgeStats) -> EdgeStats {
        EdgeStats {
            requests: self.requests.saturating_sub(earlier.requests),
            failed: self.failed.saturating_sub(earlier.failed),
            client: self.client.since(&earlier.client),
            server: self.server.since(&earlier.server),
        }
    }
}

/// The overflow edge: requests on edges past the series limit.
pub fn overflow_edge() -> Edge {
    Edge {
        client: Arc::from(""),
        server: Arc::from(""),
        connection_type: "",
    }
}

struct State {
    red: Series<red::Key, Histogram>,
    edges: Series<Edge, EdgeStats>,
    pairing: Pairing,
    done: Vec<Request>,
}

/// The aggregation every span goes through.
pub struct Metrics {
    state: Mutex<State>,
    otlp: Option<Arc<otlp::Recorder>>,
}

/// A consistent copy of the aggregates, for readers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub red: Vec<(red::Key, Histogram)>,
    pub edges: Vec<(Edge, EdgeStats)>,
    /// Measurements that went to an overflow series.
    pub overflowed: u64,
    /// Pairing halves counted alone because the pairing table was full.
    pub unpaired_full: u64,
    /// Pairing halves waiting.
    pub waiting: usize,
}

impl Metrics {
    pub fn new(series_limit: usize, otlp: Option<Arc<otlp::Recorder>>) -> Self {
        Metrics {
            state: Mutex::new(State {
                red: Series::new(series_limit),
                edges: Series::new(series_limit),
                pairing: Pairing::default(),
                done: Vec::new(),
            }),
            otlp,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counts that are still counts.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Measures one finished span.
    pub fn observe(&self, span: &Span, now: Instant) {
        let service: Arc<str> = Arc::from(span.process.service_name.as_str());
        let key = red::Key::of(span, service.clone());
        let secs = red::seconds(span);
        let mut st = self.lock();
        let (h, overflowed) = st.red.get(key, red::Key::overflow);
        h.record(secs);
        if let Some(otlp) = &self.otlp {
            otlp.record_span(span, secs, overflowed);
        }
        let mut done = std::mem::take(&mut st.done);
        st.pairing.observe(span, service, now, &mut done);
        self.count(&mut st, &mut done);
        st.done = done;
    }

    /// Counts alone the pairing halves that waited too long.
    pub fn tick(&self, now: Instant) {
        let mut st = self.lock();
        let mut done = std::mem::take(&mut st.done);
        st.pairing.expire(now, &mut done);
        self.count(&mut st, &mut done);
        st.done = done;
    }

    /// Counts every waiting half (at shutdown).
    pub fn flush(&self) {
        let mut st = self.lock();
        let mut done = std::mem::take(&mut st.done);
        st.pairing.flush(&mut done);
        self.count(&mut st, &mut done);
        st.done = done;
    }

    fn count(&self, st: &mut State, done: &mut Vec<Request>) {
        for r in done.drain(..) {
            let (e, overflowed) = st.edges.get(r.edge.clone(), |_| overflow_edge());
            e.requests += 1;
            e.failed += u64::from(r.failed);
            if let Some(s) = r.client_seconds {
                e.client.record(s);
            }
            if let Some(s) = r.server_seconds {
                e.server.record(s);
            }
            if let Some(otlp) = &self.otlp {
                otlp.record_request(&r, overflowed);
            }
        }
    }

    /// A copy of everything aggregated so far.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            red: st.red.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            edges: st
                .edges
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            overflowed: st.red.overflowed() + st.edges.overflowed(),
            unpaired_full: st.pairing.unpaired_full,
            waiting: st.pairing.waiting(),
        }
    }

    /// The service graph alone (cheaper than a full snapshot).
    pub fn edges(&self) -> Vec<(Edge, EdgeStats)> {
        let st = self.lock();
        st.edges
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
pub(crate) mod tests;

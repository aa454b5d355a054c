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

use smol_str::SmolStr;
use std::{
    sync::{Mutex, MutexGuard},
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
        client: SmolStr::default(),
        server: SmolStr::default(),
        connection_type: "",
    }
}

/// A RED series: its histogram, and for OTLP its measurements per process.
#[derive(Default)]
struct RedSeries {
    histogram: Histogram,
    shares: Vec<otlp::Share>,
}

/// An edge series: its stats, and what OTLP last took of them.
#[derive(Default)]
struct EdgeSeries {
    stats: EdgeStats,
    otlp: otlp::EdgeMark,
}

struct State {
    red: Series<red::Key, RedSeries>,
    edges: Series<Edge, EdgeSeries>,
    pairing: Pairing,
    done: Vec<Request>,
}

/// The aggregation every span goes through.
pub struct Metrics {
    state: Mutex<State>,
    /// Whether OTLP exports the metrics (which keeps RED measurements per process).
    otlp: bool,
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
    pub fn new(series_limit: usize, otlp: bool) -> Self {
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
        let measured = red::Measured::new(span);
        let instrument = measured.instrument;
        let hash = measured.fingerprint();
        let secs = red::seconds(span);
        let mut st = self.lock();
        let (series, overflowed) = st.red.get(
            hash,
            |k| k.describes(&measured),
            || red::Key::of(&measured),
            || red::Key::overflow(instrument),
        );
        series.histogram.record(secs);
        if self.otlp {
            let process = (!overflowed).then_some(&span.process);
            if otlp::Share::record(&mut series.shares, process, secs) {
                st.red.count_overflow();
            }
        }
        let service = span.process.service_name.clone();
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
            let (e, _) = st.edges.get(
                r.edge.fingerprint(),
                |k| *k == r.edge,
                || r.edge.clone(),
                || {
                    let k = overflow_edge();
                    (k.fingerprint(), k)
                },
            );
            let s = &mut e.stats;
            s.requests += 1;
            s.failed += u64::from(r.failed);
            if let Some(secs) = r.client_seconds {
                s.client.record(secs);
            }
            if let Some(secs) = r.server_seconds {
                s.server.record(secs);
            }
            if self.otlp && e.otlp.start_ns == 0 {
                e.otlp.start_ns = otlp::wall_ns();
            }
        }
    }

    /// The data points of an OTLP export at `now_ns` (`otlp::Share::take`,
    /// `otlp::EdgeMark::take`). The shares of processes that are gone (`alive` says) are
    /// forgotten once their last values are taken.
    pub fn otlp_points(
        &self,
        temporality: otlp::Temporality,
        now_ns: u64,
        mut alive: impl FnMut(u32) -> bool,
    ) -> otlp::Points {
        let mut st = self.lock();
        let mut points = otlp::Points::default();
        for (key, series) in st.red.iter_mut() {
            for share in &mut series.shares {
                if let Some((histogram, start_ns)) = share.take(temporality, now_ns) {
                    points.red.push(otlp::RedPoint {
                        key: key.clone(),
                        process: share.process.clone(),
                        histogram,
                        start_ns,
                    });
                }
            }
            series
                .shares
                .retain(|s| s.process.as_ref().is_none_or(|p| alive(p.pid)));
        }
        let overflow = overflow_edge();
        for (edge, series) in st.edges.iter_mut() {
            if let Some((stats, start_ns)) = series.otlp.take(&series.stats, temporality, now_ns) {
                points.edges.push(otlp::EdgePoint {
                    edge: edge.clone(),
                    overflow: *edge == overflow,
                    stats,
                    start_ns,
                });
            }
        }
        points
    }

    /// A copy of everything aggregated so far.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            red: st
                .red
                .iter()
                .map(|(k, v)| (k.clone(), v.histogram.clone()))
                .collect(),
            edges: st
                .edges
                .iter()
                .map(|(k, v)| (k.clone(), v.stats.clone()))
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
            .map(|(k, v)| (k.clone(), v.stats.clone()))
            .collect()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
pub(crate) mod tests;

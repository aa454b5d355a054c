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
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use graph::{Edge, Pairing, Request};
use histogram::Histogram;
use series::Series;

use opentelemetry::metrics::BoundHistogram;

use crate::{process::ProcessInfo, trace::Span};

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

/// A RED series: its histogram, and the OTLP instruments bound to its attributes (one per
/// process whose spans it measures; `None` for the overflow series).
#[derive(Default)]
struct RedSeries {
    histogram: Histogram,
    bound: Vec<(Option<Arc<ProcessInfo>>, BoundHistogram<f64>)>,
}

impl RedSeries {
    fn record_otlp(
        &mut self,
        otlp: &otlp::Recorder,
        span: &Span,
        instrument: red::Instrument,
        overflowed: bool,
        secs: f64,
    ) {
        let process = (!overflowed).then_some(&span.process);
        let found = self.bound.iter().find(|(p, _)| match (p, process) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        });
        match found {
            Some((_, b)) => b.record(secs),
            None => {
                if let Some(b) = otlp.bind_red((!overflowed).then_some(span), instrument) {
                    b.record(secs);
                    self.bound.push((process.cloned(), b));
                }
            }
        }
    }
}

/// An edge series: its stats, and the OTLP instruments bound to it.
#[derive(Default)]
struct EdgeSeries {
    stats: EdgeStats,
    bound: Option<otlp::BoundEdge>,
}

struct State {
    red: Series<red::Key, RedSeries>,
    edges: Series<Edge, EdgeSeries>,
    pairing: Pairing,
    done: Vec<Request>,
    /// The OTLP recorder's generation the bound instruments were last checked against.
    generation: u64,
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
                generation: 0,
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
        if let Some(otlp) = &self.otlp {
            series.record_otlp(otlp, span, instrument, overflowed, secs);
        }
        let service = span.process.service_name.clone();
        let mut done = std::mem::take(&mut st.done);
        st.pairing.observe(span, service, now, &mut done);
        self.count(&mut st, &mut done);
        st.done = done;
    }

    /// Counts alone the pairing halves that waited too long, and lets go of OTLP instruments
    /// bound to providers that were dropped.
    pub fn tick(&self, now: Instant) {
        let mut st = self.lock();
        let mut done = std::mem::take(&mut st.done);
        st.pairing.expire(now, &mut done);
        self.count(&mut st, &mut done);
        st.done = done;
        if let Some(otlp) = &self.otlp
            && otlp.generation() != st.generation
        {
            st.generation = otlp.generation();
            for s in st.red.values_mut() {
                s.bound
                    .retain(|(p, _)| p.as_ref().is_none_or(|p| otlp.serves(p)));
            }
        }
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
            let (e, overflowed) = st.edges.get(
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
            if let Some(otlp) = &self.otlp {
                e.bound
                    .get_or_insert_with(|| otlp.bind_edge(&r.edge, overflowed))
                    .record(&r);
            }
        }
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

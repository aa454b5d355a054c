//! OTLP metrics, to the same collector as the traces (`OTEL_EXPORTER_OTLP_METRICS_*` over
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_METRICS_EXPORTER=none` to turn off), every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds, with the temporality of
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
//!
//! The aggregation's own series are exported: each RED series keeps its measurements per traced
//! process (a [`Share`]), because RED metrics belong to the traced service and go under the
//! same resource as its spans; service-graph metrics belong to no single service and go under
//! the agent's own resource. Once an interval the shares and edges are copied out under the
//! aggregation's lock ([`super::Metrics::otlp_points`]) and encoded by `encode` with the span
//! encoder's `Writer`, then sent with the trace export's transport.
//!
//! An OpenTelemetry SDK meter provider per process did this before, with bound instruments fed
//! beside the aggregation's own histograms: a second aggregation of every span (~2% of the
//! agent's profile beside nginx), and three more crates.

mod encode;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{EdgeStats, Metrics, graph::Edge, histogram::Histogram, red::Key};
use crate::{
    export::{
        endpoint::{Signal, Target, env, env_number},
        transport::{self, Transport},
    },
    process::ProcessInfo,
    stats::Stats,
};
use encode::{agent_resource, encode};

/// Most processes one RED series keeps apart; measurements of further processes go to the
/// series' overflow share (under the agent's resource, marked `otel.metric.overflow`).
pub const MAX_SHARES: usize = 256;

const TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";

/// How the exported values relate to earlier exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since the series began.
    Cumulative,
    /// What was measured since the previous export.
    Delta,
}

impl Temporality {
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `cumulative` (the default), `delta`,
    /// or `lowmemory`, which is delta for synchronous counters and histograms, the only kinds
    /// the agent has. Anything else is warned about and ignored, as the specification asks.
    fn from_env() -> Self {
        Self::parse(env(TEMPORALITY).as_deref())
    }

    fn parse(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("cumulative") => Temporality::Cumulative,
            Some("delta" | "lowmemory") => Temporality::Delta,
            Some(other) => {
                warn!(
                    "{TEMPORALITY}={other:?} is not cumulative, delta or lowmemory; using cumulative"
                );
                Temporality::Cumulative
            }
        }
    }

    /// `AggregationTemporality` as OTLP numbers it.
    pub(super) fn proto(self) -> u64 {
        match self {
            Temporality::Delta => 1,
            Temporality::Cumulative => 2,
        }
    }
}

/// Resolved OTLP metrics settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub interval: Duration,
    /// How long one export may take, retries included (`OTEL_METRIC_EXPORT_TIMEOUT`).
    pub timeout: Duration,
    pub temporality: Temporality,
}

impl Config {
    /// The metrics settings, or `None` when metrics have no OTLP endpoint (or are turned off).
    pub fn from_env(
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>> {
        let Some(target) = Target::resolve(Signal::Metrics, flag_endpoint, flag_protocol)? else {
            return Ok(None);
        };
        Ok(Some(Config {
            target,
            interval: Duration::from_millis(
                env_number("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?.max(100),
            ),
            timeout: Duration::from_millis(
                env_number("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?.max(100),
            ),
            temporality: Temporality::from_env(),
        }))
    }
}

/// Nanoseconds since the Unix epoch, OTLP's timestamps.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One process's measurements in a RED series (`None`: the series' overflow share).
#[derive(Debug, Clone)]
pub struct Share {
    pub process: Option<Arc<ProcessInfo>>,
    pub histogram: Histogram,
    /// When the values began: the share's first measurement, or the previous delta export.
    pub start_ns: u64,
}

impl Share {
    /// Records `secs` in the share of `process` (its latest identity kept, for the resource),
    /// made when new. Past `MAX_SHARES` the overflow share takes it; returns true then.
    pub fn record(shares: &mut Vec<Share>, process: Option<&Arc<ProcessInfo>>, secs: f64) -> bool {
        let pid = process.map(|p| p.pid);
        if let Some(s) = shares
            .iter_mut()
            .find(|s| s.process.as_ref().map(|p| p.pid) == pid)
        {
            if let (Some(new), Some(mine)) = (process, &mut s.process)
                && !Arc::ptr_eq(new, mine)
            {
                *mine = new.clone();
            }
            s.histogram.record(secs);
            return false;
        }
        let full = shares.len() >= MAX_SHARES && process.is_some();
        if full && let Some(s) = shares.iter_mut().find(|s| s.process.is_none()) {
            s.histogram.record(secs);
            return true;
        }
        let mut histogram = Histogram::default();
        histogram.record(secs);
        shares.push(Share {
            process: if full { None } else { process.cloned() },
            histogram,
            start_ns: wall_ns(),
        });
        full
    }

    /// The share's data point at `now_ns`: its totals, or for a delta export what it measured
    /// since the last one (`None` when that is nothing).
    pub fn take(&mut self, temporality: Temporality, now_ns: u64) -> Option<(Histogram, u64)> {
        match temporality {
            Temporality::Cumulative => Some((self.histogram.clone(), self.start_ns)),
            Temporality::Delta => {
                let h = std::mem::take(&mut self.histogram);
                let start = std::mem::replace(&mut self.start_ns, now_ns);
                (h.count > 0).then_some((h, start))
            }
        }
    }
}

/// What an edge series last gave OTLP (for delta exports) and since when it counts.
#[derive(Debug, Clone, Default)]
pub struct EdgeMark {
    /// The edge's first request, then (delta) the previous export.
    pub start_ns: u64,
    /// The edge's stats at the previous delta export.
    pub exported: EdgeStats,
}

impl EdgeMark {
    /// The edge's data point at `now_ns` (`None`: nothing new for a delta export).
    pub fn take(
        &mut self,
        stats: &EdgeStats,
        temporality: Temporality,
        now_ns: u64,
    ) -> Option<(EdgeStats, u64)> {
        match temporality {
            Temporality::Cumulative => Some((stats.clone(), self.start_ns)),
            Temporality::Delta => {
                let d = stats.since(&self.exported);
                self.exported = stats.clone();
                let start = std::mem::replace(&mut self.start_ns, now_ns);
                (d.requests > 0).then_some((d, start))
            }
        }
    }
}

/// A RED series' data point for one process.
#[derive(Debug, Clone)]
pub struct RedPoint {
    pub key: Key,
    pub process: Option<Arc<ProcessInfo>>,
    pub histogram: Histogram,
    pub start_ns: u64,
}

/// A service-graph edge's data points.
#[derive(Debug, Clone)]
pub struct EdgePoint {
    pub edge: Edge,
    pub overflow: bool,
    pub stats: EdgeStats,
    pub start_ns: u64,
}

/// One export's data points, copied out of the aggregation.
#[derive(Debug, Default)]
pub struct Points {
    pub red: Vec<RedPoint>,
    pub edges: Vec<EdgePoint>,
}

/// OTLP metrics export: every interval, the aggregation's points to the collector.
pub struct Export {
    config: Config,
    transport: Transport,
    metrics: Arc<Metrics>,
    agent: Vec<u8>,
}

impl Export {
    /// Checks the configuration (connections are made on first use).
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Self> {
        let transport = Transport::new(&config.target)?;
        Ok(Export {
            config,
            transport,
            metrics,
            agent: agent_resource(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Exports every interval until `stop`, then once more.
    pub async fn run(self, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.export(&stats).await,
                _ = stop.changed() => break,
            }
        }
        self.export(&stats).await;
    }

    /// Sends the points as they are now; processes that are gone are forgotten after their
    /// last values.
    async fn export(&self, stats: &Stats) {
        let now = wall_ns();
        let t = self.config.temporality;
        let mut seen = HashMap::new();
        let points = self.metrics.otlp_points(t, now, |pid| {
            *seen
                .entry(pid)
                .or_insert_with(|| crate::process::alive(pid))
        });
        let prefix = transport::prefix_len(self.config.target.protocol);
        let requests = encode(&points, &self.agent, t, now, prefix);
        debug!(
            points = points.red.len() + points.edges.len(),
            requests = requests.len(),
            "exporting metrics"
        );
        for body in requests {
            let body = self.transport.seal(body);
            match tokio::time::timeout(self.config.timeout, self.transport.send(body)).await {
                Ok(Ok(outcome)) => {
                    stats.inc(&stats.metric_exports);
                    if outcome.rejected > 0 {
                        stats.add(&stats.metric_points_rejected, outcome.rejected);
                        warn!(
                            points = outcome.rejected,
                            "the OTLP collector rejected metric data points"
                        );
                    }
                }
                Ok(Err(err)) => {
                    stats.inc(&stats.metric_exports_failed);
                    warn!("OTLP metrics export failed: {err}");
                }
                Err(_) => {
                    stats.inc(&stats.metric_exports_failed);
                    warn!(
                        "OTLP metrics export timed out after {:?} (OTEL_METRIC_EXPORT_TIMEOUT)",
                        self.config.timeout
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Recent traces for the local view: the spans of the last traces seen, bounded in traces and
//! in spans per trace, oldest forgotten first. Kept only when `--ui` is on.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use serde::Serialize;

use crate::trace::{Span, SpanKind, Status, Value};

/// Traces kept.
const MAX_TRACES: usize = 1000;
/// Spans kept per trace.
const MAX_SPANS: usize = 200;
/// Spans kept in all (about 10 MiB): the oldest traces go first to stay under it.
const MAX_TOTAL_SPANS: usize = 20_000;
/// Traces listed as slowest, and as failed.
const LISTED: usize = 10;

/// Span attributes shown in the waterfall.
const SHOWN: &[&str] = &[
    "http.route",
    "url.path",
    "url.full",
    "http.response.status_code",
    "rpc.grpc.status_code",
    "db.system.name",
    "db.query.text",
    "db.response.status_code",
    "server.address",
    "server.port",
    "client.address",
    "error.type",
];

/// One span as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub span_id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub service: String,
    pub kind: &'static str,
    /// Start, microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    pub error: bool,
    pub attributes: Vec<(&'static str, String)>,
}

/// One trace in a list.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root: String,
    pub service: String,
    pub spans: usize,
    pub start_us: u64,
    pub duration_us: u64,
    pub error: bool,
}

/// The lists the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Lists {
    pub slowest: Vec<TraceSummary>,
    pub failed: Vec<TraceSummary>,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<[u8; 16], Vec<SpanView>>,
    order: VecDeque<[u8; 16]>,
    /// Spans held, over all traces.
    spans: usize,
    /// Spans not kept because their trace had too many already.
    truncated: u64,
}

impl Inner {
    /// Forgets the oldest trace.
    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front()
            && let Some(spans) = self.traces.remove(&old)
        {
            self.spans -= spans.len();
        }
    }
}

/// The store.
#[derive(Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

fn view(span: &Span) -> SpanView {
    let start_us = span.start_ns / 1000;
    SpanView {
        span_id: hex::encode(span.span_id),
        parent_id: span.parent_span_id.map(hex::encode),
        name: span.name.to_string(),
        service: span.process.service_name.to_string(),
        kind: match span.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        },
        start_us,
        duration_us: (span.end_ns / 1000).saturating_sub(start_us),
        error: span.status == Status::Error,
        attributes: SHOWN
            .iter()
            .filter_map(|k| {
                span.attr(k).map(|v| {
                    let v = match v {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                    };
                    (*k, v)
                })
            })
            .collect(),
    }
}

fn summary(id: &[u8; 16], spans: &[SpanView]) -> TraceSummary {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    // The root here: a span whose parent is not in this trace (it may be another host's).
    let root = spans
        .iter()
        .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|s| s.start_us)
        .or_else(|| spans.first());
    let start = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(0);
    TraceSummary {
        trace_id: hex::encode(id),
        root: root.map(|r| r.name.clone()).unwrap_or_default(),
        service: root.map(|r| r.service.clone()).unwrap_or_default(),
        spans: spans.len(),
        start_us: start,
        duration_us: end.saturating_sub(start),
        error: spans.iter().any(|s| s.error),
    }
}

impl Recent {
    /// Keeps a span.
    pub fn observe(&self, span: &Span) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = &mut *inner;
        while inner.spans >= MAX_TOTAL_SPANS && !inner.order.is_empty() {
            inner.evict_oldest();
        }
        if let Some(spans) = inner.traces.get_mut(&span.trace_id) {
            if spans.len() < MAX_SPANS {
                spans.push(view(span));
                inner.spans += 1;
            } else {
                inner.truncated += 1;
            }
            return;
        }
        if inner.order.len() >= MAX_TRACES {
            inner.evict_oldest();
        }
        inner.order.push_back(span.trace_id);
        inner.traces.insert(span.trace_id, vec![view(span)]);
        inner.spans += 1;
    }

    /// The slowest traces kept, and the most recent failed ones.
    pub fn lists(&self) -> Lists {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<TraceSummary> = inner
            .order
            .iter()
            .filter_map(|id| inner.traces.get(id).map(|s| summary(id, s)))
            .collect();
        let mut failed: Vec<TraceSummary> = all.iter().filter(|t| t.error).cloned().collect();
        failed.sort_by_key(|t| std::cmp::Reverse(t.start_us));
        failed.truncate(LISTED);
        all.sort_by_key(|t| std::cmp::Reverse(t.duration_us));
        all.truncate(LISTED);
        Lists {
            slowest: all,
            failed,
        }
    }

    /// The spans of one trace, by start time.
    pub fn trace(&self, id: &[u8; 16]) -> Option<Vec<SpanView>> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut spans = inner.traces.get(id)?.clone();
        spans.sort_by_key(|s| s.start_us);
        Some(spans)
    }

    /// Spans not kept because their trace was full.
    pub fn truncated(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{client, process, server, under};

    #[test]
    fn lists_the_slowest_and_the_failed_traces() {
        let recent = Recent::default();
        let (front, back) = (process(1, "front"), process(2, "back"));
        // Trace 1: a SERVER span with one CLIENT child and its peer SERVER; trace 2 fails.
        let mut root = server(&front, 1, "/a", 200);
        root.end_ns += 50_000_000;
        let mut call = client(&front, 2, "127.0.0.1", 8002);
        call.parent_span_id = Some(root.span_id);
        let peer = under(server(&back, 3, "/b", 200), &call);
        let mut failed = server(&front, 4, "/a", 503);
        failed.trace_id = [2; 16];
        for s in [&peer, &call, &root, &failed] {
            recent.observe(s);
        }
        let lists = recent.lists();
        assert_eq!(lists.slowest.len(), 2);
        let first = &lists.slowest[0];
        assert_eq!(first.trace_id, hex::encode([1u8; 16]));
        assert_eq!((first.spans, first.error), (3, false));
        assert_eq!(first.root, "GET", "the span without a parent here");
        assert_eq!(first.service, "front");
        assert_eq!(lists.failed.len(), 1);
        assert_eq!(lists.failed[0].trace_id, hex::encode([2u8; 16]));
        let spans = recent.trace(&[1; 16]).unwrap();
        assert_eq!(spans.len(), 3);
        assert!(spans.windows(2).all(|w| w[0].start_us <= w[1].start_us));
        let root_view = spans
            .iter()
            .find(|s| s.span_id == hex::encode(root.span_id))
            .unwrap();
        assert_eq!(root_view.parent_id, None);
        assert!(
            root_view
                .attributes
                .iter()
                .any(|(k, v)| *k == "http.route" && v == "/a")
        );
        assert!(recent.trace(&[9; 16]).is_none());
    }

    #[test]
    fn keeps_a_bounded_number_of_traces_and_spans() {
        let recent = Recent::default();
        let p = process(1, "svc");
        for i in 0..=MAX_TRACES {
            let mut s = server(&p, 1, "/", 200);
            s.trace_id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            recent.observe(&s);
        }
        let mut oldest = [1u8; 16];
        oldest[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(
            recent.trace(&oldest).is_none(),
            "the oldest trace went first"
        );
        let mut newest = [1u8; 16];
        newest[..8].copy_from_slice(&(MAX_TRACES as u64).to_le_bytes());
        for _ in 0..MAX_SPANS + 5 {
            recent.observe(&{
                let mut s = server(&p, 2, "/", 200);
                s.trace_id = newest;
                s
            });
        }
        assert_eq!(recent.trace(&newest).unwrap().len(), MAX_SPANS);
        assert_eq!(recent.truncated(), 6);
        // Full traces: the total bound makes the oldest go, whatever the trace count.
        for t in 0..(MAX_TOTAL_SPANS / MAX_SPANS + 5) as u64 {
            let mut id = [7u8; 16];
            id[..8].copy_from_slice(&t.to_le_bytes());
            for _ in 0..MAX_SPANS {
                let mut s = server(&p, 3, "/", 200);
                s.trace_id = id;
                recent.observe(&s);
            }
        }
        let inner = recent.inner.lock().unwrap();
        assert!(inner.spans <= MAX_TOTAL_SPANS, "{}", inner.spans);
        assert_eq!(
            inner.spans,
            inner.traces.values().map(Vec::len).sum::<usize>()
        );
    }
}

//! The agent's own health counters: every event, message or span that is dropped anywhere in the
//! pipeline is counted here, and the totals are logged on exit (and periodically at debug level).

use std::sync::atomic::{AtomicU64, Ordering};

use agent_common::counter;

/// Userspace counters, shared by all stages.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records decoded from the ring buffer.
    pub events_received: AtomicU64,
    /// Records that did not decode.
    pub events_malformed: AtomicU64,
    /// Records decoded after the pipeline had already closed (should stay 0).
    pub events_dropped_shutdown: AtomicU64,
    /// Connections dropped from the table because it was full.
    pub conns_evicted: AtomicU64,
    /// Bytes discarded because a stream buffer was over its limit.
    pub stream_bytes_dropped: AtomicU64,
    /// Connections whose traffic is not HTTP/1.
    pub conns_not_http: AtomicU64,
    /// Times an HTTP stream lost its framing and had to find the next message start.
    pub http_resyncs: AtomicU64,
    /// Requests that never got a response (connection closed, or framing lost).
    pub requests_unanswered: AtomicU64,
    /// Responses with no request to pair with (dropped, never paired by guess).
    pub responses_unpaired: AtomicU64,
    /// Spans produced.
    pub spans_created: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub spans_dropped_queue: AtomicU64,
    /// Spans dropped because the backend refused them or could not be reached.
    pub spans_export_failed: AtomicU64,
    /// Spans sent to the backend or printed.
    pub spans_exported: AtomicU64,
}

impl Stats {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Name and value of every userspace counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("events_received", g(&self.events_received)),
            ("events_malformed", g(&self.events_malformed)),
            ("events_dropped_shutdown", g(&self.events_dropped_shutdown)),
            ("conns_evicted", g(&self.conns_evicted)),
            ("stream_bytes_dropped", g(&self.stream_bytes_dropped)),
            ("conns_not_http", g(&self.conns_not_http)),
            ("http_resyncs", g(&self.http_resyncs)),
            ("requests_unanswered", g(&self.requests_unanswered)),
            ("responses_unpaired", g(&self.responses_unpaired)),
            ("spans_created", g(&self.spans_created)),
            ("spans_dropped_queue", g(&self.spans_dropped_queue)),
            ("spans_export_failed", g(&self.spans_export_failed)),
            ("spans_exported", g(&self.spans_exported)),
        ]
    }
}

/// Names of the kernel-side counters, in `agent_common::counter` order.
pub fn kernel_counter_names() -> [&'static str; counter::COUNT as usize] {
    [
        "kernel_events_sent",
        "kernel_lost_ringbuf_full",
        "kernel_lost_inflight_full",
        "kernel_payload_read_failed",
        "kernel_payload_truncated",
        "kernel_lost_fd_lookup",
        "kernel_lost_no_scratch",
    ]
}

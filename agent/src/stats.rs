//! The agent's own health counters: every event, message or span that is dropped anywhere in the
//! pipeline is counted here, and the totals are logged on exit (and periodically at debug level).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use agent_common::counter;

/// Declares the counters once: the struct fields, their doc comments and their names.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Userspace counters, shared by all stages, with the latest kernel counters and gauges.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// The kernel's counters as last read (`agent_common::counter` order).
            pub kernel: [AtomicU64; counter::COUNT as usize],
            pub gauges: Gauges,
            ready: AtomicBool,
        }

        impl Stats {
            /// Name and value of every userspace counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Records decoded from the ring buffer.
    events_received,
    /// Records that did not decode.
    events_malformed,
    /// Connections dropped from the table because it was full.
    conns_evicted,
    /// Connections ended because their process exited (its sockets closed without `close`).
    conns_ended_by_exit,
    /// Bytes discarded because a stream buffer was over its limit.
    stream_bytes_dropped,
    /// Connections whose protocol the agent does not parse (their bytes are no longer shipped).
    conns_unrecognized,
    /// Times an HTTP stream lost its framing and had to find the next message start.
    http_resyncs,
    /// HTTP/2 header fields that could not be decoded (header state from before the capture,
    /// or lost in a gap); never guessed.
    http2_headers_unknown,
    /// HTTP/2 streams without a decodable method or path: no span.
    http2_streams_unnamed,
    /// Times a database connection lost its framing (large results in capture gaps).
    db_resyncs,
    /// TLS libraries probed (one per library file and process).
    tls_libraries_probed,
    /// Files that look like TLS libraries but cannot be probed (stripped, unknown API).
    tls_libraries_unsupported,
    /// Traced processes in which no probeable TLS library was found (at their first scan).
    tls_processes_without_library,
    /// Probe attachments the kernel refused.
    tls_attach_failed,
    /// Library scans not done because the attacher's queue was full.
    tls_scans_dropped,
    /// Connections whose plaintext came from the TLS probes.
    conns_tls,
    /// Requests that never got a response (connection closed, or framing lost).
    requests_unanswered,
    /// Responses with no request to pair with (dropped, never paired by guess).
    responses_unpaired,
    /// Requests that carried W3C trace context.
    context_tracecontext,
    /// Requests that carried a B3 single header.
    context_b3,
    /// Requests that carried B3 multi-headers.
    context_b3multi,
    /// Requests whose trace context headers were malformed (ignored).
    context_malformed,
    /// CLIENT spans linked to the SERVER span their thread was serving.
    spans_linked_thread,
    /// CLIENT spans linked to the SERVER span whose context they forwarded.
    spans_linked_forwarded,
    /// SERVER spans linked to the CLIENT span of a traced process on this host.
    spans_linked_peer,
    /// CLIENT requests not linked because their thread served several requests at once.
    link_ambiguous,
    /// SERVER requests whose traced client's request never showed (linked without it).
    link_peer_timeouts,
    /// Requests not linked because the linking table was full.
    link_table_full,
    /// Processes found serving several connections on one thread (thread linking disabled).
    processes_multiplexed,
    /// Spans produced.
    spans_created,
    /// Spans not exported because their trace was not sampled.
    spans_unsampled,
    /// Spans dropped because the export queue was full.
    spans_dropped_queue,
    /// Spans dropped because the backend refused them or could not be reached.
    spans_export_failed,
    /// Spans sent to the backend or printed.
    spans_exported,
    /// OTLP metrics export requests the backend accepted.
    metric_exports,
    /// OTLP metrics export requests that failed (with cumulative temporality the next export
    /// carries the totals again; delta points are lost).
    metric_exports_failed,
    /// Metric data points the backend refused although the request succeeded (OTLP partial
    /// success).
    metric_points_rejected,
}

/// Current sizes of the agent's queues and tables.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Bytes the kernel wrote to the ring buffer that the agent has not read yet.
    pub ring_buffer_queued_bytes: AtomicU64,
    /// Spans waiting to be exported.
    pub spans_queue_depth: AtomicU64,
    /// Connections tracked.
    pub connections: AtomicU64,
    /// Requests in flight tracked for linking.
    pub requests_in_flight: AtomicU64,
    /// Processes traced (selected one by one; 0 with --all).
    pub processes_traced: AtomicU64,
}

impl Stats {
    /// Name and value of every gauge.
    pub fn gauges(&self) -> Vec<(&'static str, u64)> {
        let g = &self.gauges;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("ring_buffer_queued_bytes", v(&g.ring_buffer_queued_bytes)),
            ("spans_queue_depth", v(&g.spans_queue_depth)),
            ("connections", v(&g.connections)),
            ("requests_in_flight", v(&g.requests_in_flight)),
            ("processes_traced", v(&g.processes_traced)),
        ]
    }

    /// Sets a gauge.
    pub fn set(&self, g: &AtomicU64, value: u64) {
        g.store(value, Ordering::Relaxed);
    }

    /// Records the kernel's counters.
    pub fn set_kernel(&self, values: &[u64; counter::COUNT as usize]) {
        for (slot, v) in self.kernel.iter().zip(values) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// The kernel's counters by outcome (`sent`, `lost_ringbuf_full`, ...).
    pub fn kernel_snapshot(&self) -> Vec<(&'static str, u64)> {
        kernel_counter_names()
            .iter()
            .zip(&self.kernel)
            .map(|(n, v)| (n.trim_start_matches("kernel_"), v.load(Ordering::Relaxed)))
            .map(|(n, v)| (n.strip_prefix("events_").unwrap_or(n), v))
            .collect()
    }

    /// Programs attached and processes selected.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
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
        "kernel_lost_traced_full",
        "kernel_skipped_ignored",
        "kernel_lost_tls_unbound",
        "kernel_lost_tls_args",
        "kernel_lost_syscall_args",
        "kernel_lost_other_call",
    ]
}

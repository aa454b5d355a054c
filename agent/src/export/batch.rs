//! OTLP batches assembled where spans are made: each span is encoded into protobuf bytes as soon
//! as the process loop queues it, and only whole requests cross to the export task.
//!
//! Why here and not in the export task: a span handed over as a `Span` was moved through the
//! channel, encoded later with its bytes gone cold, and freed on another thread (its attribute
//! `Vec`, its `Arc<ProcessInfo>`): the allocator then kept retiring and refreshing pages on the
//! thread that made spans, and the process's reference count bounced between CPUs. Encoded at
//! once, a span's memory is reused by the next one, and the queue holds ~450 bytes per span
//! instead of a `Span` and its heap.

use std::{collections::HashMap, sync::Arc};

use opentelemetry::trace::TraceState;
use smol_str::SmolStr;

use super::{
    otlp::resource_attributes,
    proto::{self, OpenResourceSpans, Writer},
};
use crate::{process::ProcessInfo, trace::Span};

/// One encoded `ExportTraceServiceRequest`, with room for the transport's prefix in front.
#[derive(Debug)]
pub struct Batch {
    pub body: Vec<u8>,
    pub spans: u64,
}

/// The request being written: the first span's process has its `ResourceSpans` open in it, and
/// that process's spans are encoded straight into place.
struct Open {
    body: Writer,
    process: Arc<ProcessInfo>,
    resource_spans: OpenResourceSpans,
    /// Where its first span starts.
    spans_from: usize,
}

/// Consecutive spans of one other process in `Batcher::others_encoded`.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Index in `Batcher::others`.
    group: usize,
    start: usize,
    end: usize,
}

/// Spans encoded as they come, into whole requests of a `ResourceSpans` per process.
///
/// The common case, every span of a batch from one process, writes each span once, where it
/// goes in the request. Spans of other processes (a host traced with `--all`) are encoded
/// aside, in arrival order, and copied behind it, grouped by process, when the batch is taken.
pub struct Batcher {
    batch_size: usize,
    /// Bytes left in front of each request for the transport (gRPC's message prefix).
    prefix: usize,
    max_resources: usize,
    /// Encoded resources by pid, each with the process it describes (bounded).
    resources: HashMap<u32, (Arc<ProcessInfo>, Arc<[u8]>)>,
    open: Option<Open>,
    /// Processes of this batch other than the open one, with their encoded resources. A
    /// process is one `ProcessInfo` (the same `Arc`): a pid that now names another program
    /// gets a `ResourceSpans` of its own.
    others: Vec<(Arc<ProcessInfo>, Arc<[u8]>)>,
    /// `Span` messages of the other processes. Kept between batches: allocated once.
    others_encoded: Writer,
    runs: Vec<Run>,
    spans: usize,
    /// The size of the last batch: spans, and encoded bytes per span with some room. A
    /// request's buffer is allocated at the size the last one reached rather than grown (and
    /// copied) as it fills, and a quiet host's requests of a few spans stay small.
    last_spans: usize,
    span_bytes: usize,
}

impl Batcher {
    /// Requests of at most `batch_size` spans, each after `prefix` reserved bytes; keeps the
    /// encoded resources of at most `max_resources` processes.
    pub fn new(batch_size: usize, prefix: usize, max_resources: usize) -> Self {
        Batcher {
            batch_size: batch_size.max(1),
            prefix,
            max_resources: max_resources.max(1),
            resources: HashMap::new(),
            open: None,
            others: Vec::new(),
            others_encoded: Writer::default(),
            runs: Vec::new(),
            spans: 0,
            last_spans: 16,
            span_bytes: 512,
        }
    }

    /// Spans encoded and not yet taken.
    pub fn pending(&self) -> usize {
        self.spans
    }

    /// Encodes one span; returns the request when it completes a batch.
    pub fn push(&mut self, span: &mut Span) -> Option<Batch> {
        sanitize_trace_state(span);
        let open = match self.open.take() {
            Some(open) => open,
            None => self.start(&span.process),
        };
        let open = self.open.insert(open);
        if Arc::ptr_eq(&open.process, &span.process) {
            proto::span(&mut open.body, 2, span);
        } else {
            let group = self.other(&span.process);
            let start = self.others_encoded.buf.len();
            proto::span(&mut self.others_encoded, 2, span);
            let end = self.others_encoded.buf.len();
            match self.runs.last_mut() {
                Some(run) if run.group == group => run.end = end,
                _ => self.runs.push(Run { group, start, end }),
            }
        }
        self.spans += 1;
        if self.spans >= self.batch_size {
            self.take()
        } else {
            None
        }
    }

    /// The request of every span pending; `None` when there is none.
    pub fn take(&mut self) -> Option<Batch> {
        let Open {
            mut body,
            resource_spans,
            spans_from,
            ..
        } = self.open.take()?;
        let span_total = body.buf.len() - spans_from + self.others_encoded.buf.len();
        resource_spans.finish(&mut body);
        // Spans of a process stay in the order they were made.
        self.runs.sort_by_key(|r| r.group);
        for runs in self.runs.chunk_by(|a, b| a.group == b.group) {
            let resource = &self.others[runs[0].group].1;
            let encoded = &self.others_encoded.buf;
            proto::resource_spans(&mut body, resource, |w| {
                for r in runs {
                    w.buf.extend_from_slice(&encoded[r.start..r.end]);
                }
            });
        }
        let spans = std::mem::take(&mut self.spans);
        self.last_spans = spans;
        self.span_bytes = (span_total / spans.max(1)).clamp(64, 16 * 1024) * 9 / 8;
        self.others_encoded.buf.clear();
        self.runs.clear();
        self.others.clear();
        Some(Batch {
            body: body.buf,
            spans: spans as u64,
        })
    }

    /// A new request, opened for `process`'s spans.
    fn start(&mut self, process: &Arc<ProcessInfo>) -> Open {
        let resource = self.resource(process);
        let mut body = Writer {
            buf: Vec::with_capacity(
                self.prefix + resource.len() + 64 + self.last_spans * self.span_bytes,
            ),
        };
        body.buf.resize(self.prefix, 0);
        let resource_spans = OpenResourceSpans::start(&mut body, &resource);
        Open {
            spans_from: body.buf.len(),
            body,
            process: process.clone(),
            resource_spans,
        }
    }

    /// The index of `process` in `others`, added on its first span.
    fn other(&mut self, process: &Arc<ProcessInfo>) -> usize {
        if let Some(run) = self.runs.last()
            && Arc::ptr_eq(&self.others[run.group].0, process)
        {
            return run.group;
        }
        if let Some(i) = self
            .others
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p, process))
        {
            return i;
        }
        let resource = self.resource(process);
        self.others.push((process.clone(), resource));
        self.others.len() - 1
    }

    /// The encoded resource of a process (encoded again when the pid now names another one).
    fn resource(&mut self, p: &Arc<ProcessInfo>) -> Arc<[u8]> {
        if let Some((known, bytes)) = self.resources.get(&p.pid)
            && known == p
        {
            return bytes.clone();
        }
        if self.resources.len() >= self.max_resources {
            self.resources.clear(); // bounded: encoding one again is cheap
        }
        let bytes: Arc<[u8]> = proto::resource(resource_attributes(p)).into();
        self.resources.insert(p.pid, (p.clone(), bytes.clone()));
        bytes
    }
}

/// A `tracestate` that does not parse (it came from the wire) is dropped rather than sent on.
fn sanitize_trace_state(s: &mut Span) {
    if !s.trace_state.is_empty() && s.trace_state.parse::<TraceState>().is_err() {
        s.trace_state = SmolStr::default();
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;

//! The last stage: spans leave the agent, printed on stdout (no endpoint configured) or sent over
//! OTLP. The process loop hands its spans to an [`Outlet`]: for the terminal, a bounded channel
//! of spans to the printing task; for OTLP, a [`batch::Batcher`] that encodes each span at once
//! and a bounded channel of whole requests to the sending task. Whatever cannot be queued is
//! counted (`spans_dropped_queue`).

pub mod batch;
pub mod endpoint;
pub mod otlp;
pub mod proto;
pub mod stdout;
pub mod transport;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{stats::Stats, trace::Span};
use batch::{Batch, Batcher};

/// Where spans go.
pub enum Sink {
    Stdout(stdout::Format),
    Otlp(otlp::Config),
}

/// The process loop's end of the export stage.
pub enum Outlet {
    Print(mpsc::Sender<Span>),
    Otlp {
        /// Boxed: the terminal's variant is a single pointer.
        batcher: Box<Batcher>,
        requests: Requests,
        delay: Duration,
    },
}

/// The queue of encoded requests to the sending task.
pub struct Requests {
    tx: mpsc::Sender<Batch>,
    /// Spans in the queue's requests (the sending task subtracts what it takes).
    queued: Arc<AtomicU64>,
}

impl Requests {
    /// Queues a request, or counts its spans as dropped when the queue is full.
    fn try_send(&self, batch: Batch, stats: &Stats) {
        let n = self.enqueued(&batch);
        if self.tx.try_send(batch).is_err() {
            self.refused(n, stats);
        }
    }

    /// Queues a request, waiting for room (at shutdown).
    async fn send(&self, batch: Batch, stats: &Stats) {
        let n = self.enqueued(&batch);
        if self.tx.send(batch).await.is_err() {
            self.refused(n, stats);
        }
    }

    fn enqueued(&self, batch: &Batch) -> u64 {
        self.queued.fetch_add(batch.spans, Ordering::Relaxed);
        batch.spans
    }

    fn refused(&self, n: u64, stats: &Stats) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        stats.add(&stats.spans_dropped_queue, n);
    }
}

/// Encodes the sampled spans of `spans` where they are; yields each request they complete.
fn encode<'a>(batcher: &'a mut Batcher, spans: &'a mut [Span]) -> impl Iterator<Item = Batch> + 'a {
    spans
        .iter_mut()
        .filter(|s| s.sampled)
        .filter_map(|s| batcher.push(s))
}

/// Starts the task that prints or sends spans, and returns the loop's end of it. At most
/// `queue_size` spans wait (in requests of up to a batch each, for OTLP). The task ends once the
/// outlet is closed and everything queued has been printed or sent.
pub fn start(sink: Sink, queue_size: usize, stats: Arc<Stats>) -> (Outlet, JoinHandle<Result<()>>) {
    match sink {
        Sink::Stdout(format) => {
            let (tx, rx) = mpsc::channel(queue_size.max(1));
            let task = tokio::spawn(stdout::run(format, rx, stats));
            (Outlet::Print(tx), task)
        }
        Sink::Otlp(config) => {
            let batches = queue_size.div_ceil(config.batch_size).max(1);
            let (tx, rx) = mpsc::channel(batches);
            let batcher = Box::new(Batcher::new(
                config.batch_size,
                config.prefix_len(),
                config.max_resources,
            ));
            let delay = config.batch_delay;
            let queued = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(otlp::run(config, rx, queued.clone(), stats));
            let outlet = Outlet::Otlp {
                batcher,
                requests: Requests { tx, queued },
                delay,
            };
            (outlet, task)
        }
    }
}

impl Outlet {
    /// Queues the sampled spans of `spans` and empties it; a full queue drops (and counts)
    /// rather than stall the loop. Encoded for OTLP, spans are read where they are and dropped
    /// in place, never moved.
    pub fn push(&mut self, spans: &mut Vec<Span>, stats: &Stats) {
        match self {
            Outlet::Print(tx) => {
                for span in spans.drain(..).filter(|s| s.sampled) {
                    if tx.try_send(span).is_err() {
                        stats.inc(&stats.spans_dropped_queue);
                    }
                }
            }
            Outlet::Otlp {
                batcher, requests, ..
            } => {
                for batch in encode(batcher, spans) {
                    requests.try_send(batch, stats);
                }
                spans.clear();
            }
        }
    }

    /// How often the loop should call `flush`: OTLP's `OTEL_BSP_SCHEDULE_DELAY`; never for the
    /// terminal, where each span is queued as it comes.
    pub fn flush_every(&self) -> Option<Duration> {
        match self {
            Outlet::Print(_) => None,
            Outlet::Otlp { delay, .. } => Some(*delay),
        }
    }

    /// Queues the spans of a batch that is not full yet.
    pub fn flush(&mut self, stats: &Stats) {
        if let Outlet::Otlp {
            batcher, requests, ..
        } = self
            && let Some(batch) = batcher.take()
        {
            requests.try_send(batch, stats);
        }
    }

    /// Spans waiting for export.
    pub fn queued(&self) -> u64 {
        match self {
            Outlet::Print(tx) => (tx.max_capacity() - tx.capacity()) as u64,
            Outlet::Otlp {
                batcher, requests, ..
            } => requests.queued.load(Ordering::Relaxed) + batcher.pending() as u64,
        }
    }

    /// At shutdown: queues the sampled spans of `spans` and what is pending, waiting for room
    /// rather than dropping (these requests finished before the signal), then closes the
    /// channel.
    pub async fn close(mut self, mut spans: Vec<Span>, stats: &Stats) {
        match &mut self {
            Outlet::Print(tx) => {
                for span in spans.into_iter().filter(|s| s.sampled) {
                    if tx.send(span).await.is_err() {
                        stats.inc(&stats.spans_dropped_queue);
                    }
                }
            }
            Outlet::Otlp {
                batcher, requests, ..
            } => {
                for batch in encode(batcher, &mut spans) {
                    requests.send(batch, stats).await;
                }
                if let Some(batch) = batcher.take() {
                    requests.send(batch, stats).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{process, server};

    /// An OTLP outlet of `batch` spans a request and room for one request, with the receiving
    /// end of its queue.
    fn otlp(batch: usize) -> (Outlet, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(1);
        let outlet = Outlet::Otlp {
            batcher: Box::new(Batcher::new(batch, 0, 8)),
            requests: Requests {
                tx,
                queued: Arc::new(AtomicU64::new(0)),
            },
            delay: Duration::from_secs(5),
        };
        (outlet, rx)
    }

    #[tokio::test]
    async fn a_full_queue_counts_the_spans_of_the_request_it_drops() {
        let stats = Stats::default();
        let p = process(3, "api");
        let (mut outlet, mut rx) = otlp(2);
        let mut spans: Vec<_> = (0..5).map(|i| server(&p, i, "/", 200)).collect();
        spans[2].sampled = false;
        spans.push(server(&p, 5, "/", 200));
        outlet.push(&mut spans, &stats);
        assert!(spans.is_empty());
        // The first request is queued, the second had no room, the fifth span waits.
        assert_eq!(stats.spans_dropped_queue.load(Ordering::Relaxed), 2);
        assert_eq!(outlet.queued(), 2 + 1);
        assert_eq!(rx.recv().await.expect("queued").spans, 2);

        outlet.flush(&stats);
        assert_eq!(rx.recv().await.expect("flushed").spans, 1);
        outlet.flush(&stats);
        assert!(rx.try_recv().is_err(), "nothing pending: nothing sent");
    }

    #[tokio::test]
    async fn closing_waits_for_room_and_sends_everything() {
        let stats = Stats::default();
        let p = process(3, "api");
        let (outlet, mut rx) = otlp(2);
        let last: Vec<_> = (0..5).map(|i| server(&p, i, "/", 200)).collect();
        let reader = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while let Some(b) = rx.recv().await {
                sizes.push(b.spans);
            }
            sizes
        });
        outlet.close(last, &stats).await;
        assert_eq!(reader.await.expect("reader"), [2, 2, 1]);
        assert_eq!(stats.spans_dropped_queue.load(Ordering::Relaxed), 0);
    }
}

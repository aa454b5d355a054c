//! The last stage: spans leave the agent, printed on stdout (no endpoint configured) or sent over
//! OTLP. Spans arrive through a bounded channel; the sender counts what it could not queue.

pub mod endpoint;
pub mod otlp;
pub mod proto;
pub mod stdout;
pub mod transport;

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::mpsc;

use crate::{stats::Stats, trace::Span};

/// Where spans go.
pub enum Sink {
    Stdout(stdout::Format),
    Otlp(otlp::Config),
}

/// Runs until the channel closes, then flushes everything still held.
pub async fn run(sink: Sink, rx: mpsc::Receiver<Span>, stats: Arc<Stats>) -> Result<()> {
    match sink {
        Sink::Stdout(format) => stdout::run(format, rx, stats).await,
        Sink::Otlp(config) => otlp::run(config, rx, stats).await,
    }
}

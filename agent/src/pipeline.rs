//! Wires the stages together and owns shutdown:
//!
//! ```text
//! kernel ─ring buffer→ capture ─events→ process loop (conn → protocol → trace) ─spans→ export
//! ```
//!
//! Every channel is bounded. On SIGINT or SIGTERM the programs are detached first (no new
//! events), the ring buffer is drained, every connection is closed (completing what can be
//! completed), and the exporter flushes before the agent exits 0.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use crate::{
    capture::{self, SocketEvent},
    cli::{Args, Format},
    clock,
    conn::{ConnRecord, ConnTable, Limits},
    export::{self, Sink, otlp, stdout},
    loader,
    process::{self, Processes},
    stats::{self, Stats},
    trace::{Linker, Span, sampler::Sampler},
};

/// Events queued between capture and the process loop.
const EVENT_QUEUE: usize = 65_536;
/// Connections idle this long are forgotten.
const IDLE: Duration = Duration::from_secs(300);

/// Checks the pids before anything is loaded.
fn check_pids(pids: &[u32]) -> Result<()> {
    let me = std::process::id();
    for &pid in pids {
        if pid == me {
            bail!("pid {pid} is the agent itself; the agent never traces itself");
        }
        process::read(std::path::Path::new("/proc"), pid, "")
            .with_context(|| format!("cannot trace pid {pid}: is the process running?"))?;
    }
    Ok(())
}

fn queue_size() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048)
}

/// Runs the agent until a signal.
pub async fn run(args: Args) -> Result<()> {
    check_pids(&args.pids)?;
    let sink =
        match otlp::Config::from_env(args.otlp_endpoint.as_deref(), args.otlp_protocol.as_deref())?
        {
            Some(config) => {
                config.validate()?;
                info!("exporting spans over OTLP to {}", config.describe());
                Sink::Otlp(config)
            }
            None => {
                info!("no OTLP endpoint configured: printing spans on stdout");
                Sink::Stdout(match args.format {
                    Format::Text => stdout::Format::Text,
                    Format::Json => stdout::Format::Json,
                })
            }
        };

    loader::check_privileges()?;
    loader::ensure_tracefs()?;
    let offsets = loader::offsets(&args.btf)?;
    debug!(?offsets, "kernel offsets from BTF");
    let (mut probes, ring) = loader::load(
        offsets,
        &loader::LoadOptions {
            capture_bytes: args.capture_bytes,
            ring_buffer_bytes: args.ring_buffer_mib * 1024 * 1024,
        },
    )?;
    for &pid in &args.pids {
        probes.trace_pid(pid)?;
    }

    let sampler = Sampler::from_env();
    debug!(?sampler, "sampler");
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ev_tx, ev_rx) = mpsc::channel::<SocketEvent>(EVENT_QUEUE);
    let (span_tx, span_rx) = mpsc::channel::<Span>(queue_size());

    let capture = tokio::spawn(capture::run(ring, ev_tx, stats.clone(), stop_rx));
    let process = tokio::spawn(process_loop(ev_rx, span_tx, sampler, stats.clone()));
    let export = tokio::spawn(export::run(sink, span_rx, stats.clone()));

    // Handlers first: a signal from now on means a clean stop.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut processes = Processes::new(64);
    for &pid in &args.pids {
        let p = processes.get(pid);
        info!(pid, service = %p.service_name, "tracing");
    }
    let mut report = tokio::time::interval(Duration::from_secs(30));
    report.tick().await;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = report.tick() => log_counters(&probes, &stats),
        }
    }
    info!("stopping: detaching programs and flushing spans");

    // Detach: no new events after this point.
    let loader::Probes {
        ebpf,
        counters: counter_map,
        ..
    } = probes;
    drop(ebpf);
    let _ = stop_tx.send(true);
    capture.await.context("capture task")??;
    process.await.context("process task")?;
    export.await.context("export task")??;
    // Read after the drain, so the totals are final (the counter map outlives the programs).
    let counters = loader::sum_counters(&counter_map).ok();

    if let Some(k) = counters {
        for (name, v) in stats::kernel_counter_names().iter().zip(k) {
            if v > 0 {
                info!("{name} = {v}");
            }
        }
    }
    for (name, v) in stats.snapshot() {
        if v > 0 {
            info!("{name} = {v}");
        }
    }
    Ok(())
}

fn log_counters(probes: &loader::Probes, stats: &Stats) {
    if let Ok(k) = probes.counters() {
        let lost = k[agent_common::counter::LOST_RINGBUF_FULL as usize]
            + k[agent_common::counter::LOST_INFLIGHT_FULL as usize]
            + k[agent_common::counter::LOST_FD_LOOKUP as usize];
        if lost > 0 {
            warn!(lost, "kernel events lost so far (see counters on exit)");
        }
    }
    let snap = stats.snapshot();
    debug!(?snap, "counters");
}

/// Connection tracking, parsing, linking and span making: single-threaded, fed by capture.
async fn process_loop(
    mut rx: mpsc::Receiver<SocketEvent>,
    tx: mpsc::Sender<Span>,
    sampler: Sampler,
    stats: Arc<Stats>,
) {
    let mut table = ConnTable::new(Limits::default());
    let mut linker = Linker::new(sampler);
    let mut processes = Processes::new(4096);
    let mut records: Vec<ConnRecord> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut batch = Vec::with_capacity(256);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    // Frequent enough that a SERVER span waiting for its client is not held long.
    let mut link_tick = tokio::time::interval(Duration::from_millis(100));
    link_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break;
                }
                for ev in batch.drain(..) {
                    table.handle(&ev, &stats, &mut records);
                }
            }
            _ = link_tick.tick() => {
                linker.tick(clock::monotonic_ns(), &mut processes, &stats, &mut spans);
            }
            _ = sweep.tick() => {
                let cutoff = clock::monotonic_ns().saturating_sub(IDLE.as_nanos() as u64);
                let gone = table.expire(cutoff, alive, &stats, &mut records);
                for pid in gone {
                    linker.forget_process(pid);
                }
            }
        }
        for rec in records.drain(..) {
            linker.record(rec, &mut processes, &stats, &mut spans);
        }
        emit(&mut spans, &tx, &stats);
    }
    table.close_all(&stats, &mut records);
    for rec in records.drain(..) {
        linker.record(rec, &mut processes, &stats, &mut spans);
    }
    linker.flush(&mut processes, &stats, &mut spans);
    // At shutdown, wait for room rather than drop: these requests finished before the signal.
    for span in spans.drain(..) {
        if let Some(span) = keep(span, &stats)
            && tx.send(span).await.is_err()
        {
            stats.inc(&stats.spans_dropped_queue);
        }
    }
}

/// Counts a span and applies the sampler's decision.
fn keep(span: Span, stats: &Stats) -> Option<Span> {
    stats.inc(&stats.spans_created);
    if span.sampled {
        Some(span)
    } else {
        stats.inc(&stats.spans_unsampled);
        None
    }
}

/// Queues sampled spans for export; a full queue drops (and counts) rather than stall event
/// processing.
fn emit(spans: &mut Vec<Span>, tx: &mpsc::Sender<Span>, stats: &Stats) {
    for span in spans.drain(..) {
        if let Some(span) = keep(span, stats)
            && tx.try_send(span).is_err()
        {
            stats.inc(&stats.spans_dropped_queue);
        }
    }
}

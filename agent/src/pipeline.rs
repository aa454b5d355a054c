//! Wires the stages together and owns shutdown:
//!
//! ```text
//! kernel ─ring buffer→ process loop (capture → select, conn → protocol → trace) ─spans→ export
//! ```
//!
//! One task reads the ring buffer and parses each record in place; the ring buffer is its only
//! queue, so no event is copied or handed between threads. Every queue is bounded. On SIGINT or
//! SIGTERM the programs are detached first (no new events), the ring buffer is drained, every
//! connection is closed (completing what can be completed), and the exporter flushes before the
//! agent exits 0.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, PerCpuArray};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    admin,
    capture::{self, Capture, Event, ProcessEvent},
    cli::Format,
    clock,
    config::Config,
    conn::{ConnRecord, ConnTable, Limits},
    export::{self, Outlet, Sink, otlp, stdout},
    k8s, loader,
    metrics::{self, Metrics},
    process::{self, Processes},
    select::{
        Selector, Tracker,
        tracker::{Change, Reason},
    },
    stats::{self, Stats},
    timer::Timer,
    tls,
    trace::{Linker, Span, sampler::Sampler},
    ui,
};

/// Records parsed between looks at the loop's timers and the export queue.
const BATCH: usize = 1024;
/// Connections idle this long are forgotten.
const IDLE: Duration = Duration::from_secs(300);

/// Checks `--pid` selectors before anything is loaded, so a typo fails at once.
fn check_pids(config: &Config) -> Result<()> {
    let me = std::process::id();
    for s in &config.selection.include {
        if let Selector::Pid(pid) = *s {
            if pid == me {
                bail!("pid {pid} is the agent itself; the agent never traces itself");
            }
            if !process::alive(pid) {
                bail!("cannot trace pid {pid}: is the process running?");
            }
        }
    }
    Ok(())
}

/// Spans waiting for export, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise. The SDKs' 2048 is
/// sized for one process; this queue takes a whole host's spans, handed over a ring wake-up's
/// worth at a time (up to ~1000 at 20k requests/s, `agent_common::WAKEUP_BYTES`), so 2048 left
/// room for two bursts and dropped spans whenever the export task missed a turn on a busy CPU.
/// Exported over OTLP, a queued span is its encoding, ~450 bytes (4 MiB when full); printed, a
/// `Span` under 1 KiB.
const DEFAULT_QUEUE_SIZE: usize = 8192;

fn queue_size() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_QUEUE_SIZE)
}

fn sink(config: &Config) -> Result<Sink> {
    match otlp::Config::from_env(
        config.otlp_endpoint.as_deref(),
        config.otlp_protocol.as_deref(),
    )? {
        Some(otlp) => {
            otlp.validate()?;
            info!("exporting spans over OTLP to {}", otlp.describe());
            Ok(Sink::Otlp(otlp))
        }
        None => {
            info!("no OTLP endpoint configured: printing spans on stdout");
            Ok(Sink::Stdout(match config.format {
                Format::Text => stdout::Format::Text,
                Format::Json => stdout::Format::Json,
            }))
        }
    }
}

/// Acts on one selection change: logs it, and probes (or stops probing) the process's TLS
/// libraries.
fn on_change(change: &Change, processes: &mut Processes, tls: &tls::Attacher) {
    log_change(change, processes);
    match *change {
        Change::Traced(pid, _) => tls.scan(pid),
        Change::Untraced(pid) | Change::Exited(pid) => tls.forget(pid),
    }
}

/// Logs one selection change.
fn log_change(change: &Change, processes: &mut Processes) {
    match change {
        Change::Traced(pid, reason) => {
            let p = processes.get(*pid);
            let why = match reason {
                Reason::Selected => "selected".to_string(),
                Reason::Child(parent) => format!("child of {parent}"),
                Reason::Port(port) => format!("uses port {port}"),
            };
            info!(pid, service = %p.service_name, exe = %p.executable_path, "tracing ({why})");
        }
        Change::Untraced(pid) => info!(pid, "no longer tracing (excluded after exec)"),
        Change::Exited(pid) => debug!(pid, "traced process exited"),
    }
}

/// The metrics aggregation, with OTLP metrics when an endpoint is configured for them.
fn metrics(config: &Config) -> Result<(Arc<Metrics>, Option<metrics::otlp::Export>)> {
    let otlp = metrics::otlp::Config::from_env(
        config.otlp_endpoint.as_deref(),
        config.otlp_protocol.as_deref(),
    )?;
    let metrics = Arc::new(Metrics::new(config.metric_series_limit, otlp.is_some()));
    let export = otlp
        .map(|c| metrics::otlp::Export::new(c, metrics.clone()))
        .transpose()?;
    if let Some(e) = &export {
        let c = e.config();
        info!(
            "exporting metrics over OTLP to {} every {:?} ({:?})",
            c.target.describe(),
            c.interval,
            c.temporality
        );
    }
    Ok((metrics, export))
}

/// Runs the agent until a signal.
pub async fn run(config: Config) -> Result<()> {
    check_pids(&config)?;
    let sink = sink(&config)?;
    // Spans printed on the terminal should appear soon after their request; exported ones wait
    // for their batch anyway.
    let wakeup_window = Duration::from_nanos(match sink {
        Sink::Otlp(_) => agent_common::EXPORT_WAKEUP_WINDOW_NS,
        Sink::Stdout(_) => agent_common::WAKEUP_WINDOW_NS,
    });
    let stats = Arc::new(Stats::default());
    let (metrics, metrics_export) = metrics(&config)?;
    if let Some(port) = config.prometheus_port {
        let addr = admin::serve(port, stats.clone(), metrics.clone()).await?;
        info!("serving /metrics, /healthz and /readyz on {addr}");
    }
    let recent = config.ui.map(|_| Arc::new(ui::Recent::default()));
    if let (Some(addr), Some(recent)) = (config.ui, &recent) {
        let addr = ui::serve(addr, metrics.clone(), recent.clone()).await?;
        info!("web view (service map, recent traces) on http://{addr}/");
    }

    loader::check_privileges()?;
    loader::ensure_tracefs()?;
    let offsets = loader::offsets(&config.btf)?;
    debug!(?offsets, "kernel offsets from BTF");
    let cgroup_v2 = if config.selection.wants_containers() {
        Tracker::usable_cgroup_v2()
    } else {
        None
    };
    let loader::Loaded {
        probes,
        select: select_maps,
        conns,
        events: ring,
    } = loader::load(
        offsets,
        &loader::LoadOptions {
            capture_bytes: config.capture_bytes,
            ring_buffer_bytes: config.ring_buffer_mib * 1024 * 1024,
            select_flags: config.selection.kernel_flags(cgroup_v2.is_some()),
            wakeup_window,
            syscall_tracepoints: config.syscall_tracepoints,
        },
    )?;
    let pods = k8s::start(&config.kubernetes).await?;
    let mut processes = Processes::with_pods(4096, pods);
    let description = config.selection.describe();
    let mut tracker = Tracker::new(config.selection, select_maps, cgroup_v2)?;
    let loader::Probes {
        ebpf,
        counters: counter_map,
    } = probes;
    // From here on the attacher thread owns the programs; stopping it detaches them.
    let (tls, attacher) = tls::Attacher::start(ebpf, "/proc".into(), stats.clone())?;
    for change in tracker.scan()? {
        on_change(&change, &mut processes, &tls);
    }

    let sampler = Sampler::from_env();
    debug!(?sampler, "sampler");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outlet, export) = export::start(sink, queue_size(), stats.clone());

    let timers = Timers::new(outlet.flush_every())?;
    let process = tokio::spawn(process_loop(
        Capture::new(ring, wakeup_window)?,
        timers,
        stop_rx,
        outlet,
        Stages {
            tracker,
            processes,
            linker: Linker::new(sampler).with_routes(config.routes),
            conns,
            tls,
            observers: Observers {
                metrics: metrics.clone(),
                recent,
            },
            counters: counter_map,
        },
        stats.clone(),
    ));
    let (metrics_stop_tx, metrics_stop_rx) = watch::channel(false);
    let metrics_export =
        metrics_export.map(|e| tokio::spawn(e.run(stats.clone(), metrics_stop_rx)));

    // Handlers first: a signal from now on means a clean stop.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    stats.set_ready();
    // Start-up (BTF, ELF symbol tables, the /proc scan) freed tens of MiB the allocator would
    // otherwise keep resident.
    crate::memory::release_freed();
    info!("ready: tracing {description}");
    // Only signals wake this task: the periodic work runs on the process loop's timers.
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigusr1.recv() => print_summary(&metrics),
        }
    }
    info!("stopping: detaching programs and flushing spans");

    // Detach: no new events after this point.
    tokio::task::spawn_blocking(move || attacher.stop())
        .await
        .context("detaching the programs")?;
    let _ = stop_tx.send(true);
    process.await.context("process task")?;
    export.await.context("export task")??;
    // Every span is measured: count the requests still waiting for their other half, then send
    // the last metrics.
    metrics.flush();
    let _ = metrics_stop_tx.send(true);
    if let Some(task) = metrics_export {
        task.await.context("metrics export task")?;
    }
    print_summary(&metrics);
    for (name, v) in stats::kernel_counter_names().iter().zip(&stats.kernel) {
        let v = v.load(std::sync::atomic::Ordering::Relaxed);
        if v > 0 {
            info!("{name} = {v}");
        }
    }
    for (name, v) in stats.snapshot() {
        if v > 0 {
            info!("{name} = {v}");
        }
    }
    Ok(())
}

/// The service map as a table on stderr (stdout carries the spans when printing them).
fn print_summary(metrics: &Metrics) {
    let table = metrics::summary::table(&metrics.edges());
    if !table.is_empty() {
        eprint!("{table}");
    }
}

fn log_losses(stats: &Stats) {
    use agent_common::counter;
    let k = |i: u32| stats.kernel[i as usize].load(std::sync::atomic::Ordering::Relaxed);
    let lost = k(counter::LOST_RINGBUF_FULL)
        + k(counter::LOST_INFLIGHT_FULL)
        + k(counter::LOST_FD_LOOKUP)
        + k(counter::LOST_SYSCALL_ARGS)
        + k(counter::LOST_OTHER_CALL);
    if lost > 0 {
        warn!(
            lost,
            "kernel events lost so far (see /metrics or the counters on exit)"
        );
    }
    debug!(snap = ?stats.snapshot(), "counters");
}

/// The process loop's periodic work, on `timer::Timer`s rather than tokio's (see `timer`).
struct Timers {
    /// Housekeeping, every second; the sweep and the loss report every so many seconds.
    second: Timer,
    /// A batch of exported spans that is not full yet leaves every `OTEL_BSP_SCHEDULE_DELAY`
    /// (armed only when spans are exported).
    flush: Timer,
    /// Frequent enough that a SERVER span waiting for its client is not held long. It only runs
    /// while the linker waits on time: an idle agent is not woken ten times a second for
    /// nothing.
    link: Timer,
}

/// How often the linker looks at SERVER requests waiting for their client.
const LINK_TICK: Duration = Duration::from_millis(100);
/// Connections idle for longer than `IDLE` are looked for every this many seconds.
const SWEEP_SECONDS: u64 = 10;
/// Kernel losses so far are logged every this many seconds.
const REPORT_SECONDS: u64 = 30;

impl Timers {
    fn new(flush_every: Option<Duration>) -> Result<Self> {
        let mut second = Timer::new("housekeeping")?;
        second.every(Duration::from_secs(1));
        let mut flush = Timer::new("export batch delay")?;
        if let Some(every) = flush_every {
            flush.every(every);
        }
        Ok(Timers {
            second,
            flush,
            link: Timer::new("linker")?,
        })
    }
}

/// The stages the process loop drives.
struct Stages {
    tracker: Tracker,
    processes: Processes,
    linker: Linker,
    /// The kernel's connection cache, told which connections to stop shipping.
    conns: loader::Conns,
    /// Probes TLS libraries as processes load them.
    tls: tls::Attacher,
    observers: Observers,
    /// The kernel programs' counters, read into `Stats` every second and once more at the end.
    counters: PerCpuArray<MapData, agent_common::Counters>,
}

/// What sees every span, sampled or not: the metrics, and the web view's recent traces.
struct Observers {
    metrics: Arc<Metrics>,
    recent: Option<Arc<ui::Recent>>,
}

impl Observers {
    /// `now` is read once per batch of spans, not per span.
    fn observe(&self, span: &Span, now: Instant) {
        self.metrics.observe(span, now);
        if let Some(r) = &self.recent {
            r.observe(span);
        }
    }
}

/// What the process loop carries from one record to the next.
struct Work {
    table: ConnTable,
    /// Completed by the record being handled; linked before the next record is handled.
    records: Vec<ConnRecord>,
    /// Made and not yet queued for export.
    spans: Vec<Span>,
    /// Processes that exited, forgotten once their last spans are made.
    exited: Vec<u32>,
}

impl Work {
    /// Handles one record from the kernel, while it is still in the ring buffer.
    fn event(&mut self, ev: Event<'_>, st: &mut Stages, stats: &Stats) {
        match ev {
            Event::Socket(ev) => self.table.handle(&ev, stats, &mut self.records),
            Event::Process(ev) => {
                if let Some(pid) = on_process(&ev, st, &mut self.table, stats, &mut self.records) {
                    self.exited.push(pid);
                }
            }
        }
        // In event order, so that a span is named by the program that served it.
        self.link(st, stats);
    }

    fn link(&mut self, st: &mut Stages, stats: &Stats) {
        for rec in self.records.drain(..) {
            st.linker
                .record(rec, &mut st.processes, stats, &mut self.spans);
        }
    }
}

/// Capture, selection, connection tracking, parsing, linking and span making, on one task: a
/// record is parsed where the kernel wrote it.
async fn process_loop(
    mut capture: Capture,
    mut timers: Timers,
    mut stop: watch::Receiver<bool>,
    mut outlet: Outlet,
    mut st: Stages,
    stats: Arc<Stats>,
) {
    let mut work = Work {
        table: ConnTable::new(Limits::default()),
        records: Vec::new(),
        spans: Vec::new(),
        exited: Vec::new(),
    };
    let mut seconds = 0u64;
    loop {
        let waiting = st.linker.waiting();
        if waiting != timers.link.armed() {
            if waiting {
                timers.link.every(LINK_TICK);
            } else {
                timers.link.disarm();
            }
        }
        let flushing = timers.flush.armed();
        st.linker.refresh_clock();
        tokio::select! {
            read = capture.next_batch(BATCH, &stats, |ev| work.event(ev, &mut st, &stats)) => {
                if let Err(err) = read {
                    // The ring buffer's fd left the reactor: nothing more can be read.
                    warn!(%err, "reading the ring buffer failed; stopping");
                    break;
                }
            }
            () = timers.link.expired(), if waiting => {
                st.linker.tick(clock::monotonic_ns(), &mut st.processes, &stats, &mut work.spans);
            }
            () = timers.second.expired() => {
                seconds += 1;
                housekeeping(&mut st, &mut work, &capture, &outlet, &stats);
                if seconds.is_multiple_of(SWEEP_SECONDS) {
                    let cutoff = clock::monotonic_ns().saturating_sub(IDLE.as_nanos() as u64);
                    let gone = work.table.expire(cutoff, process::alive, &stats, &mut work.records);
                    work.exited.extend(gone);
                }
                if seconds.is_multiple_of(REPORT_SECONDS) {
                    log_losses(&stats);
                }
            }
            () = timers.flush.expired(), if flushing => outlet.flush(&stats),
            _ = stop.changed() => break,
        }
        work.link(&mut st, &stats);
        emit(&mut work.spans, &mut outlet, &stats, &st.observers);
        for (key, bits) in work.table.take_ignored() {
            st.conns.ignore(key.tgid, key.fd, key.sock, bits);
        }
        // Forgotten only now that their last spans are made.
        for pid in work.exited.drain(..) {
            st.linker.forget_process(pid);
            st.processes.forget(pid);
        }
    }
    // The programs are detached: what is left in the ring buffer is the last of it.
    st.linker.refresh_clock();
    capture.drain_all(&stats, |ev| work.event(ev, &mut st, &stats));
    work.table.close_all(&stats, &mut work.records);
    work.link(&mut st, &stats);
    st.linker.flush(&mut st.processes, &stats, &mut work.spans);
    observe(&work.spans, &stats, &st.observers);
    outlet.close(work.spans, &stats).await;
    // After the drain, so the totals are final (the counter map outlives the programs).
    read_kernel_counters(&st.counters, &stats);
}

/// Once a second: old CLIENT requests forgotten, the service graph's halves that waited too
/// long for their pair counted, and the gauges and kernel counters read. A second or so late is
/// soon enough for all of it: a scan of each table ten times a second cost 5% of the agent's
/// CPU beside a Python service calling untraced peers.
fn housekeeping(
    st: &mut Stages,
    work: &mut Work,
    capture: &Capture,
    outlet: &Outlet,
    stats: &Stats,
) {
    st.linker.tick(
        clock::monotonic_ns(),
        &mut st.processes,
        stats,
        &mut work.spans,
    );
    st.observers.metrics.tick(Instant::now());
    stats.set(
        &stats.gauges.ring_buffer_queued_bytes,
        capture.queued_bytes(),
    );
    stats.set(&stats.gauges.connections, work.table.len() as u64);
    stats.set(&stats.gauges.requests_in_flight, st.linker.tracked() as u64);
    stats.set(
        &stats.gauges.processes_traced,
        st.tracker.traced().count() as u64,
    );
    stats.set(&stats.gauges.spans_queue_depth, outlet.queued());
    read_kernel_counters(&st.counters, stats);
}

/// The kernel programs' counters, summed over CPUs, into `stats` (for `/metrics` and the exit
/// log).
fn read_kernel_counters(map: &PerCpuArray<MapData, agent_common::Counters>, stats: &Stats) {
    match loader::sum_counters(map) {
        Ok(k) => stats.set_kernel(&k),
        Err(err) => debug!(%err, "reading the kernel counters failed"),
    }
}

/// A process forked, exec'd, exited or was selected by port. Returns the pid of a process that
/// exited, to forget once its last spans are made.
fn on_process(
    ev: &ProcessEvent,
    st: &mut Stages,
    table: &mut ConnTable,
    stats: &Stats,
    records: &mut Vec<ConnRecord>,
) -> Option<u32> {
    match ev.change {
        capture::ProcessChange::Exec => {
            // A new program: a new identity (the connections it kept stay) and new libraries.
            st.processes.forget(ev.tgid);
            st.tls.forget(ev.tgid);
        }
        capture::ProcessChange::MappedExec => st.tls.scan(ev.tgid),
        capture::ProcessChange::Fork { parent } => st.processes.inherit(ev.tgid, parent),
        _ => {}
    }
    let change = st.tracker.on_event(ev);
    let traced = st.tracker.is_traced(ev.tgid);
    if traced && !matches!(ev.change, capture::ProcessChange::Exit) {
        // Its identity is read now, named by the record's `comm` if it is already gone.
        st.processes.get_named(ev.tgid, ev.comm());
    }
    if matches!(ev.change, capture::ProcessChange::Exec) && traced {
        // Still traced: its new executable may link a TLS library in.
        st.tls.scan(ev.tgid);
    }
    let change = change?;
    on_change(&change, &mut st.processes, &st.tls);
    match change {
        Change::Exited(pid) => {
            // Its sockets closed without a close call: end its connections now.
            table.drop_process(pid, stats, records);
            Some(pid)
        }
        _ => None,
    }
}

/// Counts and measures spans, sampled or not.
fn observe(spans: &[Span], stats: &Stats, observers: &Observers) {
    let now = Instant::now();
    for span in spans {
        stats.inc(&stats.spans_created);
        observers.observe(span, now);
        if !span.sampled {
            stats.inc(&stats.spans_unsampled);
        }
    }
}

/// Measures the spans, then queues the sampled ones for export and empties `spans` (a full
/// queue drops and counts them rather than stall event processing).
fn emit(spans: &mut Vec<Span>, outlet: &mut Outlet, stats: &Stats, observers: &Observers) {
    observe(spans, stats, observers);
    outlet.push(spans, stats);
}

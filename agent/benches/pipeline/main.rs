//! The agent's userspace work per request, without the kernel, the network or other processes:
//! the records of a workload ([`workload`]: nginx's side of `wrk -c50` by default, or a service
//! calling HTTP and Redis with `PIPELINE_WORKLOAD=service`) go through the same code as in the
//! agent, stage by stage:
//!
//! 1. `decode + conn + http1`: a ring-buffer record decoded, its connection found, its bytes
//!    reassembled and parsed into requests and responses;
//! 2. `+ trace`: the exchange placed in its trace and made a span (names, attributes);
//! 3. `+ metrics`: the span measured (RED histograms, the service graph);
//! 4. `+ export`: the span encoded in an OTLP request, 512 to a batch (the bytes are not sent).
//!
//! The end-to-end benchmark (`cargo xtask bench`) measures the agent's CPU per request with
//! the machine's noise in it; this one gives the same work a stable figure, so that a change to
//! the userspace path is measured in nanoseconds per request. It leaves out what needs the
//! kernel or a collector: reading the ring buffer, the OTLP metrics export (the per-process
//! shares it reads are filled in the metrics stage), and the export's socket writes. Run with `cargo bench -p agent --bench pipeline` (or through `cargo xtask
//! bench`, which prints it with the rest).

use std::{hint::black_box, time::Instant};

use agent::{
    capture::{self, Event},
    clock,
    conn::{ConnRecord, ConnTable, Limits},
    export::batch::Batcher,
    metrics::{DEFAULT_SERIES_LIMIT, Metrics},
    process::Processes,
    stats::Stats,
    trace::{Linker, Span, sampler::Sampler},
};

mod workload;

use workload::Workload;

/// The agent's allocator: allocation is a good part of the cost measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs per stage, the stages taking turns; the fastest run of each is printed. Other tenants
/// of a virtual machine only ever make a run slower, so the fastest is the figure that repeats.
/// `PIPELINE_RUNS` overrides it: one run is what an instruction count needs (below).
const RUNS: usize = 11;
/// Spans per OTLP request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`'s default).
const BATCH: usize = 512;

/// How far down the pipeline a run goes.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Stage {
    Parse,
    Trace,
    Metrics,
    Export,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Parse, Stage::Trace, Stage::Metrics, Stage::Export];

    fn name(self) -> &'static str {
        match self {
            Stage::Parse => "decode + conn + http1",
            Stage::Trace => "+ trace (link, span)",
            Stage::Metrics => "+ metrics",
            Stage::Export => "+ export (OTLP encoding)",
        }
    }
}

/// Runs the records down to `stage`; returns nanoseconds per request and the spans made. Never
/// inlined, so that a profiler can count this function alone.
#[inline(never)]
fn run(stage: Stage, records: &[Vec<u8>], requests: u32) -> (f64, u64) {
    let stats = Stats::default();
    let mut table = ConnTable::new(Limits::default());
    let mut linker = Linker::new(Sampler::from_env());
    let mut processes = Processes::new(64);
    let metrics = Metrics::new(DEFAULT_SERIES_LIMIT, true);
    let mut batcher = Batcher::new(BATCH, 5, 64);
    let mut recs: Vec<ConnRecord> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut made = 0u64;
    let began = Instant::now();
    let mut now = began;
    for bytes in records {
        match capture::decode(bytes) {
            Ok(Event::Socket(ev)) => table.handle(&ev, &stats, &mut recs),
            Ok(Event::Process(_)) => {}
            Err(err) => panic!("a record of the benchmark does not decode: {err}"),
        }
        if stage == Stage::Parse {
            black_box(&recs);
            recs.clear();
            continue;
        }
        for rec in recs.drain(..) {
            linker.record(rec, &mut processes, &stats, &mut spans);
        }
        // As the agent's loop does: spans are read where they are, then dropped in place.
        for span in spans.iter_mut() {
            made += 1;
            if made.is_multiple_of(BATCH as u64) {
                // The agent reads its clocks once per batch of records.
                linker.refresh_clock();
                now = Instant::now();
            }
            if stage >= Stage::Metrics {
                metrics.observe(span, now);
            }
            if stage == Stage::Export {
                black_box(batcher.push(span));
            } else {
                black_box(&*span);
            }
        }
        spans.clear();
    }
    black_box(batcher.take());
    let ns = began.elapsed().as_nanos() as f64 / f64::from(requests);
    (ns, made)
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments (a filter) are not used.
    let runs = match std::env::var("PIPELINE_RUNS") {
        Ok(n) => n.parse().expect("PIPELINE_RUNS is a number of runs"),
        Err(_) => RUNS,
    };
    let workload = Workload::from_env();
    let requests = workload.requests();
    println!(
        "userspace pipeline, {}, {requests} requests a run, fastest of {runs} runs",
        workload.describe()
    );
    let mut best = [f64::INFINITY; Stage::ALL.len()];
    for _ in 0..runs {
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let recs = workload.records(clock::monotonic_ns());
            let (ns, made) = run(stage, &recs, requests);
            if stage > Stage::Parse {
                assert_eq!(
                    made,
                    u64::from(requests) * workload.spans_per_request(),
                    "every request must make its spans"
                );
            }
            best[i] = best[i].min(ns);
        }
    }
    println!("| stage | ns/request | step |");
    println!("|---|---:|---:|");
    let mut previous = 0.0;
    for (stage, ns) in Stage::ALL.into_iter().zip(best) {
        println!("| {} | {ns:.0} | {:+.0} |", stage.name(), ns - previous);
        previous = ns;
    }
}

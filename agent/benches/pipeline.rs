//! The agent's userspace work per request, without the kernel, the network or other processes:
//! the records nginx's side of `wrk -c50` produces (a request read, a response written, on 50
//! keep-alive connections) go through the same code as in the agent, stage by stage:
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
//! kernel or a collector: reading the ring buffer, OTLP metric instruments, and the export's
//! socket writes. Run with `cargo bench -p agent --bench pipeline` (or through `cargo xtask
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
use agent_common::{
    AF_INET, ConnInfo, DIR_EGRESS, DIR_INGRESS, EVENT_DATA, EVENT_OPEN, EventHeader, ROLE_SERVER,
    syscall,
};

/// The agent's allocator: allocation is a good part of the cost measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep-alive connections, as `wrk -c50`.
const CONNECTIONS: u32 = 50;
/// Requests per measured run.
const REQUESTS: u32 = 50_000;
/// Runs per stage, the stages taking turns; the fastest run of each is printed. Other tenants
/// of a virtual machine only ever make a run slower, so the fastest is the figure that repeats.
/// `PIPELINE_RUNS` overrides it: one run is what an instruction count needs (below).
const RUNS: usize = 11;
/// Spans per OTLP request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`'s default).
const BATCH: usize = 512;
/// Kernel time between two requests (40 000 requests a second).
const GAP_NS: u64 = 25_000;

/// What `wrk` sends.
const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";
/// What nginx answers (its headers for a 3-byte static file).
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Mon, 30 Nov 2026 16:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\
Last-Modified: Mon, 30 Nov 2026 15:00:00 GMT\r\nConnection: keep-alive\r\n\
ETag: \"6925e9e0-3\"\r\nAccept-Ranges: bytes\r\n\r\nok\n";

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

/// One ring-buffer record of process `tgid`, laid out as the kernel writes it.
fn record(
    tgid: u32,
    kind: u32,
    fd: i32,
    direction: u8,
    sc: u8,
    at: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let header = EventHeader {
        kind,
        captured: payload.len() as u32,
        tgid,
        tid: tgid,
        fd,
        direction,
        syscall: sc,
        enter_ns: at,
        exit_ns: at + 2_000,
        len: payload.len() as u64,
        conn: ConnInfo {
            file: 0xffff_0000 + fd as u64,
            sock: 0xffff_8000_0000 + fd as u64,
            laddr: addr,
            raddr: addr,
            lport: 18080,
            rport: 40_000 + fd as u16,
            family: AF_INET,
            role: ROLE_SERVER,
            is_tcp: 1,
            ..ConnInfo::default()
        },
        ..EventHeader::default()
    };
    // SAFETY: `EventHeader` is `#[repr(C)]` plain data with explicit padding (agent-common
    // asserts its size); these are exactly the bytes the kernel copies into the ring buffer.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&header as *const EventHeader).cast::<u8>(),
            size_of::<EventHeader>(),
        )
    };
    let mut out = bytes.to_vec();
    out.extend_from_slice(payload);
    out
}

/// The records of one run: each connection opened, then `REQUESTS` exchanges round-robin.
fn records(start_ns: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * REQUESTS as usize + CONNECTIONS as usize);
    let fd = |i: u32| 10 + (i % CONNECTIONS) as i32;
    let tgid = std::process::id();
    for i in 0..CONNECTIONS {
        out.push(record(
            tgid,
            EVENT_OPEN,
            fd(i),
            0,
            syscall::ACCEPT,
            start_ns,
            &[],
        ));
    }
    for i in 0..REQUESTS {
        let at = start_ns + u64::from(i + 1) * GAP_NS;
        out.push(record(
            tgid,
            EVENT_DATA,
            fd(i),
            DIR_INGRESS,
            syscall::RECVFROM,
            at,
            REQUEST,
        ));
        out.push(record(
            tgid,
            EVENT_DATA,
            fd(i),
            DIR_EGRESS,
            syscall::WRITEV,
            at + 10_000,
            RESPONSE,
        ));
    }
    out
}

/// Runs the records down to `stage`; returns nanoseconds per request and the spans made. Never
/// inlined, so that a profiler can count this function alone.
#[inline(never)]
fn run(stage: Stage, records: &[Vec<u8>]) -> (f64, u64) {
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
    let ns = began.elapsed().as_nanos() as f64 / f64::from(REQUESTS);
    (ns, made)
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments (a filter) are not used.
    let runs = match std::env::var("PIPELINE_RUNS") {
        Ok(n) => n.parse().expect("PIPELINE_RUNS is a number of runs"),
        Err(_) => RUNS,
    };
    println!(
        "userspace pipeline, nginx-like HTTP/1.1 exchanges on {CONNECTIONS} connections, \
         {REQUESTS} requests a run, fastest of {runs} runs"
    );
    let mut best = [f64::INFINITY; Stage::ALL.len()];
    for _ in 0..runs {
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let recs = records(clock::monotonic_ns());
            let (ns, made) = run(stage, &recs);
            if stage > Stage::Parse {
                assert_eq!(made, u64::from(REQUESTS), "every request must make a span");
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

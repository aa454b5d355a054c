//! Drains the kernel's ring buffer into typed [`Event`]s (socket traffic, process lifecycle) on
//! a bounded channel.
//!
//! The ring buffer's fd is registered with tokio (`AsyncFd`), so the task sleeps until the kernel
//! has records. Records that do not decode are counted, never trusted. When the channel is full
//! the task waits, and the kernel counts what no longer fits in the ring buffer: loss is always
//! counted in one place or the other.

use std::{sync::Arc, time::Duration};

use agent_common::{
    ConnInfo, DIR_EGRESS, DIR_INGRESS, EVENT_CLOSE, EVENT_DATA, EVENT_OPEN, EVENT_PROC,
    EventHeader, MAX_PAYLOAD, PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_MMAP_EXEC, PROC_PORT,
    ProcEvent, SOURCE_TLS,
};
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::stats::Stats;

/// Which way bytes went, seen from the traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received by the process.
    Ingress,
    /// Sent by the process.
    Egress,
}

/// What happened on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes moved; `payload` holds the first of them.
    Data { direction: Direction },
    /// The connection was accepted or connected.
    Open,
    /// The process closed the socket.
    Close,
}

/// One decoded record from the kernel.
#[derive(Debug, Clone)]
pub struct SocketEvent {
    pub kind: EventKind,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Monotonic time the syscall started.
    pub enter_ns: u64,
    /// Monotonic time the syscall returned.
    pub exit_ns: u64,
    /// Bytes moved by the syscall (payload may hold fewer).
    pub len: u64,
    pub conn: ConnInfo,
    /// Plaintext from the TLS probes rather than bytes of a socket syscall.
    pub tls: bool,
    pub payload: Vec<u8>,
}

/// What happened to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessChange {
    /// A traced process forked `tgid` (already traced by the kernel).
    Fork { parent: u32 },
    /// `tgid` runs a new program.
    Exec,
    /// `tgid` exited (the kernel no longer traces it).
    Exit,
    /// `tgid` accepted or connected on a selected port (the kernel traces it now).
    Port(u16),
    /// `tgid` mapped a file executable (a library was loaded).
    MappedExec,
}

/// One process record from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEvent {
    pub tgid: u32,
    pub change: ProcessChange,
    pub time_ns: u64,
    /// The process's cgroup v2 id, as the kernel sees it.
    pub cgroup_id: u64,
}

/// Any record from the kernel.
#[derive(Debug, Clone)]
pub enum Event {
    Socket(SocketEvent),
    Process(ProcessEvent),
}

/// Why a record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("record claims {claimed} payload bytes but carries {present}")]
    PayloadLength { claimed: usize, present: usize },
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("unknown direction {0}")]
    Direction(u8),
    #[error("unknown process change {0}")]
    ProcessChange(u32),
}

const HEADER: usize = std::mem::size_of::<EventHeader>();
const PROC: usize = std::mem::size_of::<ProcEvent>();

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let kind = record
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(DecodeError::Short(record.len()))?;
    if kind == EVENT_PROC {
        return decode_process(record).map(Event::Process);
    }
    decode_socket(record).map(Event::Socket)
}

fn decode_process(record: &[u8]) -> Result<ProcessEvent, DecodeError> {
    if record.len() < PROC {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: length checked; ProcEvent is Pod (any bit pattern valid); unaligned read.
    let p: ProcEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let change = match p.what {
        PROC_FORK => ProcessChange::Fork { parent: p.ppid },
        PROC_EXEC => ProcessChange::Exec,
        PROC_EXIT => ProcessChange::Exit,
        PROC_PORT => ProcessChange::Port(p.port),
        PROC_MMAP_EXEC => ProcessChange::MappedExec,
        other => return Err(DecodeError::ProcessChange(other)),
    };
    Ok(ProcessEvent {
        tgid: p.tgid,
        change,
        time_ns: p.time_ns,
        cgroup_id: p.cgroup_id,
    })
}

fn decode_socket(record: &[u8]) -> Result<SocketEvent, DecodeError> {
    if record.len() < HEADER {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: length checked; EventHeader is Pod (any bit pattern valid); unaligned read.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let present = record.len() - HEADER;
    let claimed = h.captured as usize;
    if claimed > present || claimed > MAX_PAYLOAD {
        return Err(DecodeError::PayloadLength { claimed, present });
    }
    let kind = match h.kind {
        EVENT_DATA => EventKind::Data {
            direction: match h.direction {
                DIR_INGRESS => Direction::Ingress,
                DIR_EGRESS => Direction::Egress,
                other => return Err(DecodeError::Direction(other)),
            },
        },
        EVENT_OPEN => EventKind::Open,
        EVENT_CLOSE => EventKind::Close,
        other => return Err(DecodeError::Kind(other)),
    };
    Ok(SocketEvent {
        kind,
        tgid: h.tgid,
        tid: h.tid,
        fd: h.fd,
        enter_ns: h.enter_ns,
        exit_ns: h.exit_ns,
        len: h.len,
        conn: h.conn,
        tls: h.source == SOURCE_TLS,
        payload: record[HEADER..HEADER + claimed].to_vec(),
    })
}

/// Reads every record currently in the ring buffer.
fn drain(ring: &mut RingBuf<MapData>, stats: &Stats, out: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(ev) => out.push(ev),
            Err(err) => {
                stats.inc(&stats.events_malformed);
                tracing::debug!(%err, "malformed record from the kernel");
            }
        }
    }
}

/// How often the ring buffer is drained when the kernel has not woken the reader. The kernel
/// wakes it for the first record after 50 ms without a wake-up and once 64 KiB are queued
/// (`maps::wakeup_flags`), so this only picks up the last records of a burst: the most such a
/// record waits. Slow, so that an idle agent stays asleep.
pub const DRAIN_BACKSTOP: Duration = Duration::from_millis(200);

/// Runs until `stop` fires, then drains what is left (the programs are detached by then) and
/// returns, closing the channel.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| {
            anyhow::anyhow!(
                "registering the ring buffer with tokio: {}",
                e.into_parts().1
            )
        })?;
    let mut batch = Vec::with_capacity(256);
    let mut tick = tokio::time::interval(DRAIN_BACKSTOP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &stats, &mut batch);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &stats, &mut batch),
            _ = stop.changed() => {
                drain(fd.get_mut(), &stats, &mut batch);
                forward(&tx, &stats, &mut batch).await;
                return Ok(());
            }
        }
        forward(&tx, &stats, &mut batch).await;
    }
}

async fn forward(tx: &mpsc::Sender<Event>, stats: &Stats, batch: &mut Vec<Event>) {
    for ev in batch.drain(..) {
        stats.inc(&stats.events_received);
        if tx.send(ev).await.is_err() {
            stats.inc(&stats.events_dropped_shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(h: EventHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: EventHeader is Pod.
        let bytes =
            unsafe { std::slice::from_raw_parts((&h as *const EventHeader).cast::<u8>(), HEADER) };
        let mut v = bytes.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_data_record() {
        let h = EventHeader {
            kind: EVENT_DATA,
            captured: 3,
            tgid: 7,
            direction: DIR_INGRESS,
            len: 10,
            ..Default::default()
        };
        let Event::Socket(ev) = decode(&record(h, b"abc")).unwrap() else {
            panic!("a socket event");
        };
        assert_eq!(ev.payload, b"abc");
        assert_eq!(ev.len, 10);
        assert_eq!(
            ev.kind,
            EventKind::Data {
                direction: Direction::Ingress
            }
        );
    }

    #[test]
    fn decodes_process_records() {
        let p = ProcEvent {
            kind: EVENT_PROC,
            what: PROC_PORT,
            tgid: 77,
            port: 8080,
            ..Default::default()
        };
        // SAFETY: ProcEvent is Pod.
        let bytes =
            unsafe { std::slice::from_raw_parts((&p as *const ProcEvent).cast::<u8>(), PROC) };
        let Event::Process(ev) = decode(bytes).unwrap() else {
            panic!("a process event");
        };
        assert_eq!(ev.tgid, 77);
        assert_eq!(ev.change, ProcessChange::Port(8080));
        assert_eq!(decode(&bytes[..10]).unwrap_err(), DecodeError::Short(10));
        let mut bad = bytes.to_vec();
        bad[4] = 99;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::ProcessChange(99));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 3]).unwrap_err(), DecodeError::Short(3));
        assert_eq!(decode(&[0u8; 5]).unwrap_err(), DecodeError::Short(5));
        let h = EventHeader {
            kind: EVENT_DATA,
            captured: 9,
            direction: DIR_EGRESS,
            ..Default::default()
        };
        assert!(matches!(
            decode(&record(h, b"abc")),
            Err(DecodeError::PayloadLength { .. })
        ));
        let h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(decode(&record(h, b"")).unwrap_err(), DecodeError::Kind(99));
        let h = EventHeader {
            kind: EVENT_DATA,
            direction: 7,
            ..Default::default()
        };
        assert_eq!(
            decode(&record(h, b"")).unwrap_err(),
            DecodeError::Direction(7)
        );
    }
}

//! Reads the kernel's ring buffer as typed [`Event`]s (socket traffic, process lifecycle).
//!
//! The ring buffer's fd is registered with tokio (`AsyncFd`), so the reading task sleeps until
//! the kernel has records. Each record is decoded in place and handed to the caller while it is
//! still in the ring buffer; records that do not decode are counted, never trusted. The ring
//! buffer is the only queue between the kernel and the parsers: when the reader falls behind,
//! the kernel counts what no longer fits, so loss is always counted.

use std::{os::fd::AsRawFd, time::Duration};

use agent_common::{
    ConnInfo, DIR_EGRESS, DIR_INGRESS, EVENT_CLOSE, EVENT_DATA, EVENT_OPEN, EVENT_PROC,
    EventHeader, MAX_PAYLOAD, PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_MMAP_EXEC, PROC_PORT,
    ProcEvent, SOURCE_TLS,
};
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{stats::Stats, timer::Timer};

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

/// One decoded record from the kernel, borrowing its payload from the ring buffer.
#[derive(Debug, Clone)]
pub struct SocketEvent<'a> {
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
    pub payload: &'a [u8],
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
    /// The process's `comm` when it happened, NUL-padded.
    pub comm: [u8; agent_common::TASK_COMM_LEN],
}

impl ProcessEvent {
    /// The process's `comm`: its name even once it has exited. Empty when the kernel could not
    /// read it or it is not UTF-8.
    pub fn comm(&self) -> &str {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..end]).unwrap_or_default()
    }
}

/// Any record from the kernel.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    Socket(SocketEvent<'a>),
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
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
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
        comm: p.comm,
    })
}

fn decode_socket(record: &[u8]) -> Result<SocketEvent<'_>, DecodeError> {
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
        payload: &record[HEADER..HEADER + claimed],
    })
}

/// The kernel's ring buffer, registered with tokio, and a view of how much of it is queued.
///
/// Records are handed to the caller in place, borrowed from the ring buffer's pages: no copy of
/// the payload and no hop through a channel between reading a record and parsing it. Processing
/// runs on the task that reads, so a slow consumer leaves records in the ring buffer, where the
/// kernel counts any that no longer fit.
pub struct Capture {
    fd: AsyncFd<RingBuf<MapData>>,
    depth: Option<depth::Depth>,
    backstop: Backstop,
}

impl Capture {
    /// Reads `ring`, whose programs wake the reader with the ride-along window `wakeup_window`
    /// (`loader::LoadOptions`).
    pub fn new(ring: RingBuf<MapData>, wakeup_window: Duration) -> Result<Self> {
        let depth = depth::Depth::map(&ring)
            .map_err(|err| tracing::debug!(%err, "ring-buffer depth unavailable"))
            .ok();
        let fd = register(ring, "the ring buffer")?;
        Ok(Self {
            fd,
            depth,
            backstop: Backstop::new(wakeup_window + BACKSTOP_MARGIN)?,
        })
    }

    /// Waits until the kernel wakes the reader (or the backstop is due: see [`Backstop`]), then
    /// hands up to `max` records to `each`, in the kernel's order. Returns how many it handed.
    pub async fn next_batch(
        &mut self,
        max: usize,
        stats: &Stats,
        each: impl FnMut(Event<'_>),
    ) -> Result<usize> {
        let backstop = &mut self.backstop;
        let armed = backstop.timer.armed();
        tokio::select! {
            guard = self.fd.readable_mut() => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), max, stats, each);
                if n < max {
                    // Empty: sleep until the kernel's next wake-up, or the backstop's look. A
                    // full batch leaves the readiness set, so the next call reads on at once
                    // (and sets the backstop once the ring is empty).
                    guard.clear_ready();
                    backstop.arm();
                }
                Ok(n)
            }
            () = backstop.timer.expired(), if armed => {
                let n = drain(self.fd.get_mut(), max, stats, each);
                if n > 0 {
                    backstop.arm();
                }
                Ok(n)
            }
        }
    }

    /// Hands every record still queued to `each` (at shutdown, once the programs are detached).
    pub fn drain_all(&mut self, stats: &Stats, each: impl FnMut(Event<'_>)) -> usize {
        drain(self.fd.get_mut(), usize::MAX, stats, each)
    }

    /// Bytes written by the kernel and not yet read.
    pub fn queued_bytes(&self) -> u64 {
        self.depth.as_ref().map_or(0, depth::Depth::queued)
    }
}

/// Decodes up to `max` records, in order; malformed ones are counted and skipped.
fn drain(
    ring: &mut RingBuf<MapData>,
    max: usize,
    stats: &Stats,
    mut each: impl FnMut(Event<'_>),
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        n += 1;
        match decode(&item) {
            Ok(ev) => {
                stats.inc(&stats.events_received);
                each(ev);
            }
            Err(err) => {
                stats.inc(&stats.events_malformed);
                tracing::debug!(%err, "malformed record from the kernel");
            }
        }
    }
    n
}

/// The one look at the ring buffer that follows each drain, for the records the kernel queued
/// without waking the reader. The kernel wakes it for the first record sent a ride-along window
/// (`Settings::wakeup_window_ns`) or more after its last wake-up (and once
/// `Settings::wakeup_bytes` are queued: `maps::wakeup_flags`); the records within that window
/// ride along unannounced. A look a little later than the window, after each drain, finds the
/// last of them; any record sent after it wakes the reader itself. So the timer only runs while
/// traffic flows: an idle agent is never woken by it (a periodic timer cost an idle agent a
/// wake-up every 200 ms), and the most a record waits is the window and `BACKSTOP_MARGIN`.
///
/// The timer is a `timer::Timer` (a `timerfd`), set again by each drain. With steady traffic the
/// kernel wakes the reader a little before each deadline, so the timer should never fire; a
/// tokio timer did wake the runtime each time (see `timer`), which doubled the agent's wake-ups
/// beside a Python service at 200 requests/s.
struct Backstop {
    timer: Timer,
    /// How long after a drain it looks again: past the kernel's ride-along window.
    after: Duration,
}

/// Registers `owner`'s fd with tokio's reactor, for reading.
pub(crate) fn register<T: AsRawFd>(owner: T, what: &str) -> Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd takes `owner`, whose fd stays open and unchanged until the AsyncFd is
    // dropped (every caller passes the value that owns the fd).
    unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering {what} with tokio: {}", e.into_parts().1))
}

/// How much later than the kernel's ride-along window the backstop looks, after a drain.
const BACKSTOP_MARGIN: Duration = Duration::from_millis(10);

impl Backstop {
    /// A disarmed backstop that looks `after` each drain; it needs the tokio runtime (its fd
    /// joins the reactor).
    fn new(after: Duration) -> Result<Self> {
        Ok(Backstop {
            timer: Timer::new("ring buffer's backstop")?,
            after,
        })
    }

    /// Looks again `after` from now (a drain just ran: records may ride along after it).
    fn arm(&mut self) {
        self.timer.once(self.after);
    }
}

mod depth {
    //! The ring buffer's queued bytes, read from its position pages: the consumer position is
    //! the first page of the map's memory, the producer position the second. Both are mapped
    //! again here, read-only, beside the mapping the reader uses.

    use std::{num::NonZeroUsize, os::fd::AsFd, ptr::NonNull, sync::atomic::AtomicU64};

    use aya::maps::{MapData, RingBuf};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

    pub struct Depth {
        consumer: NonNull<std::ffi::c_void>,
        producer: NonNull<std::ffi::c_void>,
        page: NonZeroUsize,
    }

    // SAFETY: the pages are read with atomic loads only, from any thread.
    unsafe impl Send for Depth {}
    unsafe impl Sync for Depth {}

    impl Depth {
        pub fn map(ring: &RingBuf<MapData>) -> nix::Result<Self> {
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .and_then(|p| NonZeroUsize::new(p as usize))
                .ok_or(nix::errno::Errno::EINVAL)?;
            let fd = ring.as_fd();
            let map_page = |offset: i64| {
                // SAFETY: a fresh read-only shared mapping of one of the map's own pages;
                // nothing aliases it mutably from this process.
                unsafe {
                    mmap(
                        None,
                        page,
                        ProtFlags::PROT_READ,
                        MapFlags::MAP_SHARED,
                        fd,
                        offset,
                    )
                }
            };
            let consumer = map_page(0)?;
            // The producer page follows the consumer page.
            match map_page(page.get() as i64) {
                Ok(producer) => Ok(Self {
                    consumer,
                    producer,
                    page,
                }),
                Err(err) => {
                    // SAFETY: mapped above, not used elsewhere.
                    let _ = unsafe { munmap(consumer, page.get()) };
                    Err(err)
                }
            }
        }

        pub fn queued(&self) -> u64 {
            let load = |p: NonNull<std::ffi::c_void>| {
                // SAFETY: each page starts with the kernel's 8-byte-aligned position, written
                // atomically by the kernel (producer) and the reader (consumer).
                unsafe { p.cast::<AtomicU64>().as_ref() }.load(std::sync::atomic::Ordering::Acquire)
            };
            load(self.producer).saturating_sub(load(self.consumer))
        }
    }

    impl Drop for Depth {
        fn drop(&mut self) {
            for p in [self.consumer, self.producer] {
                // SAFETY: mapped in `map`, dropped once.
                let _ = unsafe { munmap(p, self.page.get()) };
            }
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
        let bytes = record(h, b"abc");
        let Event::Socket(ev) = decode(&bytes).unwrap() else {
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
            comm: *b"psql\0\0\0\0\0\0\0\0\0\0\0\0",
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
        assert_eq!(ev.comm(), "psql");
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

//! Building one data record: header plus a bounded copy of the user buffer, straight from a
//! plain buffer or gathered from an iovec array, then one `bpf_ringbuf_output`.

use core::ffi::c_void;

use agent_common::{DataEvent, EVENT_DATA, EventHeader, MAX_IOV, MAX_PAYLOAD, counter};
use aya_ebpf::helpers::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_buf};

use crate::maps::{BufKind, EVENTS, Inflight, SCRATCH, count, setting, wakeup_flags};

const HEADER: usize = core::mem::size_of::<EventHeader>();

/// `struct iovec` as user space lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Copies `want` bytes from user address `src` into the payload at `off`; returns bytes copied.
#[inline(always)]
fn copy_at(ev: &mut DataEvent, off: usize, src: u64, want: u64) -> usize {
    // Bounds the verifier can see: off < MAX (mask), n <= MAX (clamp), off + n < 2 * MAX, the
    // size of the payload area. (Masking n too would turn a full MAX copy into 0.)
    let off = off & (MAX_PAYLOAD - 1);
    let n = if want as usize > MAX_PAYLOAD {
        MAX_PAYLOAD
    } else {
        want as usize
    };
    if n == 0 {
        return 0;
    }
    let Some(dst) = ev.payload.get_mut(off..off + n) else {
        return 0;
    };
    // SAFETY: the helper validates the user address; on failure nothing is trusted.
    match unsafe { bpf_probe_read_user_buf(src as *const u8, dst) } {
        Ok(()) => n,
        Err(_) => {
            count(counter::PAYLOAD_READ_FAILED);
            0
        }
    }
}

/// Smallest of the remaining capture budget and a length.
#[inline(always)]
fn budget(limit: usize, used: usize, len: u64) -> u64 {
    let left = limit.saturating_sub(used) as u64;
    if len < left { len } else { left }
}

/// State of an iovec gather, shared with the `bpf_loop` callback.
#[repr(C)]
struct Gather {
    /// Address of the first iovec the loop looks at.
    iov: u64,
    /// Iovecs from there on.
    iovcnt: u64,
    limit: u64,
    used: u64,
}

/// Iovecs copied before (and without) the `bpf_loop`, their array read in one helper call:
/// the common writers send one to three slices (nginx: head and body), and a loop callback
/// per slice cost a call, a scratch lookup and a read of its 16-byte iovec each.
const FIRST_IOVS: usize = 2;

/// Appends one iovec's bytes at `used`, within the capture budget `limit`. Returns the new fill
/// and whether the gather stops here: a partial iovec ends the contiguous prefix, as later bytes
/// would not follow it.
#[inline(always)]
fn copy_slice(ev: &mut DataEvent, used: usize, limit: usize, v: &Iovec) -> (usize, bool) {
    // `used < limit <= MAX_PAYLOAD` here; the mask makes that visible to the verifier.
    let used = used & (MAX_PAYLOAD - 1);
    let got = copy_at(ev, used, v.base, budget(limit, used, v.len));
    (used + got, (got as u64) < v.len)
}

/// One iovec of a gather (a `bpf_loop` callback: the verifier checks it once, whatever the
/// number of iovecs). Returns 1 to stop.
#[inline(never)]
extern "C" fn gather_one(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Gather` on the caller's stack, alive for the whole loop.
    let g = unsafe { &mut *(ctx as *mut Gather) };
    if i as u64 >= g.iovcnt || g.used >= g.limit {
        return 1;
    }
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch entry, used by this program only until it returns.
    let ev = unsafe { &mut *ev };
    // SAFETY: user memory read through the checked helper.
    let Ok(v) = (unsafe { bpf_probe_read_user((g.iov + (i as u64) * 16) as *const Iovec) }) else {
        count(counter::PAYLOAD_READ_FAILED);
        return 1;
    };
    let (used, cut) = copy_slice(ev, g.used as usize, g.limit as usize, &v);
    g.used = used as u64;
    i64::from(cut)
}

/// Gathers up to `limit` bytes from an iovec array of `iovcnt` entries.
#[inline(always)]
fn copy_iov(ev: &mut DataEvent, iov: u64, iovcnt: u64, limit: usize) -> usize {
    // SAFETY (both reads): user memory read through the checked helper. Only as many entries
    // as the array has are read, so a short array at the end of a mapping does not fail.
    let first = if iovcnt >= FIRST_IOVS as u64 {
        unsafe { bpf_probe_read_user(iov as *const [Iovec; FIRST_IOVS]) }
    } else {
        unsafe { bpf_probe_read_user(iov as *const Iovec) }.map(|v| [v, Iovec { base: 0, len: 0 }])
    };
    let Ok(first) = first else {
        count(counter::PAYLOAD_READ_FAILED);
        return 0;
    };
    let mut used = 0;
    for (i, v) in first.iter().enumerate() {
        if i as u64 >= iovcnt || used >= limit {
            return used;
        }
        let (filled, cut) = copy_slice(ev, used, limit, v);
        used = filled;
        if cut {
            return used.min(MAX_PAYLOAD);
        }
    }
    if iovcnt <= FIRST_IOVS as u64 || used >= limit {
        return used.min(MAX_PAYLOAD);
    }
    let mut g = Gather {
        iov: iov + (FIRST_IOVS as u64) * 16,
        iovcnt: iovcnt - FIRST_IOVS as u64,
        limit: limit as u64,
        used: used as u64,
    };
    // SAFETY: the callback and its context follow the helper's contract.
    unsafe {
        bpf_loop(
            (MAX_IOV - FIRST_IOVS) as u32,
            gather_one as *mut c_void,
            &mut g as *mut Gather as *mut c_void,
            0,
        );
    }
    (g.used as usize).min(MAX_PAYLOAD)
}

/// Sends one data record for a finished syscall that moved `ret` bytes on the connection `conn`.
#[inline(always)]
pub fn emit_data(args: &Inflight, header: EventHeader, ret: u64) {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        count(counter::LOST_NO_SCRATCH);
        return;
    };
    // SAFETY: per-CPU scratch entry, used by this program only until it returns.
    let ev = unsafe { &mut *ev };
    ev.header = header;

    let limit = {
        let configured = setting!(capture_bytes) as usize;
        let cap = if configured > MAX_PAYLOAD || configured == 0 {
            MAX_PAYLOAD
        } else {
            configured
        };
        if (ret as usize) < cap {
            ret as usize
        } else {
            cap
        }
    };
    let captured = match args.kind {
        BufKind::Plain => copy_at(ev, 0, args.buf, limit as u64),
        BufKind::Iov => copy_iov(ev, args.buf, args.count, limit),
        BufKind::Msg => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (user ABI, fixed per arch).
            // SAFETY: user memory read through the checked helper.
            let iov = unsafe { bpf_probe_read_user((args.buf + 16) as *const u64) };
            let iovlen = unsafe { bpf_probe_read_user((args.buf + 24) as *const u64) };
            match (iov, iovlen) {
                (Ok(iov), Ok(iovlen)) => copy_iov(ev, iov, iovlen, limit),
                _ => {
                    count(counter::PAYLOAD_READ_FAILED);
                    0
                }
            }
        }
        BufKind::None => 0,
    };
    if (captured as u64) < ret {
        count(counter::PAYLOAD_TRUNCATED);
    }
    ev.header.captured = captured as u32;
    ev.header.kind = EVENT_DATA;
    send(ev, captured);
}

/// Copies the assembled record (header + `captured` bytes) into the ring buffer.
#[inline(always)]
pub fn send(ev: &DataEvent, captured: usize) {
    let size = HEADER + (captured & (MAX_PAYLOAD * 2 - 1));
    // SAFETY: `size` never exceeds the size of `DataEvent` (masked above).
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const DataEvent as *const u8, size) };
    match EVENTS.output::<[u8]>(bytes, wakeup_flags(ev.header.exit_ns)) {
        Ok(()) => count(counter::EVENTS_SENT),
        Err(_) => count(counter::LOST_RINGBUF_FULL),
    }
}

/// Sends a record with no payload (open and close of a connection).
#[inline(always)]
pub fn emit_header(header: EventHeader) {
    match EVENTS.output::<EventHeader>(header, wakeup_flags(header.exit_ns)) {
        Ok(()) => count(counter::EVENTS_SENT),
        Err(_) => count(counter::LOST_RINGBUF_FULL),
    }
}

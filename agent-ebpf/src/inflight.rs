//! A call's start and arguments from the program that sees it begin (a syscall's enter, or
//! `tcp_sendmsg_locked`) to the one that sees it end (its exit, or `sock_send_length`), in the
//! calling thread's `INFLIGHT` slot. The end program of every thread on the host looks at its
//! slot, so the common miss is one inlined array load; only threads that shared a slot with a
//! live call (hosts whose `pid_max` exceeds `INFLIGHT_SLOTS`) go through the `INFLIGHT_SPILL`
//! hash map.

use agent_common::counter;

use crate::maps::{BufKind, INFLIGHT, INFLIGHT_SLOTS, INFLIGHT_SPILL, Inflight, count};

/// "No call in progress" (`owner == 0`): a sentinel rather than an `Option`, whose `None`
/// would leave registers the verifier refuses to see copied undefined.
pub const NONE: Inflight = Inflight {
    owner: 0,
    enter_ns: 0,
    buf: 0,
    count: 0,
    fd: -1,
    syscall: 0,
    direction: 0,
    kind: BufKind::None,
    spilled: 0,
    nr: -1,
    _pad: 0,
    sk: 0,
};

#[inline(always)]
fn slot(pid_tgid: u64) -> Option<*mut Inflight> {
    INFLIGHT.get_ptr_mut((pid_tgid as u32) & (INFLIGHT_SLOTS - 1))
}

/// Whether a slot owned by `owner` holds the live call of another thread than `pid_tgid`. A
/// thread's slot is freed by its exit, and by `forget` when the thread dies; the same thread id
/// of another process is a stale call, free to overwrite.
#[inline(always)]
fn held_by_another(owner: u64, pid_tgid: u64) -> bool {
    owner != 0 && owner != pid_tgid && owner as u32 != pid_tgid as u32
}

/// Saves `args` as the call of thread `args.owner`.
#[inline(always)]
pub fn save(args: Inflight) {
    let pid_tgid = args.owner;
    let Some(slot) = slot(pid_tgid) else {
        return;
    };
    // SAFETY: array slots live as long as the map; a thread writes only its own slot (see below
    // for the one byte it may set in another's).
    let slot = unsafe { &mut *slot };
    if held_by_another(slot.owner, pid_tgid) {
        if INFLIGHT_SPILL.insert(pid_tgid, args, 0).is_err() {
            count(counter::LOST_INFLIGHT_FULL);
        }
        slot.spilled = 1;
        return;
    }
    // Field by field, leaving `spilled` alone, and the owner last.
    slot.enter_ns = args.enter_ns;
    slot.buf = args.buf;
    slot.count = args.count;
    slot.fd = args.fd;
    slot.syscall = args.syscall;
    slot.direction = args.direction;
    slot.kind = args.kind;
    slot.nr = args.nr;
    slot.sk = args.sk;
    slot.owner = pid_tgid;
}

/// Whether thread `pid_tgid` has a saved call of syscall `nr` on socket `sk` already: a TCP
/// send reports its start once per round of its copy loop, and the first round is when the call
/// began. (A start left by a call that never ended is on another socket or of another call,
/// most likely, and is overwritten.)
#[inline(always)]
pub fn started(pid_tgid: u64, nr: i32, sk: u64) -> bool {
    let Some(slot) = slot(pid_tgid) else {
        return false;
    };
    // SAFETY: as in `save`; a read of this thread's own slot.
    let slot = unsafe { &*slot };
    slot.owner == pid_tgid && slot.nr == nr && slot.sk == sk
}

/// Takes the call this thread saved, or `NONE`.
#[inline(always)]
pub fn take(pid_tgid: u64) -> Inflight {
    let Some(slot) = slot(pid_tgid) else {
        return NONE;
    };
    // SAFETY: as in `save`.
    let slot = unsafe { &mut *slot };
    if slot.owner == pid_tgid {
        let args = *slot;
        slot.owner = 0;
        return args;
    }
    if slot.spilled != 0 {
        // SAFETY: plain-old-data value copied out immediately.
        if let Some(args) = unsafe { INFLIGHT_SPILL.get(pid_tgid) }.copied() {
            let _ = INFLIGHT_SPILL.remove(pid_tgid);
            return args;
        }
    }
    NONE
}

/// Frees the slot of a dying thread that died inside a call (a thread blocked in `read` when
/// its process exits), so that the next thread with its id starts clean.
#[inline(always)]
pub fn forget(pid_tgid: u64) {
    let _ = take(pid_tgid);
}

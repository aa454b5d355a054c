//! Process lifecycle: the kernel keeps the traced set right by itself (a traced process's
//! children are traced from their first instruction, a dead process is forgotten at once) and
//! tells userspace, which names processes and applies the selectors it alone can evaluate
//! (executable globs, containers, exclusions).

use agent_common::{EVENT_PROC, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcEvent, counter, select};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::inflight;
use crate::maps::{
    BY_FORK, EVENTS, EXCLUDED_TGIDS, FORCE_WAKEUP, clear_traced, count, is_traced, offset,
    set_traced, setting, traced_reason,
};

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer only yields an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// Sends a process record.
#[inline(always)]
pub fn emit(what: u32, tgid: u32, ppid: u32, port: u16) {
    let ev = ProcEvent {
        kind: EVENT_PROC,
        what,
        tgid,
        ppid,
        // SAFETY (both): helpers without preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        // For a fork this is the parent's cgroup, which the child starts in.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        port,
        _pad: [0; 6],
        // Every caller runs in the process's own context. On failure the name stays empty
        // and userspace falls back to `pid-N`.
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    // Woken at once, unlike data records: userspace must read the process's identity in
    // /proc while it lives, and a client like psql lives a few milliseconds.
    match EVENTS.output::<ProcEvent>(ev, FORCE_WAKEUP) {
        Ok(()) => count(counter::EVENTS_SENT),
        Err(_) => count(counter::LOST_RINGBUF_FULL),
    }
}

/// `raw_tracepoint/sched_process_fork(parent, child)`: a new process (not a thread) whose parent
/// is traced is traced too, before it runs; exclusion is inherited the same way.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let child: u64 = ctx.arg(1);
    let (Some(pid), Some(tgid)) = (
        read::<u32>(child, offset!(task_pid)),
        read::<u32>(child, offset!(task_tgid)),
    ) else {
        return 0;
    };
    if pid != tgid {
        return 0; // a new thread of an existing process
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY (map reads): plain values.
    if unsafe { EXCLUDED_TGIDS.get(parent).is_some() } {
        let _ = EXCLUDED_TGIDS.insert(tgid, 1, 0);
        return 0;
    }
    if traced_reason(parent) != 0 {
        if !set_traced(tgid, BY_FORK) {
            count(counter::LOST_TRACED_FULL);
        }
        emit(PROC_FORK, tgid, parent, 0);
    }
    0
}

/// `sched/sched_process_exec`: a process runs a new program. Userspace renames it, and applies
/// executable and container selectors to it when it asked to see every exec.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == setting!(agent_tgid) {
        return 0;
    }
    if setting!(flags) & select::REPORT_EXEC != 0 || is_traced(tgid) {
        emit(PROC_EXEC, tgid, 0, 0);
    }
    0
}

/// `sched/sched_process_exit`: when the last thread of a traced process exits, the process is
/// dropped from the traced set and userspace forgets its state (its sockets close without any
/// `close` call, so this is the only sign that its connections ended).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    // Every thread passes here: one that dies inside a call frees its slot.
    inflight::forget(bpf_get_current_pid_tgid());
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let Some(signal) = read::<u64>(task, offset!(task_signal)) else {
        return 0;
    };
    // `signal->live` is decremented before this tracepoint: 0 means the whole group is dead.
    match read::<u32>(signal, offset!(signal_live)) {
        Some(0) => {}
        _ => return 0,
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let traced = is_traced(tgid);
    clear_traced(tgid);
    let _ = EXCLUDED_TGIDS.remove(tgid);
    if traced {
        emit(PROC_EXIT, tgid, 0, 0);
    }
    0
}

//! Reading the syscall in progress: its tracepoint record (arguments, return value, number;
//! the layout of `struct syscall_trace_enter/exit` is the same on every kernel: the number at
//! byte 8, arguments from byte 16, 8 bytes each, and the return value of `sys_exit_*` at byte
//! 16), and the registers its task saved on entry, which any program running inside the call can
//! read (the socket tracepoints, and exits that have no enter program).

use agent_common::counter;
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    programs::TracePointContext,
};

use crate::maps::{count, is_traced, offset};

/// Argument `n` of a `sys_enter_*` record. A direct load from the context, which the verifier
/// checks once at load time (a `bpf_probe_read` per argument cost a helper call each).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the record is at least 16 + 8 * 6 bytes; arguments are at 16 + 8 * n.
    unsafe { *(ctx.as_ptr() as *const u64).add(2 + n) }
}

/// The return value of a `sys_exit_*` record, at byte 16.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: as for `arg`.
    unsafe { *(ctx.as_ptr() as *const i64).add(2) }
}

/// The kernel's number of the syscall a `sys_enter_*` or `sys_exit_*` record is of, at byte 8.
#[inline(always)]
pub fn record_nr(ctx: &TracePointContext) -> i32 {
    // SAFETY: as for `arg`.
    unsafe { *(ctx.as_ptr() as *const i32).add(2) }
}

/// The registers the current task saved on syscall entry, which the syscall does not change:
/// its number and arguments, where BTF says they are (`KernelOffsets::regs_*`).
#[derive(Clone, Copy)]
pub struct SavedRegs(*const u8);

impl SavedRegs {
    #[inline(always)]
    fn load<T: Copy>(self, at: u32) -> T {
        // SAFETY: a pointer the verifier types from BTF (`struct pt_regs`): it checks each load
        // against the struct's fields (the offsets are constants to it, from the read-only
        // globals).
        unsafe { *(self.0.add(at as usize) as *const T) }
    }

    /// The syscall's first four arguments.
    #[inline(always)]
    pub fn args(self) -> [u64; 4] {
        let at = offset!(regs_args);
        [
            self.load(at[0]),
            self.load(at[1]),
            self.load(at[2]),
            self.load(at[3]),
        ]
    }

    /// The syscall's number (`orig_ax` on x86_64, `syscallno` on arm64), 32 bits of it.
    #[inline(always)]
    pub fn nr(self) -> i32 {
        self.load(offset!(regs_syscall_nr))
    }
}

/// The current task's saved registers (`None` only if the helper finds none).
#[inline(always)]
fn saved_regs() -> Option<SavedRegs> {
    // SAFETY: the helpers return the current task and its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        None
    } else {
        Some(SavedRegs(regs))
    }
}

/// The current thread (its `pid_tgid`) and the registers its call saved, when its process is
/// traced. Registers that cannot be read lose the call's bytes, counted (`LOST_SYSCALL_ARGS`).
#[inline(always)]
pub fn traced_call() -> Option<(u64, SavedRegs)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return None;
    }
    let Some(regs) = saved_regs() else {
        count(counter::LOST_SYSCALL_ARGS);
        return None;
    };
    Some((pid_tgid, regs))
}

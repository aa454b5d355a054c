//! The BTF tracepoints inside the kernel's socket calls, where a traced process's bytes are read
//! on kernels that have them (6.3 and later; the syscall tracepoints of `programs` take their
//! place elsewhere).
//!
//! `sock_recv_length` and `sock_send_length` fire at the end of every receive and send on a
//! socket, with the socket and the byte count; `tcp_sendmsg_locked` fires when a TCP send starts
//! copying. So the reads and writes of every process to files, pipes and terminals run no
//! program at all, a BTF tracepoint skips the record the syscall tracepoints build for each
//! call, and the socket given to the program stands in for the walk of the fd table. Which call
//! the bytes came through (and so where its buffer is) is told by the syscall number the task
//! saved on entry, with its arguments (`call::traced_call`).
//!
//! A received message is timed by its arrival: the end of the receive. A sent one is timed by
//! when it began (a CLIENT span starts when its request starts to be written): the first round of
//! `tcp_sendmsg_locked`'s copy loop saves that time in the thread's `INFLIGHT` slot, and
//! `sock_send_length` takes it back.

use agent_common::{counter, syscall};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    call::traced_call,
    inflight,
    maps::{BufKind, count, syscall_nr},
    programs::{moved, received, send_started},
    sock::other_call,
};

/// The receiving call that syscall `nr` is, with where its buffer is.
#[inline(always)]
fn receive_of(nr: i32) -> Option<(u8, BufKind)> {
    if nr == syscall_nr(syscall::READ) {
        Some((syscall::READ, BufKind::Plain))
    } else if nr == syscall_nr(syscall::RECVFROM) {
        Some((syscall::RECVFROM, BufKind::Plain))
    } else if nr == syscall_nr(syscall::RECVMSG) {
        Some((syscall::RECVMSG, BufKind::Msg))
    } else if nr == syscall_nr(syscall::READV) {
        Some((syscall::READV, BufKind::Iov))
    } else {
        None
    }
}

/// The sending call that syscall `nr` is, with where its buffer is (`sendfile`'s bytes come
/// from a file, so only their count is sent).
#[inline(always)]
fn send_of(nr: i32) -> Option<(u8, BufKind)> {
    if nr == syscall_nr(syscall::WRITEV) {
        Some((syscall::WRITEV, BufKind::Iov))
    } else if nr == syscall_nr(syscall::WRITE) {
        Some((syscall::WRITE, BufKind::Plain))
    } else if nr == syscall_nr(syscall::SENDTO) {
        Some((syscall::SENDTO, BufKind::Plain))
    } else if nr == syscall_nr(syscall::SENDMSG) {
        Some((syscall::SENDMSG, BufKind::Msg))
    } else if nr == syscall_nr(syscall::SENDFILE) {
        Some((syscall::SENDFILE, BufKind::None))
    } else {
        None
    }
}

/// `tp_btf/sock_recv_length(sk, ret, flags)`: a receive on a socket returned `ret`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    let r: i32 = ctx.arg(1);
    if r <= 0 {
        return 0;
    }
    let Some((pid_tgid, regs)) = traced_call() else {
        return 0;
    };
    let sk: u64 = ctx.arg(0);
    let Some((sc, kind)) = receive_of(regs.nr()) else {
        other_call(sk);
        return 0;
    };
    let flags: u32 = ctx.arg(2);
    let [fd, buf, n, _] = regs.args();
    received(pid_tgid, sc, kind, flags as u64, [fd, buf, n], r as u64, sk);
    0
}

/// `tp_btf/tcp_sendmsg_locked(sk, msg, skb, size_goal)`: a thread copies bytes into a TCP
/// socket. It fires once per round of the kernel's copy loop; the first round is the start,
/// saved with the call's arguments. A call the agent does not read is saved too (as call 0), so
/// that its end is counted, once.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> u32 {
    let Some((pid_tgid, regs)) = traced_call() else {
        return 0;
    };
    let nr = regs.nr();
    let sk: u64 = ctx.arg(0);
    if inflight::started(pid_tgid, nr, sk) {
        return 0;
    }
    let (sc, kind) = send_of(nr).unwrap_or((0, BufKind::None));
    let [fd, buf, count, _] = regs.args();
    send_started(pid_tgid, nr, [fd, buf, count], sc, kind, sk);
    0
}

/// `tp_btf/sock_send_length(sk, ret, flags)`: a send on a socket returned `ret`. Only a send
/// whose start was saved on this socket (a TCP send of a traced process) goes on.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Taken before the return value is looked at: a failed call must not leave its start for
    // the next one.
    let start = inflight::take(pid_tgid);
    let sk: u64 = ctx.arg(0);
    if start.owner == 0 || start.sk != sk {
        return 0;
    }
    let r: i32 = ctx.arg(1);
    if r <= 0 {
        return 0;
    }
    if start.syscall == 0 {
        count(counter::LOST_OTHER_CALL);
        return 0;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    moved(pid_tgid, &start, r as u64, now);
    0
}

//! The syscall tracepoints: connection boundaries (`connect`, `accept`, `close`), executable
//! mappings, and, on kernels without the socket tracepoints (`socket_calls`), the bytes moved.
//! Their records and saved registers are read through `call`.
//!
//! Where they carry the bytes, receiving syscalls are read at their exit, their arguments from
//! the registers the task saved on entry, so a read costs one program run, and the many reads
//! that return nothing (`EAGAIN` in event loops) cost only their return-value check. A received
//! message is timed by its arrival: the exit. A sent one is timed by when it began (a CLIENT
//! span starts when its request starts to be written): the sending syscalls' enter tracepoints
//! save that time and the call's arguments for every call of a traced process; the exit takes
//! them back.

use agent_common::{
    ConnInfo, DIR_EGRESS, DIR_INGRESS, EVENT_CLOSE, EVENT_OPEN, EventHeader, IGNORE_SOCKET,
    PROC_MMAP_EXEC, PROC_PORT, ROLE_CLIENT, ROLE_SERVER, counter, syscall,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    call::{arg, record_nr, ret, traced_call},
    inflight,
    maps::{
        BY_PORT, BufKind, CONNS, Inflight, count, is_selected_port, is_traced, may_select_by_port,
        set_traced,
    },
    payload::{emit_data, emit_header},
    process,
    sock::{conn_key, establish, fd_to_file, lookup, other_call, resolve},
    tls,
};

const EINPROGRESS: i64 = 115;

/// Takes the arguments its enter program saved for this thread's syscall.
#[inline(always)]
fn take_inflight(pid_tgid: u64) -> Option<Inflight> {
    let args = inflight::take(pid_tgid);
    if args.owner == 0 { None } else { Some(args) }
}

/// Saves the arguments of a syscall of a traced process until its exit.
#[inline(always)]
fn enter(ctx: &TracePointContext, sc: u8, direction: u8, kind: BufKind, buf_arg: usize) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    save(ctx, pid_tgid, sc, direction, kind, buf_arg)
}

#[inline(always)]
fn save(
    ctx: &TracePointContext,
    pid_tgid: u64,
    sc: u8,
    direction: u8,
    kind: BufKind,
    buf_arg: usize,
) -> u32 {
    inflight::save(Inflight {
        owner: pid_tgid,
        // SAFETY: helper without preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: arg(ctx, 0) as i32,
        buf: arg(ctx, buf_arg),
        count: arg(ctx, buf_arg + 1),
        syscall: sc,
        direction,
        kind,
        spilled: 0,
        nr: record_nr(ctx),
        _pad: 0,
        sk: 0,
    });
    0
}

/// Saves the start of a send of thread `pid_tgid`, syscall `nr`, with its first three
/// arguments (descriptor, buffer, count), for the call's end. `sc` and `kind` are the call's
/// code and buffer, and `sk` its socket, where the caller knows them (else 0, `BufKind::None`
/// and 0: the exit program knows the first two).
#[inline(always)]
pub(crate) fn send_started(pid_tgid: u64, nr: i32, args: [u64; 3], sc: u8, kind: BufKind, sk: u64) {
    let [fd, buf, count] = args;
    inflight::save(Inflight {
        owner: pid_tgid,
        // SAFETY: helper without preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as i32,
        buf,
        count,
        syscall: sc,
        direction: DIR_EGRESS,
        kind,
        spilled: 0,
        nr,
        _pad: 0,
        sk,
    });
}

/// `sys_enter_*` of a sending syscall, attached only where the kernel has no socket
/// tracepoints: the start of every call of a traced process.
#[inline(always)]
fn enter_send(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_traced((pid_tgid >> 32) as u32) {
        send_started(
            pid_tgid,
            record_nr(ctx),
            [arg(ctx, 0), arg(ctx, 1), arg(ctx, 2)],
            0,
            BufKind::None,
            0,
        );
    }
    0
}

/// Sends the bytes a finished sending syscall moved, with the arguments saved at its start.
/// Only a call whose start was saved (a TCP send of a traced process) goes on.
#[inline(always)]
fn exit_sent(ctx: &TracePointContext, sc: u8, kind: BufKind) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Taken before the return value is looked at: a failed call must not leave its start for
    // the next one.
    let Some(start) = take_inflight(pid_tgid) else {
        return 0;
    };
    let r = ret(ctx);
    if r <= 0 || start.nr != record_nr(ctx) {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let args = Inflight {
        syscall: sc,
        kind,
        ..start
    };
    moved(pid_tgid, &args, r as u64, now);
    0
}

/// `recv*` flag: the bytes are looked at and left in the socket, to be read again.
const MSG_PEEK: u64 = 2;
/// `recv*` flag: on TCP, the bytes are taken from the socket and thrown away, not copied.
const MSG_TRUNC: u64 = 0x20;

/// Sends the bytes a finished receiving syscall moved (it has no enter program). `flags_arg` is
/// the argument holding the call's `MSG_*` flags, if it has any.
#[inline(always)]
fn exit_received(ctx: &TracePointContext, sc: u8, kind: BufKind, flags_arg: Option<usize>) -> u32 {
    let r = ret(ctx);
    if r <= 0 {
        return 0;
    }
    let Some((pid_tgid, regs)) = traced_call() else {
        return 0;
    };
    let args = regs.args();
    let [fd, buf, n, _] = args;
    let flags = flags_arg.map_or(0, |i| args[i & 3]);
    received(pid_tgid, sc, kind, flags, [fd, buf, n], r as u64, 0);
    0
}

/// Sends the `r` bytes thread `pid_tgid` received by call `sc`, whose arguments are `args`
/// (descriptor, buffer, count) and `MSG_*` flags `flags`, on socket `sk` if known (else 0). A
/// peek (`MSG_PEEK`, as in proxies' protocol inspectors) returns bytes that a later call reads
/// again, so it is not data, and taking it for data would put those bytes into the stream
/// twice. Bytes discarded with `MSG_TRUNC` never reach the buffer: they are sent as a count (a
/// gap in the stream), as the buffer holds whatever it held before.
#[inline(always)]
pub(crate) fn received(
    pid_tgid: u64,
    sc: u8,
    kind: BufKind,
    flags: u64,
    args: [u64; 3],
    r: u64,
    sk: u64,
) {
    if flags & MSG_PEEK != 0 {
        return;
    }
    let kind = if flags & MSG_TRUNC != 0 {
        BufKind::None
    } else {
        kind
    };
    let [fd, buf, count] = args;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let args = Inflight {
        owner: pid_tgid,
        enter_ns: now,
        buf,
        count,
        fd: fd as i32,
        syscall: sc,
        direction: DIR_INGRESS,
        kind,
        spilled: 0,
        nr: -1,
        _pad: 0,
        sk,
    };
    moved(pid_tgid, &args, r, now);
}

/// Sends the `r` bytes a call moved, when its fd is a TCP socket whose bytes are wanted.
#[inline(always)]
pub(crate) fn moved(pid_tgid: u64, args: &Inflight, r: u64, now: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(conn) = lookup(tgid, args.fd, args.sk) else {
        count(counter::LOST_FD_LOOKUP);
        return;
    };
    // The socket tracepoints know the socket: a descriptor that is another one (the registers
    // of a call that took no descriptor, as in an `io_uring` worker, or an fd replaced while the
    // call ran) must not lend these bytes to that other connection.
    if args.sk != 0 && conn.sock != args.sk {
        other_call(args.sk);
        return;
    }
    if conn.is_tcp == 0 {
        return;
    }
    // Ciphertext of a TLS library's read or write: its plaintext comes from the TLS probes.
    if tls::on_socket_syscall(pid_tgid, args.fd, conn.sock, args.direction == DIR_EGRESS) {
        return;
    }
    if conn.ignore & IGNORE_SOCKET != 0 {
        count(counter::SKIPPED_IGNORED);
        return;
    }
    let header = EventHeader {
        tgid,
        tid: pid_tgid as u32,
        fd: args.fd,
        direction: args.direction,
        syscall: args.syscall,
        enter_ns: args.enter_ns,
        exit_ns: now,
        len: r,
        conn,
        ..EventHeader::default()
    };
    emit_data(args, header, r);
}

/// Announces a connection whose role is known (accepted or connected).
#[inline(always)]
fn opened(pid_tgid: u64, fd: i32, role: u8, sc: u8, enter_ns: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(conn) = establish(tgid, fd, role) else {
        count(counter::LOST_FD_LOOKUP);
        return;
    };
    announce(pid_tgid, fd, conn, sc, enter_ns);
}

/// An untraced process accepted (`lport`) or connected (`rport`) a TCP connection: when the port
/// is selected, the kernel traces the process from this connection on and tells userspace.
/// Returns true when it did.
#[inline(always)]
fn select_by_port(pid_tgid: u64, fd: i32, role: u8) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if !may_select_by_port(tgid) {
        return false;
    }
    let Some(file) = fd_to_file(fd) else {
        return false;
    };
    let conn = resolve(file, role);
    let port = if role == ROLE_SERVER {
        conn.lport
    } else {
        conn.rport
    };
    if conn.is_tcp == 0 || !is_selected_port(port) {
        return false;
    }
    if !set_traced(tgid, BY_PORT) {
        count(counter::LOST_TRACED_FULL);
        return false;
    }
    process::emit(PROC_PORT, tgid, 0, port);
    let _ = CONNS.insert(conn_key(tgid, fd), conn, 0);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    announce(pid_tgid, fd, conn, syscall::ACCEPT, now);
    true
}

/// Sends the open record of a TCP connection.
#[inline(always)]
fn announce(pid_tgid: u64, fd: i32, conn: ConnInfo, sc: u8, enter_ns: u64) {
    if conn.is_tcp == 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    emit_header(EventHeader {
        kind: EVENT_OPEN,
        tgid,
        tid: pid_tgid as u32,
        fd,
        syscall: sc,
        enter_ns,
        // SAFETY: helper without preconditions.
        exit_ns: unsafe { bpf_ktime_get_ns() },
        conn,
        ..EventHeader::default()
    });
}

macro_rules! received_syscall {
    ($exit:ident, $sc:expr, $kind:expr, $flags_arg:expr) => {
        #[doc = concat!("`syscalls/", stringify!($exit), "`: sends the bytes a traced process received on a TCP socket.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_received(&ctx, $sc, $kind, $flags_arg)
        }
    };
}

macro_rules! sent_syscall {
    ($enter:ident, $exit:ident, $sc:expr, $kind:expr) => {
        #[doc = concat!("`syscalls/", stringify!($enter), "`: saves a traced process's call, its start and arguments (where the socket tracepoints are missing).")]
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_send(&ctx)
        }

        #[doc = concat!("`syscalls/", stringify!($exit), "`: sends the bytes it moved on a TCP socket.")]
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_sent(&ctx, $sc, $kind)
        }
    };
}

received_syscall!(sys_exit_read, syscall::READ, BufKind::Plain, None);
sent_syscall!(
    sys_enter_write,
    sys_exit_write,
    syscall::WRITE,
    BufKind::Plain
);
received_syscall!(sys_exit_readv, syscall::READV, BufKind::Iov, None);
sent_syscall!(
    sys_enter_writev,
    sys_exit_writev,
    syscall::WRITEV,
    BufKind::Iov
);
// recvfrom(fd, buf, len, flags, addr, addrlen); recvmsg(fd, msg, flags).
received_syscall!(
    sys_exit_recvfrom,
    syscall::RECVFROM,
    BufKind::Plain,
    Some(3)
);
sent_syscall!(
    sys_enter_sendto,
    sys_exit_sendto,
    syscall::SENDTO,
    BufKind::Plain
);
received_syscall!(sys_exit_recvmsg, syscall::RECVMSG, BufKind::Msg, Some(2));
sent_syscall!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    syscall::SENDMSG,
    BufKind::Msg
);
// sendfile(out_fd, in_fd, offset, count): the bytes come from a file, so only their count is sent.
sent_syscall!(
    sys_enter_sendfile64,
    sys_exit_sendfile64,
    syscall::SENDFILE,
    BufKind::None
);

/// `syscalls/sys_enter_connect`: remembers which fd a traced process connects (and, with port
/// selection, any process that may become traced).
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) && !may_select_by_port(tgid) {
        return 0;
    }
    save(&ctx, pid_tgid, syscall::CONNECT, 0, BufKind::None, 1)
}

/// `syscalls/sys_exit_connect`: the fd is now a client connection (also when still in progress).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = take_inflight(pid_tgid) else {
        return 0;
    };
    let r = ret(&ctx);
    if r != 0 && r != -EINPROGRESS {
        return 0;
    }
    if is_traced((pid_tgid >> 32) as u32) {
        opened(
            pid_tgid,
            args.fd,
            ROLE_CLIENT,
            syscall::CONNECT,
            args.enter_ns,
        );
    } else {
        select_by_port(pid_tgid, args.fd, ROLE_CLIENT);
    }
    0
}

/// `syscalls/sys_enter_accept`: remembers the call's start time.
#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter(&ctx, syscall::ACCEPT, 0, BufKind::None, 1)
}

/// `syscalls/sys_enter_accept4`: remembers the call's start time.
#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter(&ctx, syscall::ACCEPT, 0, BufKind::None, 1)
}

#[inline(always)]
fn accepted(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let r = ret(ctx);
    match take_inflight(pid_tgid) {
        Some(args) if r >= 0 => opened(
            pid_tgid,
            r as i32,
            ROLE_SERVER,
            syscall::ACCEPT,
            args.enter_ns,
        ),
        Some(_) => {}
        // Not traced when the call began: maybe selected by the port it accepted on.
        None if r >= 0 => {
            select_by_port(pid_tgid, r as i32, ROLE_SERVER);
        }
        None => {}
    }
    0
}

/// `syscalls/sys_exit_accept`: the returned fd is a server-side connection.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx)
}

/// `syscalls/sys_exit_accept4`: the returned fd is a server-side connection.
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx)
}

const PROT_EXEC: u64 = 4;

/// `syscalls/sys_enter_mmap`: a traced process maps a file executable (`ld.so` or `dlopen`
/// loading a library), which may be a TLS library to probe.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // mmap(addr, len, prot, flags, fd, off)
    if arg(&ctx, 2) & PROT_EXEC == 0 || (arg(&ctx, 4) as i32) < 0 {
        return 0;
    }
    save(&ctx, pid_tgid, syscall::MMAP, 0, BufKind::None, 1)
}

/// `syscalls/sys_exit_mmap`: the mapping exists; userspace is told.
#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = take_inflight(pid_tgid) else {
        return 0;
    };
    let r = ret(&ctx);
    if args.syscall != syscall::MMAP || (-4096..0).contains(&r) {
        return 0;
    }
    process::emit(PROC_MMAP_EXEC, (pid_tgid >> 32) as u32, 0, 0);
    0
}

/// `syscalls/sys_enter_close`: a traced TCP connection ends; userspace flushes its state.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0) as i32;
    let key = conn_key(tgid, fd);
    // SAFETY: plain-old-data value copied out immediately.
    let Some(conn) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(key);
    if conn.is_tcp == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    emit_header(EventHeader {
        kind: EVENT_CLOSE,
        tgid,
        tid: pid_tgid as u32,
        fd,
        syscall: syscall::CLOSE,
        enter_ns: now,
        exit_ns: now,
        conn,
        ..EventHeader::default()
    });
    0
}

//! Types shared by the kernel programs (`agent-ebpf`) and the userspace daemon (`agent`).
//!
//! Every type here is `#[repr(C)]`, has only explicit padding fields, and a size checked at
//! compile time, so that the bytes the kernel writes into the ring buffer are exactly the bytes
//! userspace reads. With the `user` feature the types implement `aya::Pod`, which the loader needs
//! to write globals and read maps.
#![no_std]

/// Most payload bytes copied from one syscall. The rest of a large read or write is reported as a
/// length only (a "gap" to the stream reassembly), so parsers know how many bytes went by.
/// A power of two: the kernel programs mask offsets with `MAX_PAYLOAD - 1` to satisfy the verifier.
pub const MAX_PAYLOAD: usize = 4096;

/// Most iovec entries looked at in one `readv`/`writev`/`recvmsg`/`sendmsg`. Writers such as
/// gRPC send a frame per slice, many slices per call.
pub const MAX_IOV: usize = 256;

/// The kernel wakes the ring buffer's reader for the first record sent this long (or more)
/// after its last wake-up (`Settings::wakeup_window_ns`); the records within it ride along
/// unannounced. Userspace checks the ring once, a little later than this after each drain, to
/// pick up the last of them. This is the window when spans are printed on the terminal: a span
/// appears at most ~0.2 s after its request ends.
///
/// Each wake-up costs the reader a cold start, which a moderate rate pays for a few requests:
/// the Python service at 200 requests/s cost the agent 46–56 us per request with 50 ms here
/// and 30–35 us with 200 ms (docs/BENCHMARKS.md). Process records (fork, exec, exit) do not
/// wait: they wake the reader at once.
pub const WAKEUP_WINDOW_NS: u64 = 200_000_000;

/// The ride-along window when spans go to an OTLP collector. They leave in batches every 5 s by
/// default (`OTEL_BSP_SCHEDULE_DELAY`), so a later hand-over delays nothing that is exported,
/// and the reader's cold start is paid once a second instead of five times.
pub const EXPORT_WAKEUP_WINDOW_NS: u64 = 1_000_000_000;

/// The kernel also wakes the ring buffer's reader once this many bytes are queued (at most one
/// such wake-up per millisecond), or an eighth of a smaller ring (`Settings::wakeup_bytes`).
/// The reader pays a cold start per wake-up (its code and tables evicted by the traced
/// application, the kernel and the other processes on its CPU): at 64 KiB, nginx at saturation
/// woke it every ~6 ms for ~130 requests; at 512 KiB every ~45 ms for ~1000, and its CPU per
/// request fell ~12% (docs/BENCHMARKS.md). An eighth of the default ring's smallest size
/// (4 MiB), so the rest is headroom for a reader that falls behind.
pub const WAKEUP_BYTES: u32 = 512 * 1024;

/// The queued bytes at which the kernel wakes the reader of a ring of `ring_bytes`.
pub const fn wakeup_bytes(ring_bytes: u32) -> u32 {
    let eighth = ring_bytes / 8;
    if eighth < WAKEUP_BYTES {
        eighth
    } else {
        WAKEUP_BYTES
    }
}

/// `EventHeader::kind`: bytes moved through a socket.
pub const EVENT_DATA: u32 = 1;
/// `EventHeader::kind`: the process closed a socket it had used.
pub const EVENT_CLOSE: u32 = 2;
/// `EventHeader::kind`: a connection was accepted or connected (no payload).
pub const EVENT_OPEN: u32 = 3;
/// Record kind of a [`ProcEvent`]: a process was born, changed program, died or was selected.
pub const EVENT_PROC: u32 = 4;

/// `ProcEvent::what`: a traced process forked a child, which the kernel traces at once.
pub const PROC_FORK: u32 = 1;
/// `ProcEvent::what`: a process called exec (reported for traced processes always, and for
/// every process when userspace selects by executable or container).
pub const PROC_EXEC: u32 = 2;
/// `ProcEvent::what`: the last thread of a traced process exited; the kernel stopped tracing it.
pub const PROC_EXIT: u32 = 3;
/// `ProcEvent::what`: an untraced process accepted or connected on a selected port; the kernel
/// traces it from this connection on.
pub const PROC_PORT: u32 = 4;
/// `ProcEvent::what`: a traced process mapped a file executable (a library loaded by `ld.so`
/// or `dlopen`): userspace looks for TLS libraries to probe.
pub const PROC_MMAP_EXEC: u32 = 5;

/// `ConnInfo::ignore`: the socket syscalls' bytes are of no use (a protocol the agent does
/// not parse, or TLS ciphertext whose plaintext the TLS probes report).
pub const IGNORE_SOCKET: u8 = 1;
/// `ConnInfo::ignore`: the TLS plaintext is of no use either (an unparsed protocol inside TLS).
pub const IGNORE_TLS: u8 = 2;

/// `EventHeader::source`: bytes seen by a socket syscall.
pub const SOURCE_SOCKET: u8 = 0;
/// `EventHeader::source`: plaintext seen by a uprobe on a TLS library's read or write.
pub const SOURCE_TLS: u8 = 1;

/// Which TLS library function a uprobe is attached to (its attach cookie).
pub mod tls_fn {
    /// `int SSL_read(SSL *, void *buf, int num)`: returns the bytes read.
    pub const READ: u64 = 1;
    /// `int SSL_write(SSL *, const void *buf, int num)`: returns the bytes written.
    pub const WRITE: u64 = 2;
    /// `int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes)`: returns 1 on success.
    pub const READ_EX: u64 = 3;
    /// `int SSL_write_ex(SSL *, const void *buf, size_t num, size_t *written)`.
    pub const WRITE_EX: u64 = 4;
    /// `int SSL_do_handshake(SSL *)` (also reached through `SSL_connect`/`SSL_accept`).
    pub const HANDSHAKE: u64 = 5;
}

/// `EventHeader::direction`: the process received these bytes.
pub const DIR_INGRESS: u8 = 1;
/// `EventHeader::direction`: the process sent these bytes.
pub const DIR_EGRESS: u8 = 2;

/// `ConnInfo::role`: first seen mid-connection; userspace infers the role from the protocol.
pub const ROLE_UNKNOWN: u8 = 0;
/// `ConnInfo::role`: the socket came from `accept`/`accept4`: this process is the server.
pub const ROLE_SERVER: u8 = 1;
/// `ConnInfo::role`: the socket was `connect`ed: this process is the client.
pub const ROLE_CLIENT: u8 = 2;

/// `AF_INET` / `AF_INET6` as found in `sock_common.skc_family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Which syscall produced an event (for debugging and per-syscall statistics).
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const RECVFROM: u8 = 5;
    pub const SENDTO: u8 = 6;
    pub const RECVMSG: u8 = 7;
    pub const SENDMSG: u8 = 8;
    pub const SENDFILE: u8 = 9;
    pub const CONNECT: u8 = 10;
    pub const ACCEPT: u8 = 11;
    pub const CLOSE: u8 = 12;
    /// Plaintext returned by a TLS library's read (`SOURCE_TLS`).
    pub const TLS_READ: u8 = 13;
    /// Plaintext given to a TLS library's write (`SOURCE_TLS`).
    pub const TLS_WRITE: u8 = 14;
    /// `mmap` of a file with `PROT_EXEC` (kernel-internal: reported as `PROC_MMAP_EXEC`).
    pub const MMAP: u8 = 15;
}

/// Indexes of the kernel-side counters (a per-CPU array of `u64`, summed by userspace).
/// Every event the kernel could not deliver is counted under one of these reasons.
pub mod counter {
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const LOST_RINGBUF_FULL: u32 = 1;
    /// Events lost because the in-flight syscall map was full.
    pub const LOST_INFLIGHT_FULL: u32 = 2;
    /// Payload bytes that could not be read from user memory (event sent with no payload).
    pub const PAYLOAD_READ_FAILED: u32 = 3;
    /// Syscalls whose payload was longer than what was captured (not a loss: a gap of known size).
    pub const PAYLOAD_TRUNCATED: u32 = 4;
    /// fd lookups that failed (fd table walk returned nothing): the event was dropped.
    pub const LOST_FD_LOOKUP: u32 = 5;
    /// Scratch buffer unavailable (should never happen; counted so it would be seen).
    pub const LOST_NO_SCRATCH: u32 = 6;
    /// Processes the kernel started tracing by itself (fork of a traced process, selected port)
    /// but could not mark traced: their tgid is beyond the `pid_max` the traced set was sized
    /// for at start-up (raised since).
    pub const LOST_TRACED_FULL: u32 = 7;
    /// Syscalls not shipped because userspace marked their connection as of no use (not a
    /// loss: saved work).
    pub const SKIPPED_IGNORED: u32 = 8;
    /// TLS reads or writes whose `SSL *` was never seen on a socket: no connection to tie the
    /// plaintext to, so it was dropped.
    pub const LOST_TLS_UNBOUND: u32 = 9;
    /// TLS reads or writes whose saved arguments were lost (uprobe map full).
    pub const LOST_TLS_ARGS: u32 = 10;
    /// Receives and sends whose call's arguments could not be read from the task's saved
    /// registers.
    pub const LOST_SYSCALL_ARGS: u32 = 11;
    /// Bytes a traced process moved on a TCP connection through a call the agent does not read
    /// (`recvmmsg`, `sendmmsg`, `io_uring`): a gap in that connection's stream.
    pub const LOST_OTHER_CALL: u32 = 12;
    /// Number of counters.
    pub const COUNT: u32 = 13;
}

/// Every kernel counter (`counter::*`, by index), in one per-CPU slot of `COUNTERS`: userspace
/// reads them all with one lookup a second (a slot per counter took a syscall each).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; counter::COUNT as usize],
}

/// Bits of `Settings::flags`: which selectors the kernel evaluates on its own.
pub mod select {
    /// Every process is traced except the excluded ones (`--all`).
    pub const ALL: u32 = 1;
    /// Processes in a cgroup of `TRACED_CGROUPS` are traced (`--container`).
    pub const CGROUPS: u32 = 2;
    /// Untraced processes that accept or connect on a port of `SELECT_PORTS` become traced.
    pub const PORTS: u32 = 4;
    /// Every exec is reported, so userspace can select by executable or container.
    pub const REPORT_EXEC: u32 = 8;
}

/// What the kernel knows about one socket fd of a traced process. Cached per (tgid, fd) in an
/// LRU map and validated against the `struct file` the fd points to (or, by the socket
/// tracepoints, against the socket the call is on), so a reused fd number is never mistaken for
/// the old connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// `struct file *` the fd pointed to when this entry was made.
    pub file: u64,
    /// `struct sock *`: identifies the connection for its whole life; set for every socket, 0
    /// when the fd is not one.
    pub sock: u64,
    /// Local address (IPv4 in the first 4 bytes, or IPv6).
    pub laddr: [u8; 16],
    /// Remote address.
    pub raddr: [u8; 16],
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// One of the `ROLE_*` constants.
    pub role: u8,
    /// 1 when the fd is an IPv4/IPv6 TCP socket; negative entries (0) are cached too.
    pub is_tcp: u8,
    /// `IGNORE_*` bits set by userspace when the connection's bytes are of no use: the kernel
    /// stops shipping them.
    pub ignore: u8,
    pub _pad: [u8; 7],
}

/// Fixed part of every ring-buffer record. `captured` payload bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    /// Payload bytes following this header (at most `MAX_PAYLOAD`).
    pub captured: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The socket's file descriptor in the process.
    pub fd: i32,
    /// `DIR_INGRESS` or `DIR_EGRESS` (0 for open/close).
    pub direction: u8,
    /// One of the `syscall::*` constants.
    pub syscall: u8,
    /// `SOURCE_SOCKET` or `SOURCE_TLS`.
    pub source: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` when the syscall was entered.
    pub enter_ns: u64,
    /// `bpf_ktime_get_ns()` when the syscall returned.
    pub exit_ns: u64,
    /// Bytes the syscall moved (its return value); may exceed `captured`.
    pub len: u64,
    /// The connection.
    pub conn: ConnInfo,
}

/// A process lifecycle record (`kind == EVENT_PROC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// Always `EVENT_PROC`; first, like `EventHeader::kind`, so records are told apart.
    pub kind: u32,
    /// One of the `PROC_*` constants.
    pub what: u32,
    /// The process concerned (the child, for a fork).
    pub tgid: u32,
    /// The parent, for a fork; 0 otherwise.
    pub ppid: u32,
    /// `bpf_ktime_get_ns()` when it happened.
    pub time_ns: u64,
    /// The cgroup v2 id of the process (`bpf_get_current_cgroup_id`), so userspace needs no
    /// cgroup path (which a cgroup namespace would make relative) to select a container.
    pub cgroup_id: u64,
    /// The selected port, for `PROC_PORT`.
    pub port: u16,
    pub _pad: [u8; 6],
    /// The process's `comm` (`bpf_get_current_comm`, NUL-padded; the parent's for a fork,
    /// which the child shares until it execs). A client such as `psql` can exit before
    /// userspace reads its `/proc` entry: this still names its spans.
    pub comm: [u8; TASK_COMM_LEN],
}

/// Length of a task's `comm`, with its NUL.
pub const TASK_COMM_LEN: usize = 16;

/// A whole data record as assembled in the per-CPU scratch buffer before it is copied into the
/// ring buffer. The payload area is twice `MAX_PAYLOAD` so that the kernel can append iovec
/// fragments at a masked offset without the verifier losing track of bounds; at most
/// `MAX_PAYLOAD` bytes are ever sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    pub payload: [u8; MAX_PAYLOAD * 2],
}

/// Kernel struct member offsets (bytes), read from BTF by userspace at start-up and written into
/// the programs' read-only globals before load. Rust eBPF has no CO-RE, and this is how the
/// programs stay correct on every kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family`
    pub sk_family: u32,
    /// `sock.sk_protocol`; `OFFSET_UNKNOWN` on kernels where it is a bitfield (not checked then).
    pub sk_protocol: u32,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr`
    pub sk_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`
    pub sk_v6_daddr: u32,
    /// `sock.__sk_common.skc_num` (local port, host order)
    pub sk_num: u32,
    /// `sock.__sk_common.skc_dport` (remote port, network order)
    pub sk_dport: u32,
    /// `task_struct.pid` (thread id)
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live` (threads still alive)
    pub signal_live: u32,
    /// Where the current syscall's first four arguments are in `struct pt_regs` when it
    /// returns (`di`, `si`, `dx`, `r10` on x86_64; `orig_x0`, `regs[1]` to `regs[3]` on arm64,
    /// whose `regs[0]` then holds the return value). A receive reads them (the descriptor, the
    /// buffer, its size, and at a syscall exit `recvfrom`'s flags); a send's start reads the
    /// first three.
    pub regs_args: [u32; 4],
    /// Where `struct pt_regs` keeps the number of the syscall in progress (`orig_ax` on x86_64,
    /// `syscallno` on arm64), read as 32 bits: the socket tracepoints tell by it which call
    /// they run in (`Settings::syscall_nrs`).
    pub regs_syscall_nr: u32,
}

/// Marks an offset the running kernel does not have; the kernel program skips that check.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Run-time settings written into the programs' read-only globals before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The agent's own tgid: never traced, whatever the pid map says.
    pub agent_tgid: u32,
    /// Payload bytes to capture per syscall (at most `MAX_PAYLOAD`).
    pub capture_bytes: u32,
    /// `select::*` bits.
    pub flags: u32,
    /// Queued bytes at which the kernel wakes the ring buffer's reader ([`wakeup_bytes`]).
    pub wakeup_bytes: u32,
    /// The ride-along window ([`WAKEUP_WINDOW_NS`], [`EXPORT_WAKEUP_WINDOW_NS`]).
    pub wakeup_window_ns: u64,
    /// The running architecture's syscall numbers of the calls that move bytes, indexed by their
    /// `syscall::*` code (`READ` to `SENDFILE`; index 0 is unused, -1). The socket tracepoints
    /// run inside any call that reaches a socket and tell by the saved syscall number which one
    /// it is, and so where its buffer is.
    pub syscall_nrs: [i32; SYSCALL_NRS],
}

/// Length of `Settings::syscall_nrs`: one past `syscall::SENDFILE`, the last code that moves
/// bytes.
pub const SYSCALL_NRS: usize = syscall::SENDFILE as usize + 1;

const _: () = assert!(core::mem::size_of::<ConnInfo>() == 64);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 112);
const _: () = assert!(core::mem::size_of::<DataEvent>() == 112 + MAX_PAYLOAD * 2);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 104);
const _: () = assert!(core::mem::size_of::<Settings>() == 64);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 56);
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * counter::COUNT as usize);
const _: () = assert!(MAX_PAYLOAD.is_power_of_two());
const _: () = assert!(wakeup_bytes(4 << 20) == WAKEUP_BYTES && wakeup_bytes(1 << 20) == 128 << 10);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays, with every
    // padding byte an explicit field (sizes asserted above), so any bit pattern is valid.
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::Counters {}
}

//! TLS plaintext from uprobes on a TLS library's `SSL_read`/`SSL_write` (and their `_ex`
//! forms), tied to the socket the `SSL *` talks through.
//!
//! The entry probe saves the call's arguments per thread; the return probe copies the bytes the
//! call actually moved and sends them as a `SOURCE_TLS` record of the socket's connection, so
//! userspace parses them with the same stream reassembly and parsers as cleartext.
//!
//! Which socket: OpenSSL keeps the fd inside its BIO, whose layout changes between versions. The
//! kernel learns it instead from behaviour, never from struct offsets:
//! - a socket syscall made by a thread *inside* an SSL call on `ssl` (the library reading or
//!   writing its socket BIO: Python, curl, nginx, `openssl s_client`) binds `ssl` to that fd;
//! - a library driven through memory BIOs (Node.js) does its socket I/O after the SSL call
//!   returns: the first socket write by the same thread shortly after a call on a still-unbound
//!   `ssl` binds it. The handshake always writes first (ClientHello, ServerHello), so the
//!   binding is made before any application data.

use agent_common::{
    DIR_EGRESS, DIR_INGRESS, EventHeader, IGNORE_TLS, SOURCE_TLS, counter, syscall, tls_fn,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_buf,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    maps::{BufKind, Inflight, TLS_SEEN, count, is_traced},
    payload::emit_data,
    sock::lookup,
};

/// A memory-BIO library's socket write must follow its SSL call this closely to bind it.
const BIND_WINDOW_NS: u64 = 5_000_000;

/// Arguments of an SSL call in progress, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` result of the `_ex` forms.
    pub ex_len: u64,
    pub enter_ns: u64,
    /// One of `tls_fn::*`.
    pub func: u64,
}

/// `SSL *` of one process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub tgid: u64,
    pub ssl: u64,
}

/// Where an `SSL *` reads and writes: the fd, and the socket it was when bound (an `SSL *`
/// freed and allocated again at the same address for another connection is then noticed).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Binding {
    pub fd: i32,
    pub _pad: u32,
    pub sock: u64,
}

/// A call on an unbound `SSL *` that returned: the thread's next socket write binds it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingBind {
    pub ssl: u64,
    pub at_ns: u64,
}

/// SSL calls in progress, by pid_tgid.
#[map]
static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(16_384, 0);

/// `SSL *` → fd. LRU: an `SSL *` freed without the agent knowing ages out.
#[map]
static TLS_FDS: LruHashMap<SslKey, Binding> = LruHashMap::with_max_entries(65_536, 0);

/// Threads whose last SSL call was on an unbound `SSL *`, by pid_tgid.
#[map]
static TLS_PENDING: LruHashMap<u64, PendingBind> = LruHashMap::with_max_entries(16_384, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn bind(tgid: u32, ssl: u64, fd: i32, sock: u64) {
    let key = SslKey {
        tgid: tgid as u64,
        ssl,
    };
    let binding = Binding { fd, _pad: 0, sock };
    let _ = TLS_FDS.insert(key, binding, 0);
}

#[inline(always)]
fn is_bound(tgid: u32, ssl: u64) -> bool {
    let key = SslKey {
        tgid: tgid as u64,
        ssl,
    };
    // SAFETY: plain-old-data value, only tested for presence.
    unsafe { TLS_FDS.get(key) }.is_some()
}

/// Called by every syscall of a traced thread that moved bytes on a TCP socket (never for
/// files: OpenSSL reads certificates and random devices inside its calls too). Binds the `SSL *`
/// the thread is working on to `fd`; returns true when the syscall ran inside an SSL read or
/// write, whose bytes are ciphertext the TLS probes report in the clear.
#[inline(always)]
pub fn on_socket_syscall(pid_tgid: u64, fd: i32, sock: u64, egress: bool) -> bool {
    // Until a TLS call was seen, there is nothing to bind: one inlined load instead of two hash
    // lookups on every socket syscall of a service that never uses TLS.
    match TLS_SEEN.get(0) {
        Some(&0) | None => return false,
        Some(_) => {}
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain-old-data value copied out immediately.
    if let Some(call) = unsafe { TLS_CALLS.get(pid_tgid) }.copied() {
        bind(tgid, call.ssl, fd, sock);
        return call.func != tls_fn::HANDSHAKE;
    }
    if egress {
        // SAFETY: as above.
        if let Some(p) = unsafe { TLS_PENDING.get(pid_tgid) }.copied() {
            let _ = TLS_PENDING.remove(pid_tgid);
            if now().saturating_sub(p.at_ns) < BIND_WINDOW_NS && !is_bound(tgid, p.ssl) {
                bind(tgid, p.ssl, fd, sock);
            }
        }
    }
    false
}

/// Whether `fd` still holds the TCP socket `sock`. Not inlined: its lookup gets a stack frame
/// of its own, outside the return probe's (which holds a whole record header).
#[inline(never)]
fn still_bound(tgid: u32, fd: i32, sock: u64) -> bool {
    match lookup(tgid, fd, 0) {
        Some(c) => c.is_tcp != 0 && c.sock == sock,
        None => false,
    }
}

/// The thread's next socket write binds `ssl` (when it is still unbound then).
#[inline(always)]
fn pending(pid_tgid: u64, ssl: u64) {
    let p = PendingBind { ssl, at_ns: now() };
    let _ = TLS_PENDING.insert(pid_tgid, p, 0);
}

/// Entry of every probed SSL function; the attach cookie says which one.
#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    if let Some(seen) = TLS_SEEN.get_ptr_mut(0) {
        // SAFETY: a plain flag; written once, racing writers all write 1.
        unsafe {
            if *seen == 0 {
                *seen = 1;
            }
        }
    }
    // SAFETY: the helper reads the cookie of the link that ran this program.
    let func = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        ex_len: ctx.arg::<u64>(3).unwrap_or(0),
        enter_ns: now(),
        func,
    };
    // A handshake run from inside SSL_read/SSL_write keeps the outer call's record.
    let flags = if func == tls_fn::HANDSHAKE { 1 } else { 0 }; // BPF_NOEXIST
    if TLS_CALLS.insert(pid_tgid, call, flags).is_err() && func != tls_fn::HANDSHAKE {
        count(counter::LOST_TLS_ARGS);
    }
    0
}

/// Return of every probed SSL function: sends the plaintext it moved.
#[uretprobe]
pub fn ssl_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the helper reads the cookie of the link that ran this program.
    let func = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: plain-old-data value copied out immediately.
    let Some(call) = (unsafe { TLS_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    if call.func != func {
        return 0; // the return of a handshake nested in a read or write
    }
    let _ = TLS_CALLS.remove(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid: tgid as u64,
        ssl: call.ssl,
    };
    // A binding with fd -1 for "unbound", not an Option: LLVM leaves the payload of a None
    // undefined, and the verifier rejects a program that so much as copies an unset register.
    let unbound = Binding {
        fd: -1,
        _pad: 0,
        sock: 0,
    };
    // SAFETY: plain-old-data value copied out immediately.
    let binding = unsafe { TLS_FDS.get(key) }.copied().unwrap_or(unbound);
    // Checked on every call, handshakes included: an `SSL *` freed and allocated again at the
    // same address for a new connection finds its fd closed or holding another socket, and is
    // bound afresh by the handshake's first write, before any application data.
    let fd = if binding.fd >= 0 && !still_bound(tgid, binding.fd, binding.sock) {
        let _ = TLS_FDS.remove(key);
        -1
    } else {
        binding.fd
    };
    if fd < 0 {
        pending(pid_tgid, call.ssl);
    }
    let ret: i64 = ctx.ret::<i32>() as i64;
    let moved = match func {
        tls_fn::READ | tls_fn::WRITE => ret,
        tls_fn::READ_EX | tls_fn::WRITE_EX if ret == 1 => {
            // Into a zeroed buffer, for the same reason: no undefined value on any path.
            let mut n = [0u8; 8];
            // SAFETY: user memory read through the checked helper.
            match unsafe { bpf_probe_read_user_buf(call.ex_len as *const u8, &mut n) } {
                Ok(()) => i64::from_ne_bytes(n),
                Err(_) => 0,
            }
        }
        _ => 0,
    };
    if moved <= 0 {
        return 0;
    }
    if fd < 0 {
        count(counter::LOST_TLS_UNBOUND);
        return 0;
    }
    let Some(conn) = lookup(tgid, fd, 0) else {
        count(counter::LOST_FD_LOOKUP);
        return 0;
    };
    if conn.ignore & IGNORE_TLS != 0 {
        count(counter::SKIPPED_IGNORED);
        return 0;
    }
    let read = func == tls_fn::READ || func == tls_fn::READ_EX;
    let header = EventHeader {
        tgid,
        tid: pid_tgid as u32,
        fd,
        direction: if read { DIR_INGRESS } else { DIR_EGRESS },
        syscall: if read {
            syscall::TLS_READ
        } else {
            syscall::TLS_WRITE
        },
        source: SOURCE_TLS,
        enter_ns: call.enter_ns,
        exit_ns: now(),
        len: moved as u64,
        conn,
        ..EventHeader::default()
    };
    let args = Inflight {
        owner: pid_tgid,
        enter_ns: call.enter_ns,
        buf: call.buf,
        count: moved as u64,
        fd,
        syscall: header.syscall,
        direction: header.direction,
        kind: BufKind::Plain,
        spilled: 0,
        nr: -1,
        _pad: 0,
        sk: 0,
    };
    emit_data(&args, header, moved as u64);
    0
}

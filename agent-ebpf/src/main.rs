//! Kernel programs of the agent.
//!
//! The socket traffic of traced processes is read where it crosses a socket: the BTF
//! tracepoints `sock_recv_length` and `sock_send_length` (`socket_calls`) copy a bounded payload
//! prefix of the bytes a call moved on a TCP socket and send it with the connection's 4-tuple
//! through the `EVENTS` ring buffer; a send's start (and its arguments) is saved in its thread's
//! `INFLIGHT` slot by `tcp_sendmsg_locked`. On kernels without those tracepoints the syscall
//! tracepoints of the calls that move bytes do the same (`programs`). `connect`, `accept`,
//! `accept4` and `close` mark connection boundaries and roles; the `sched` programs keep the
//! traced set right as processes fork, exec and exit. Uprobes on TLS libraries (`tls`) send the
//! plaintext of encrypted connections the same way. Nothing here parses protocols: that is
//! userspace's job.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod call;
#[cfg(target_arch = "bpf")]
mod inflight;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod payload;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod socket_calls;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host this crate is only type-checked; the real programs are built for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

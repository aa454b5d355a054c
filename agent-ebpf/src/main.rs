//! Kernel programs of the agent.
//!
//! Syscall tracepoints record the socket traffic of traced processes: the `sys_exit_*` program
//! of a syscall that moved bytes on a TCP socket copies a bounded payload prefix and sends it
//! with the connection's 4-tuple through the `EVENTS` ring buffer. A send's start (and its
//! arguments) is saved in its thread's `INFLIGHT` slot by the BTF tracepoint
//! `tcp_sendmsg_locked`, or by the sending syscalls' enter programs on kernels without it;
//! receives need no enter program. `connect`, `accept`, `accept4` and `close` mark connection
//! boundaries and roles; the `sched` programs keep the traced set right as processes fork, exec
//! and exit. Uprobes on TLS libraries (`tls`) send the plaintext of encrypted connections the
//! same way. Nothing here parses protocols: that is userspace's job.
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

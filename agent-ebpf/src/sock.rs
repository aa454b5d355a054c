//! From a file descriptor of the current task to its TCP connection: walks
//! `task_struct → files → fdt → fd[fd] → file → socket → sock` with offsets the loader read from
//! BTF. The result is cached in `CONNS` and revalidated against the `struct file` pointer (or,
//! where the caller knows it, the socket), so a closed-and-reused fd number is never taken for
//! the old connection.

use agent_common::{AF_INET, AF_INET6, ConnInfo, OFFSET_UNKNOWN, ROLE_UNKNOWN, counter};
use aya_ebpf::helpers::{
    bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};

use crate::maps::{CONNS, count, offset};

const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;
const SOCK_STREAM: i16 = 1;
const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer only yields an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The `struct file *` behind `fd` in the current task, or `None`.
///
/// Every record walks this path, so the first four steps are direct loads from the BTF-typed
/// task pointer rather than `bpf_probe_read_kernel` calls: the verifier types each loaded pointer
/// from BTF (`task->files`, `files->fdt`, `fdt->max_fds`, `fdt->fd`; the offsets are constants
/// to it, from the read-only globals) and turns the loads into fault-tolerant ones. Only the
/// array element, a pointer to a pointer that BTF cannot type, needs the helper.
#[inline(always)]
pub fn fd_to_file(fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the helper returns the current task, a pointer the verifier types from BTF; each
    // load below is checked against the field at that offset, and a NULL pointer in the chain
    // reads as zero (fault-tolerant loads) rather than faulting.
    let fd_array: u64 = unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = *(task.add(offset!(task_files) as usize) as *const *const u8);
        if files.is_null() {
            return None;
        }
        let fdt = *(files.add(offset!(files_fdt) as usize) as *const *const u8);
        if fdt.is_null() {
            return None;
        }
        let max_fds = *(fdt.add(offset!(fdt_max_fds) as usize) as *const u32);
        if fd as u32 >= max_fds {
            return None;
        }
        *(fdt.add(offset!(fdt_fd) as usize) as *const u64)
    };
    let file: u64 = read(fd_array, (fd as u32) * 8)?;
    if file == 0 { None } else { Some(file) }
}

/// Decodes the socket behind `file`. Non-TCP files give an entry with `is_tcp == 0`.
#[inline(always)]
pub fn resolve(file: u64, role: u8) -> ConnInfo {
    let mut info = ConnInfo {
        file,
        role,
        ..ConnInfo::default()
    };
    let Some(inode) = read::<u64>(file, offset!(file_inode)) else {
        return info;
    };
    let Some(mode) = read::<u16>(inode, offset!(inode_mode)) else {
        return info;
    };
    if mode & S_IFMT != S_IFSOCK {
        return info;
    }
    let Some(socket) = read::<u64>(file, offset!(file_private_data)) else {
        return info;
    };
    let Some(sk) = read::<u64>(socket, offset!(socket_sk)) else {
        return info;
    };
    // Kept for every socket, so that the socket tracepoints find any socket's entry by it.
    info.sock = sk;
    let Some(sock_type) = read::<i16>(socket, offset!(socket_type)) else {
        return info;
    };
    if sock_type != SOCK_STREAM {
        return info;
    }
    let Some(family) = tcp_family(sk) else {
        return info;
    };
    let base = sk as *const u8;
    // SAFETY (all reads below): probe reads of kernel memory; failures leave zeroes.
    unsafe {
        if family == AF_INET {
            let _ = bpf_probe_read_kernel_buf(
                base.add(offset!(sk_rcv_saddr) as usize),
                &mut info.laddr[..4],
            );
            let _ = bpf_probe_read_kernel_buf(
                base.add(offset!(sk_daddr) as usize),
                &mut info.raddr[..4],
            );
        } else {
            let _ = bpf_probe_read_kernel_buf(
                base.add(offset!(sk_v6_rcv_saddr) as usize),
                &mut info.laddr,
            );
            let _ =
                bpf_probe_read_kernel_buf(base.add(offset!(sk_v6_daddr) as usize), &mut info.raddr);
        }
    }
    info.lport = read::<u16>(sk, offset!(sk_num)).unwrap_or(0);
    info.rport = u16::from_be(read::<u16>(sk, offset!(sk_dport)).unwrap_or(0));
    info.family = family;
    info.is_tcp = 1;
    info
}

/// The address family of `sk` when it is a TCP socket over IPv4 or IPv6 (`sk_protocol` is
/// checked where the kernel has it as a field of its own).
#[inline(always)]
pub fn tcp_family(sk: u64) -> Option<u16> {
    let family = read::<u16>(sk, offset!(sk_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    if offset!(sk_protocol) != OFFSET_UNKNOWN
        && read::<u16>(sk, offset!(sk_protocol))? != IPPROTO_TCP
    {
        return None;
    }
    Some(family)
}

/// Bytes moved on socket `sk` by a call the agent does not read (`recvmmsg`, `sendmmsg`,
/// `io_uring`): when `sk` is a TCP socket, a gap in that stream, counted.
#[inline(always)]
pub fn other_call(sk: u64) {
    if tcp_family(sk).is_some() {
        count(counter::LOST_OTHER_CALL);
    }
}

#[inline(always)]
pub fn conn_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

/// The cached connection for (tgid, fd), resolved afresh when the fd now points to another file.
/// `sk` is the socket the call is on when the caller knows it (the socket tracepoints, else 0):
/// an entry for that socket is then taken as it is, without walking the fd table, since the
/// kernel itself found `sk` behind `fd` for this call. Returns `None` when the fd cannot be
/// looked up at all.
#[inline(always)]
pub fn lookup(tgid: u32, fd: i32, sk: u64) -> Option<ConnInfo> {
    let key = conn_key(tgid, fd);
    // SAFETY: a map value, valid for this run; copied out before it is returned.
    let cached = unsafe { CONNS.get(key) };
    if let Some(entry) = cached
        && sk != 0
        && entry.sock == sk
    {
        return Some(*entry);
    }
    let file = fd_to_file(fd)?;
    if let Some(entry) = cached
        && entry.file == file
    {
        return Some(*entry);
    }
    let info = resolve(file, ROLE_UNKNOWN);
    let _ = CONNS.insert(key, info, 0);
    Some(info)
}

/// Resolves (tgid, fd) now, as a connection of the given role (after accept or connect).
#[inline(always)]
pub fn establish(tgid: u32, fd: i32, role: u8) -> Option<ConnInfo> {
    let file = fd_to_file(fd)?;
    let info = resolve(file, role);
    let _ = CONNS.insert(conn_key(tgid, fd), info, 0);
    Some(info)
}

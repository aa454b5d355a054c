//! The kernel's traced set, `TRACED`: one byte per process id (0 untraced, else why), in an
//! array map that the kernel programs read with an inlined load and that this side maps into
//! its own memory.
//!
//! The kernel marks processes too (children of traced processes, processes selected by port)
//! and unmarks them when they exit. Both sides write single bytes of the shared memory, never a
//! whole element, so neither can undo the other's write to a neighbouring process id: a map
//! update through the `bpf` syscall would rewrite all eight bytes of an element.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::{Map, MapData};
use thiserror::Error;

/// Process ids the set can hold when `pid_max` cannot be read: the kernel's own limit
/// (`PID_MAX_LIMIT` on 64-bit hosts).
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Why userspace traces a process (the kernel's own reasons are 2 and 3).
pub const BY_USER: u8 = 1;

#[derive(Debug, Error)]
pub enum TracedSetError {
    #[error("the TRACED map is not an array")]
    NotArray,
    #[error("mapping the TRACED map into memory: {0}")]
    Mmap(std::io::Error),
    #[error("process {0} is beyond the pid_max ({1}) the traced set was sized for at start-up")]
    OutOfRange(u32, usize),
}

/// Elements of `TRACED` to create: one byte per process id up to the host's `pid_max`.
pub fn elements() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT)
        .clamp(1, PID_MAX_LIMIT);
    pid_max.div_ceil(8)
}

/// The traced set, mapped into this process.
pub struct TracedSet {
    bytes: NonNull<AtomicU8>,
    len: usize,
    /// Keeps the map alive as long as its memory is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives until drop.
unsafe impl Send for TracedSet {}
// SAFETY: as above.
unsafe impl Sync for TracedSet {}

impl TracedSet {
    /// Maps the loaded `TRACED` array (created with `BPF_F_MMAPABLE`).
    pub fn new(map: Map) -> Result<Self, TracedSetError> {
        let Map::Array(data) = map else {
            return Err(TracedSetError::NotArray);
        };
        let len = data.info().map_or(0, |i| i.max_entries() as usize) * 8;
        if len == 0 {
            return Err(TracedSetError::Mmap(std::io::Error::other(
                "the kernel reports no elements for the map",
            )));
        }
        // SAFETY: a shared read-write mapping of the map's fd over its whole value area; the
        // kernel refuses (EINVAL) anything larger than the array.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(TracedSetError::Mmap(std::io::Error::last_os_error()));
        }
        let bytes = NonNull::new(addr.cast::<AtomicU8>())
            .ok_or_else(|| TracedSetError::Mmap(std::io::Error::last_os_error()))?;
        Ok(TracedSet {
            bytes,
            len,
            _map: data,
        })
    }

    fn byte(&self, pid: u32) -> Result<&AtomicU8, TracedSetError> {
        let i = pid as usize;
        if i >= self.len {
            return Err(TracedSetError::OutOfRange(pid, self.len));
        }
        // SAFETY: `i` is inside the mapping, which lives as long as `self`.
        Ok(unsafe { &*self.bytes.as_ptr().add(i) })
    }

    /// Marks `pid` traced by userspace's selection.
    pub fn insert(&self, pid: u32) -> Result<(), TracedSetError> {
        self.byte(pid)?.store(BY_USER, Ordering::Relaxed);
        Ok(())
    }

    /// Marks `pid` untraced.
    pub fn remove(&self, pid: u32) {
        if let Ok(b) = self.byte(pid) {
            b.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for TracedSet {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_for_every_process_id_of_this_host() {
        let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("a number");
        let bytes = elements() as usize * 8;
        assert!(bytes >= pid_max, "{bytes} bytes for pid_max {pid_max}");
        assert!(bytes < pid_max + 8);
        assert!(bytes <= PID_MAX_LIMIT as usize);
    }
}

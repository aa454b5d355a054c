//! The agent's own memory. The binary allocates with mimalloc, which keeps freed pages for
//! reuse; after start-up, when large one-off structures (the kernel's BTF, library symbol
//! tables) have been dropped, those pages are handed back so that the agent's resident size is
//! what it keeps, not what it once needed.
//!
//! Transparent huge pages are off for the agent. mimalloc asks for them on its arenas
//! (`MADV_HUGEPAGE`), so the first touch of a 2 MiB region made all of it resident and zeroed it,
//! and each page it later purged came back the same way: at nginx saturation the agent was
//! resident at 49 MiB for 11 MiB of heap (30 MiB with huge pages off), and zeroing those pages was
//! 6% of its CPU at a Python service's request rate.

use std::time::Duration;

/// mimalloc's `mi_option_purge_delay`, which the bindings do not name: in mimalloc 2 and 3 alike
/// it comes just before `mi_option_use_numa_nodes` in `mi_option_e`.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Longest time freed pages are kept for reuse (`keep_freed_for`).
const MAX_KEEP: Duration = Duration::from_secs(60);

/// Keeps freed pages for `d` before handing them back to the system (mimalloc's default is
/// 1 s).
///
/// Spans wait for their export batch (`OTEL_BSP_SCHEDULE_DELAY`, 5 s by default) and are freed
/// together once it is encoded. With the default delay, the pages of one batch went back to the
/// system before the next batch filled, and came back one page fault (and a zeroed page) at a
/// time: page faults and `madvise` were ~5% of the agent's CPU at a Python service's 200
/// requests/s. Kept a little longer than a batch, they are reused instead. The agent's peak
/// resident size does not change; between batches it stays at the peak instead of dipping.
pub fn keep_freed_for(d: Duration) {
    let ms = d.min(MAX_KEEP).as_millis().max(1);
    // SAFETY: sets one of mimalloc's integer options; no pointers. Without mimalloc as the
    // global allocator (unit tests) it sets an option nothing reads.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms as libc::c_long) };
}

/// Turns transparent huge pages off for this process (and its mappings made so far), before the
/// heap grows. Failure (a kernel without `PR_SET_THP_DISABLE`) leaves them as they were: only
/// memory is at stake, and the caller logs it.
pub fn disable_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; it changes this process's memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns the pages mimalloc holds free to the system.
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own heaps. Without mimalloc
    // as the global allocator (unit tests) it has nothing to collect.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // SAFETY: reads and sets integer options only.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // mimalloc 3's documented default, unless the environment set another.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                default, 1000,
                "not the purge delay: mimalloc's options moved"
            );
        }
        keep_freed_for(Duration::from_secs(10));
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
            10_000
        );
        keep_freed_for(Duration::from_secs(3600));
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
            60_000
        );
        keep_freed_for(Duration::from_millis(default as u64));
    }
}

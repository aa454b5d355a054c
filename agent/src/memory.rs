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

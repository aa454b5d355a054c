//! The agent's own memory. The binary allocates with mimalloc, which keeps freed pages for
//! reuse; after start-up, when large one-off structures (the kernel's BTF, library symbol
//! tables) have been dropped, those pages are handed back so that the agent's resident size is
//! what it keeps, not what it once needed.

/// Returns the pages mimalloc holds free to the system.
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own heaps. Without mimalloc
    // as the global allocator (unit tests) it has nothing to collect.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

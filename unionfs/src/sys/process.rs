//! Process-wide state: the allocator, the umask and credentials.

/// One malloc arena for all threads: per-thread arenas keep the memory of a large forgotten
/// tree out of reach of `malloc_trim`.
pub fn single_arena() {
    // SAFETY: mallopt only tunes the allocator; M_ARENA_MAX is -8 in glibc.
    unsafe {
        libc::mallopt(-8, 1);
    }
}

/// Returns the allocator's free memory to the system.
pub fn malloc_trim() {
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask) }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

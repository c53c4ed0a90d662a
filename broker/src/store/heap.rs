//! Gives the heap's free memory back to the operating system after a burst of writes. glibc keeps
//! freed memory in its arenas (one per thread that allocated) until told to trim: after a burst
//! the daemon's RSS stays near its peak without this. Never called on a hot path.
//!
//! The one `unsafe` of the store: `malloc_trim` is not wrapped by any safe crate.
#![allow(unsafe_code)]

/// Returns free heap pages to the OS (glibc only; elsewhere a no-op).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

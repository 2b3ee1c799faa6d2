//! How the process uses glibc's allocator. The controller's memory is its
//! caches plus what each reconcile allocates and frees (RPC connections,
//! the objects it builds and compares); glibc keeps freed memory for reuse
//! instead of returning it, so without these two settings the resident
//! size stays at the highest point any burst of reconciles (a resync of
//! every network) reached. musl and other C libraries: nothing to do.

use std::time::Duration;

/// How many malloc arenas the process may use (unless `MALLOC_ARENA_MAX`
/// says otherwise).
const ARENAS: i32 = 2;

/// How often free memory goes back to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;

    extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn malloc_trim(pad: usize) -> c_int;
    }

    /// `M_ARENA_MAX` of `<malloc.h>`.
    pub const M_ARENA_MAX: c_int = -8;
}

/// Caps glibc at [`ARENAS`] malloc arenas. glibc gives threads that
/// allocate at the same time arenas of their own, up to eight per core, and
/// memory freed in one is not reused by the others: at 1,000 networks two
/// arenas of about 34 MB each were seen besides the main one. Call before
/// any other thread starts.
pub fn cap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: sets a tunable of the allocator; no other thread runs yet.
        unsafe {
            glibc::mallopt(glibc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Returns the allocator's free pages to the system (`malloc_trim(0)`,
/// which also releases free pages inside the heap, not only at its top).
/// A few milliseconds at a thousand networks.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free pages of the allocator back.
    unsafe {
        glibc::malloc_trim(0);
    }
}

/// Runs [`release_free`] every [`TRIM_EVERY`], for as long as the runtime.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tick.tick().await;
            release_free();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both calls are safe to make at any time (here on a multi-threaded
    /// test process) and leave the allocator working.
    #[test]
    fn capping_and_trimming_leave_the_allocator_working() {
        cap_arenas();
        let big: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(big);
        release_free();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again.iter().map(|b| *b as usize).sum::<usize>(), 7 << 20);
    }
}

//! Memory given back to the operating system while the server idles.
//!
//! Both allocators keep freed memory mapped until something asks them to let go. mimalloc (Rust's allocations)
//! purges free pages of its arenas lazily, when some thread allocates again; pages of threads that ended (every
//! scan reads on threads of its own) wait for that, so an idle server keeps what its last burst freed. glibc's
//! malloc (librdkafka's allocations, from its own threads) keeps what a thread's arena freed. A background thread
//! asks both to release free memory every [`TRIM_PERIOD`] (`mi_collect`, which purges the arenas program-wide,
//! and `malloc_trim`), so the server's resident size follows what it holds, not what it once held — what the
//! reliability suite measures after a thousand abandoned connections.

use std::time::Duration;

/// How often free memory is released.
pub const TRIM_PERIOD: Duration = Duration::from_secs(2);

/// Start the thread that releases free memory every [`TRIM_PERIOD`].
pub fn start_trimmer() {
    let started = std::thread::Builder::new().name("kfsql-trim".into()).spawn(|| {
        loop {
            std::thread::sleep(TRIM_PERIOD);
            release();
        }
    });
    if let Err(e) = started {
        tracing::warn!("memory trimmer not started: {e}");
    }
}

/// Give free memory back to the operating system, from both allocators.
pub fn release() {
    // SAFETY: mi_collect works on the calling thread's heap and mimalloc's arenas under their own locks;
    // malloc_trim walks glibc's arenas under their locks. Either may be called from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}

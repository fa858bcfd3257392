//! The process allocator. mimalloc (the `mimalloc` feature, on by default) is faster than
//! glibc's malloc for the server's many small, cross-thread allocations, but by default it keeps
//! freed pages until the thread that owns them allocates again. A model's load frees hundreds of
//! megabytes of temporaries on a thread that then idles, and an unloaded model's executor
//! threads exit: measured on a 128 MiB ONNX model, the process held 466 MiB after the load and
//! still 466 MiB after the unload (glibc: 157 and 29). [`reclaim`] returns such memory to the
//! OS; the engine calls it after each load and unload. ONNX Runtime (C++) allocates through
//! glibc, whose free memory is trimmed too.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns memory freed on this thread, and by threads that have exited, to the OS: mimalloc's
/// (Rust code) and, on glibc, the C heap's (ONNX Runtime allocates there; its session for the
/// load-time cross-check is freed right after the load).
pub fn reclaim() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect takes no pointers and only walks the allocator's own structures; it is
    // safe to call from any thread at any time (mimalloc's documented contract).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a size and touches only glibc's own heap bookkeeping, under its
    // own locks; it is thread-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

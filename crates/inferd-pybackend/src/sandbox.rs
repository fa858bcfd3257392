//! What a worker process may touch. Applied in the child between fork and exec:
//!
//! - **no network** (a network namespace of its own, with nothing but a loopback that is down)
//!   unless the config sets `parameters { key: "allow_network" value: { string_value: "true" } }`;
//! - **its model folder, the whole repository and the unpacked environments read-only** (a
//!   mount namespace where each folder is bind-mounted onto itself read-only), so a model
//!   cannot rewrite its own code or weights, another model's, or an interpreter other models
//!   run;
//! - **a memory limit** (`RLIMIT_AS`; config parameter `memory_limit_mb`, default
//!   [`DEFAULT_MEMORY_LIMIT_MB`], 0 for none), so a runaway model fails its own allocations
//!   instead of the machine's;
//! - a private temporary folder (`TMPDIR`, made by the worker, removed with it).
//!
//! The namespaces need root or unprivileged user namespaces; where the kernel refuses, the
//! worker runs without them, and the server logs what the worker actually got (the worker
//! reports it after it starts), so an operator sees which protections hold.

// One of the two modules of this crate with unsafe code (with pipe.rs): pre_exec and raw system
// calls (see Cargo.toml).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The default memory limit (address space) of a worker, in MiB.
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 8192;

/// A worker's limits, as its config asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whether the worker may use the network.
    pub allow_network: bool,
    /// Address-space limit in bytes; `None`: unlimited.
    pub memory_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            allow_network: false,
            memory_bytes: Some(DEFAULT_MEMORY_LIMIT_MB << 20),
        }
    }
}

impl Limits {
    /// The limits from a config's parameters (`allow_network`, `memory_limit_mb`).
    pub fn from_parameters<'a>(
        mut get: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<Limits, String> {
        let mut l = Limits::default();
        if let Some(v) = get("allow_network") {
            l.allow_network = match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" | "" => false,
                other => {
                    return Err(format!(
                        "parameter allow_network is '{other}': give true or false"
                    ));
                }
            };
        }
        if let Some(v) = get("memory_limit_mb") {
            let mb: u64 = v.trim().parse().map_err(|_| {
                format!(
                    "parameter memory_limit_mb is '{v}': give a whole number of MiB (0: no limit)"
                )
            })?;
            l.memory_bytes = (mb > 0).then(|| mb.saturating_mul(1 << 20));
        }
        Ok(l)
    }
}

/// The `MS_*` flags a bind remount must keep (the kernel refuses to drop locked ones).
fn kept_mount_flags(dir: &Path) -> libc::c_ulong {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    out
}

/// Writes `data` to `path`: only async-signal-safe calls (this runs between fork and exec).
unsafe fn write_file(path: &CString, data: &[u8]) -> bool {
    // SAFETY: open/write/close on a valid C string and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
        libc::close(fd);
        ok
    }
}

/// Kills a worker and everything it started: the worker leads a process group of its own
/// (`process_group(0)`), so a model that forked cannot keep the worker's pipes open after it.
pub fn kill_group(child: &mut std::process::Child) {
    // Only while the worker is unreaped: its pid (the group's id) cannot have been reused.
    if let (Ok(None), Ok(pid)) = (child.try_wait(), i32::try_from(child.id())) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// Sets up `cmd` to start its process inside the limits, with the folders `read_only` (those
/// that exist) read-only.
pub fn apply(cmd: &mut Command, limits: &Limits, read_only: &[&Path]) {
    // Everything the child needs is prepared here: between fork and exec nothing may allocate.
    let dirs: Vec<(CString, libc::c_ulong)> = read_only
        .iter()
        .filter(|d| d.is_dir())
        .filter_map(|d| {
            CString::new(d.as_os_str().as_bytes())
                .ok()
                .map(|c| (c, kept_mount_flags(d)))
        })
        .collect();
    let root = CString::new("/").unwrap_or_default();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("0 {uid} 1\n").into_bytes();
    let gid_map = format!("0 {gid} 1\n").into_bytes();
    let paths = [
        "/proc/self/setgroups",
        "/proc/self/uid_map",
        "/proc/self/gid_map",
    ]
    .map(|p| CString::new(p).unwrap_or_default());
    let limits = limits.clone();
    let unshare_flags = if limits.allow_network {
        0
    } else {
        libc::CLONE_NEWNET
    } | if dirs.is_empty() {
        0
    } else {
        libc::CLONE_NEWNS
    };
    // SAFETY: the closure only makes system calls (setrlimit, unshare, open/write/close,
    // mount) on data prepared before the fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(bytes) = limits.memory_bytes {
                let r = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                libc::setrlimit(libc::RLIMIT_AS, &r);
            }
            if unshare_flags == 0 {
                return Ok(());
            }
            if libc::unshare(unshare_flags) != 0 {
                // Not root: a user namespace of its own grants the rights inside it.
                if libc::unshare(unshare_flags | libc::CLONE_NEWUSER) != 0 {
                    return Ok(()); // refused: the worker reports what it got
                }
                write_file(&paths[0], b"deny");
                write_file(&paths[1], &uid_map);
                write_file(&paths[2], &gid_map);
            }
            let null: *const libc::c_char = std::ptr::null();
            let no_data: *const libc::c_void = std::ptr::null();
            if !dirs.is_empty() {
                libc::mount(
                    null,
                    root.as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    no_data,
                );
            }
            for (dir, kept) in &dirs {
                if libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    no_data,
                ) == 0
                {
                    libc::mount(
                        null,
                        dir.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | *kept,
                        no_data,
                    );
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<&'a str> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    #[test]
    fn defaults_are_no_network_and_the_default_memory_limit() {
        let l = Limits::from_parameters(params(&[])).expect("limits");
        assert_eq!(l, Limits::default());
        assert!(!l.allow_network);
        assert_eq!(l.memory_bytes, Some(8192 << 20));
    }

    #[test]
    fn parameters_allow_the_network_and_set_or_lift_the_memory_limit() {
        let l = Limits::from_parameters(params(&[
            ("allow_network", "true"),
            ("memory_limit_mb", "512"),
        ]))
        .expect("limits");
        assert!(l.allow_network);
        assert_eq!(l.memory_bytes, Some(512 << 20));
        let l = Limits::from_parameters(params(&[("memory_limit_mb", "0")])).expect("limits");
        assert_eq!(l.memory_bytes, None);
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_parameter() {
        let e =
            Limits::from_parameters(params(&[("allow_network", "maybe")])).expect_err("refused");
        assert!(e.contains("allow_network") && e.contains("maybe"), "{e}");
        let e =
            Limits::from_parameters(params(&[("memory_limit_mb", "lots")])).expect_err("refused");
        assert!(e.contains("memory_limit_mb"), "{e}");
    }
}

//! CVE-2019-5736: a container must never get a writable handle on the runtime binary.
//!
//! Before entering any container (create, run, exec) the CLI makes itself non-dumpable (so
//! `/proc/<pid>/exe` of it and of its children cannot be opened from the container) and
//! re-executes itself from a read-only bind mount of its own binary in a private mount
//! namespace (runc 1.2's approach, without a memfd copy of a 40 MB binary): the `exe` link of
//! every runtime process that touches a container then resolves to a read-only mount, so even
//! `#!/proc/self/exe` tricks cannot open it for writing.
//!
//! The read-only mount is a detached one (`open_tree(OPEN_TREE_CLONE)` of the binary made
//! read-only with `mount_setattr`, executed through its fd with `execveat`), so no mount
//! namespace is needed for it: a copy of the host's mount namespace costs O(mounts on the
//! host), and a host running n containers holds 2n of them (each rootfs and network
//! namespace), which made every `create` and `exec` O(n) (twice: the copy, and its teardown
//! when the runtime exits). Kernels without the new mount API (before 5.12) get the private
//! namespace and the bind mount.
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{sys_err, Result};

const MARK: &str = "_BERTH_RUNTIME_RO_EXE";

/// Set in the fork server (`serve`) once it runs from the read-only clone: its children are
/// clones already and skip the re-exec.
static CLONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn mark_cloned() {
    CLONED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process runs from the read-only copy in a private mount namespace of its own
/// (kernels before 5.12), rather than from a detached mount in its caller's namespace.
static PRIVATE_NS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when the re-exec needed a private mount namespace: the fork server's children make
/// one too so that they run as a re-exec'd runtime would; with the detached mount they need
/// none (a copy of the host's mount namespace is O(mounts), see above).
pub(crate) fn private_ns() -> bool {
    PRIVATE_NS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Returns only when running from the read-only copy (or when protection is impossible,
/// e.g. the binary was deleted).
pub fn ensure_cloned() -> Result<()> {
    let _ = nix::sys::prctl::set_dumpable(false);
    if CLONED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    if let Some(mark) = std::env::var_os(MARK) {
        PRIVATE_NS.store(mark == "ns", std::sync::atomic::Ordering::Relaxed);
        std::env::remove_var(MARK);
        return Ok(());
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Ok(());
    };
    if exe.to_string_lossy().ends_with(" (deleted)") || !exe.is_absolute() {
        return Ok(());
    }
    let detached = detached_ro(&exe);
    if detached.is_none() {
        slave_mount_ns()?;
        bind_ro(&exe)?;
    }
    std::env::set_var(MARK, if detached.is_some() { "detached" } else { "ns" });
    let path = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_encoded_bytes()).ok())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut s = k.as_encoded_bytes().to_vec();
            s.push(b'=');
            s.extend_from_slice(v.as_encoded_bytes());
            CString::new(s).ok()
        })
        .collect();
    let e = match &detached {
        Some(fd) => nix::unistd::execveat(fd, c"", &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH),
        None => nix::unistd::execve(&path, &args, &env),
    };
    std::env::remove_var(MARK);
    match e {
        Err(err) => Err(sys_err("re-exec from the read-only binary")(err)),
        Ok(never) => match never {},
    }
}

/// A mount namespace of this process's own: a slave copy of its caller's, so that nothing
/// mounted in it is seen outside while the caller's new mounts still propagate in.
pub(crate) fn slave_mount_ns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mnt"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err("make / slave"))
}

/// A detached, read-only, nosuid, nodev bind mount of the file `exe` (its fd, close-on-exec),
/// or None where the kernel cannot make one.
fn detached_ro(exe: &Path) -> Option<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let fd = rustix::mount::open_tree(
        rustix::fs::CWD,
        exe,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .ok()?;
    use crate::rootfs::{mount_setattr, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    mount_setattr(
        &fd,
        0,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .ok()?;
    Some(fd)
}

fn bind_ro(exe: &PathBuf) -> Result<()> {
    mount(Some(exe), exe, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys_err("bind the runtime binary"))?;
    mount(
        None::<&str>,
        exe,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(sys_err("remount the runtime binary read-only"))
}

//! CVE-2019-5736: a container must never get a writable handle on the runtime binary.
//!
//! Before entering any container (create, run, exec) the CLI makes itself non-dumpable (so
//! `/proc/<pid>/exe` of it and of its children cannot be opened from the container) and
//! re-executes itself from a read-only bind mount of its own binary in a private mount
//! namespace (runc 1.2's approach, without a memfd copy of a 40 MB binary): the `exe` link of
//! every runtime process that touches a container then resolves to a read-only mount, so even
//! `#!/proc/self/exe` tricks cannot open it for writing.
use std::ffi::CString;
use std::path::PathBuf;

use nix::mount::{mount, MsFlags};

use crate::error::{sys_err, Result};

const MARK: &str = "_BERTH_RUNTIME_RO_EXE";

/// Set in the fork server (`serve`) once it runs from the read-only clone: its children are
/// clones already and skip the re-exec.
static CLONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn mark_cloned() {
    CLONED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Returns only when running from the read-only copy (or when protection is impossible,
/// e.g. the binary was deleted).
pub fn ensure_cloned() -> Result<()> {
    let _ = nix::sys::prctl::set_dumpable(false);
    if CLONED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    if std::env::var_os(MARK).is_some() {
        std::env::remove_var(MARK);
        return Ok(());
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Ok(());
    };
    if exe.to_string_lossy().ends_with(" (deleted)") || !exe.is_absolute() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mnt"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err("make / slave"))?;
    bind_ro(&exe)?;
    std::env::set_var(MARK, "1");
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
    let e = nix::unistd::execve(&path, &args, &env);
    std::env::remove_var(MARK);
    match e {
        Err(err) => Err(sys_err("re-exec from the read-only binary")(err)),
        Ok(never) => match never {},
    }
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

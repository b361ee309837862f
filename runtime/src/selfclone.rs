//! CVE-2019-5736: a container must never get a writable handle on the runtime binary. Before
//! entering any container (create, run, exec) the CLI re-executes itself from a sealed memfd
//! copy, so `/proc/<pid>/exe` of every runtime process that touches a container is a
//! read-only, unlinked copy (runc does the same).
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{io_err, sys_err, Result};

const MARK: &str = "_BERTH_RUNTIME_CLONED";

/// Re-exec from a sealed memfd unless already running from one. Returns only when running
/// from the copy. Set `BERTH_RUNTIME_NO_CLONE=1` to skip (benchmarks of the cost only).
pub fn ensure_cloned() -> Result<()> {
    if std::env::var_os(MARK).is_some() {
        std::env::remove_var(MARK);
        return Ok(());
    }
    if std::env::var_os("BERTH_RUNTIME_NO_CLONE").is_some() {
        return Ok(());
    }
    let name = c"berth-runtime";
    // SAFETY: memfd_create with a valid name.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io_err("memfd_create", "berth-runtime")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut src = File::open("/proc/self/exe").map_err(io_err("open", "/proc/self/exe"))?;
    let mut dst = File::from(fd);
    std::io::copy(&mut src, &mut dst).map_err(io_err("copy", "/proc/self/exe"))?;
    dst.flush().map_err(io_err("copy", "/proc/self/exe"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our memfd.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io_err("seal", "memfd")(std::io::Error::last_os_error()));
    }
    std::env::set_var(MARK, "1");
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| std::ffi::CString::new(a.as_encoded_bytes()).ok())
        .collect();
    let env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut s = k.as_encoded_bytes().to_vec();
            s.push(b'=');
            s.extend_from_slice(v.as_encoded_bytes());
            std::ffi::CString::new(s).ok()
        })
        .collect();
    let e = nix::unistd::fexecve(&dst, &args, &env);
    std::env::remove_var(MARK);
    match e {
        Err(err) => Err(sys_err("fexecve the sealed copy")(err)),
        Ok(never) => match never {},
    }
}

//! Persistent network namespaces: a new namespace bind-mounted on a file, loopback up.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::nl::Nl;
use crate::{Error, Result};

fn ns_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Netns {
        path: path.to_path_buf(),
        source,
    }
}

/// Make a new network namespace, bind-mount it at `path` (the file is created; its parent must
/// exist) and bring `lo` up. A short-lived thread unshares, so the caller's thread never moves.
/// A namespace already mounted at `path` (left by a crash) is unmounted first: the caller gets a
/// fresh, empty namespace either way.
pub fn create(path: &Path) -> Result<()> {
    if is_mounted_ns(path) {
        remove(path)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(ns_err(path))?;
    let target = path.to_path_buf();
    let res = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| ns_err(&target)(e.into()))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        nix::mount::mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| ns_err(&target)(e.into()))?;
        no_ipv6_on_new_links();
        let mut nl = Nl::new()?;
        let lo = nl.require_index("lo")?;
        nl.set_link(lo, true, None, None)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(ns_err(path)(std::io::Error::other(
            "namespace thread panicked",
        )))
    });
    if res.is_err() {
        let _ = remove(path);
    }
    res
}

/// Links made in this namespace from now on (a container's `eth0`, a switch's bridge ports) get
/// no IPv6 (calling thread's namespace): berth's networks are IPv4 only, as Docker disables IPv6
/// on a container's interface on a network without it. Else each new link autoconfigures a
/// link-local address, and its duplicate-address probes and MLD reports are flooded by the
/// switch's bridge to every other port and handled in every other container's namespace: O(n)
/// per container, O(n²) kernel work for an `up` of n (the kernel's IPv6 work was the largest
/// item growing with n in a profile of 500 services). `lo` keeps `::1`; a service's
/// `sysctls: net.ipv6.conf.all.disable_ipv6: 0` turns it on again. No IPv6 in the kernel: nothing
/// to do.
fn no_ipv6_on_new_links() {
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
}

/// Unmount and delete a namespace made by `create`. Missing is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(ns_err(path)(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err(path)(e)),
    }
}

/// True if `path` is a bind mount of a namespace (its filesystem is nsfs).
pub fn is_mounted_ns(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Run `f` on a short-lived thread inside the namespace at `path` (for /proc/sys writes and
/// sockets that must live there). The caller's thread never changes namespace.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = std::fs::File::open(path).map_err(ns_err(path))?;
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&ns),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .map_err(|e| ns_err(&p)(e.into()))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(ns_err(path)(std::io::Error::other(
            "namespace thread panicked",
        )))
    })
}

//! A mount namespace template for containers made through the fork server.
//!
//! A container's mount namespace starts as a copy of its creator's (`unshare(CLONE_NEWNS)`), is
//! made private, and after `pivot_root` the old root is detached: three walks of every mount the
//! creator sees. On a host running n containers that creator sees their n rootfs overlays and n
//! network namespace mounts, so each create cost O(n) and an `up` of n containers O(n²) (at
//! 500 services those walks were the largest cost growing faster than n in a profile of
//! `up -d`). runc and crun pay the same.
//!
//! The fork server (`serve`) makes, once at its start, a private copy of its caller's mount
//! namespace with every mount below the directories it is told (`ENV`: the caller's per-container
//! mounts) detached, and keeps an fd of it. A container's init then:
//! 1. in the caller's namespace, takes detached copies (`open_tree(OPEN_TREE_CLONE)`) of its
//!    rootfs mount and of the source of every bind mount of its spec: every host path is
//!    resolved where it always was, so a mount the host made after the template (a new volume,
//!    a disk mounted under /mnt) is seen as before;
//! 2. joins the template and unshares from it: a copy of the host's few own mounts;
//! 3. attaches the copies (`move_mount`) where it would have bind-mounted the paths.
//!
//! What the init still resolves inside the template is the host's base: /proc, /dev, /sys and
//! the cgroup mounts (never below the pruned directories), and the rootfs's own directory (if it
//! is missing there, the init goes back to its caller's namespace and takes the usual path).
//! Not used with a user namespace in the spec, with a mount namespace path to join, or where
//! the kernel lacks `open_tree` (< 5.2): the usual path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{io_err, sys_err, Result, RuntimeError};

/// The fork server's caller sets this to the directories (`:`-separated, absolute) whose mounts
/// are left out of the template; unset, the server makes none.
pub const ENV: &str = "BERTH_MOUNT_TEMPLATE_PRUNE";

/// The template of this process (a fork server's child, and the init it forks), if any.
static TEMPLATE: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Make the template (the fork server, at its start, single-threaded): a thread unshares its
/// own mount namespace (the process stays where it is), makes it private, detaches every mount
/// strictly below one of `prune` (deepest first) and returns an fd of the namespace. The thread
/// is gone when this returns, so the server forks from one thread again.
pub fn make(prune: &[PathBuf]) -> Result<OwnedFd> {
    let prune = prune.to_vec();
    std::thread::Builder::new()
        .name("berth-mnt-tmpl".into())
        .spawn(move || -> Result<OwnedFd> {
            // CLONE_NEWNS implies CLONE_FS: this thread alone moves.
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mnt"))?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys_err("make the template private"))?;
            let info = std::fs::read_to_string("/proc/thread-self/mountinfo")
                .map_err(io_err("read", "/proc/thread-self/mountinfo"))?;
            for p in to_detach(&info, &prune) {
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
            let f = std::fs::File::open("/proc/thread-self/ns/mnt")
                .map_err(io_err("open", "/proc/thread-self/ns/mnt"))?;
            Ok(OwnedFd::from(f))
        })
        .map_err(|e| io_err("spawn", "the mount template thread")(e))?
        .join()
        .unwrap_or_else(|_| Err(RuntimeError::Init("mount template thread panicked".into())))
}

/// Mount points of `mountinfo` strictly below one of `prune`, deepest first (a detach of a
/// parent takes its children along; the children first keeps every call meaningful).
pub fn to_detach(mountinfo: &str, prune: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| prune.iter().any(|d| p != d && p.starts_with(d)))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fork server's child: the template it runs with (taken by the init it forks).
pub fn set(fd: OwnedFd) {
    *TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
}

/// The template's fd (kept open by the init's fork, which closes the rest).
pub fn raw_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    TEMPLATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|f| f.as_raw_fd())
}

/// Whether this process has a template.
pub fn available() -> bool {
    TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// One bind mount of the spec to attach from a detached copy: its index in `spec.mounts()`,
/// its source and whether it is recursive.
pub struct BindSource {
    pub index: usize,
    pub source: PathBuf,
    pub recursive: bool,
}

/// What the init attaches in its new namespace instead of bind-mounting host paths.
pub struct Premounted {
    pub rootfs: OwnedFd,
    /// By index in `spec.mounts()`.
    pub binds: Vec<(usize, OwnedFd)>,
}

impl Premounted {
    pub fn bind(&self, index: usize) -> Option<&OwnedFd> {
        self.binds.iter().find(|(i, _)| *i == index).map(|(_, f)| f)
    }
}

fn clone_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(rustix::fs::CWD, path, flags).map_err(std::io::Error::from)
}

/// The init, in its caller's mount namespace, before it unshares: copy the rootfs mount and the
/// bind sources, then join the template. `Ok(None)`: no template, or something could not be
/// done here (a bind source the usual path will report on, a rootfs directory the template does
/// not show): the init is where it was and takes the usual path.
pub fn enter(rootfs: &Path, binds: &[BindSource]) -> Result<Option<Premounted>> {
    let Some(tmpl) = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Ok(None);
    };
    let Ok(root_tree) = clone_tree(rootfs, true) else {
        return Ok(None);
    };
    let mut trees = Vec::with_capacity(binds.len());
    for b in binds {
        match clone_tree(&b.source, b.recursive) {
            Ok(fd) => trees.push((b.index, fd)),
            Err(_) => return Ok(None),
        }
    }
    let host =
        std::fs::File::open("/proc/self/ns/mnt").map_err(io_err("open", "/proc/self/ns/mnt"))?;
    nix::sched::setns(tmpl.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(sys_err("setns mount template"))?;
    if !rootfs.is_dir() {
        nix::sched::setns(host.as_fd(), CloneFlags::CLONE_NEWNS)
            .map_err(sys_err("setns back to the caller's mount namespace"))?;
        return Ok(None);
    }
    Ok(Some(Premounted {
        rootfs: root_tree,
        binds: trees,
    }))
}

/// Attach a detached copy at `target` (a path, or with `target_fd` an O_PATH fd of it).
pub fn attach(tree: &OwnedFd, target_fd: Option<&OwnedFd>, target: &Path) -> Result<()> {
    use rustix::mount::MoveMountFlags;
    let r = match target_fd {
        Some(t) => rustix::mount::move_mount(
            tree.as_fd(),
            "",
            t.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        ),
        None => rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ),
    };
    r.map_err(|e| RuntimeError::Sys {
        op: format!("attach a copy of a mount on {}", target.display()),
        source: nix::errno::Errno::from_raw(e.raw_os_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detaches_only_below_the_pruned_directories_deepest_first() {
        let info = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /var/lib/berth rw - tmpfs tmpfs rw
41 40 0:51 / /var/lib/berth/containers/a/rootfs rw - overlay none rw
42 27 0:4 net:[4026532] /run/berth/netns/a rw - nsfs nsfs rw
43 27 0:52 / /run/berth/netns/with\\040space rw - nsfs nsfs rw
44 27 0:53 / /run/berthx/other rw - tmpfs tmpfs rw
45 41 0:54 / /var/lib/berth/containers/a/rootfs/proc rw - proc proc rw
";
        let prune = [PathBuf::from("/var/lib/berth"), PathBuf::from("/run/berth")];
        let got = to_detach(info, &prune);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/var/lib/berth/containers/a/rootfs/proc"),
                PathBuf::from("/var/lib/berth/containers/a/rootfs"),
                PathBuf::from("/run/berth/netns/a"),
                PathBuf::from("/run/berth/netns/with space"),
            ]
        );
    }
}

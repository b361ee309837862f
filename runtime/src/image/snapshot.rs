//! Per-container overlayfs snapshots: `dir/rootfs` = the image layers (read-only lowers) plus
//! the container's own `dir/upper` and `dir/work`. The upper dir survives unmount/remount (a
//! container restart) and goes with [`remove`].
//!
//! Mounted with the new mount API and one `lowerdir+` per layer (Linux 6.8+), so the page-size
//! limit of the `lowerdir=a:b:c` option string does not cap the layer count; older kernels get
//! the classic mount(2) (and that limit).

use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

use super::error::{ImageError, IoContext};

fn mount_err(what: String) -> impl FnOnce(rustix::io::Errno) -> ImageError {
    move |e| ImageError::Mount {
        what,
        source: e.into(),
    }
}

/// True if `path` is the root of a mount (its device or mount id differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let Some(parent) = path.parent() else {
        return true;
    };
    let id = |p: &Path| {
        statx(CWD, p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)
            .ok()
            .map(|s| s.stx_mnt_id)
    };
    match (id(path), id(parent)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// Mount the snapshot and return the rootfs path (`dir/rootfs`). `layers` are the unpacked layer
/// directories, lowest first. Mounting an already mounted snapshot returns its rootfs.
pub fn mount(layers: &[PathBuf], dir: &Path) -> Result<PathBuf, ImageError> {
    mount_opts(layers, dir, false)
}

/// [`mount`] for a throwaway snapshot (a build step): overlayfs `volatile`, so neither writes
/// nor the unmount sync the upper filesystem (an unmount otherwise waits for a whole-disk sync).
/// What must last is copied out and synced by its reader (`ImageStore::commit_dir`). A volatile
/// upper dir cannot be mounted again after a crash; it is not meant to be.
pub fn mount_volatile(layers: &[PathBuf], dir: &Path) -> Result<PathBuf, ImageError> {
    mount_opts(layers, dir, true)
}

fn mount_opts(layers: &[PathBuf], dir: &Path, volatile: bool) -> Result<PathBuf, ImageError> {
    let rootfs = dir.join("rootfs");
    let upper = dir.join("upper");
    let work = dir.join("work");
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    if is_mountpoint(&rootfs) {
        return Ok(rootfs);
    }
    // overlayfs needs at least one lower layer; an image without layers gets an empty one.
    let empty = dir.join("empty");
    let layers: Vec<PathBuf> = if layers.is_empty() {
        std::fs::create_dir_all(&empty).ctx(|| format!("creating {}", empty.display()))?;
        vec![empty]
    } else {
        dedup_layers(layers)
    };
    for l in &layers {
        if !l.is_dir() {
            return Err(ImageError::NotFound(format!(
                "layer directory {}",
                l.display()
            )));
        }
    }
    match mount_new_api(&layers, &upper, &work, &rootfs, volatile) {
        Ok(()) => Ok(rootfs),
        Err(first) => mount_legacy(&layers, &upper, &work, &rootfs, volatile)
            .map(|_| rootfs)
            .map_err(|e| match e {
                ImageError::Mount { what, source } => ImageError::Mount {
                    what: format!("{what} (new mount API: {first})"),
                    source,
                },
                e => e,
            }),
    }
}

/// overlayfs refuses the same lower dir twice (ELOOP). Images repeat a layer when a build step
/// produced the same diff (most often the empty layer): keep the top-most occurrence.
pub fn dedup_layers(layers: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<PathBuf> = layers
        .iter()
        .rev()
        .filter(|l| seen.insert((*l).clone()))
        .cloned()
        .collect();
    out.reverse();
    out
}

fn mount_new_api(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<(), ImageError> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(mount_err("fsopen overlay".into()))?;
    // Top-most lower first: overlayfs stacks lowerdirs left (top) to right (bottom).
    for l in layers.iter().rev() {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l.as_os_str())
            .map_err(mount_err(format!("overlay lowerdir+ {}", l.display())))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper.as_os_str())
        .map_err(mount_err("overlay upperdir".into()))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work.as_os_str())
        .map_err(mount_err("overlay workdir".into()))?;
    // Docker's defaults: no index (layers are shared, hard links across snapshots are fine).
    let _ = rustix::mount::fsconfig_set_string(&fs, "index", "off");
    if volatile {
        rustix::mount::fsconfig_set_flag(&fs, "volatile")
            .map_err(mount_err("overlay volatile".into()))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(mount_err("overlay create".into()))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(mount_err("fsmount overlay".into()))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(mount_err(format!(
        "move_mount overlay onto {}",
        target.display()
    )))
}

/// Kernels before 6.8 (no `lowerdir+`): one `lowerdir=a:b:c` option, limited to a page. No
/// `chdir` trick for shorter paths: the working directory is process-wide and the supervisor
/// is multi-threaded.
fn mount_legacy(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<(), ImageError> {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off{}",
        lower.join(":"),
        upper.display(),
        work.display(),
        if volatile { ",volatile" } else { "" }
    );
    let data = std::ffi::CString::new(opts).map_err(|_| ImageError::Mount {
        what: "overlay options".into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(mount_err(format!(
        "mount overlay on {} ({} layers)",
        target.display(),
        layers.len()
    )))
}

/// Unmount `dir/rootfs` if mounted. The upper dir stays (a restart remounts it).
pub fn unmount(dir: &Path) -> Result<(), ImageError> {
    let rootfs = dir.join("rootfs");
    for _ in 0..16 {
        if !is_mountpoint(&rootfs) {
            return Ok(());
        }
        match rustix::mount::unmount(&rootfs, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                // Something still holds it (a late exec): detach, the kernel frees it when idle.
                rustix::mount::unmount(&rootfs, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                    .map_err(mount_err(format!("unmount {}", rootfs.display())))?;
            }
            Err(e) => return Err(mount_err(format!("unmount {}", rootfs.display()))(e)),
        }
    }
    Ok(())
}

/// Unmount and delete the snapshot's rootfs, upper and work dirs (the container is gone).
pub fn remove(dir: &Path) -> Result<(), ImageError> {
    unmount(dir)?;
    for sub in ["rootfs", "upper", "work", "empty"] {
        let p = dir.join(sub);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx(|| format!("stat {}", p.display())),
            Ok(m) if m.is_dir() => {
                // The work dir's `work/` is mode 000: fine for root, and chmod first otherwise.
                let _ = std::fs::set_permissions(
                    p.join("work"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                );
                std::fs::remove_dir_all(&p).ctx(|| format!("removing {}", p.display()))?
            }
            Ok(_) => std::fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?,
        }
    }
    Ok(())
}

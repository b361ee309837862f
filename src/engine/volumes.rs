//! Named volumes (local driver): a directory under the state root, filled from the image's
//! content at the mount point on first use, as Docker does.

use std::fs;
use std::io;
use std::os::unix::fs::{chown, lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::paths::Paths;

pub fn volume_data(paths: &Paths, name: &str) -> PathBuf {
    paths.volumes().join(name).join("_data")
}

/// Create the volume's directory if needed; returns its data path.
pub fn ensure(paths: &Paths, name: &str) -> io::Result<PathBuf> {
    let p = volume_data(paths, name);
    fs::create_dir_all(&p)?;
    Ok(p)
}

pub fn remove(paths: &Paths, name: &str) -> io::Result<()> {
    match fs::remove_dir_all(paths.volumes().join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

/// Docker's copy-up: when an empty volume is mounted over a non-empty directory of the image,
/// the image's content is copied into the volume first (mode and ownership preserved).
/// `src` is resolved inside `rootfs` without following symlinks out of it.
pub fn copy_up(rootfs: &Path, target_in_container: &str, volume: &Path) -> io::Result<bool> {
    if !is_empty_dir(volume) {
        return Ok(false);
    }
    let Some(src) = resolve_in_root(rootfs, target_in_container) else {
        return Ok(false);
    };
    let Ok(meta) = fs::symlink_metadata(&src) else {
        return Ok(false);
    };
    if !meta.is_dir() {
        return Ok(false);
    }
    copy_tree(&src, volume)?;
    // The volume root takes the directory's mode and owner.
    fs::set_permissions(volume, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    chown(volume, Some(meta.uid()), Some(meta.gid()))?;
    Ok(true)
}

/// Resolve `path` inside `root` component by component; a symlink is followed only if its
/// target stays inside `root` (absolute targets are re-rooted). Returns None if it escapes or
/// loops.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path
        .split('/')
        .rev()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(parts.iter().collect::<PathBuf>()).join(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = fs::read_link(&candidate).ok()?;
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    parts.clear();
                }
                for seg in t.split('/').rev().filter(|s| !s.is_empty()) {
                    pending.push(seg.to_string());
                }
            }
            _ => parts.push(c),
        }
    }
    Some(root.join(parts.iter().collect::<PathBuf>()))
}

/// Copy a directory tree, preserving modes, ownership and symlinks (never following them).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
            continue;
        } else if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        } else {
            // Devices, fifos and sockets are not copied into volumes.
            continue;
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        chown(&to, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("data/sub")).unwrap();
        std::os::unix::fs::symlink("/data", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("data/esc")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/abs/sub").unwrap(),
            root.join("data/sub")
        );
        // a relative symlink climbing out is clamped at the root
        assert_eq!(
            resolve_in_root(root, "/data/esc").unwrap(),
            root.join("etc")
        );
        assert_eq!(resolve_in_root(root, "/../../x").unwrap(), root.join("x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in_root(root, "/loop"), None);
    }

    #[test]
    fn copy_up_fills_an_empty_volume_once() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        fs::create_dir_all(rootfs.join("var/www/sub")).unwrap();
        fs::write(rootfs.join("var/www/index.html"), "hi").unwrap();
        fs::set_permissions(
            rootfs.join("var/www/index.html"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("index.html", rootfs.join("var/www/link")).unwrap();
        let vol = d.path().join("vol");
        fs::create_dir(&vol).unwrap();
        assert!(copy_up(&rootfs, "/var/www", &vol).unwrap());
        assert_eq!(fs::read_to_string(vol.join("index.html")).unwrap(), "hi");
        assert_eq!(
            fs::metadata(vol.join("index.html")).unwrap().mode() & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_link(vol.join("link")).unwrap(),
            PathBuf::from("index.html")
        );
        assert!(vol.join("sub").is_dir());
        // not empty any more: no second copy
        fs::write(vol.join("index.html"), "changed").unwrap();
        assert!(!copy_up(&rootfs, "/var/www", &vol).unwrap());
        assert_eq!(
            fs::read_to_string(vol.join("index.html")).unwrap(),
            "changed"
        );
        // a missing path in the image copies nothing
        let vol2 = d.path().join("vol2");
        fs::create_dir(&vol2).unwrap();
        assert!(!copy_up(&rootfs, "/nope", &vol2).unwrap());
    }
}

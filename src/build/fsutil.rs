//! File-system helpers of the executor: paths resolved inside a rootfs (symlinks followed as the
//! container would, never out of it), the copy of context files into a rootfs with COPY's
//! ownership and mode rules, and the content hash of what a COPY reads.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::cache::{hash_file, StatCache};
use super::filestore::{FileStore, Want};
use super::ignore::{clean, Ignore};

/// Resolve `p` (absolute or relative to `/`, inside the container) to a host path under
/// `root`, following symlinks as the container would: `..` and absolute targets stay inside
/// `root`. Missing components are kept as they are (they may be created).
pub fn resolve_in_root(root: &Path, p: &str) -> anyhow::Result<PathBuf> {
    let mut todo: Vec<String> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect();
    todo.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        cur.push(c);
        let host = root.join(cur.join("/"));
        let Ok(m) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if m.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                bail!("too many levels of symbolic links in {p}");
            }
            let t = std::fs::read_link(&host)?;
            let t = t.to_string_lossy().into_owned();
            cur.pop();
            if t.starts_with('/') {
                cur.clear();
            }
            for x in t.split('/').rev() {
                if !x.is_empty() && x != "." {
                    todo.push(x.to_string());
                }
            }
        }
    }
    Ok(root.join(cur.join("/")))
}

/// `mkdir -p` inside the root; new directories get `owner` (default root) and mode 0755.
/// Returns the host path.
pub fn mkdir_in_root(root: &Path, p: &str, owner: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let mut sofar = String::new();
    let mut host = root.to_path_buf();
    for c in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        sofar.push('/');
        sofar.push_str(c);
        host = resolve_in_root(root, &sofar)?;
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{sofar} exists and is not a directory"),
            Err(_) => {
                std::fs::create_dir(&host).with_context(|| format!("creating {sofar}"))?;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755))?;
                let (u, g) = owner.unwrap_or((0, 0));
                std::os::unix::fs::lchown(&host, Some(u), Some(g))?;
            }
        }
    }
    Ok(host)
}

/// The overlay snapshot's upper-dir path of directory `merged` (a host path under the mounted
/// `rootfs`, symlinks already resolved, as `mkdir_in_root` returns it), so that a COPY can write
/// there directly instead of through the overlay (which costs a lookup in every lower layer and
/// a copy-up check per file). The directory and its parents are copied up first (a chown to its
/// own owner), so they keep the metadata the lower layers give them, as a write through the
/// mount would. None where that did not give a plain directory in the upper dir: the caller
/// writes through the mount. Entries written there shadow the lower layers' as overlayfs
/// defines (a file hides a lower directory, a directory merges with a lower one), which is
/// what COPY's replace/merge rules ask for; the mount must not be used for lookups afterwards.
pub fn upper_dir_of(rootfs: &Path, upper: &Path, merged: &Path) -> Option<PathBuf> {
    let rel = merged.strip_prefix(rootfs).ok()?;
    if rel.as_os_str().is_empty() {
        return Some(upper.to_path_buf());
    }
    let m = std::fs::symlink_metadata(merged).ok()?;
    if !m.is_dir() {
        return None;
    }
    std::os::unix::fs::lchown(merged, Some(m.uid()), Some(m.gid())).ok()?;
    let u = upper.join(rel);
    match std::fs::symlink_metadata(&u) {
        Ok(um) if um.is_dir() => Some(u),
        _ => None,
    }
}

/// How copied entries are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyMeta {
    pub owner: Option<(u32, u32)>,
    pub chmod: Option<u32>,
    /// Keep the source's uid/gid (COPY --from a stage/image; context files become root's).
    pub keep_owner: bool,
}

/// Copy the host entry `src` to `dest` (a host path already resolved inside the root; its
/// parent exists). Directories merge into existing ones; other existing entries are replaced.
/// `filter(rel)` says whether a path below `src` (relative, `/`-separated) is copied.
pub fn copy_entry(
    src: &Path,
    dest: &Path,
    meta: CopyMeta,
    rel: &str,
    filter: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    copy_entry_with(src, dest, meta, rel, filter, None)
}

/// [`copy_entry`] of context files (`rel` their context paths), regular files placed as links
/// to `files`' entries where it can (the same files, owners, modes and mtimes as a copy).
pub fn copy_entry_with(
    src: &Path,
    dest: &Path,
    meta: CopyMeta,
    rel: &str,
    filter: &dyn Fn(&str) -> bool,
    mut files: Option<&mut FileStore<'_>>,
) -> anyhow::Result<()> {
    let m = std::fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    let ft = m.file_type();
    let (uid, gid) = match (meta.owner, meta.keep_owner) {
        (Some(o), _) => o,
        (None, true) => (m.uid(), m.gid()),
        (None, false) => (0, 0),
    };
    let existing = std::fs::symlink_metadata(dest).ok();
    if ft.is_dir() {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                std::fs::remove_file(dest)?;
                std::fs::create_dir(dest)?;
            }
            None => {
                std::fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?
            }
        }
        for (n, r) in children(src, rel)? {
            if !filter(&r) {
                continue;
            }
            copy_entry_with(
                &src.join(&n),
                &dest.join(&n),
                meta,
                &r,
                filter,
                files.as_deref_mut(),
            )?;
        }
        let mode = meta.chmod.unwrap_or(m.mode() & 0o7777);
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
        return Ok(());
    }
    if let Some(e) = existing {
        if e.is_dir() {
            std::fs::remove_dir_all(dest)?;
        } else {
            std::fs::remove_file(dest)?;
        }
    }
    if ft.is_symlink() {
        let t = std::fs::read_link(src)?;
        std::os::unix::fs::symlink(&t, dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
    } else if ft.is_file() {
        if let Some(fs) = files {
            let mode = meta.chmod.unwrap_or(m.mode() & 0o7777);
            if fs.place(src, rel, &m, dest, Want { mode, uid, gid })? {
                return Ok(());
            }
        }
        let mut from =
            std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        std::io::copy(&mut from, &mut to).with_context(|| format!("copying {}", src.display()))?;
        let mode = meta.chmod.unwrap_or(m.mode() & 0o7777);
        to.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::fchown(&to, Some(uid), Some(gid))?;
        if let Ok(t) = m.modified() {
            let _ = to.set_modified(t);
        }
    } else {
        // Devices, fifos and sockets are not copied from a context (as BuildKit).
    }
    Ok(())
}

/// Write `content` as a regular file at host path `dest` (COPY heredocs).
pub fn write_file(dest: &Path, content: &[u8], meta: CopyMeta) -> anyhow::Result<()> {
    if let Ok(e) = std::fs::symlink_metadata(dest) {
        if e.is_dir() {
            bail!("{} is a directory", dest.display());
        }
        std::fs::remove_file(dest)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    std::io::Write::write_all(&mut f, content)?;
    f.set_permissions(std::fs::Permissions::from_mode(meta.chmod.unwrap_or(0o644)))?;
    let (u, g) = meta.owner.unwrap_or((0, 0));
    std::os::unix::fs::fchown(&f, Some(u), Some(g))?;
    Ok(())
}

/// A source path of a COPY, relative to the context, cleaned; refuses leaving the context.
pub fn context_rel(src: &str) -> anyhow::Result<String> {
    let c = clean(&format!("/{src}"));
    let c = c.trim_start_matches('/').to_string();
    // clean() of a rooted path drops `..` at the root; a source that tried is outside.
    let naive = clean(src);
    if naive == ".." || naive.starts_with("../") {
        bail!("{src}: the path is outside the build context");
    }
    Ok(if c.is_empty() { ".".into() } else { c })
}

/// The entries of directory `src` (whose path in the tree is `rel`), sorted by name: each
/// name with its own path in the tree (`rel/name`, or `name` at the top).
pub fn children(src: &Path, rel: &str) -> anyhow::Result<Vec<(std::ffi::OsString, String)>> {
    let mut names: Vec<_> = std::fs::read_dir(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            (n, r)
        })
        .collect())
}

/// Every path under `dir` (relative, `/`-separated, sorted), not excluded by `ignore`.
pub fn walk_context(root: &Path, ignore: &Ignore) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    fn rec(root: &Path, rel: &str, ig: &Ignore, out: &mut Vec<String>) -> anyhow::Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let excluded = ig.excluded(&r);
            if !excluded {
                out.push(r.clone());
            }
            let is_dir = std::fs::symlink_metadata(root.join(&r))
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if is_dir && (!excluded || ig.has_exclusions()) {
                rec(root, &r, ig, out)?;
            }
        }
        Ok(())
    }
    rec(root, "", ignore, &mut out)?;
    Ok(out)
}

/// The content hash of what a copy of `src` reads: names, types, modes, link targets and file
/// contents (not times, as BuildKit), owners only with `owners` (a copy that keeps them), of
/// entries `filter` keeps. (Kept for callers without a stat cache.)
#[cfg_attr(not(test), allow(dead_code))]
pub fn content_hash(
    src: &Path,
    rel: &str,
    filter: &dyn Fn(&str) -> bool,
    owners: bool,
    h: &mut Sha256,
) -> anyhow::Result<()> {
    content_hash_with(src, rel, filter, owners, None, h)
}

/// [`content_hash`], a file's content digest taken from `files` (the context's stat cache)
/// when given: the same hash, without reading files whose stat did not change.
pub fn content_hash_with(
    src: &Path,
    rel: &str,
    filter: &dyn Fn(&str) -> bool,
    owners: bool,
    mut files: Option<&mut StatCache>,
    h: &mut Sha256,
) -> anyhow::Result<()> {
    let m = std::fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    h.update(rel.as_bytes());
    h.update([0]);
    h.update((m.mode() & 0o177777).to_le_bytes());
    if owners {
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
    }
    if m.is_dir() {
        for (n, r) in children(src, rel)? {
            if filter(&r) {
                content_hash_with(&src.join(&n), &r, filter, owners, files.as_deref_mut(), h)?;
            }
        }
    } else if m.file_type().is_symlink() {
        h.update(std::fs::read_link(src)?.as_os_str().as_encoded_bytes());
    } else if m.is_file() {
        h.update(m.len().to_le_bytes());
        let d = match files {
            Some(c) => c.digest(src, rel, &m),
            None => hash_file(src),
        }
        .with_context(|| format!("reading {}", src.display()))?;
        h.update(d);
    }
    h.update([1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("usr/lib/etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("up")).unwrap();
        assert_eq!(resolve_in_root(r, "/lib/x").unwrap(), r.join("usr/lib/x"));
        assert_eq!(
            resolve_in_root(r, "lib/etc/passwd").unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(r, "/up/etc").unwrap(), r.join("etc"));
        assert_eq!(resolve_in_root(r, "/../../x").unwrap(), r.join("x"));
    }

    #[test]
    fn stat_cache_gives_the_same_hash() {
        let d = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/sub")).unwrap();
        std::fs::write(d.path().join("src/a"), "a").unwrap();
        std::fs::write(d.path().join("src/sub/b"), "bb").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("src/l")).unwrap();
        let all = |_: &str| true;
        let plain = |p: &Path| {
            let mut h = Sha256::new();
            content_hash(p, "src", &all, false, &mut h).unwrap();
            h.finalize()
        };
        let cached = |p: &Path, c: &mut StatCache| {
            let mut h = Sha256::new();
            content_hash_with(p, "src", &all, false, Some(c), &mut h).unwrap();
            h.finalize()
        };
        let src = d.path().join("src");
        let mut c = StatCache::open(store.path(), d.path());
        let first = plain(&src);
        assert_eq!(cached(&src, &mut c), first);
        assert_eq!(cached(&src, &mut c), first);
        std::fs::write(d.path().join("src/sub/b"), "cc").unwrap();
        let second = plain(&src);
        assert_ne!(second, first);
        assert_eq!(cached(&src, &mut c), second);
    }

    #[test]
    fn context_paths() {
        assert_eq!(context_rel("./a/../b").unwrap(), "b");
        assert_eq!(context_rel(".").unwrap(), ".");
        assert!(context_rel("../x").is_err());
        assert!(context_rel("a/../../x").is_err());
        assert_eq!(context_rel("/abs").unwrap(), "abs");
    }
}

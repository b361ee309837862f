//! Layer extraction that cannot write outside its target (CRATES.md §3.2).
//!
//! Never `tar::Archive::unpack`: each entry is applied with `*at` calls relative to directory fds
//! reached one component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so
//! neither `..` nor a symlink planted by an earlier entry can lead outside the layer. Whiteouts
//! are converted to the overlayfs form (0:0 character devices, `trusted.overlay.opaque=y`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use super::error::{ImageError, IoContext};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const MAX_PATH: usize = 4096;

/// A reader that hashes what passes through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Read to the end (trailing tar padding, gzip trailer) and return `sha256:<hex>` and the size.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn sniff(buf: &[u8]) -> Compression {
    if buf.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if buf.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// What unpacking a blob produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// Digest of the bytes read (the blob as stored/transferred).
    pub blob_digest: String,
    pub blob_size: u64,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    pub size: u64,
    pub entries: u64,
}

/// Decompress (gzip, zstd or none, sniffed from the magic bytes) and unpack a layer blob into
/// the existing empty directory `target`. The caller checks the digests it expects.
pub fn unpack_blob(src: impl Read, target: &Path) -> Result<Unpacked, ImageError> {
    let ctx = || format!("reading layer into {}", target.display());
    let mut outer = BufReader::with_capacity(256 * 1024, HashReader::new(src));
    let kind = sniff(outer.fill_buf().ctx(ctx)?);
    let (diff_id, size, entries) = {
        let decoder: Box<dyn Read + '_> = match kind {
            Compression::None => Box::new(&mut outer),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut outer)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(&mut outer).ctx(ctx)?),
        };
        let mut inner = HashReader::new(decoder);
        let entries = unpack_tar(&mut inner, target)?;
        let (d, s) = inner.finish().ctx(ctx)?;
        (d, s, entries)
    };
    // Whatever follows the compressed stream still belongs to the blob.
    let (blob_digest, blob_size) = outer.into_inner().finish().ctx(ctx)?;
    Ok(Unpacked {
        blob_digest,
        blob_size,
        diff_id,
        size,
        entries,
    })
}

/// Split an archive path into safe components: no absolute paths, no `..`, no NUL, bounded length.
pub(crate) fn clean_path(raw: &[u8]) -> Result<Vec<&[u8]>, ImageError> {
    let unsafe_entry = |why| ImageError::UnsafeEntry {
        path: String::from_utf8_lossy(raw).into_owned(),
        why,
    };
    if raw.contains(&0) {
        return Err(unsafe_entry("NUL byte in path"));
    }
    if raw.len() > MAX_PATH {
        return Err(unsafe_entry("path too long"));
    }
    if raw.starts_with(b"/") {
        return Err(unsafe_entry("absolute path"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry("path contains '..'")),
            c if c.len() > 255 => return Err(unsafe_entry("path component too long")),
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Unpacker {
    root: OwnedFd,
    privileged: bool,
    /// Directory mtimes are set at the end (creating children changes them).
    dir_times: Vec<(Vec<Vec<u8>>, Timestamps)>,
    /// The last parent directory reached (entries come grouped by directory).
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
}

fn os(c: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(c)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn step_resolve() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

impl Unpacker {
    fn new(target: &Path) -> Result<Unpacker, ImageError> {
        let root = rustix::fs::open(target, dir_flags(), Mode::empty())
            .ctx(|| format!("opening {}", target.display()))?;
        Ok(Unpacker {
            root,
            privileged: rustix::process::geteuid().is_root(),
            dir_times: Vec::new(),
            cache: None,
        })
    }

    /// Open the directory `comps` (relative to the layer root), creating missing components
    /// (0755, as Docker does) when `create`. Fails on any symlink along the way.
    fn open_dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        shown: &[u8],
    ) -> Result<OwnedFd, ImageError> {
        if let Some((p, fd)) = &self.cache {
            if p.len() == comps.len() && p.iter().zip(comps).all(|(a, b)| a.as_slice() == *b) {
                return rustix::io::dup(fd).ctx(|| "dup".into());
            }
        }
        let mut cur = rustix::io::dup(&self.root).ctx(|| "dup".into())?;
        for c in comps {
            let next = match rustix::fs::openat2(
                &cur,
                os(c),
                dir_flags(),
                Mode::empty(),
                step_resolve(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(e)
                                .ctx(|| format!("mkdir {}", String::from_utf8_lossy(shown)))
                        }
                    }
                    rustix::fs::openat2(&cur, os(c), dir_flags(), Mode::empty(), step_resolve())
                        .map_err(|e| map_resolve(e, shown))?
                }
                Err(e) => return Err(map_resolve(e, shown)),
            };
            cur = next;
        }
        let keep = rustix::io::dup(&cur).ctx(|| "dup".into())?;
        self.cache = Some((comps.iter().map(|c| c.to_vec()).collect(), keep));
        Ok(cur)
    }

    /// Remove whatever exists at `name` in `dir` (recursively for a directory), unless it is a
    /// directory and `keep_dir`. Returns true if a directory was kept.
    fn clear(&mut self, dir: &OwnedFd, name: &[u8], keep_dir: bool) -> Result<bool, ImageError> {
        match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e).ctx(|| format!("stat {}", String::from_utf8_lossy(name))),
            Ok(st) => {
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    if keep_dir {
                        return Ok(true);
                    }
                    self.cache = None;
                    remove_tree_at(dir, name)?;
                } else {
                    rustix::fs::unlinkat(dir, os(name), AtFlags::empty())
                        .ctx(|| format!("unlink {}", String::from_utf8_lossy(name)))?;
                }
                Ok(false)
            }
        }
    }
}

fn map_resolve(e: rustix::io::Errno, shown: &[u8]) -> ImageError {
    let path = String::from_utf8_lossy(shown).into_owned();
    match e {
        rustix::io::Errno::LOOP => ImageError::UnsafeEntry {
            path,
            why: "path goes through a symlink",
        },
        rustix::io::Errno::NOTDIR => ImageError::UnsafeEntry {
            path,
            why: "a parent is not a directory",
        },
        rustix::io::Errno::XDEV | rustix::io::Errno::AGAIN => ImageError::UnsafeEntry {
            path,
            why: "path leaves the layer",
        },
        e => ImageError::Io {
            context: format!("resolving {path}"),
            source: e.into(),
        },
    }
}

/// `rm -rf dir/name` without following symlinks.
pub(crate) fn remove_tree_at(dir: &OwnedFd, name: &[u8]) -> Result<(), ImageError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    let fd = rustix::fs::openat2(dir, os(name), dir_flags(), Mode::empty(), step_resolve())
        .ctx(|| format!("open {}", shown()))?;
    let mut children = Vec::new();
    {
        let mut d = rustix::fs::Dir::read_from(&fd).ctx(|| format!("read {}", shown()))?;
        for ent in d.by_ref() {
            let ent = ent.ctx(|| format!("read {}", shown()))?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            children.push((n.to_vec(), ent.file_type() == FileType::Directory));
        }
    }
    for (n, is_dir) in children {
        if is_dir {
            remove_tree_at(&fd, &n)?;
        } else {
            rustix::fs::unlinkat(&fd, os(&n), AtFlags::empty())
                .ctx(|| format!("unlink {}", String::from_utf8_lossy(&n)))?;
        }
    }
    rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR).ctx(|| format!("rmdir {}", shown()))
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Unpack an (uncompressed) tar stream into `target`. Returns the number of entries applied.
pub fn unpack_tar(src: impl Read, target: &Path) -> Result<u64, ImageError> {
    let mut u = Unpacker::new(target)?;
    let mut archive = tar::Archive::new(src);
    let mut count = 0u64;
    let rd = |e: io::Error| ImageError::Io {
        context: format!("reading layer tar for {}", target.display()),
        source: e,
    };
    for entry in archive.entries().map_err(rd)? {
        let mut entry = entry.map_err(rd)?;
        let raw = entry.path_bytes().into_owned();
        let comps = clean_path(&raw)?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // the layer root itself ("./")
        };
        let name = *name;
        let kind = entry.header().entry_type();
        // Whiteouts.
        if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let dir = u.open_dir(parent, true, &raw)?;
            if name == WHITEOUT_OPAQUE.as_bytes() {
                rustix::fs::fsetxattr(
                    &dir,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .ctx(|| format!("marking {} opaque", String::from_utf8_lossy(&raw)))?;
            } else if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Docker-internal metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the tree.
            } else if rest.is_empty() || rest == b"." || rest == b".." || rest.contains(&b'/') {
                return Err(ImageError::UnsafeEntry {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    why: "invalid whiteout",
                });
            } else {
                u.clear(&dir, rest, false)?;
                rustix::fs::mknodat(
                    &dir,
                    os(rest),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .ctx(|| format!("whiteout {}", String::from_utf8_lossy(&raw)))?;
            }
            count += 1;
            continue;
        }
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // PAX records override header fields that do not fit (ids above 2097151).
        let (mut pax_uid, mut pax_gid) = (None, None);
        if let Some(exts) = entry.pax_extensions().map_err(rd)? {
            for ext in exts {
                let ext = ext.map_err(rd)?;
                let num = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                match ext.key_bytes() {
                    b"uid" => pax_uid = num(),
                    b"gid" => pax_gid = num(),
                    _ => {}
                }
                if let Some(k) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    // Never trust overlay/selinux attributes from a layer.
                    if k.starts_with(b"trusted.") || k == b"security.selinux" {
                        continue;
                    }
                    xattrs.push((k.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        let mode = Mode::from_raw_mode((h.mode().map_err(rd)? & 0o7777) as _);
        let uid = match pax_uid {
            Some(u) => u,
            None => h.uid().map_err(rd)?,
        };
        let gid = match pax_gid {
            Some(g) => g,
            None => h.gid().map_err(rd)?,
        };
        if uid > u32::MAX as u64 - 1 || gid > u32::MAX as u64 - 1 {
            return Err(ImageError::UnsafeEntry {
                path: String::from_utf8_lossy(&raw).into_owned(),
                why: "uid/gid out of range",
            });
        }
        let mtime = h.mtime().unwrap_or(0);
        let owner = |fdir: &OwnedFd,
                     n: &[u8],
                     flags: AtFlags,
                     privileged: bool|
         -> Result<(), ImageError> {
            if privileged {
                rustix::fs::chownat(
                    fdir,
                    os(n),
                    Some(rustix::fs::Uid::from_raw(uid as u32)),
                    Some(rustix::fs::Gid::from_raw(gid as u32)),
                    flags,
                )
                .or_else(tolerated_chown)
                .ctx(|| format!("chown {}", String::from_utf8_lossy(n)))?;
            }
            Ok(())
        };
        let dir = u.open_dir(parent, true, &raw)?;
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        match kind {
            tar::EntryType::Directory => {
                let kept = u.clear(&dir, name, true)?;
                if !kept {
                    rustix::fs::mkdirat(&dir, os(name), Mode::from_raw_mode(0o700))
                        .ctx(|| format!("mkdir {}", shown()))?;
                }
                let fd =
                    rustix::fs::openat2(&dir, os(name), dir_flags(), Mode::empty(), step_resolve())
                        .map_err(|e| map_resolve(e, &raw))?;
                apply_meta(&fd, u.privileged, uid, gid, mode, &xattrs, None, &raw)?;
                let mut p: Vec<Vec<u8>> = parent.iter().map(|c| c.to_vec()).collect();
                p.push(name.to_vec());
                u.dir_times.push((p, times(mtime)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                u.clear(&dir, name, false)?;
                let fd = rustix::fs::openat(
                    &dir,
                    os(name),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .ctx(|| format!("create {}", shown()))?;
                let mut f = File::from(fd);
                io::copy(&mut entry, &mut f).ctx(|| format!("write {}", shown()))?;
                apply_meta(
                    f.as_fd(),
                    u.privileged,
                    uid,
                    gid,
                    mode,
                    &xattrs,
                    Some(times(mtime)),
                    &raw,
                )?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::UnsafeEntry {
                        path: shown(),
                        why: "symlink without target",
                    })?;
                if target.contains(&0) {
                    return Err(ImageError::UnsafeEntry {
                        path: shown(),
                        why: "NUL in symlink target",
                    });
                }
                u.clear(&dir, name, false)?;
                rustix::fs::symlinkat(os(&target), &dir, os(name))
                    .ctx(|| format!("symlink {}", shown()))?;
                owner(&dir, name, AtFlags::SYMLINK_NOFOLLOW, u.privileged)?;
                rustix::fs::utimensat(&dir, os(name), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .ctx(|| format!("utimes {}", shown()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::UnsafeEntry {
                        path: shown(),
                        why: "hardlink without target",
                    })?
                    .into_owned();
                let tcomps = clean_path(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(ImageError::UnsafeEntry {
                        path: shown(),
                        why: "hardlink to the layer root",
                    });
                };
                let tdir = u.open_dir(tparent, false, &target)?;
                // The link target must be a file of this layer, and never a symlink followed out.
                let st = rustix::fs::statat(&tdir, os(tname), AtFlags::SYMLINK_NOFOLLOW).map_err(
                    |e| match e {
                        rustix::io::Errno::NOENT => ImageError::UnsafeEntry {
                            path: shown(),
                            why: "hardlink target not in this layer",
                        },
                        e => ImageError::Io {
                            context: format!("stat {}", String::from_utf8_lossy(&target)),
                            source: e.into(),
                        },
                    },
                )?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(ImageError::UnsafeEntry {
                        path: shown(),
                        why: "hardlink to a directory",
                    });
                }
                if tcomps == comps {
                    continue;
                }
                let dir = u.open_dir(parent, true, &raw)?;
                u.clear(&dir, name, false)?;
                rustix::fs::linkat(&tdir, os(tname), &dir, os(name), AtFlags::empty())
                    .ctx(|| format!("link {}", shown()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && (!u.privileged || *IN_USER_NAMESPACE) {
                    // Devices need CAP_MKNOD; rootless runtimes skip them too.
                    count += 1;
                    continue;
                }
                let dev = rustix::fs::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                u.clear(&dir, name, false)?;
                rustix::fs::mknodat(&dir, os(name), ft, mode, dev)
                    .ctx(|| format!("mknod {}", shown()))?;
                owner(&dir, name, AtFlags::SYMLINK_NOFOLLOW, u.privileged)?;
                rustix::fs::chmodat(&dir, os(name), mode, AtFlags::empty())
                    .ctx(|| format!("chmod {}", shown()))?;
                rustix::fs::utimensat(&dir, os(name), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .ctx(|| format!("utimes {}", shown()))?;
            }
            _ => continue, // PAX/GNU metadata entries are consumed by the tar crate; others are ignored.
        }
        count += 1;
    }
    // Directory mtimes last, deepest first.
    let dir_times = std::mem::take(&mut u.dir_times);
    for (p, t) in dir_times.iter().rev() {
        let comps: Vec<&[u8]> = p.iter().map(|c| c.as_slice()).collect();
        let shown = p.join(&b'/');
        if let Ok(fd) = u.open_dir(&comps, false, &shown) {
            let _ = rustix::fs::futimens(&fd, t);
        }
    }
    Ok(count)
}

/// Root of a user namespace other than the initial one (a rootless berth) cannot make device
/// nodes, and cannot give a file an id its namespace does not map (EINVAL).
static IN_USER_NAMESPACE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(crate::cgroups::in_user_namespace);

/// In a user namespace, an owner outside its maps is left as the namespace's root, as podman
/// does with `ignore_chown_errors` (a user with no /etc/subuid range maps one id only).
fn tolerated_chown(e: rustix::io::Errno) -> Result<(), rustix::io::Errno> {
    if e == rustix::io::Errno::INVAL && *IN_USER_NAMESPACE {
        Ok(())
    } else {
        Err(e)
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_meta(
    fd: impl AsFd,
    privileged: bool,
    uid: u64,
    gid: u64,
    mode: Mode,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    t: Option<Timestamps>,
    raw: &[u8],
) -> Result<(), ImageError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if privileged {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid as u32)),
            Some(rustix::fs::Gid::from_raw(gid as u32)),
        )
        .or_else(tolerated_chown)
        .ctx(|| format!("chown {}", shown()))?;
    }
    // After chown: chown clears setuid/setgid.
    rustix::fs::fchmod(&fd, mode).ctx(|| format!("chmod {}", shown()))?;
    for (k, v) in xattrs {
        match rustix::fs::fsetxattr(&fd, os(k), v, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // user.* on a filesystem without xattrs, security.capability as non-root: skip.
            Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) if !privileged => {}
            Err(e) => {
                return Err(e)
                    .ctx(|| format!("setxattr {} on {}", String::from_utf8_lossy(k), shown()))
            }
        }
    }
    if let Some(t) = t {
        rustix::fs::futimens(&fd, &t).ctx(|| format!("utimes {}", shown()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;

    /// A tar entry with a raw (unchecked) name, as an attacker would write it.
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    struct Case {
        _tmp: tempfile::TempDir,
        outside: PathBuf,
        target: PathBuf,
    }

    fn case() -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("a/b/layer");
        std::fs::create_dir_all(&target).unwrap();
        Case {
            outside: tmp.path().to_path_buf(),
            target,
            _tmp: tmp,
        }
    }

    /// Every file under `dir` except those under `except`.
    fn files(dir: &Path, except: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.starts_with(except) {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                out.extend(files(&p, except));
            } else {
                out.push(p);
            }
        }
        out
    }

    fn run(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> (Case, Result<u64, ImageError>) {
        let c = case();
        let mut b = tar::Builder::new(Vec::new());
        entries(&mut b);
        let data = b.into_inner().unwrap();
        let r = unpack_tar(&data[..], &c.target);
        assert!(
            files(&c.outside, &c.target).is_empty(),
            "wrote outside the layer: {:?}",
            files(&c.outside, &c.target)
        );
        (c, r)
    }

    fn assert_unsafe(r: Result<u64, ImageError>) {
        assert!(
            matches!(r, Err(ImageError::UnsafeEntry { .. })),
            "expected rejection, got {r:?}"
        );
    }

    #[test]
    fn rejects_dotdot() {
        let (_c, r) = run(|b| raw_entry(b, "../../evil", tar::EntryType::Regular, "", b"x"));
        assert_unsafe(r);
        let (_c, r) = run(|b| raw_entry(b, "ok/../../../evil", tar::EntryType::Regular, "", b"x"));
        assert_unsafe(r);
    }

    #[test]
    fn rejects_absolute() {
        let (_c, r) =
            run(|b| raw_entry(b, "/tmp/berth-evil-abs", tar::EntryType::Regular, "", b"x"));
        assert_unsafe(r);
        assert!(!Path::new("/tmp/berth-evil-abs").exists());
    }

    #[test]
    fn symlink_then_write_through_is_rejected() {
        let (c, r) = run(|b| {
            raw_entry(b, "escape", tar::EntryType::Symlink, "../../..", b"");
            raw_entry(b, "escape/evil", tar::EntryType::Regular, "", b"x");
        });
        assert_unsafe(r);
        // The symlink itself is stored verbatim, never followed.
        assert_eq!(
            std::fs::read_link(c.target.join("escape")).unwrap(),
            Path::new("../../..")
        );
        let (_c, r) = run(|b| {
            raw_entry(b, "abs", tar::EntryType::Symlink, "/", b"");
            raw_entry(
                b,
                "abs/tmp/berth-evil-sym",
                tar::EntryType::Regular,
                "",
                b"x",
            );
        });
        assert_unsafe(r);
        assert!(!Path::new("/tmp/berth-evil-sym").exists());
        // A file entry replacing a symlink replaces the link, it does not write through it.
        let (c, r) = run(|b| {
            raw_entry(b, "f", tar::EntryType::Symlink, "../../outside-file", b"");
            raw_entry(b, "f", tar::EntryType::Regular, "", b"inside");
        });
        r.unwrap();
        assert_eq!(std::fs::read(c.target.join("f")).unwrap(), b"inside");
    }

    #[test]
    fn hardlink_outside_is_rejected() {
        let (_c, r) = run(|b| {
            raw_entry(
                b,
                "shadow",
                tar::EntryType::Link,
                "../../../etc/shadow",
                b"",
            )
        });
        assert_unsafe(r);
        let (_c, r) = run(|b| raw_entry(b, "shadow", tar::EntryType::Link, "/etc/shadow", b""));
        assert_unsafe(r);
        // Through a symlink planted first.
        let (_c, r) = run(|b| {
            raw_entry(b, "etc", tar::EntryType::Symlink, "/etc", b"");
            raw_entry(b, "shadow", tar::EntryType::Link, "etc/shadow", b"");
        });
        assert_unsafe(r);
        // A hardlink within the layer works.
        let (c, r) = run(|b| {
            raw_entry(b, "a", tar::EntryType::Regular, "", b"data");
            raw_entry(b, "d/b", tar::EntryType::Link, "a", b"");
        });
        r.unwrap();
        let (ma, mb) = (
            std::fs::metadata(c.target.join("a")).unwrap(),
            std::fs::metadata(c.target.join("d/b")).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino());
    }

    #[test]
    fn whiteout_of_parent_is_rejected() {
        let (_c, r) = run(|b| raw_entry(b, "../.wh.x", tar::EntryType::Regular, "", b""));
        assert_unsafe(r);
        let (_c, r) = run(|b| raw_entry(b, "d/.wh..", tar::EntryType::Regular, "", b""));
        assert_unsafe(r);
        let (_c, r) = run(|b| raw_entry(b, "d/.wh...", tar::EntryType::Regular, "", b""));
        assert_unsafe(r);
    }

    #[test]
    fn whiteout_becomes_char_device() {
        let (c, r) = run(|b| {
            raw_entry(b, "etc/.wh.passwd", tar::EntryType::Regular, "", b"");
            raw_entry(b, "etc/.wh..wh.plnk", tar::EntryType::Regular, "", b"");
        });
        r.unwrap();
        let m = std::fs::symlink_metadata(c.target.join("etc/passwd")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        assert!(!c.target.join("etc/.wh.passwd").exists());
        assert!(!c.target.join("etc/.wh..wh.plnk").exists());
    }

    #[test]
    fn modes_times_and_compression() {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, "bin/", tar::EntryType::Directory, "", b"");
        let mut h = tar::Header::new_gnu();
        h.set_path("bin/tool").unwrap();
        h.set_mode(0o4755);
        h.set_size(3);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let plain = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        let diff = sha256_hex(&plain);
        for blob in [&plain, &gz, &zs] {
            let c = case();
            let u = unpack_blob(&blob[..], &c.target).unwrap();
            assert_eq!(u.diff_id, diff);
            assert_eq!(u.blob_digest, sha256_hex(blob));
            let m = std::fs::metadata(c.target.join("bin/tool")).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o4755);
            assert_eq!(m.mtime(), 1_600_000_000);
            assert_eq!(
                std::fs::metadata(c.target.join("bin")).unwrap().mtime(),
                1_700_000_000
            );
        }
    }

    /// A PAX extended header ('x') carrying `records` for the next entry.
    fn pax(b: &mut tar::Builder<Vec<u8>>, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n", len counting itself.
            let body = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}").as_bytes());
            data.extend_from_slice(&body);
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }

    #[test]
    fn ownership_xattrs_and_devices_as_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let c = case();
        let mut b = tar::Builder::new(Vec::new());
        pax(
            &mut b,
            &[
                ("uid", b"3000000"),
                ("gid", b"3000001"),
                ("SCHILY.xattr.user.berth", b"v"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
        );
        let mut h = tar::Header::new_ustar();
        h.set_path("owned").unwrap();
        h.set_mode(0o2750);
        h.set_size(1);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, &b"o"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("null").unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_mode(0o666);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        let data = b.into_inner().unwrap();
        unpack_tar(&data[..], &c.target).unwrap();
        let m = std::fs::metadata(c.target.join("owned")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (3_000_000, 3_000_001, 0o2750)
        );
        assert_eq!(
            xattr::get(c.target.join("owned"), "user.berth")
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(
            xattr::get(c.target.join("owned"), "trusted.overlay.opaque").unwrap(),
            None
        );
        let n = std::fs::symlink_metadata(c.target.join("null")).unwrap();
        assert!(n.file_type().is_char_device());
        assert_eq!(n.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(n.mode() & 0o777, 0o666);
    }

    #[test]
    fn clean_path_rules() {
        assert_eq!(
            clean_path(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(clean_path(b"a/../b").is_err());
        assert!(clean_path(b"/a").is_err());
        assert!(clean_path(&[b'a'; 300]).is_err());
        assert!(clean_path(b"").unwrap().is_empty());
    }
}

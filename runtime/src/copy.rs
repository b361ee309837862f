//! Copying files between the host and a running container (`cp`), with Docker's rules for
//! where things land. The container side is reached through `/proc/<pid>/root`, so its volumes
//! and tmpfs mounts are seen as the container sees them, and every path there is resolved with
//! `openat2(RESOLVE_IN_ROOT)`: a symlink in the container (`/data -> /etc`, `../../..`) can
//! only lead somewhere inside the container, never to the host. Below the first path, the tree
//! is walked with `openat(O_NOFOLLOW)` one name at a time from directory fds, and symlinks are
//! copied as symlinks.
//!
//! Ownership, as `docker cp`: files copied into the container are owned by root unless
//! `archive` (then they keep the host's uid/gid); files copied out are owned by the caller
//! unless `archive` (then they keep the container's). Modes are kept; devices and sockets are
//! skipped (named pipes are made again).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::error::{io_err, Result, RuntimeError};

#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOpts {
    /// Keep uid/gid (`cp -a`).
    pub archive: bool,
    /// Follow a symlink given as the source (`cp -L`).
    pub follow_link: bool,
}

/// What was copied: regular files, directories, symlinks, and entries skipped (devices, sockets).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    pub skipped: u64,
}

fn bad(msg: String) -> RuntimeError {
    RuntimeError::Copy(msg)
}

/// The container's root directory, as its pid 1 sees it.
pub fn container_root(pid: i32) -> Result<OwnedFd> {
    open_root(Path::new(&format!("/proc/{pid}/root")))
}

/// A container path made relative to its root ("/a/b" and "a/b" alike); "." for the root.
fn rel(path: &str) -> PathBuf {
    let p: PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::RootDir))
        .collect();
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

/// The parent of a relative container path, "." at the top.
fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => q,
        _ => Path::new("."),
    }
}

/// `path` ends in "/." (copy a directory's contents, not the directory).
fn contents_only(path: &str) -> bool {
    path == "." || path.ends_with("/.")
}

fn in_root(root: &OwnedFd, path: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root.as_fd(),
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(Into::into)
}

fn stat_fd(fd: &OwnedFd) -> std::io::Result<rustix::fs::Stat> {
    rustix::fs::statat(
        fd.as_fd(),
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn perm(st: &rustix::fs::Stat) -> u32 {
    st.st_mode & 0o7777
}

/// Container → host. `src` is a path in the container; `dest` a host path (Docker's rules:
/// an existing directory receives `src` under its own name, or its contents for "src/.").
pub fn copy_out(root: &OwnedFd, src: &str, dest: &Path, o: CopyOpts) -> Result<Copied> {
    let srel = rel(src);
    let flags = if o.follow_link {
        OFlags::PATH
    } else {
        OFlags::PATH | OFlags::NOFOLLOW
    };
    let fd = in_root(root, &srel, flags).map_err(io_err("container path", Path::new(src)))?;
    let st = stat_fd(&fd).map_err(io_err("stat", Path::new(src)))?;
    let is_dir = file_type(&st) == FileType::Directory;
    let name = srel
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("root"));
    let target = match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            if is_dir && contents_only(src) {
                dest.to_path_buf()
            } else {
                dest.join(&name)
            }
        }
        Ok(_) if is_dir => {
            return Err(bad(format!(
                "cannot copy directory {src} onto the file {}",
                dest.display()
            )))
        }
        Ok(_) => dest.to_path_buf(),
        Err(_) => {
            if dest.as_os_str().as_bytes().ends_with(b"/") && !is_dir {
                return Err(bad(format!("{} is not a directory", dest.display())));
            }
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(bad(format!("{}: no such directory", parent.display())));
            }
            dest.to_path_buf()
        }
    };
    let mut n = Copied::default();
    // Re-open the source as a readable fd (still the same inode: from the O_PATH fd).
    out_entry(&fd, OsStr::new(""), &st, &target, o, &mut n)?;
    Ok(n)
}

/// Copy one container entry (`name` in directory `dir`, or `dir` itself when `name` is empty)
/// to the host path `to`.
fn out_entry(
    dir: &OwnedFd,
    name: &OsStr,
    st: &rustix::fs::Stat,
    to: &Path,
    o: CopyOpts,
    n: &mut Copied,
) -> Result<()> {
    let open = |flags: OFlags| -> std::io::Result<OwnedFd> {
        if name.is_empty() {
            // Reopen the O_PATH fd itself (its magic link names the same inode: nothing new
            // is resolved).
            let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
            rustix::fs::open(p.as_str(), flags | OFlags::CLOEXEC, Mode::empty()).map_err(Into::into)
        } else {
            rustix::fs::openat(
                dir.as_fd(),
                name,
                flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(Into::into)
        }
    };
    let own = |p: &Path| -> Result<()> {
        if o.archive {
            std::os::unix::fs::lchown(p, Some(st.st_uid), Some(st.st_gid))
                .map_err(io_err("chown", p))?;
        }
        Ok(())
    };
    match file_type(st) {
        FileType::RegularFile => {
            let src = open(OFlags::RDONLY).map_err(io_err("open", to))?;
            let mut r = fs::File::from(src);
            // Replace, never write through, what is there (a host symlink, say).
            let _ = fs::remove_file(to);
            let mut w = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(perm(st))
                .open(to)
                .map_err(io_err("create", to))?;
            n.bytes += std::io::copy(&mut r, &mut w).map_err(io_err("copy to", to))?;
            fs::set_permissions(to, fs::Permissions::from_mode(perm(st)))
                .map_err(io_err("chmod", to))?;
            own(to)?;
            n.files += 1;
        }
        FileType::Directory => {
            let d = open(OFlags::RDONLY | OFlags::DIRECTORY).map_err(io_err("open", to))?;
            match fs::create_dir(to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && to.is_dir() => {}
                Err(e) => return Err(io_err("mkdir", to)(e)),
            }
            n.dirs += 1;
            let entries = list(&d).map_err(io_err("read directory", to))?;
            for e in entries {
                let est = rustix::fs::statat(d.as_fd(), e.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| io_err("stat", &to.join(&e))(x.into()))?;
                out_entry(&d, &e, &est, &to.join(&e), o, n)?;
            }
            fs::set_permissions(to, fs::Permissions::from_mode(perm(st)))
                .map_err(io_err("chmod", to))?;
            own(to)?;
        }
        FileType::Symlink => {
            // An empty name reads the O_PATH symlink fd itself.
            let target = rustix::fs::readlinkat(dir.as_fd(), name, Vec::new())
                .map_err(|e| io_err("readlink", to)(e.into()))?;
            let _ = fs::remove_file(to);
            std::os::unix::fs::symlink(OsStr::from_bytes(target.as_bytes()), to)
                .map_err(io_err("symlink", to))?;
            own(to)?;
            n.links += 1;
        }
        FileType::Fifo => {
            let _ = fs::remove_file(to);
            nix::unistd::mkfifo(to, nix::sys::stat::Mode::from_bits_truncate(perm(st)))
                .map_err(|e| io_err("mkfifo", to)(e.into()))?;
            own(to)?;
            n.files += 1;
        }
        _ => n.skipped += 1,
    }
    Ok(())
}

/// The names in a directory (without "." and ".."), sorted.
fn list(d: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    let dup = d.try_clone()?;
    let mut dir = rustix::fs::Dir::new(dup)?;
    let mut v = Vec::new();
    while let Some(e) = dir.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        v.push(OsStr::from_bytes(name).to_os_string());
    }
    v.sort();
    Ok(v)
}

/// Host → container. `src` is a host path; `dest` a path in the container (Docker's rules, as
/// for `copy_out`).
pub fn copy_in(root: &OwnedFd, src: &Path, dest: &str, o: CopyOpts) -> Result<Copied> {
    let meta = if o.follow_link {
        fs::metadata(src)
    } else {
        fs::symlink_metadata(src)
    }
    .map_err(io_err("stat", src))?;
    let is_dir = meta.is_dir();
    let drel = rel(dest);
    let name = src
        .file_name()
        .map(OsString::from)
        .ok_or_else(|| bad(format!("{}: no file name to copy", src.display())))?;
    // (directory fd in the container, name in it; None: the directory itself is the target)
    let (dir, leaf): (OwnedFd, Option<OsString>) =
        match in_root(root, &drel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(d) => {
                if is_dir && contents_only(&src.to_string_lossy()) {
                    (d, None)
                } else {
                    (d, Some(name))
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && !is_dir => {
                let parent = parent_of(&drel);
                let d = in_root(root, parent, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(io_err("container directory", Path::new(dest)))?;
                (d, Some(drel.file_name().unwrap().to_os_string()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if dest.ends_with('/') && !is_dir {
                    return Err(bad(format!("{dest}: no such directory in the container")));
                }
                let parent = parent_of(&drel);
                let d =
                    in_root(root, parent, OFlags::RDONLY | OFlags::DIRECTORY).map_err(|_| {
                        bad(format!(
                            "{}: no such directory in the container",
                            Path::new("/").join(parent).display()
                        ))
                    })?;
                let leaf = drel
                    .file_name()
                    .ok_or_else(|| bad(format!("{dest}: not a file name")))?;
                (d, Some(leaf.to_os_string()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(bad(format!(
                    "cannot copy directory {} onto the file {dest}",
                    src.display()
                )))
            }
            Err(e) => return Err(io_err("container path", Path::new(dest))(e)),
        };
    let mut n = Copied::default();
    match leaf {
        Some(l) => in_entry(&dir, &l, src, &meta, o, &mut n)?,
        None => in_children(&dir, src, o, &mut n)?,
    }
    Ok(n)
}

fn in_children(dir: &OwnedFd, src: &Path, o: CopyOpts, n: &mut Copied) -> Result<()> {
    let mut names: Vec<OsString> = fs::read_dir(src)
        .map_err(io_err("read directory", src))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let p = src.join(&name);
        let m = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        in_entry(dir, &name, &p, &m, o, n)?;
    }
    Ok(())
}

/// Create `name` in the container directory `dir` from the host entry `src`.
fn in_entry(
    dir: &OwnedFd,
    name: &OsStr,
    src: &Path,
    meta: &fs::Metadata,
    o: CopyOpts,
    n: &mut Copied,
) -> Result<()> {
    let (uid, gid) = if o.archive {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    };
    let chown_at = |flags: AtFlags| -> Result<()> {
        rustix::fs::chownat(
            dir.as_fd(),
            name,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            flags,
        )
        .map_err(|e| io_err("chown in the container", src)(e.into()))
    };
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_file() {
        let mut r = fs::File::open(src).map_err(io_err("open", src))?;
        // O_NOFOLLOW: an existing symlink of that name in the container is an error, never a
        // way out.
        let fd = rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| io_err("create in the container", src)(e.into()))?;
        let mut w = fs::File::from(fd);
        n.bytes += std::io::copy(&mut r, &mut w).map_err(io_err("copy into the container", src))?;
        own_fd(&w, uid, gid, mode, src)?;
        n.files += 1;
    } else if ft.is_dir() {
        match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err("mkdir in the container", src)(e.into())),
        }
        let sub = rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open in the container", src)(e.into()))?;
        n.dirs += 1;
        in_children(&sub, src, o, n)?;
        own_fd(&sub, uid, gid, mode, src)?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("readlink", src))?;
        match rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err("replace in the container", src)(e.into())),
        }
        rustix::fs::symlinkat(&target, dir.as_fd(), name)
            .map_err(|e| io_err("symlink in the container", src)(e.into()))?;
        chown_at(AtFlags::SYMLINK_NOFOLLOW)?;
        n.links += 1;
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
        rustix::fs::mknodat(
            dir.as_fd(),
            name,
            FileType::Fifo,
            Mode::from_bits_truncate(mode),
            0,
        )
        .map_err(|e| io_err("mkfifo in the container", src)(e.into()))?;
        chown_at(AtFlags::SYMLINK_NOFOLLOW)?;
        n.files += 1;
    } else {
        n.skipped += 1;
    }
    Ok(())
}

/// Owner and mode of a file made in the container (after its content: a setuid bit survives).
fn own_fd(fd: impl AsFd, uid: u32, gid: u32, mode: u32, src: &Path) -> Result<()> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::process::Uid::from_raw(uid)),
        Some(rustix::process::Gid::from_raw(gid)),
    )
    .map_err(|e| io_err("chown in the container", src)(e.into()))?;
    rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))
        .map_err(|e| io_err("chmod in the container", src)(e.into()))
}

/// A container's root given as a host directory (a stopped container's mounted snapshot).
pub fn open_root(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open container root", dir)(e.into()))
}

/// A private scratch directory for tar streams, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let tmpl = std::env::temp_dir().join("berth-cp-XXXXXX");
        let p = nix::unistd::mkdtemp(&tmpl)
            .map_err(|e| io_err("make a scratch directory", &tmpl)(e.into()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Container → tar stream (`cp SERVICE:SRC -`): the entry `src` under its own name, as
/// `docker cp` writes it; ownership and modes as in the container.
pub fn tar_out(root: &OwnedFd, src: &str, w: impl std::io::Write, o: CopyOpts) -> Result<Copied> {
    let scratch = Scratch::new()?;
    let o = CopyOpts { archive: true, ..o };
    let n = copy_out(root, src, &scratch.0, o)?;
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut names: Vec<OsString> = fs::read_dir(&scratch.0)
        .map_err(io_err("read directory", &scratch.0))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let p = scratch.0.join(&name);
        let m = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        if m.is_dir() {
            b.append_dir_all(&name, &p)
        } else {
            b.append_path_with_name(&p, &name)
        }
        .map_err(io_err("write the tar stream", &p))?;
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err("write the tar stream", Path::new("-")))?;
    Ok(n)
}

/// Tar stream → container (`cp - SERVICE:DEST`): the archive is extracted into the existing
/// directory `dest`, ownership kept from the archive (as `docker cp -`).
pub fn tar_in(root: &OwnedFd, r: impl std::io::Read, dest: &str) -> Result<Copied> {
    match in_root(root, &rel(dest), OFlags::RDONLY | OFlags::DIRECTORY) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(bad(format!(
                "{dest}: the destination of a tar stream must be a directory"
            )))
        }
        Err(e) => return Err(io_err("container directory", Path::new(dest))(e)),
    }
    let scratch = Scratch::new()?;
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    // unpack keeps every entry inside the scratch directory (no "..", no absolute paths, no
    // writing through a symlink it made); the copy into the container then resolves in its root.
    a.unpack(&scratch.0)
        .map_err(io_err("read the tar stream", Path::new("-")))?;
    let o = CopyOpts {
        archive: true,
        follow_link: false,
    };
    copy_in(root, &scratch.0.join("."), dest, o)
}

/// Open the container directory `path` (relative), making the missing ones (0755, root's)
/// one at a time; each step is resolved in the root, so a symlink cannot lead out.
fn mkdir_p_in(root: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    let mut done = PathBuf::new();
    let mut dir = in_root(root, Path::new("."), OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(io_err("container root", Path::new("/")))?;
    for c in path.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err("mkdir in the container", &done.join(name))(e.into())),
        }
        done.push(name);
        dir = in_root(root, &done, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(io_err("container directory", &Path::new("/").join(&done)))?;
    }
    Ok(dir)
}

/// Remove `name` in `dir`, a directory with everything under it (never following a symlink).
fn remove_at(dir: &OwnedFd, name: &OsStr) -> Result<()> {
    let what = Path::new(name);
    match rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(io_err("remove in the container", what)(e.into())),
    }
    let sub = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open in the container", what)(e.into()))?;
    for child in names_in(&sub)? {
        remove_at(&sub, &child)?;
    }
    match rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err("remove in the container", what)(e.into())),
    }
}

/// The names in an open directory (without "." and "..").
fn names_in(dir: &OwnedFd) -> Result<Vec<OsString>> {
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| bad(format!("read directory: {e}")))?;
    let mut out = Vec::new();
    for e in d {
        let e = e.map_err(|e| bad(format!("read directory: {e}")))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Put the host entry `src` at exactly `dest` in the container (`berth watch`'s sync):
/// missing parents are made, an entry of another kind (or a symlink) there is replaced, a
/// file is rewritten, a directory's contents are merged. Owned by root, modes kept.
pub fn sync_in(root: &OwnedFd, src: &Path, dest: &str) -> Result<Copied> {
    let drel = rel(dest);
    let leaf = drel
        .file_name()
        .ok_or_else(|| bad(format!("{dest}: not a file name")))?
        .to_os_string();
    let meta = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    let dir = mkdir_p_in(root, parent_of(&drel))?;
    if let Ok(st) = rustix::fs::statat(dir.as_fd(), &leaf, AtFlags::SYMLINK_NOFOLLOW) {
        let there = file_type(&st);
        let same = (there == FileType::RegularFile && meta.is_file())
            || (there == FileType::Directory && meta.is_dir());
        if !same {
            remove_at(&dir, &leaf)?;
        }
    }
    let mut n = Copied::default();
    in_entry(&dir, &leaf, src, &meta, CopyOpts::default(), &mut n)?;
    Ok(n)
}

/// Remove `dest` (recursively) from the container; already absent is not an error.
pub fn remove_in(root: &OwnedFd, dest: &str) -> Result<()> {
    let drel = rel(dest);
    let Some(leaf) = drel.file_name() else {
        return Err(bad(format!("{dest}: will not remove the container's root")));
    };
    match in_root(root, parent_of(&drel), OFlags::RDONLY | OFlags::DIRECTORY) {
        Ok(dir) => remove_at(&dir, leaf),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(()),
        Err(e) => Err(io_err("container path", Path::new(dest))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_relative_to_its_root() {
        assert_eq!(rel("/"), PathBuf::from("."));
        assert_eq!(rel(""), PathBuf::from("."));
        assert_eq!(rel("/etc/hosts"), PathBuf::from("etc/hosts"));
        assert_eq!(rel("etc/"), PathBuf::from("etc"));
        assert_eq!(parent_of(&rel("/app.conf")), Path::new("."));
        assert_eq!(parent_of(&rel("/etc/app.conf")), Path::new("etc"));
        assert!(contents_only("/data/."));
        assert!(contents_only("."));
        assert!(!contents_only("/data"));
        assert!(!contents_only("/data/.x"));
    }

    /// A fake "container root" in a temp dir: the rules of where things land, the escape
    /// guard (a symlink pointing outside the root resolves inside it), ownership and modes.
    #[test]
    fn copies_both_ways_inside_the_root_only() {
        let ctr = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = open_root(ctr.path()).unwrap();
        // Container: /etc/conf (0640), /data/sub/f, /data/link -> f, /escape -> <outside dir>.
        fs::create_dir_all(ctr.path().join("etc")).unwrap();
        fs::write(ctr.path().join("etc/conf"), "inside").unwrap();
        fs::set_permissions(
            ctr.path().join("etc/conf"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::create_dir_all(ctr.path().join("data/sub")).unwrap();
        fs::write(ctr.path().join("data/sub/f"), "deep").unwrap();
        std::os::unix::fs::symlink("sub/f", ctr.path().join("data/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ctr.path().join("escape")).unwrap();
        fs::write(outside.path().join("secret"), "host secret").unwrap();
        let o = CopyOpts::default();

        // Out: a file into an existing directory lands under its own name, mode kept.
        copy_out(&root, "/etc/conf", host.path(), o).unwrap();
        let got = host.path().join("conf");
        assert_eq!(fs::read_to_string(&got).unwrap(), "inside");
        assert_eq!(
            fs::metadata(&got).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // A directory to a new name; its symlink stays a symlink.
        let n = copy_out(&root, "/data", &host.path().join("d2"), o).unwrap();
        assert_eq!((n.files, n.dirs, n.links), (1, 2, 1));
        assert_eq!(
            fs::read_to_string(host.path().join("d2/sub/f")).unwrap(),
            "deep"
        );
        assert_eq!(
            fs::read_link(host.path().join("d2/link")).unwrap(),
            PathBuf::from("sub/f")
        );
        // A symlink given as the source stays a symlink (-L follows it).
        copy_out(&root, "/data/link", &host.path().join("l1"), o).unwrap();
        assert_eq!(
            fs::read_link(host.path().join("l1")).unwrap(),
            PathBuf::from("sub/f")
        );
        let follow = CopyOpts {
            follow_link: true,
            ..o
        };
        copy_out(&root, "/data/link", &host.path().join("l2"), follow).unwrap();
        assert_eq!(fs::read_to_string(host.path().join("l2")).unwrap(), "deep");
        // "dir/." into an existing directory: the contents.
        fs::create_dir(host.path().join("d3")).unwrap();
        copy_out(&root, "/data/.", &host.path().join("d3"), o).unwrap();
        assert!(host.path().join("d3/sub/f").exists());
        // The symlink out of the root resolves inside it: no such file there.
        assert!(copy_out(&root, "/escape/secret", &host.path().join("s"), o).is_err());
        assert!(!host.path().join("s").exists());

        // In: a file to a new name, owned by root, mode kept.
        let hf = host.path().join("hostfile");
        fs::write(&hf, "from host").unwrap();
        fs::set_permissions(&hf, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&hf, Some(1234), Some(1234)).unwrap();
        copy_in(&root, &hf, "/etc/new", o).unwrap();
        let m = fs::metadata(ctr.path().join("etc/new")).unwrap();
        assert_eq!(
            fs::read_to_string(ctr.path().join("etc/new")).unwrap(),
            "from host"
        );
        assert_eq!((m.uid(), m.permissions().mode() & 0o777), (0, 0o600));
        // -a keeps the host's owner.
        copy_in(&root, &hf, "/etc/kept", CopyOpts { archive: true, ..o }).unwrap();
        assert_eq!(
            fs::metadata(ctr.path().join("etc/kept")).unwrap().uid(),
            1234
        );
        // Into "/escape/": it resolves inside the root (a missing directory there), and the
        // host directory it points at is untouched.
        assert!(copy_in(&root, &hf, "/escape/", o).is_err());
        assert!(copy_in(&root, &hf, "/escape/x", o).is_err());
        assert!(!outside.path().join("hostfile").exists());
        assert!(!outside.path().join("x").exists());
        // Over an existing symlink: refused (O_NOFOLLOW), not followed.
        std::os::unix::fs::symlink("/etc/conf", ctr.path().join("etc/trap")).unwrap();
        assert!(copy_in(&root, &hf, "/etc/trap", o).is_err());
        assert_eq!(
            fs::read_to_string(ctr.path().join("etc/conf")).unwrap(),
            "inside"
        );
        // A directory into an existing one, under its own name.
        copy_in(&root, &host.path().join("d2"), "/data", o).unwrap();
        assert_eq!(
            fs::read_to_string(ctr.path().join("data/d2/sub/f")).unwrap(),
            "deep"
        );
        // A file onto a missing directory path ("dir/"): an error.
        assert!(copy_in(&root, &hf, "/nowhere/", o).is_err());
    }

    /// watch's sync: exact placement with parents made, kind changes, removal, and no way
    /// out of the root through a symlink on the way.
    #[test]
    fn sync_in_and_remove_in_stay_inside_the_root() {
        let ctr = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = open_root(ctr.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), ctr.path().join("escape")).unwrap();
        fs::write(host.path().join("f"), "v1").unwrap();
        sync_in(&root, &host.path().join("f"), "/app/deep/f.txt").unwrap();
        assert_eq!(
            fs::read_to_string(ctr.path().join("app/deep/f.txt")).unwrap(),
            "v1"
        );
        fs::write(host.path().join("f"), "v2").unwrap();
        sync_in(&root, &host.path().join("f"), "/app/deep/f.txt").unwrap();
        assert_eq!(
            fs::read_to_string(ctr.path().join("app/deep/f.txt")).unwrap(),
            "v2"
        );
        // A directory replaces a file of the same name, contents merged in.
        fs::create_dir_all(host.path().join("d/e")).unwrap();
        fs::write(host.path().join("d/e/g"), "g").unwrap();
        sync_in(&root, &host.path().join("d"), "/app/deep/f.txt").unwrap();
        assert_eq!(
            fs::read_to_string(ctr.path().join("app/deep/f.txt/e/g")).unwrap(),
            "g"
        );
        // Through the symlink: resolved inside the root (where that path does not exist),
        // so the host directory is never written.
        assert!(sync_in(&root, &host.path().join("f"), "/escape/x").is_err());
        assert!(!outside.path().join("x").exists());
        remove_in(&root, "/app/deep").unwrap();
        assert!(!ctr.path().join("app/deep").exists());
        assert!(ctr.path().join("app").exists());
        remove_in(&root, "/app/deep/none").unwrap();
        remove_in(&root, "/escape").unwrap();
        assert!(outside.path().exists(), "only the link goes");
        assert!(remove_in(&root, "/").is_err());
    }
}

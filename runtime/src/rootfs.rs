//! The container's filesystem: mounts from the spec, /dev, pivot_root, read-only and masked
//! paths. Runs in the container init, inside its new mount namespace.
//!
//! Every destination is resolved inside the rootfs with `openat2(RESOLVE_IN_ROOT)`: a symlink
//! in the image is followed as if the rootfs were `/`, never out of it. The mount then targets
//! the opened object through `/proc/self/fd/N`, so nothing can be swapped in between.
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{io_err, Result, RuntimeError};

/// Docker's masked paths (moby `DefaultLinuxSpec`).
pub const DOCKER_MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Docker's read-only paths.
pub const DOCKER_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's masked paths plus `/sys/devices/system/cpu/cpuN/thermal_throttle` for every CPU of
/// this host that has one.
pub fn docker_masked_paths() -> Vec<String> {
    let mut v: Vec<String> = DOCKER_MASKED_PATHS.iter().map(|s| s.to_string()).collect();
    if let Ok(rd) = std::fs::read_dir("/sys/devices/system/cpu") {
        let mut extra: Vec<String> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("cpu") && n[3..].chars().all(|c| c.is_ascii_digit()) && n.len() > 3
            })
            .map(|e| e.path().join("thermal_throttle"))
            .filter(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        extra.sort();
        v.extend(extra);
    }
    v
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Path relative to the rootfs, refusing `..` (destinations must be absolute and clean).
fn rel(dest: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in dest.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "mount destination {} must not contain '..'",
                    dest.display()
                )))
            }
        }
    }
    Ok(out)
}

fn open_root(rootfs: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open rootfs", rootfs)(e.into()))
}

fn openat_in_root(root: &OwnedFd, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    let p: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root.as_fd(),
        p,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(Into::into)
}

/// Open `rel` (relative to `rootfs`, symlinks resolved inside it) with `flags` (libc O_*).
pub fn open_in_root(rootfs: &Path, rel_path: &Path, flags: i32) -> Result<OwnedFd> {
    let root = open_root(rootfs)?;
    let r = rel(rel_path)?;
    openat_in_root(&root, &r, OFlags::from_bits_retain(flags as u32))
        .map_err(|e| io_err("open", rootfs.join(&r))(e))
}

/// An O_PATH fd to `rel` inside the root, creating it (and missing parents) as a directory or
/// an empty file.
fn ensure(root: &OwnedFd, rel_path: &Path, dir: bool, depth: u32) -> std::io::Result<OwnedFd> {
    match openat_in_root(root, rel_path, OFlags::PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && depth < 40 => {}
        Err(e) => return Err(e),
    }
    let parent = rel_path.parent().unwrap_or(Path::new(""));
    let name = rel_path
        .file_name()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let pfd = ensure(root, parent, true, depth + 1)?;
    // Re-open the parent as a real directory fd (O_PATH cannot be used for mkdirat on all kernels).
    let pdir = rustix::fs::openat(
        pfd.as_fd(),
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let r = if dir {
        rustix::fs::mkdirat(pdir.as_fd(), name, Mode::from_raw_mode(0o755)).map(|_| ())
    } else {
        rustix::fs::openat(
            pdir.as_fd(),
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    };
    match r {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {
            // A dangling symlink: create its target, taken inside the root.
            if let Ok(target) = rustix::fs::readlinkat(pdir.as_fd(), name, Vec::new()) {
                let t = Path::new(std::ffi::OsStr::from_bytes(target.as_bytes()));
                let base = if t.is_absolute() {
                    Path::new("")
                } else {
                    parent
                };
                let joined = clamp_join(base, t);
                ensure(root, &joined, dir, depth + 1)?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    // A dangling symlink named `name` resolves (inside the root) to something still missing:
    // bounded by `depth`.
    ensure(root, rel_path, dir, depth + 1)
}

/// `base/rel` normalised lexically, `..` never climbing above the root.
fn clamp_join(base: &Path, rel_path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.components().chain(rel_path.components()) {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn do_mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &Path,
) -> Result<()> {
    mount(src, target, fstype, flags, data).map_err(|source| RuntimeError::Sys {
        op: format!(
            "mount {} on {} ({})",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            what.display(),
            fstype.unwrap_or("bind")
        ),
        source,
    })
}

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOpts {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
    /// `rro`, or `ro` on an `rbind`: every submount read-only too (mount_setattr).
    pub recursive_ro: bool,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            recursive: false,
            recursive_ro: false,
        }
    }
}

pub fn parse_options(opts: &[String]) -> MountOpts {
    let mut m = MountOpts::default();
    for o in opts {
        let (set, clr): (MsFlags, MsFlags) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                m.bind = true;
                continue;
            }
            "rbind" => {
                m.bind = true;
                m.recursive = true;
                continue;
            }
            "rro" => {
                m.recursive_ro = true;
                (MsFlags::MS_RDONLY, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                let f = if o.starts_with('r') && o != "rw" {
                    base | MsFlags::MS_REC
                } else {
                    base
                };
                m.propagation.push(f);
                continue;
            }
            // Options we accept and ignore (Docker / runc extensions).
            "tmpcopyup" | "z" | "Z" | "nocopy" => continue,
            other => {
                m.data.push(other.to_string());
                continue;
            }
        };
        m.flags |= set;
        m.flags &= !clr;
        m.clear |= clr;
    }
    m
}

/// What the init needs to know beyond the spec.
pub struct RootfsCtx<'a> {
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub cgroup_ns: bool,
    pub cgroup: Option<&'a crate::cgroups::Cgroup>,
    pub terminal: bool,
}

/// Refuse a rootfs whose /proc, /sys or /dev is a symlink (they would let a mount escape).
pub fn check_rootfs(rootfs: &Path) -> Result<()> {
    for d in ["proc", "sys", "dev"] {
        let p = rootfs.join(d);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            if md.file_type().is_symlink() {
                return Err(RuntimeError::UnsafeRootfs(format!(
                    "{} is a symlink",
                    p.display()
                )));
            }
            if !md.is_dir() {
                return Err(RuntimeError::UnsafeRootfs(format!(
                    "{} is not a directory",
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

/// The spec's bind mounts (index in `spec.mounts()`, source, recursive), as `mount_one` makes
/// them: what a container made from the mount template (`mnttmpl`) copies before it leaves its
/// caller's namespace.
pub fn bind_sources(spec: &Spec, bundle: &Path) -> Vec<crate::mnttmpl::BindSource> {
    let mut out = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        if let Some(Some(source)) = bind_source(m, &opts, bundle) {
            out.push(crate::mnttmpl::BindSource {
                index,
                source,
                recursive: opts.recursive,
            });
        }
    }
    out
}

/// A bind mount's source (`Some(None)`: a bind without one), or None if `m` is not a bind.
/// cgroup mounts are never binds here (`mount_cgroup` binds what it needs itself).
fn bind_source(m: &Mount, opts: &MountOpts, bundle: &Path) -> Option<Option<PathBuf>> {
    let typ = m.typ().as_deref().unwrap_or("none");
    if typ == "cgroup" || typ == "cgroup2" || !(opts.bind || typ == "bind") {
        return None;
    }
    Some(m.source().as_ref().map(|s| {
        if s.is_absolute() {
            s.clone()
        } else {
            bundle.join(s)
        }
    }))
}

/// Everything before pivot_root: propagation, the rootfs bind, the spec's mounts, /dev.
/// With `pre` (the mount template), the rootfs and the bind mounts are attached from the copies
/// taken in the caller's namespace instead of bound from host paths.
pub fn prepare(
    spec: &Spec,
    ctx: &RootfsCtx,
    pre: Option<&crate::mnttmpl::Premounted>,
) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .map(|p| parse_options(&[p]).propagation)
        .and_then(|v| v.first().copied())
        .unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    do_mount(None, Path::new("/"), None, prop, None, Path::new("/"))?;
    crate::trace::step(|| "init: / made private".into());
    // The rootfs must be a mount point for pivot_root.
    match pre {
        Some(p) => crate::mnttmpl::attach(&p.rootfs, None, ctx.rootfs)?,
        None => do_mount(
            Some(ctx.rootfs),
            ctx.rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            ctx.rootfs,
        )?,
    }
    check_rootfs(ctx.rootfs)?;
    let root = open_root(ctx.rootfs)?;
    let mut has_dev = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if rel(m.destination())? == Path::new("dev") {
            has_dev = true;
        }
        mount_one(&root, m, ctx, pre.and_then(|p| p.bind(i)))?;
    }
    let devices = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
    create_devices(&root, &devices, has_dev)?;
    Ok(())
}

fn mount_one(root: &OwnedFd, m: &Mount, ctx: &RootfsCtx, tree: Option<&OwnedFd>) -> Result<()> {
    let dest_rel = rel(m.destination())?;
    let dest_abs = ctx.rootfs.join(&dest_rel);
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().clone().unwrap_or_else(|| "none".into());
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, m, &opts, ctx);
    }
    if let Some(src) = bind_source(m, &opts, ctx.bundle) {
        let src = src.ok_or_else(|| {
            RuntimeError::InvalidSpec(format!(
                "bind mount to {} has no source",
                m.destination().display()
            ))
        })?;
        // The copy's root is what `src` was in the caller's namespace (the template may not
        // show `src` as it is there).
        let is_dir = match tree {
            Some(t) => rustix::fs::fstat(t)
                .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
                .map_err(|e| io_err("stat bind source", &src)(e.into()))?,
            None => std::fs::metadata(&src)
                .map_err(io_err("stat bind source", &src))?
                .is_dir(),
        };
        let target = ensure(root, &dest_rel, is_dir, 0).map_err(io_err("create", &dest_abs))?;
        let mut flags = MsFlags::MS_BIND;
        if opts.recursive {
            flags |= MsFlags::MS_REC;
        }
        match tree {
            // A copy of `src` taken in the caller's namespace (the mount template).
            Some(t) => crate::mnttmpl::attach(t, Some(&target), &dest_abs)?,
            None => do_mount(Some(&src), &fd_path(&target), None, flags, None, &dest_abs)?,
        }
        let extra = opts.flags & !MsFlags::MS_REMOUNT;
        if !extra.is_empty() {
            // Per-mount flags need a remount; the target fd still names the old mountpoint, so
            // reopen through the root.
            let t2 =
                openat_in_root(root, &dest_rel, OFlags::PATH).map_err(io_err("open", &dest_abs))?;
            remount_bind(&fd_path(&t2), extra, &dest_abs)?;
            if extra.contains(MsFlags::MS_RDONLY) && (opts.recursive || opts.recursive_ro) {
                // Docker 25+: a read-only rbind is read-only all the way down.
                recursive_readonly(&t2, &dest_abs)?;
            }
        }
        apply_propagation(root, &dest_rel, &opts, &dest_abs)?;
        return Ok(());
    }
    let target = ensure(root, &dest_rel, true, 0).map_err(io_err("create", &dest_abs))?;
    let data = opts.data.join(",");
    let src = m
        .source()
        .clone()
        .unwrap_or_else(|| PathBuf::from(typ.as_str()));
    let r = do_mount(
        Some(&src),
        &fd_path(&target),
        Some(&typ),
        opts.flags & !MsFlags::MS_REMOUNT,
        if data.is_empty() { None } else { Some(&data) },
        &dest_abs,
    );
    if let Err(e) = r {
        if typ == "sysfs" {
            // Host network namespace: sysfs cannot be mounted fresh; bind the host's (runc).
            do_mount(
                Some(Path::new("/sys")),
                &fd_path(&target),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                &dest_abs,
            )?;
            let t2 =
                openat_in_root(root, &dest_rel, OFlags::PATH).map_err(io_err("open", &dest_abs))?;
            remount_bind(&fd_path(&t2), opts.flags, &dest_abs)?;
        } else if typ == "devpts"
            && data.contains("gid=")
            && matches!(&e, RuntimeError::Sys { source, .. } if *source == nix::errno::Errno::EINVAL)
        {
            // A user namespace that does not map the tty group (a rootless berth with one id
            // mapped): the pty's group is left as the namespace's, as runc and crun do.
            let data: Vec<&str> = data.split(',').filter(|o| !o.starts_with("gid=")).collect();
            let data = data.join(",");
            do_mount(
                Some(&src),
                &fd_path(&target),
                Some(&typ),
                opts.flags & !MsFlags::MS_REMOUNT,
                if data.is_empty() { None } else { Some(&data) },
                &dest_abs,
            )?;
        } else {
            return Err(e);
        }
    }
    apply_propagation(root, &dest_rel, &opts, &dest_abs)
}

fn apply_propagation(
    root: &OwnedFd,
    dest_rel: &Path,
    opts: &MountOpts,
    dest_abs: &Path,
) -> Result<()> {
    for p in &opts.propagation {
        let t = openat_in_root(root, dest_rel, OFlags::PATH).map_err(io_err("open", dest_abs))?;
        do_mount(None, &fd_path(&t), None, *p, None, dest_abs)?;
    }
    Ok(())
}

/// `mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)` on the mount at `fd`.
fn recursive_readonly(fd: &OwnedFd, what: &Path) -> Result<()> {
    mount_setattr(fd, libc::AT_RECURSIVE as u32, MOUNT_ATTR_RDONLY)
        .map_err(io_err("make read-only recursively", what))
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `mount_setattr(2)` (Linux 5.12) on the mount at `fd` itself (`AT_EMPTY_PATH`, plus
/// `at_flags`, e.g. `AT_RECURSIVE`): set the `MOUNT_ATTR_*` bits of `attr_set`.
pub(crate) fn mount_setattr(fd: &OwnedFd, at_flags: u32, attr_set: u64) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid fd, NUL-terminated empty path with AT_EMPTY_PATH, struct of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Flags a remount must keep (locked or already set on the mount).
fn current_flags(target: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(target) {
        use nix::sys::statvfs::FsFlags;
        let fl = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        ] {
            if fl.contains(a) {
                f |= b;
            }
        }
    }
    f
}

fn remount_bind(target: &Path, flags: MsFlags, what: &Path) -> Result<()> {
    let f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | current_flags(target) | flags;
    do_mount(None, target, None, f, None, what)
}

fn mount_cgroup(root: &OwnedFd, m: &Mount, opts: &MountOpts, ctx: &RootfsCtx) -> Result<()> {
    let dest_rel = rel(m.destination())?;
    let dest_abs = ctx.rootfs.join(&dest_rel);
    let target = ensure(root, &dest_rel, true, 0).map_err(io_err("create", &dest_abs))?;
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    if crate::cgroups::host_version() == crate::cgroups::Version::V2 {
        if ctx.cgroup_ns {
            return do_mount(
                Some(Path::new("cgroup")),
                &fd_path(&target),
                Some("cgroup2"),
                flags,
                None,
                &dest_abs,
            );
        }
        let Some(cg) = ctx.cgroup else { return Ok(()) };
        let src = cg.dirs().next().unwrap_or_default();
        do_mount(
            Some(&src),
            &fd_path(&target),
            None,
            MsFlags::MS_BIND,
            None,
            &dest_abs,
        )?;
        return remount_bind(&fd_path(&target), flags, &dest_abs);
    }
    // v1: a tmpfs with one directory per hierarchy.
    do_mount(
        Some(Path::new("tmpfs")),
        &fd_path(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
        &dest_abs,
    )?;
    let base = openat_in_root(root, &dest_rel, OFlags::PATH).map_err(io_err("open", &dest_abs))?;
    for (name, opt) in v1_hierarchies() {
        let sub = dest_rel.join(&name);
        let sub_abs = dest_abs.join(&name);
        let t = ensure(root, &sub, true, 0).map_err(io_err("create", &sub_abs))?;
        if ctx.cgroup_ns {
            do_mount(
                Some(Path::new("cgroup")),
                &fd_path(&t),
                Some("cgroup"),
                flags,
                Some(&opt),
                &sub_abs,
            )?;
        } else if let Some(cg) = ctx.cgroup {
            let src = cg
                .hierarchies
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, r)| r.join(&cg.rel));
            if let Some(src) = src.filter(|s| s.exists()) {
                do_mount(
                    Some(&src),
                    &fd_path(&t),
                    None,
                    MsFlags::MS_BIND,
                    None,
                    &sub_abs,
                )?;
                let t2 =
                    openat_in_root(root, &sub, OFlags::PATH).map_err(io_err("open", &sub_abs))?;
                remount_bind(&fd_path(&t2), flags, &sub_abs)?;
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let t2 =
            openat_in_root(root, &dest_rel, OFlags::PATH).map_err(io_err("open", &dest_abs))?;
        do_mount(
            None,
            &fd_path(&t2),
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=755"),
            &dest_abs,
        )?;
    }
    drop(base);
    Ok(())
}

/// (directory name, mount option) of every v1 hierarchy mounted on the host: from the
/// process's own hierarchies (`/proc/self/cgroup`) where each is mounted at its usual place,
/// else from the mount table. Not the mount table first: it is read in the container's new
/// mount namespace, a copy of the host's, which holds every other container's rootfs and
/// network namespace mounts: generating its text is O(containers) kernel work for every
/// create (the largest item growing with n in a create at 500 containers on a v1 host).
fn v1_hierarchies() -> Vec<(String, String)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    v1_hierarchies_at_usual_places(&own, |name| {
        is_cgroup_mount_root(&Path::new("/sys/fs/cgroup").join(name))
    })
    .unwrap_or_else(v1_hierarchies_from_mountinfo)
}

/// The v1 hierarchies of `/proc/self/cgroup`'s text (`ID:controllers:path`), each as the
/// directory of the same name under /sys/fs/cgroup (`cpu,cpuacct`; `systemd` for
/// `name=systemd`), when `mounted(dir)` says every one of them is there; None otherwise.
fn v1_hierarchies_at_usual_places(
    proc_self_cgroup: &str,
    mounted: impl Fn(&str) -> bool,
) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(_path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            // The v2 hierarchy (a hybrid host's `unified`): not one of these.
            continue;
        }
        let name = ctrls.strip_prefix("name=").unwrap_or(ctrls);
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        if !mounted(name) {
            return None;
        }
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), ctrls.to_string()));
        }
    }
    out.reverse();
    Some(out)
}

/// True if `dir` is the root of a cgroup v1 mount (not a symlink to one).
fn is_cgroup_mount_root(dir: &Path) -> bool {
    let is_dir = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
    let cgroupfs = nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC);
    is_dir && cgroupfs && crate::image::snapshot::is_mountpoint(dir)
}

/// [`v1_hierarchies`] from the mount table (any layout).
fn v1_hierarchies_from_mountinfo() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut pf = post.split_whitespace();
        if pf.next() != Some("cgroup") {
            continue;
        }
        let super_opts = pf.nth(1).unwrap_or("");
        let mp = pre.split_whitespace().nth(4).unwrap_or("");
        if !mp.starts_with("/sys/fs/cgroup/") {
            continue;
        }
        let name = mp.trim_start_matches("/sys/fs/cgroup/").to_string();
        let opt: Vec<&str> = super_opts
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
            .collect();
        if !name.contains('/') && !opt.is_empty() && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, opt.join(",")));
        }
    }
    out
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("dev/null", 1, 3),
    ("dev/zero", 1, 5),
    ("dev/full", 1, 7),
    ("dev/random", 1, 8),
    ("dev/urandom", 1, 9),
    ("dev/tty", 5, 0),
];

/// Cgroup rules that let the default devices (and /dev/pts, ptmx) be used.
pub fn default_device_rules() -> Vec<oci_spec::runtime::LinuxDeviceCgroup> {
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;
    let mut v: Vec<(i64, Option<i64>)> = DEFAULT_DEVICES
        .iter()
        .map(|(_, a, b)| (*a as i64, Some(*b as i64)))
        .collect();
    v.push((5, Some(2))); // ptmx
    v.push((136, None)); // pts
    v.push((5, Some(1))); // console
    v.into_iter()
        .filter_map(|(maj, min)| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(maj)
                .access("rwm");
            if let Some(m) = min {
                b = b.minor(m);
            }
            b.build().ok()
        })
        .collect()
}

fn create_devices(root: &OwnedFd, devices: &[LinuxDevice], has_dev_mount: bool) -> Result<()> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let r = (|| -> Result<()> {
        let mut list: Vec<(PathBuf, u32, u64, u64, u32, u32, u32)> = Vec::new();
        if has_dev_mount {
            for (p, ma, mi) in DEFAULT_DEVICES {
                list.push((PathBuf::from(p), libc::S_IFCHR, ma, mi, 0o666, 0, 0));
            }
        }
        for d in devices {
            let kind = match d.typ() {
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                _ => libc::S_IFCHR,
            };
            let r = rel(d.path())?;
            list.retain(|x| x.0 != r);
            list.push((
                r,
                kind,
                d.major() as u64,
                d.minor() as u64,
                d.file_mode().unwrap_or(0o666) & 0o7777,
                d.uid().unwrap_or(0),
                d.gid().unwrap_or(0),
            ));
        }
        for (path, kind, ma, mi, mode, uid, gid) in list {
            make_node(root, &path, kind, ma, mi, mode, uid, gid)?;
        }
        if has_dev_mount {
            let dev = ensure(root, Path::new("dev"), true, 0).map_err(io_err("open", "/dev"))?;
            let dev = rustix::fs::openat(
                dev.as_fd(),
                ".",
                OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("open", "/dev")(e.into()))?;
            let mut links = vec![
                ("/proc/self/fd", "fd"),
                ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"),
            ];
            if Path::new("/proc/kcore").exists() {
                links.push(("/proc/kcore", "core"));
            }
            for (target, name) in links {
                match rustix::fs::symlinkat(target, dev.as_fd(), name) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::EXIST => {}
                    Err(e) => {
                        return Err(io_err("symlink", Path::new("/dev").join(name))(e.into()))
                    }
                }
            }
            for d in ["pts", "shm", "mqueue"] {
                let _ = rustix::fs::mkdirat(dev.as_fd(), d, Mode::from_raw_mode(0o755));
            }
            let _ = rustix::fs::unlinkat(dev.as_fd(), "ptmx", rustix::fs::AtFlags::empty());
            rustix::fs::symlinkat("pts/ptmx", dev.as_fd(), "ptmx")
                .map_err(|e| io_err("symlink", "/dev/ptmx")(e.into()))?;
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    r
}

#[allow(clippy::too_many_arguments)]
fn make_node(
    root: &OwnedFd,
    path: &Path,
    kind: u32,
    ma: u64,
    mi: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new(""));
    let name = path.file_name().unwrap_or_default();
    let abs = Path::new("/").join(path);
    let pfd = ensure(root, parent, true, 0).map_err(io_err("create", &abs))?;
    let pdir = rustix::fs::openat(
        pfd.as_fd(),
        ".",
        OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", &abs)(e.into()))?;
    let cname = CString::new(name.as_bytes())
        .map_err(|_| RuntimeError::InvalidSpec("device name".into()))?;
    // SAFETY: plain syscall on a valid dirfd and NUL-terminated name.
    let rc = unsafe {
        libc::mknodat(
            pdir.as_raw_fd(),
            cname.as_ptr(),
            kind | mode,
            libc::makedev(ma as u32, mi as u32),
        )
    };
    if rc != 0 {
        let e = errno();
        match e.raw_os_error() {
            Some(libc::EEXIST) => return Ok(()),
            Some(libc::EPERM) => {
                // No mknod (e.g. a user namespace): bind the host's node instead.
                let t = ensure(root, path, false, 0).map_err(io_err("create", &abs))?;
                return do_mount(Some(&abs), &fd_path(&t), None, MsFlags::MS_BIND, None, &abs);
            }
            _ => return Err(io_err("mknod", &abs)(e)),
        }
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::fchownat(
            pdir.as_raw_fd(),
            cname.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io_err("chown", &abs)(errno()));
    }
    Ok(())
}

/// `pivot_root(".", ".")` and detach the old root (runc's trick: no temporary directory).
pub fn pivot(rootfs: &Path) -> Result<()> {
    let old = rustix::fs::open(
        "/",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", "/")(e.into()))?;
    let new = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", rootfs)(e.into()))?;
    rustix::process::fchdir(&new).map_err(|e| io_err("chdir", rootfs)(e.into()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| io_err("pivot_root", rootfs)(e.into()))?;
    crate::trace::step(|| "init: pivot_root".into());
    rustix::process::fchdir(&old).map_err(|e| io_err("chdir", "old root")(e.into()))?;
    do_mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
        Path::new("old root"),
    )?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|source| RuntimeError::Sys {
        op: "unmount the old root".into(),
        source,
    })?;
    std::env::set_current_dir("/").map_err(io_err("chdir", "/"))?;
    Ok(())
}

/// After pivot_root: sysctls, then read-only root, read-only paths and masked paths.
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            if k.contains("..") {
                return Err(RuntimeError::InvalidSpec(format!("sysctl {k}")));
            }
            std::fs::write(&p, v).map_err(io_err("write sysctl", &p))?;
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        readonly_path(Path::new(&p))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        mask_path(Path::new(&p))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))?;
    }
    Ok(())
}

fn readonly_path(p: &Path) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(RuntimeError::Sys {
                op: format!("bind {}", p.display()),
                source,
            })
        }
    }
    remount_bind(
        p,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        p,
    )
}

fn mask_path(p: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match r {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(RuntimeError::Sys {
            op: format!("mask {}", p.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_from_own_cgroups_where_mounted_at_usual_places() {
        let own = "9:name=systemd:/\n8:pids:/x\n2:cpu,cpuacct:/\n1:cpuset:/\n0::/\n";
        let all = v1_hierarchies_at_usual_places(own, |_| true).unwrap();
        assert_eq!(
            all,
            [
                ("cpuset".to_string(), "cpuset".to_string()),
                ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
                ("pids".into(), "pids".into()),
                ("systemd".into(), "name=systemd".into()),
            ]
        );
        // One not where it usually is: the caller reads the mount table instead.
        assert_eq!(v1_hierarchies_at_usual_places(own, |n| n != "pids"), None);
        // A pure v2 host has none.
        assert_eq!(
            v1_hierarchies_at_usual_places("0::/\n", |_| false),
            Some(vec![])
        );
    }

    /// On this host, the same hierarchies as the mount table says (a v1 or hybrid host).
    #[test]
    fn v1_hierarchies_agree_with_the_mount_table() {
        let from_table = v1_hierarchies_from_mountinfo();
        if from_table.is_empty() {
            return;
        }
        let mut fast = v1_hierarchies();
        let mut slow: Vec<String> = from_table.into_iter().map(|(n, _)| n).collect();
        fast.sort();
        slow.sort();
        assert_eq!(fast.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), slow);
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "nosuid".into(),
            "rprivate".into(),
            "size=65536k".into(),
            "mode=755".into(),
        ]);
        assert!(o.bind && o.recursive);
        assert!(o.flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(
            o.data,
            vec!["size=65536k".to_string(), "mode=755".to_string()]
        );
        let o = parse_options(&["ro".into(), "rw".into(), "slave".into()]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE]);
    }

    #[test]
    fn destinations_cannot_climb() {
        assert!(rel(Path::new("/a/../../etc")).is_err());
        assert_eq!(rel(Path::new("/a/./b")).unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn symlinked_proc_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc", d.path().join("proc")).unwrap();
        assert!(matches!(
            check_rootfs(d.path()),
            Err(RuntimeError::UnsafeRootfs(_))
        ));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("proc")).unwrap();
        assert!(check_rootfs(d.path()).is_ok());
    }

    #[test]
    fn resolution_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("escape")).unwrap();
        let root = open_root(d.path()).unwrap();
        let fd = ensure(&root, Path::new("escape/x"), true, 0).unwrap();
        drop(fd);
        // Created inside the rootfs (the symlink target taken relative to it), not outside.
        assert!(!outside.path().join("x").exists());
        let inside = d
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("x");
        assert!(inside.is_dir(), "{}", inside.display());
    }

    #[test]
    fn masked_list_includes_docker() {
        let v = docker_masked_paths();
        assert!(v.len() >= 12);
        assert!(v.contains(&"/proc/kcore".to_string()));
    }
}

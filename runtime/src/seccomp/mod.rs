//! Seccomp: the spec's `linux.seccomp` compiled with libseccomp (feature `seccomp`), and
//! Docker's default profile resolved into a `LinuxSeccomp` for a capability set and arch.
//!
//! `docker-default-seccomp.json` beside this file is an unmodified copy of moby/profiles
//! `seccomp/default.json` (Apache-2.0, Copyright The Moby Authors; licence text in
//! `LICENSE.moby-profiles.Apache-2.0`). berth converts it at run time; it does not change it.
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::error::{Result, RuntimeError};

/// moby/profiles `seccomp/default.json`, embedded.
pub const DOCKER_DEFAULT_PROFILE: &str = include_str!("docker-default-seccomp.json");

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: LinuxSeccompAction,
    #[serde(default, deserialize_with = "null_default")]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "null_default")]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "null_default")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default, deserialize_with = "null_default")]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default, deserialize_with = "null_default")]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    args: Vec<DockerArg>,
    #[serde(default, deserialize_with = "null_default")]
    includes: Filter,
    #[serde(default, deserialize_with = "null_default")]
    excludes: Filter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: usize,
    value: u64,
    #[serde(default, deserialize_with = "null_default")]
    value_two: u64,
    op: LinuxSeccompOperator,
}

/// Go arch name (as in the profile's `arches`) of this build's target.
pub fn native_go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn seccomp_arch_of_go(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" | "x86_64" => "SCMP_ARCH_X86_64",
        "386" | "x86" => "SCMP_ARCH_X86",
        "x32" => "SCMP_ARCH_X32",
        "arm64" | "aarch64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "s390x" => "SCMP_ARCH_S390X",
        "s390" => "SCMP_ARCH_S390",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "ppc64" => "SCMP_ARCH_PPC64",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "loong64" => "SCMP_ARCH_LOONGARCH64",
        "mips64" => "SCMP_ARCH_MIPS64",
        "mips64le" => "SCMP_ARCH_MIPSEL64",
        _ => return None,
    })
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> (u32, u32) {
    let u = nix::sys::utsname::uname().ok();
    let rel = u
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_kernel(&rel).unwrap_or((0, 0))
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Docker's default profile for the native arch and running kernel, given the container's
/// bounding capabilities (names like `CAP_SYS_ADMIN`; case and prefix are normalised).
pub fn docker_default<S: AsRef<str>>(caps: &[S]) -> LinuxSeccomp {
    docker_profile(caps, native_go_arch(), kernel_version())
        .expect("the embedded Docker profile is valid for the native arch")
}

/// Docker's default profile resolved for `caps`, Go arch name `arch` (`amd64`, `arm64`, …)
/// and kernel `(major, minor)`: includes/excludes on caps, arches and minKernel applied.
pub fn docker_profile<S: AsRef<str>>(
    caps: &[S],
    arch: &str,
    kernel: (u32, u32),
) -> Result<LinuxSeccomp> {
    let prof: DockerProfile = serde_json::from_str(DOCKER_DEFAULT_PROFILE)
        .map_err(|e| RuntimeError::Seccomp(format!("embedded profile: {e}")))?;
    let caps: Vec<String> = caps
        .iter()
        .map(|c| crate::capabilities::canonical(c.as_ref()))
        .collect();
    let native = seccomp_arch_of_go(arch)
        .ok_or_else(|| RuntimeError::Seccomp(format!("unsupported arch {arch}")))?;
    let mut arches = vec![native.to_string()];
    if let Some(m) = prof.arch_map.iter().find(|m| m.architecture == native) {
        arches.extend(m.sub_architectures.iter().cloned());
    }
    let arches: Vec<Arch> = arches
        .iter()
        .filter_map(|a| serde_json::from_value(serde_json::Value::String(a.clone())).ok())
        .collect();
    let kernel_ge = |min: &str| parse_kernel(min).map(|m| kernel >= m).unwrap_or(true);
    let mut out: Vec<LinuxSyscall> = Vec::new();
    for s in &prof.syscalls {
        let ex = &s.excludes;
        if ex.arches.iter().any(|a| a == arch) {
            continue;
        }
        if ex.caps.iter().any(|c| caps.contains(c)) {
            continue;
        }
        if let Some(m) = &ex.min_kernel {
            if kernel_ge(m) {
                continue;
            }
        }
        let inc = &s.includes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            continue;
        }
        if !inc.caps.iter().all(|c| caps.contains(c)) {
            continue;
        }
        if let Some(m) = &inc.min_kernel {
            if !kernel_ge(m) {
                continue;
            }
        }
        let args: Vec<LinuxSeccompArg> = s
            .args
            .iter()
            .map(|a| {
                let mut b = LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .value(a.value)
                    .op(a.op);
                if a.value_two != 0 {
                    b = b.value_two(a.value_two);
                }
                b.build().map_err(|e| RuntimeError::Seccomp(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut b = LinuxSyscallBuilder::default()
            .names(s.names.clone())
            .action(s.action);
        if let Some(e) = s.errno_ret {
            b = b.errno_ret(e);
        }
        if !args.is_empty() {
            b = b.args(args);
        }
        out.push(
            b.build()
                .map_err(|e| RuntimeError::Seccomp(e.to_string()))?,
        );
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(prof.default_action)
        .architectures(arches)
        .syscalls(out);
    if let Some(e) = prof.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    b.build().map_err(|e| RuntimeError::Seccomp(e.to_string()))
}

#[cfg(feature = "seccomp")]
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> libseccomp::ScmpAction {
    use libseccomp::ScmpAction as A;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => A::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => A::KillProcess,
        LinuxSeccompAction::ScmpActTrap => A::Trap,
        LinuxSeccompAction::ScmpActErrno => A::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActNotify => A::Notify,
        LinuxSeccompAction::ScmpActTrace => A::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActLog => A::Log,
        LinuxSeccompAction::ScmpActAllow => A::Allow,
    }
}

#[cfg(feature = "seccomp")]
fn compare(a: &LinuxSeccompArg) -> libseccomp::ScmpArgCompare {
    use libseccomp::{ScmpArgCompare, ScmpCompareOp as O};
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (O::NotEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (O::Less, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (O::LessOrEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (O::Equal, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (O::GreaterEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (O::Greater, a.value()),
        // OCI: value is the mask, valueTwo the expected result.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (O::MaskedEqual(a.value()), a.value_two().unwrap_or(0))
        }
    };
    ScmpArgCompare::new(a.index() as u32, op, datum)
}

/// A filter compiled before the fork (from the cache or by libseccomp), with the key of the
/// profile it was compiled from and its seccomp(2) flags. The forked init inherits it.
#[cfg(feature = "seccomp")]
static PRECOMPILED: std::sync::OnceLock<(String, Vec<u8>, u32)> = std::sync::OnceLock::new();

#[cfg(feature = "seccomp")]
fn profile_key(s: &LinuxSeccomp) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    // v2: libseccomp's binary-tree layout (`build`); programs cached by v1 were linear.
    h.update(b"berth-seccomp-bpf-v2\0");
    h.update(native_go_arch().as_bytes());
    h.update(serde_json::to_vec(s).unwrap_or_default());
    hex::encode(h.finalize())
}

#[cfg(feature = "seccomp")]
fn filter_flags(s: &LinuxSeccomp) -> u32 {
    use oci_spec::runtime::LinuxSeccompFilterFlag as F;
    let mut flags = 0;
    for f in s.flags().iter().flatten() {
        match f {
            F::SeccompFilterFlagLog => flags |= 2, // SECCOMP_FILTER_FLAG_LOG
            F::SeccompFilterFlagSpecAllow => flags |= 4, // SECCOMP_FILTER_FLAG_SPEC_ALLOW
            _ => {}
        }
    }
    flags
}

/// Compile `s` once per profile: the BPF program is kept in `cache_dir` (under the runtime's
/// root, on tmpfs) keyed by the profile's hash, so the next container with the same profile
/// skips libseccomp's compiler (about a quarter of the CPU of starting a container). Call it
/// in the runtime's process before forking the init; `load` then uses the result.
#[cfg(feature = "seccomp")]
pub fn precompile(cache_dir: &std::path::Path, s: &LinuxSeccomp) -> Result<()> {
    use std::io::{Read, Seek};
    let key = profile_key(s);
    let path = cache_dir.join(format!("{key}.bpf"));
    let bpf = match std::fs::read(&path) {
        Ok(b) if !b.is_empty() && b.len() % 8 == 0 => b,
        _ => {
            let ctx = build(s)?;
            let fd = rustix::fs::memfd_create("berth-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| RuntimeError::Seccomp(format!("memfd: {e}")))?;
            let mut f = std::fs::File::from(fd);
            ctx.export_bpf(&f)
                .map_err(|e| RuntimeError::Seccomp(format!("export: {e}")))?;
            let mut b = Vec::new();
            f.rewind()
                .and_then(|_| f.read_to_end(&mut b))
                .map_err(|e| RuntimeError::Seccomp(format!("export: {e}")))?;
            let _ = std::fs::create_dir_all(cache_dir);
            let tmp = cache_dir.join(format!(".{key}.{}", std::process::id()));
            if std::fs::write(&tmp, &b).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            b
        }
    };
    let _ = PRECOMPILED.set((key, bpf, filter_flags(s)));
    Ok(())
}

/// Load `s` into the calling thread (no NNP side effect): the precompiled program when it was
/// compiled from this very profile, else compiled here.
#[cfg(feature = "seccomp")]
pub fn load(s: &LinuxSeccomp) -> Result<()> {
    if let Some((key, bpf, flags)) = PRECOMPILED.get() {
        if *key == profile_key(s) {
            let prog = libc::sock_fprog {
                len: (bpf.len() / 8) as u16,
                filter: bpf.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points at a BPF program exported by libseccomp for this profile.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    1, /* SECCOMP_SET_MODE_FILTER */
                    *flags,
                    &prog,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            return Err(RuntimeError::Seccomp(format!(
                "load: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    build(s)?
        .load()
        .map_err(|e| RuntimeError::Seccomp(format!("load: {e}")))
}

/// The libseccomp filter context for `s` (not loaded), its syscalls laid out as a binary
/// tree.
///
/// Why the tree: libseccomp's default layout tests the syscall number against each rule in
/// turn (Docker's profile: about 1000 instructions, 350 syscalls per architecture). The
/// kernel runs the filter at load time once per syscall number and architecture to find
/// those it may allow without running it again (the seccomp action cache, Linux 5.11):
/// O(syscalls × length), 0.8 ms of every container's `create` with the linear layout. With
/// the tree (`SCMP_FLTATR_CTL_OPTIMIZE` 2, libseccomp 2.5) each number takes about log2(350)
/// tests, at load time and for every syscall the cache cannot answer (those with argument
/// rules, like `clone` and `socket`). The decisions are the same (`tests`:
/// `binary_tree_decides_as_the_linear_filter`).
#[cfg(feature = "seccomp")]
fn build(s: &LinuxSeccomp) -> Result<libseccomp::ScmpFilterContext> {
    build_with(s, 2)
}

/// Whether the loaded libseccomp's binary tree is the one the tests check (2.5.4, Debian 12's
/// and CI's) or later. Before 2.5 there is no tree; earlier 2.5 releases fixed bugs in it.
/// Otherwise the linear layout (same decisions, slower load).
#[cfg(feature = "seccomp")]
fn tree_trusted() -> bool {
    libseccomp::ScmpVersion::current().is_ok_and(|v| (v.major, v.minor, v.micro) >= (2, 5, 4))
}

#[cfg(feature = "seccomp")]
fn build_with(s: &LinuxSeccomp, optimize: u32) -> Result<libseccomp::ScmpFilterContext> {
    use libseccomp::{ScmpArch, ScmpFilterContext, ScmpSyscall};
    let err = |what: &str, e: libseccomp::error::SeccompError| {
        RuntimeError::Seccomp(format!("{what}: {e}"))
    };
    let def = action(s.default_action(), s.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(def).map_err(|e| err("new filter", e))?;
    ctx.set_ctl_nnp(false).map_err(|e| err("nnp", e))?;
    if optimize > 1 && tree_trusted() {
        let _ = ctx.set_ctl_optimize(optimize);
    }
    for a in s.architectures().iter().flatten() {
        let name = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch = ScmpArch::from_str(&name).map_err(|e| err(&name, e))?;
        if !ctx.is_arch_present(arch).unwrap_or(false) {
            ctx.add_arch(arch).map_err(|e| err(&name, e))?;
        }
    }
    for f in s.flags().iter().flatten() {
        use oci_spec::runtime::LinuxSeccompFilterFlag as F;
        match f {
            F::SeccompFilterFlagLog => {
                ctx.set_ctl_log(true).map_err(|e| err("log flag", e))?;
            }
            F::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true)
                    .map_err(|e| err("spec_allow flag", e))?;
            }
            _ => {}
        }
    }
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        if act == def {
            continue; // runc: a rule equal to the default is redundant (and refused by libseccomp)
        }
        if act == libseccomp::ScmpAction::Notify {
            return Err(RuntimeError::Seccomp(
                "SCMP_ACT_NOTIFY is not supported".into(),
            ));
        }
        let args = rule.args().clone().unwrap_or_default();
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if args.is_empty() {
                ctx.add_rule(act, sc).map_err(|e| err(name, e))?;
                continue;
            }
            let mut idx: Vec<usize> = args.iter().map(|a| a.index()).collect();
            idx.sort();
            idx.dedup();
            if idx.len() == args.len() {
                let cmps: Vec<_> = args.iter().map(compare).collect();
                ctx.add_rule_conditional(act, sc, &cmps)
                    .map_err(|e| err(name, e))?;
            } else {
                // Several comparisons of one argument: one rule each (OR), as runc does.
                for a in &args {
                    ctx.add_rule_conditional(act, sc, &[compare(a)])
                        .map_err(|e| err(name, e))?;
                }
            }
        }
    }
    Ok(ctx)
}

#[cfg(not(feature = "seccomp"))]
pub fn precompile(_cache_dir: &std::path::Path, _s: &LinuxSeccomp) -> Result<()> {
    Ok(())
}

#[cfg(not(feature = "seccomp"))]
pub fn load(_s: &LinuxSeccomp) -> Result<()> {
    Err(RuntimeError::Seccomp(
        "berth-runtime was built without seccomp support".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::DOCKER_DEFAULT_CAPS;

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn default_caps_profile() {
        let p = docker_profile(&DOCKER_DEFAULT_CAPS, "amd64", (6, 1)).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let n = names(&p);
        assert!(n.contains(&"read".to_string()));
        assert!(n.contains(&"arch_prctl".to_string()));
        assert!(n.contains(&"ptrace".to_string()), "minKernel 4.8 satisfied");
        assert!(
            n.contains(&"chroot".to_string()),
            "CAP_SYS_CHROOT is a default cap"
        );
        assert!(!n.contains(&"mount".to_string()));
        assert!(!n.contains(&"unshare".to_string()));
        assert!(!n.contains(&"keyctl".to_string()));
        assert!(!n.contains(&"riscv_flush_icache".to_string()));
        // clone3 returns ENOSYS without CAP_SYS_ADMIN.
        let c3 = p
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names().contains(&"clone3".to_string()))
            .unwrap();
        assert_eq!(c3.errno_ret(), Some(38));
        let arches = p.architectures().clone().unwrap();
        assert_eq!(
            arches,
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
    }

    #[test]
    fn sys_admin_and_old_kernel() {
        let mut caps: Vec<String> = DOCKER_DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        caps.push("sys_admin".into());
        let p = docker_profile(&caps, "amd64", (4, 4)).unwrap();
        let n = names(&p);
        assert!(n.contains(&"mount".to_string()));
        assert!(n.contains(&"unshare".to_string()));
        assert!(
            !n.contains(&"ptrace".to_string()),
            "minKernel 4.8 not satisfied"
        );
        // the filtered clone rule is excluded when SYS_ADMIN is present
        assert!(!p
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.names() == &vec!["clone".to_string()] && r.args().is_some()));
        let arm = docker_profile(&caps, "arm64", (6, 1)).unwrap();
        assert_eq!(
            arm.architectures().clone().unwrap(),
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        assert!(names(&arm).contains(&"arm_fadvise64_64".to_string()));
        assert!(docker_profile(&caps, "vax", (6, 1)).is_err());
    }

    /// The exported classic BPF program of a filter context.
    fn export(ctx: &libseccomp::ScmpFilterContext) -> Vec<[u8; 8]> {
        use std::io::{Read, Seek};
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        ctx.export_bpf(&f).unwrap();
        let mut b = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut b).unwrap();
        b.chunks(8).map(|c| c.try_into().unwrap()).collect()
    }

    /// Run a classic BPF seccomp program on `seccomp_data` (nr, arch, ip 0, args): its
    /// return value. Panics on an instruction it does not know (the test then says so).
    fn run_bpf(prog: &[[u8; 8]], nr: u32, arch: u32, args: &[u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        for _ in 0..100_000 {
            let ins = prog[pc];
            let code = u16::from_ne_bytes([ins[0], ins[1]]);
            let (jt, jf) = (ins[2] as usize, ins[3] as usize);
            let k = u32::from_ne_bytes([ins[4], ins[5], ins[6], ins[7]]);
            pc += 1;
            match code {
                0x20 => {
                    let o = k as usize;
                    a = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                0x00 => a = k,
                0x60 => a = mem[k as usize],
                0x01 => x = k,
                0x61 => x = mem[k as usize],
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x54 => a &= k,
                0x44 => a |= k,
                0x04 => a = a.wrapping_add(k),
                0x14 => a = a.wrapping_sub(k),
                0x07 => x = a,
                0x87 => a = x,
                0x05 => pc += k as usize,
                0x15 | 0x1d => {
                    pc += if a == (if code == 0x15 { k } else { x }) {
                        jt
                    } else {
                        jf
                    }
                }
                0x25 | 0x2d => {
                    pc += if a > (if code == 0x25 { k } else { x }) {
                        jt
                    } else {
                        jf
                    }
                }
                0x35 | 0x3d => {
                    pc += if a >= (if code == 0x35 { k } else { x }) {
                        jt
                    } else {
                        jf
                    }
                }
                0x45 | 0x4d => {
                    pc += if a & (if code == 0x45 { k } else { x }) != 0 {
                        jt
                    } else {
                        jf
                    }
                }
                0x06 => return k,
                0x16 => return a,
                _ => panic!("BPF instruction {code:#x} at {}", pc - 1),
            }
        }
        panic!("the program did not return")
    }

    /// The binary-tree layout `build` uses decides every syscall number of every
    /// architecture (and an architecture the profile does not name), with argument values
    /// that Docker's argument rules test, exactly as libseccomp's linear layout does: the
    /// layout changes the cost of the filter, never what it lets through.
    #[test]
    fn binary_tree_decides_as_the_linear_filter() {
        let mut with_admin: Vec<String> =
            DOCKER_DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        with_admin.push("sys_admin".into());
        let profiles = [
            docker_profile(&DOCKER_DEFAULT_CAPS, "amd64", (6, 18)).unwrap(),
            docker_profile(&with_admin, "amd64", (6, 18)).unwrap(),
        ];
        let values: [u64; 12] = [
            0,
            1,
            8,
            16,
            40,
            0x0002_0000,
            0x0002_0008,
            0x1000_0000,
            0x7e02_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ];
        // x86_64, i386, an architecture the profile leaves out (aarch64); x32 is x86_64
        // with bit 30 of the number set.
        let arches = [0xc000_003e_u32, 0x4000_0003, 0xc000_00b7];
        for p in &profiles {
            let linear = export(&build_with(p, 1).unwrap());
            let tree = export(&build_with(p, 2).unwrap());
            if !tree_trusted() {
                eprintln!("skipped: libseccomp older than 2.5.4 (no tree used)");
                return;
            }
            assert_ne!(linear, tree, "the layouts should differ");
            let mut checked = 0;
            for &arch in &arches {
                for base in [0u32, 0x4000_0000] {
                    for nr in (0..480u32).map(|n| n | base) {
                        for pos in 0..3 {
                            for v in values {
                                let mut args = [0u64; 6];
                                args[pos] = v;
                                let (l, t) = (
                                    run_bpf(&linear, nr, arch, &args),
                                    run_bpf(&tree, nr, arch, &args),
                                );
                                assert_eq!(l, t, "nr {nr:#x} arch {arch:#x} args {args:x?}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
            assert!(checked > 60_000);
        }
        // The interpreter is not vacuous: the linear program allows read, refuses mount.
        let linear = export(&build_with(&profiles[0], 1).unwrap());
        let allow = 0x7fff_0000;
        assert_eq!(run_bpf(&linear, 0, 0xc000_003e, &[0; 6]), allow);
        assert_ne!(run_bpf(&linear, 165, 0xc000_003e, &[0; 6]), allow);
        // personality(2) is allowed for a few values of its argument only.
        assert_eq!(
            run_bpf(&linear, 135, 0xc000_003e, &[8, 0, 0, 0, 0, 0]),
            allow
        );
        assert_ne!(
            run_bpf(&linear, 135, 0xc000_003e, &[1, 0, 0, 0, 0, 0]),
            allow
        );
    }

    #[test]
    fn kernel_parse() {
        assert_eq!(parse_kernel("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
    }
}

//! Capability sets from the spec, applied in youki/runc order: bounding, effective, permitted,
//! inheritable, ambient.
use std::str::FromStr;

use caps::{CapSet, Capability as KCap, CapsHashSet};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use crate::error::{Result, RuntimeError};

/// Docker's 14 default capabilities (moby `caps.DefaultCapabilities()`).
pub const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Bit mask of a list of capability names (unknown names are ignored), as in /proc's CapEff.
pub fn mask_of<S: AsRef<str>>(names: &[S]) -> u64 {
    names
        .iter()
        .filter_map(|n| KCap::from_str(&canonical(n.as_ref())).ok())
        .fold(0, |m, c| m | c.bitmask())
}

/// `chown`, `CHOWN`, `cap_chown` → `CAP_CHOWN`.
pub fn canonical(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

fn to_kernel(set: &Option<Capabilities>) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        out.insert(to_kcap(c)?);
    }
    Ok(out)
}

pub(crate) fn to_kcap(c: &Capability) -> Result<KCap> {
    let name = serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    KCap::from_str(&name).map_err(|e| RuntimeError::Caps(format!("{name}: {e}")))
}

fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Names in the bounding set of `caps` (used to resolve seccomp `includes.caps`).
pub fn bounding_names(caps: &Option<LinuxCapabilities>) -> Vec<String> {
    caps.as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_string))
        .collect()
}

/// Drop everything not in the spec's bounding set. Needs CAP_SETPCAP in the effective set.
pub fn drop_bounding(caps: &LinuxCapabilities) -> Result<()> {
    let keep = to_kernel(caps.bounding())?;
    let last = last_cap();
    for c in caps::all() {
        if c.index() > last || keep.contains(&c) {
            continue;
        }
        caps::drop(None, CapSet::Bounding, c)
            .map_err(|e| RuntimeError::Caps(format!("drop {c} from bounding: {e}")))?;
    }
    Ok(())
}

/// Set effective, permitted, inheritable and ambient from the spec (bounding already done).
pub fn set_process_caps(caps: &LinuxCapabilities) -> Result<()> {
    let eff = to_kernel(caps.effective())?;
    let perm = to_kernel(caps.permitted())?;
    let inh = to_kernel(caps.inheritable())?;
    let amb = to_kernel(caps.ambient())?;
    let err = |what: &str, e: caps::errors::CapsError| RuntimeError::Caps(format!("{what}: {e}"));
    // Effective must stay a subset of permitted at every step.
    caps::set(
        None,
        CapSet::Effective,
        &eff.intersection(&perm).cloned().collect(),
    )
    .map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &perm).map_err(|e| err("permitted", e))?;
    caps::set(None, CapSet::Inheritable, &inh).map_err(|e| err("inheritable", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    for c in amb {
        // Ambient needs the cap in permitted and inheritable; skip silently otherwise (runc).
        if perm.contains(&c) && inh.contains(&c) {
            caps::raise(None, CapSet::Ambient, c).map_err(|e| err("ambient", e))?;
        }
    }
    Ok(())
}

/// After setuid with keep-caps the effective set is empty; restore it to permitted.
pub fn reset_effective() -> Result<()> {
    let perm = caps::read(None, CapSet::Permitted)
        .map_err(|e| RuntimeError::Caps(format!("read permitted: {e}")))?;
    caps::set(None, CapSet::Effective, &perm)
        .map_err(|e| RuntimeError::Caps(format!("effective: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_mask() {
        // Measured in Docker on this machine: CapEff 00000000a80425fb.
        assert_eq!(mask_of(&DOCKER_DEFAULT_CAPS), 0xa80425fb);
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("net_admin"), "CAP_NET_ADMIN");
        assert_eq!(canonical("CAP_SYS_ADMIN"), "CAP_SYS_ADMIN");
    }

    #[test]
    fn oci_to_kernel() {
        assert_eq!(to_kcap(&Capability::SysAdmin).unwrap(), KCap::CAP_SYS_ADMIN);
        assert_eq!(
            to_kcap(&Capability::NetBindService).unwrap(),
            KCap::CAP_NET_BIND_SERVICE
        );
    }
}

//! A veth pair from a bridge into a container's network namespace.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::nl::{self, Nl};
use crate::{bridge, check_ifname, io_err, netns, Error, Result, LINK_PREFIX};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Bind-mounted namespace (see `netns::create`).
    pub netns: PathBuf,
    pub bridge: String,
    /// Host side; starts with "berth" (see `veth_name`).
    pub host_ifname: String,
    /// Inside the namespace: eth0, eth1…
    pub container_ifname: String,
    pub address: Ipv4Net,
    /// Default route via this address (first non-internal network only).
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    /// None: the bridge's MTU.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub mac: [u8; 6],
}

/// "berth" + 10 hex digits of a hash of (container, index): 15 characters.
pub fn veth_name(container_id: &str, index: usize) -> String {
    format!(
        "{LINK_PREFIX}{}",
        crate::short_hash(&format!("veth:{container_id}:{index}"), 10)
    )
}

/// aa:bb:cc:dd:ee:ff
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse aa:bb:cc:dd:ee:ff (or with '-').
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Create the pair (the peer directly inside the container's namespace) and plug the outer end
/// into the network: into the bridge of its switch namespace (see `bridge::ensure`), or, for a
/// plain host bridge (external networks), into that bridge with hairpin on. Then address the
/// peer and add the default route. A leftover outer link of the same name is replaced. On
/// error nothing is left.
pub fn attach(spec: &EndpointSpec) -> Result<Attached> {
    check_ifname(&spec.host_ifname)?;
    check_ifname(&spec.container_ifname)?;
    let mut host = Nl::new()?;
    let net = host
        .link_by_name(&spec.bridge)?
        .ok_or_else(|| Error::NoSuchLink(spec.bridge.clone()))?;
    let mtu = spec.mtu.or_else(|| nl::link_mtu(&net));
    let switch = bridge::switch_netns(&spec.bridge);
    // The namespace where the outer end lives, and the index of the bridge it joins there.
    let (mut outer, bridge_index, hairpin) = if nl::link_is_bridge(&net) {
        (Nl::new()?, net.header.index, true)
    } else if netns::is_mounted_ns(&switch) {
        let mut sw = Nl::in_netns(&switch)?;
        let idx = sw.require_index(bridge::SWITCH_BRIDGE)?;
        (sw, idx, false)
    } else {
        return Err(Error::NoSuchLink(format!(
            "{} (no bridge or berth switch of that name)",
            spec.bridge
        )));
    };
    // The same name must not linger in either place.
    host.del_link(&spec.host_ifname)?;
    outer.del_link(&spec.host_ifname)?;
    let ns = std::fs::File::open(&spec.netns).map_err(|source| Error::Netns {
        path: spec.netns.clone(),
        source,
    })?;
    outer.add_veth(
        &spec.host_ifname,
        &spec.container_ifname,
        &ns,
        spec.mac,
        mtu,
    )?;
    let res = (|| {
        let idx = outer.require_index(&spec.host_ifname)?;
        outer.set_link(idx, false, None, Some(bridge_index))?;
        if hairpin {
            let path = format!("/sys/class/net/{}/brport/hairpin_mode", spec.host_ifname);
            std::fs::write(&path, "1").map_err(io_err(&path))?;
        }
        outer.set_link(idx, true, None, None)?;

        let mut inner = Nl::in_netns(&spec.netns)?;
        let link = inner
            .link_by_name(&spec.container_ifname)?
            .ok_or_else(|| Error::NoSuchLink(spec.container_ifname.clone()))?;
        let cidx = link.header.index;
        inner.add_address(cidx, spec.address)?;
        inner.set_link(cidx, true, None, None)?;
        if let Some(gw) = spec.gateway {
            inner.add_default_route(gw, cidx)?;
        }
        let mac =
            nl::link_mac(&link).ok_or_else(|| Error::NoSuchLink(spec.container_ifname.clone()))?;
        Ok(Attached { mac })
    })();
    if res.is_err() {
        let _ = outer.del_link(&spec.host_ifname);
    }
    res
}

/// Delete the outer end (which takes the peer with it), wherever it is: in the host namespace or
/// in one of berth's switch namespaces. Missing is not an error. (Removing the container's
/// namespace also removes the pair, once nothing holds the namespace any more.)
pub fn detach(host_ifname: &str) -> Result<()> {
    check_ifname(host_ifname)?;
    if Nl::new()?.del_link(host_ifname)? {
        return Ok(());
    }
    let Ok(dir) = std::fs::read_dir(bridge::SWITCH_DIR) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let path = e.path();
        if !netns::is_mounted_ns(&path) {
            continue;
        }
        if Nl::in_netns(&path)?.del_link(host_ifname)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names() {
        let a = veth_name("proj-web-1", 0);
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("berth"));
        assert!(!a.starts_with("berthbr"));
        assert_ne!(a, veth_name("proj-web-1", 1));
        assert_ne!(a, veth_name("proj-web-2", 0));
        assert_eq!(a, veth_name("proj-web-1", 0));
    }

    #[test]
    fn macs() {
        let m = parse_mac("02:42:AC:11:00:02").unwrap();
        assert_eq!(format_mac(&m), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02-42-ac-11-00-02"), Some(m));
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:zz"), None);
        assert_eq!(parse_mac("002:42:ac:11:00:02"), None);
    }
}

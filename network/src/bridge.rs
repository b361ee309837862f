//! One Linux bridge per network, its gateway address on it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::nl::{self, Nl};
use crate::{check_ifname, sysctl, Result, LINK_PREFIX};

/// "berthbr" + 8 hex digits of a hash of the network id: 15 characters, stable, and never equal
/// to a veth name (those carry no "r").
pub fn bridge_name(network_id: &str) -> String {
    format!(
        "{LINK_PREFIX}br{}",
        crate::short_hash(&format!("network:{network_id}"), 8)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// Gateway address and the subnet's prefix length.
    pub gateway: Ipv4Net,
    pub mtu: Option<u32>,
    /// No route out: no IP forwarding is turned on for it and the firewall drops anything
    /// forwarded between it and another interface.
    pub internal: bool,
}

/// What is on an existing bridge (external networks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    pub mtu: Option<u32>,
    pub addresses: Vec<Ipv4Net>,
}

/// Make the bridge (or take the existing one), put the gateway on it, set the MTU, bring it up.
/// Idempotent.
pub fn ensure(spec: &BridgeSpec) -> Result<()> {
    check_ifname(&spec.name)?;
    let mut nl = Nl::new()?;
    let created = nl.add_bridge(&spec.name, spec.mtu)?;
    let index = nl.require_index(&spec.name)?;
    let res = (|| {
        nl.add_address(index, spec.gateway)?;
        // route_localnet: published ports on 127.0.0.1 are DNATed to the bridge with their
        // 127.x source (masqueraded on the way out); without it the kernel drops them as martians.
        sysctl::ensure(&format!("net/ipv4/conf/{}/route_localnet", spec.name), "1")?;
        if !spec.internal {
            sysctl::ensure("net/ipv4/ip_forward", "1")?;
        }
        nl.set_link(index, true, spec.mtu, None)
    })();
    if res.is_err() && created {
        let _ = nl.del_link(&spec.name);
    }
    res
}

/// Delete the bridge. Missing is not an error.
pub fn remove(name: &str) -> Result<()> {
    check_ifname(name)?;
    Nl::new()?.del_link(name)?;
    Ok(())
}

/// The MTU and addresses of an existing bridge, None if there is no bridge of that name.
pub fn inspect(name: &str) -> Result<Option<BridgeInfo>> {
    check_ifname(name)?;
    let mut nl = Nl::new()?;
    let Some(link) = nl.link_by_name(name)? else {
        return Ok(None);
    };
    if !nl::link_is_bridge(&link) {
        return Ok(None);
    }
    let index = link.header.index;
    let addresses = nl
        .dump_addresses()?
        .into_iter()
        .filter(|(i, _)| *i == index)
        .map(|(_, a)| a)
        .collect();
    Ok(Some(BridgeInfo {
        mtu: nl::link_mtu(&link),
        addresses,
    }))
}

/// The gateway address of an existing bridge: its first IPv4 address.
pub fn gateway_of(name: &str) -> Result<Option<(Ipv4Addr, Ipv4Net)>> {
    Ok(inspect(name)?.and_then(|i| i.addresses.first().map(|a| (a.addr(), a.trunc()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_prefixed() {
        let a = bridge_name("myproject_default");
        assert_eq!(a, bridge_name("myproject_default"));
        assert_ne!(a, bridge_name("myproject_back"));
        assert!(a.starts_with("berthbr"));
        assert_eq!(a.len(), 15);
        check_ifname(&a).unwrap();
        let long = "x".repeat(300);
        assert_eq!(bridge_name(&long).len(), 15);
    }
}

//! One Linux bridge per network, its gateway address on it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::nl::{self, Nl};
use crate::{check_ifname, io_err, netns, sysctl, Result, LINK_PREFIX};

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

/// Where the switch namespaces of berth's networks are bind-mounted (host-global, like the
/// link names they are named after).
pub const SWITCH_DIR: &str = "/run/berth-switch";
/// The bridge and the uplink inside a switch namespace.
pub(crate) const SWITCH_BRIDGE: &str = "switch";
pub(crate) const SWITCH_UPLINK: &str = "uplink";

/// The address a switch gives itself for hairpinned published ports (see `firewall`): the
/// source of the connections it DNATs back into its network, so that the backend's replies come
/// back through the switch and are un-NATed there. Link-local, from the /24 that RFC 3927 keeps
/// out of autoconfiguration; it lives only inside switch namespaces (containers reach it through
/// their gateway and the switch takes those frames before they leave), never on the host.
pub const HAIRPIN_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 1);

/// The switch namespace of network link `name`.
pub fn switch_netns(name: &str) -> PathBuf {
    Path::new(SWITCH_DIR).join(name)
}

/// Make the network (or take the existing one), put the gateway on its host interface, set the
/// MTU, bring it up. Idempotent.
///
/// Layout (why: coexisting with Docker). A berth network is a Linux bridge living in its own
/// small "switch" network namespace, joined to the host by a veth pair whose host end is the
/// link called `spec.name` and carries the gateway address. Containers' veths plug into that
/// bridge. Docker loads br_netfilter and sets `bridge-nf-call-iptables=1`, which makes every
/// frame bridged *in the host namespace* traverse the iptables FORWARD chain, whose policy
/// Docker sets to DROP; no rule in another table can undo a DROP (every base chain of a hook
/// runs, and a drop is final), and berth must not edit Docker's chains. That sysctl is per
/// network namespace (kernel 5.3+), and the switch namespace has no iptables rules at all (and
/// its own sysctl is turned off), so container-to-container traffic is bridged without ever
/// meeting Docker's policy. Host-to-container traffic (published ports on 127.0.0.1 and on the
/// host's addresses, the DNS server's replies) is locally generated in the host namespace and
/// leaves by the uplink: it never crosses FORWARD either. A container reaching a published port
/// of its own network through a host address (hairpin) is served by the switch itself
/// (`switch_l3`, `firewall`). Only truly routed traffic (containers to the outside, outside
/// clients or other networks to a published port) crosses the host's FORWARD chain, exactly as
/// for any other router on that host.
///
/// If a real bridge called `spec.name` already exists in the host namespace (created by hand or
/// by an older berth), it is used as it is.
pub fn ensure(spec: &BridgeSpec) -> Result<()> {
    check_ifname(&spec.name)?;
    let mut nl = Nl::new()?;
    let existing = nl.link_by_name(&spec.name)?;
    let created = match existing {
        Some(ref l) if nl::link_is_bridge(l) => false,
        Some(_) if netns::is_mounted_ns(&switch_netns(&spec.name)) => false,
        Some(_) => {
            // A host end without its switch: a leftover; start again.
            nl.del_link(&spec.name)?;
            make_switch(&mut nl, spec)?;
            true
        }
        None => {
            make_switch(&mut nl, spec)?;
            true
        }
    };
    let res = (|| {
        let index = nl.require_index(&spec.name)?;
        nl.add_address(index, spec.gateway)?;
        if !spec.internal {
            sysctl::ensure("net/ipv4/ip_forward", "1")?;
        }
        nl.set_link(index, true, spec.mtu, None)
    })();
    if res.is_err() && created {
        let _ = remove(&spec.name);
    }
    res
}

fn make_switch(host: &mut Nl, spec: &BridgeSpec) -> Result<()> {
    crate::firewall::forget_switch(&spec.name);
    let ns = switch_netns(&spec.name);
    std::fs::create_dir_all(SWITCH_DIR).map_err(io_err(SWITCH_DIR))?;
    if !netns::is_mounted_ns(&ns) {
        netns::create(&ns)?;
    }
    let res = (|| {
        let host_ns = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(io_err("/proc/thread-self/ns/net"))?;
        let mut sw = Nl::in_netns(&ns)?;
        sw.add_bridge(SWITCH_BRIDGE, spec.mtu, Some(switch_mac(&spec.name)))?;
        let br = sw.require_index(SWITCH_BRIDGE)?;
        sw.del_link(SWITCH_UPLINK)?;
        sw.add_veth(SWITCH_UPLINK, &spec.name, &host_ns, None, spec.mtu)?;
        let up = sw.require_index(SWITCH_UPLINK)?;
        sw.set_link(up, false, None, Some(br))?;
        sw.set_link(up, true, None, None)?;
        sw.set_link(br, true, None, None)?;
        netns::run_in(&ns, || {
            no_bridge_netfilter();
            Ok(())
        })?;
        host.require_index(&spec.name).map(|_| ())
    })();
    if res.is_err() {
        let _ = netns::remove(&ns);
    }
    res
}

/// The switch bridge's own MAC: one of its own (locally administered, unicast, from the
/// network's link name) instead of the kernel's default, the lowest MAC among its ports. Given
/// one at creation, the kernel keeps it (`NET_ADDR_SET`) and no longer walks every port to
/// recompute it when a port comes or goes (`br_stp_recalculate_bridge_id`: O(ports) per
/// container, O(n²) kernel work for an `up` of n, seen in a profile at 500), and the bridge's
/// address (the hairpin source's, see `switch_l3`) never changes under the containers' ARP
/// caches as containers come and go. Docker gives its bridges a MAC of their own too.
pub(crate) fn switch_mac(name: &str) -> [u8; 6] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("berth switch {name}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// No netfilter for bridged frames in the switch (calling thread's namespace): only the frames
/// the switch's own bridge rules hand to its IP stack (hairpin, see `switch_l3`) meet its IP
/// hooks. br_netfilter sets these to 1 in every namespace when it is loaded (Docker loads it,
/// possibly after the switch was made), so every `firewall::apply` sets them again. Until it
/// does, hairpin still works except for a container reaching itself: br_netfilter then bridges
/// the DNATed frame back towards the port it came in by, which a bridge never does.
pub(crate) fn no_bridge_netfilter() {
    let _ = sysctl::ensure("net/bridge/bridge-nf-call-iptables", "0");
    let _ = sysctl::ensure("net/bridge/bridge-nf-call-ip6tables", "0");
}

/// The small IP side of a switch, for hairpinned published ports. To be called on a thread
/// inside the switch namespace. Idempotent. Returns the uplink's MAC, the address the switch's
/// bridge rules write into the frames they hand to this IP stack (a local address of the
/// bridge, fixed for the switch's lifetime, unlike the bridge's own, which follows its ports).
///
/// Why: a container reaching a published port through one of the host's addresses would
/// otherwise be DNATed by the host and routed straight back into its network, which crosses the
/// host's FORWARD hook, where a foreign drop policy (Docker's) stops it. The switch does that
/// DNAT itself instead (`firewall::switch_script`), and routes the connection within its own
/// namespace, where no foreign rule exists. It needs: forwarding on (and no ICMP redirects: the
/// connection goes back out of the interface it came in by), `HAIRPIN_SOURCE` on the bridge
/// (the source it gives those connections), and a route to the network's subnet.
pub(crate) fn switch_l3(subnet: Ipv4Net) -> Result<[u8; 6]> {
    no_bridge_netfilter();
    // ip_forward first: toggling it resets per-interface settings.
    sysctl::ensure("net/ipv4/ip_forward", "1")?;
    for conf in ["all", "default", SWITCH_BRIDGE] {
        sysctl::ensure(&format!("net/ipv4/conf/{conf}/send_redirects"), "0")?;
        sysctl::ensure(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
    }
    let mut nl = Nl::new()?;
    let br = nl.require_index(SWITCH_BRIDGE)?;
    nl.add_address(br, Ipv4Net::new(HAIRPIN_SOURCE, 32).expect("/32"))?;
    nl.add_link_route(subnet.trunc(), br, HAIRPIN_SOURCE)?;
    let up = nl
        .link_by_name(SWITCH_UPLINK)?
        .ok_or_else(|| crate::Error::NoSuchLink(SWITCH_UPLINK.into()))?;
    nl::link_mac(&up).ok_or_else(|| crate::Error::NoSuchLink(SWITCH_UPLINK.into()))
}

/// Whether `switch_l3` ran in this switch (calling thread's namespace): `HAIRPIN_SOURCE` is on
/// its bridge. False also when the addresses cannot be read (the caller then skips work that only
/// a set-up switch needs).
pub(crate) fn switch_has_l3() -> bool {
    Nl::new()
        .and_then(|mut nl| nl.dump_addresses())
        .map(|a| a.iter().any(|(_, a)| a.addr() == HAIRPIN_SOURCE))
        .unwrap_or(false)
}

/// Delete the network's host link and its switch namespace (with everything still plugged into
/// it). Missing is not an error.
pub fn remove(name: &str) -> Result<()> {
    check_ifname(name)?;
    crate::firewall::forget_switch(name);
    Nl::new()?.del_link(name)?;
    netns::remove(&switch_netns(name))
}

/// The MTU and addresses of an existing network link (a host bridge, or the host end of a berth
/// switch), None if there is none of that name.
pub fn inspect(name: &str) -> Result<Option<BridgeInfo>> {
    check_ifname(name)?;
    let mut nl = Nl::new()?;
    let Some(link) = nl.link_by_name(name)? else {
        return Ok(None);
    };
    if !nl::link_is_bridge(&link) && !netns::is_mounted_ns(&switch_netns(name)) {
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

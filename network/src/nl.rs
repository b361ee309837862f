//! A small synchronous rtnetlink client: one socket per network namespace, one request at a
//! time, replies parsed with the typed message crates.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{Error, Result};

/// Largest IPv4 GSO/GRO packet on berth's veths (BIG TCP, kernel 6.3+; older kernels ignore
/// the attributes). A 64 KiB skb is the default; a 192 KiB one crosses the two veths and the
/// bridge of a container-to-container path with a third of the per-packet work. Measured by
/// alternating iperf3 runs on one stack: container-to-container went from ~0.9 to ~1.15 of a
/// bare veth pair at the default size. Packets leaving through a device with a smaller limit
/// are segmented by the kernel as usual.
pub(crate) const BIG_TCP_IPV4_MAX: u32 = 192 * 1024;

pub(crate) struct Nl {
    sock: Socket,
    seq: u32,
}

fn nl_err(op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Netlink {
        op: op.to_string(),
        source,
    }
}

pub(crate) fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e, Error::Netlink { source, .. } if source.raw_os_error() == Some(errno))
}

impl Nl {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Nl> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("socket"))?;
        sock.bind_auto().map_err(nl_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect"))?;
        Ok(Nl { sock, seq: 1 })
    }

    /// A socket inside the namespace bind-mounted at `path`. A socket stays in the namespace it
    /// was made in, so a short-lived thread enters it, makes the socket and exits; the calling
    /// thread never changes namespace.
    pub fn in_netns(path: &Path) -> Result<Nl> {
        let ns = std::fs::File::open(path).map_err(|source| Error::Netns {
            path: path.into(),
            source,
        })?;
        let p = path.to_path_buf();
        std::thread::spawn(move || -> Result<Nl> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Netns {
                    path: p,
                    source: e.into(),
                }
            })?;
            Nl::new()
        })
        .join()
        .map_err(|_| Error::Netns {
            path: path.into(),
            source: std::io::Error::other("thread panicked"),
        })?
    }

    /// Send one request; return the inner messages of the reply. Requests without NLM_F_DUMP
    /// ask for an ACK, so every request ends with either DONE or an (ACK) error message.
    pub fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | if dump { 0 } else { NLM_F_ACK };
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(nl_err(op))?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(nl_err(op))?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| Error::NetlinkDecode {
                        op: op.to_string(),
                        detail: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Netlink {
                                op: op.to_string(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    // ---- links

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("get link", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_by_name(name)?.map(|l| l.header.index))
    }

    pub fn require_index(&mut self, name: &str) -> Result<u32> {
        self.link_index(name)?
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    /// Create a bridge; Ok(false) if a link of that name already exists.
    pub fn add_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(
            "add bridge",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Create a veth pair whose peer is made directly inside the namespace `peer_ns`. Both ends use
    /// IPv4 BIG TCP (`BIG_TCP_IPV4_MAX`).
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &std::fs::File,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        if let Some(mac) = peer_mac {
            peer_msg
                .attributes
                .push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        for m in [&mut msg, &mut peer_msg] {
            m.attributes
                .push(LinkAttribute::GsoIpv4MaxSize(BIG_TCP_IPV4_MAX));
            m.attributes
                .push(LinkAttribute::GroIpv4MaxSize(BIG_TCP_IPV4_MAX));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            "add veth",
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Change a link: up, MTU, controller (bridge).
    pub fn set_link(
        &mut self,
        index: u32,
        up: bool,
        mtu: Option<u32>,
        controller: Option<u32>,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(c) = controller {
            msg.attributes.push(LinkAttribute::Controller(c));
        }
        self.request("set link", RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Delete a link by name; Ok(false) if it did not exist.
    pub fn del_link(&mut self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request("delete link", RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- addresses and routes

    pub fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
        if addr.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(addr.broadcast()));
        }
        match self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// (interface index, address/prefix) of every IPv4 address in the namespace.
    pub fn dump_addresses(&mut self) -> Result<Vec<(u32, Ipv4Net)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.request(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                let ip = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(ip) = ip {
                    if let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len) {
                        out.push((a.header.index, net));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Destinations of every IPv4 route in every table, default routes excluded.
    pub fn dump_route_destinations(&mut self) -> Result<Vec<Ipv4Net>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(
            "dump routes",
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if r.header.destination_prefix_length == 0 || r.header.kind != RouteType::Unicast {
                    continue;
                }
                for at in &r.attributes {
                    if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = at {
                        if let Ok(net) = Ipv4Net::new(*ip, r.header.destination_prefix_length) {
                            out.push(net.trunc());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn add_default_route(&mut self, gateway: Ipv4Addr, oif: u32) -> Result<()> {
        self.add_route(
            "add default route",
            RouteScope::Universe,
            0,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
                RouteAttribute::Oif(oif),
            ],
        )
    }

    /// `ip route add DST dev OIF scope link src SRC`.
    pub fn add_link_route(&mut self, dst: Ipv4Net, oif: u32, src: Ipv4Addr) -> Result<()> {
        self.add_route(
            "add route",
            RouteScope::Link,
            dst.prefix_len(),
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(dst.network())),
                RouteAttribute::PrefSource(RouteAddress::Inet(src)),
                RouteAttribute::Oif(oif),
            ],
        )
    }

    /// A unicast route in the main table (exists already: fine).
    fn add_route(
        &mut self,
        what: &str,
        scope: RouteScope,
        prefix_len: u8,
        attributes: Vec<RouteAttribute>,
    ) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = scope;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = attributes;
        match self.request(
            what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub(crate) fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(m);
            Some(mac)
        }
        _ => None,
    })
}

pub(crate) fn link_is_bridge(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

//! nftables change notifications: a netlink socket subscribed to `NFNLGRP_NFTABLES`, the
//! multicast group on which the kernel announces every committed nf_tables transaction, object
//! by object (tables, chains, rules, sets, elements...), whoever made it: `nft`, iptables-nft
//! (Docker, ufw on current distributions), firewalld. A watcher of the host's firewall then
//! reacts within milliseconds instead of polling.
//!
//! Changes to berth's own table (`inet berth`, rewritten on every apply) are not reported, so
//! berth's own transactions do not wake its watchers. Legacy (non-nft) iptables raises no
//! event at all: `legacy_iptables_in_use` says when a watcher has to poll for it.
//!
//! Synchronous and non-blocking: the caller waits for readability itself (a tokio `AsyncFd`
//! over `AsRawFd`, or `wait`), then calls `read_pending`.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use crate::firewall::TABLE;

const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_NFTABLES` from linux/netfilter/nfnetlink.h.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN`: the end of a transaction (its generation id); carries no table.
const NFT_MSG_NEWGEN: u16 = 15;
/// `NFPROTO_INET`, the family of berth's table.
const NFPROTO_INET: u8 = 1;
/// Attribute 1 is the table's name in the messages of every nf_tables object
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`,
/// `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_OBJ_TABLE`, `NFTA_FLOWTABLE_TABLE`).
const NFTA_TABLE: u16 = 1;

/// A subscription to the calling thread's network namespace's nftables changes.
pub struct NftEvents {
    sock: Socket,
    buf: Vec<u8>,
}

impl NftEvents {
    /// Subscribe (needs CAP_NET_ADMIN). Fails where the kernel has no nf_tables; the caller
    /// then polls.
    pub fn subscribe() -> std::io::Result<NftEvents> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind(&SocketAddr::new(0, 0))?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        sock.set_non_blocking(true)?;
        Ok(NftEvents {
            sock,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Read every queued notification without blocking: whether any was about something else
    /// than berth's own table. A lost notification (the socket's queue overran, ENOBUFS)
    /// counts as a change: what it said is unknown.
    pub fn read_pending(&mut self) -> std::io::Result<bool> {
        let mut foreign = false;
        loop {
            // SAFETY: recv into our own buffer, at most its length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(foreign),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        foreign = true;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            foreign |= datagram_is_foreign(&self.buf[..n as usize]);
        }
    }

    /// Block up to `timeout` for a notification about something else than berth's table
    /// (for callers without an event loop). Ok(false): none came in time.
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.read_pending()? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one pollfd we own.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
    }
}

impl AsRawFd for NftEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Whether one received datagram (one or more netlink messages) tells of a change outside
/// berth's table (pure; unit-tested). Messages of other subsystems and the end-of-transaction
/// `NEWGEN` are not changes of their own.
fn datagram_is_foreign(mut d: &[u8]) -> bool {
    let mut foreign = false;
    while d.len() >= 16 {
        let len = u32::from_ne_bytes(d[..4].try_into().unwrap()) as usize;
        let typ = u16::from_ne_bytes([d[4], d[5]]);
        // A truncated last message still has its header and first attributes.
        let m = &d[..len.clamp(16, d.len())];
        foreign |= message_is_foreign(typ, m);
        if len < 16 {
            break;
        }
        d = &d[((len + 3) & !3).min(d.len())..];
    }
    foreign
}

fn message_is_foreign(typ: u16, m: &[u8]) -> bool {
    if typ >> 8 != NFNL_SUBSYS_NFTABLES || typ & 0xff == NFT_MSG_NEWGEN {
        return false;
    }
    // nlmsghdr (16) + nfgenmsg { family, version, res_id } (4), then the attributes.
    let Some(&family) = m.get(16) else {
        return true;
    };
    let table = attrs(m.get(20..).unwrap_or(&[]))
        .find(|(t, _)| *t == NFTA_TABLE)
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or("").trim_end_matches('\0'));
    !(family == NFPROTO_INET && table == Some(TABLE))
}

/// The netlink attributes in `b`: (type without flag bits, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let typ = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((typ, v))
    })
}

/// Whether legacy (non-nft) iptables has a table in the calling thread's namespace: its
/// changes raise no nftables event, so a watcher has to look at it from time to time.
pub fn legacy_iptables_in_use() -> bool {
    std::fs::read_to_string("/proc/thread-self/net/ip_tables_names")
        .is_ok_and(|names| names.lines().any(|l| !l.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: nlmsghdr, nfgenmsg, then attributes.
    fn msg(subsys: u16, op: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((subsys << 8) | op).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    const NEWCHAIN: u16 = 3;
    const NEWRULE: u16 = 6;

    #[test]
    fn changes_of_berths_own_table_are_not_reported() {
        let own = msg(10, NEWCHAIN, 1, &[(1, b"berth\0"), (3, b"p_x_pre\0")]);
        assert!(!datagram_is_foreign(&own));
        let gen = msg(10, NFT_MSG_NEWGEN, 0, &[(1, &7u32.to_be_bytes())]);
        assert!(!datagram_is_foreign(&gen));
        // Another subsystem on the same socket family (conntrack...) is not an nft change.
        assert!(!datagram_is_foreign(&msg(1, 0, 2, &[(1, b"x\0")])));
        let mut both = own.clone();
        both.extend_from_slice(&gen);
        assert!(!datagram_is_foreign(&both));
    }

    #[test]
    fn changes_of_other_tables_are_reported() {
        // iptables-nft's `ip filter` (Docker, ufw), a same-named table of another family, a
        // table named like berth's prefix, and a message without a table attribute.
        for m in [
            msg(10, NEWCHAIN, 2, &[(1, b"filter\0"), (3, b"FORWARD\0")]),
            msg(10, NEWRULE, 2, &[(1, b"berth\0")]),
            msg(10, NEWRULE, 1, &[(1, b"berthtest\0")]),
            msg(10, NEWRULE, 1, &[(3, b"x\0")]),
        ] {
            assert!(datagram_is_foreign(&m), "{m:?}");
            // Also when it follows berth's own change in one datagram.
            let mut d = msg(10, NEWCHAIN, 1, &[(1, b"berth\0")]);
            d.extend_from_slice(&m);
            assert!(datagram_is_foreign(&d));
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for d in [
            &[][..],
            &[1, 2, 3],
            &[0xff; 17],
            &[16, 0, 0, 0, 0, 10, 0, 0],
        ] {
            let _ = datagram_is_foreign(d);
        }
        let mut m = msg(10, NEWCHAIN, 2, &[(1, b"filter\0")]);
        m.truncate(18);
        assert!(datagram_is_foreign(&m));
    }
}

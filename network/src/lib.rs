//! berth-network: bridges, veth pairs, IPAM, nftables port publishing and the embedded DNS
//! server. Sees only network namespaces and plain endpoint specs; nothing here knows about
//! Compose or about the container runtime.
//!
//! Everything that talks to the kernel goes through rtnetlink (`nl`) or one `nft -f -`
//! transaction per change (`firewall`); nothing shells out to `ip` or `iptables`.

pub mod bridge;
#[cfg(feature = "dns")]
pub mod dns;
pub mod endpoint;
pub mod files;
pub mod firewall;
pub mod hostinput;
pub mod ipam;
pub mod netns;
pub mod nfevents;
mod nl;
#[cfg(feature = "relay")]
pub mod relay;
mod sockdiag;
mod sysctl;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Every host-side link berth makes starts with this (leak checks rely on it).
pub const LINK_PREFIX: &str = "berth";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink {op}: {source}")]
    Netlink { op: String, source: std::io::Error },
    #[error("netlink {op}: cannot decode the reply: {detail}")]
    NetlinkDecode { op: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("interface name {0:?} is invalid (1 to 15 characters, no '/', ':' or whitespace)")]
    InvalidIfName(String),
    #[error("IPAM state {path}: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no free /20 subnet left in berth's pool 10.0.0.0/8")]
    PoolExhausted,
    #[error("subnet {subnet} overlaps {other} (used by {by})")]
    SubnetOverlap {
        subnet: Ipv4Net,
        other: Ipv4Net,
        by: String,
    },
    #[error("network {0} has no subnet allocated")]
    UnknownNetwork(String),
    #[error("address {addr} is not usable in {subnet}")]
    AddressOutOfRange { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {addr} on network {network} is already in use by {owner}")]
    AddressInUse {
        addr: Ipv4Addr,
        network: String,
        owner: String,
    },
    #[error("no free address left in {0}")]
    NoFreeAddress(Ipv4Net),
    #[error("invalid IPAM request: {0}")]
    InvalidRequest(String),
    #[error("port {protocol}/{port} on {host_ip} is already in use{by}")]
    PortInUse {
        protocol: String,
        host_ip: String,
        port: u16,
        by: String,
    },
    #[error("no free host port found for {0}")]
    NoFreePort(String),
    #[error("unknown protocol {0:?} (tcp or udp)")]
    BadProtocol(String),
    #[error("invalid address {0:?}")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("nft: {0}")]
    Nft(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Short, stable hex hash of a string (name derivation).
pub(crate) fn short_hash(input: &str, hex_len: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(input.as_bytes());
    let mut s = hex::encode(digest);
    s.truncate(hex_len);
    s
}

/// Linux interface names: 1..=15 bytes, no '/', ':' or whitespace.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(Error::InvalidIfName(name.to_string()));
    }
    Ok(())
}

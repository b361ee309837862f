//! berth-network: bridges, veth pairs, IPAM, nftables port publishing and the embedded DNS
//! server. Sees only network namespaces and plain endpoint specs; nothing here knows about
//! Compose or about the container runtime.

//! Project networks: one bridge per Compose network, addresses from berth's IPAM.

use anyhow::Context;

use super::plan::NetworkPlan;
use super::Engine;
use crate::state::NetworkRecord;

impl Engine {
    /// Make (or find, for external networks) the bridge of a network.
    pub async fn ensure_network(&self, net: &NetworkPlan) -> anyhow::Result<NetworkRecord> {
        let bridge = berth_network::bridge::bridge_name(&net.name);
        let request = if net.subnet.is_some() || net.gateway.is_some() || net.ip_range.is_some() {
            Some(berth_network::ipam::IpamRequest {
                subnet: net.subnet,
                ip_range: net.ip_range,
                gateway: net.gateway,
            })
        } else {
            None
        };
        let alloc = self
            .ipam
            .allocate_network(&net.name, request)
            .with_context(|| format!("allocating a subnet for network {}", net.name))?;
        crate::trace::step(|| format!("network {}: subnet {}", net.name, alloc.subnet));
        if !net.external {
            let spec = berth_network::bridge::BridgeSpec {
                name: bridge.clone(),
                gateway: ipnet::Ipv4Net::new(alloc.gateway, alloc.subnet.prefix_len())?,
                mtu: net.mtu,
                internal: net.internal,
            };
            tokio::task::spawn_blocking(move || berth_network::bridge::ensure(&spec))
                .await?
                .with_context(|| format!("creating network {}", net.name))?;
            crate::trace::step(|| format!("network {}: bridge up", net.name));
        }
        Ok(NetworkRecord {
            key: net.key.clone(),
            name: net.name.clone(),
            bridge,
            subnet: alloc.subnet,
            gateway: alloc.gateway,
            internal: net.internal,
            external: net.external,
        })
    }

    /// Remove a network berth made (external ones are left alone).
    pub async fn remove_network(&self, rec: &NetworkRecord) -> Vec<String> {
        let mut errs = Vec::new();
        if rec.external {
            return errs;
        }
        let b = rec.bridge.clone();
        match tokio::task::spawn_blocking(move || berth_network::bridge::remove(&b)).await {
            Ok(Err(e)) => errs.push(format!("bridge {}: {e}", rec.bridge)),
            Err(e) => errs.push(format!("bridge {}: {e}", rec.bridge)),
            _ => {}
        }
        if let Err(e) = self.ipam.release_network(&rec.name) {
            errs.push(format!("ipam {}: {e}", rec.name));
        }
        errs
    }
}

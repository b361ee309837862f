//! What the project shows to the outside and to its own containers: the DNS records (which
//! containers serve, under which names, on which networks), the project's nftables rules and
//! published ports (DNAT or the userland relay), and the watch on the host's forward policy
//! that switches between the two.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Supervisor;
use crate::state::{ContainerRecord, ProjectState, Status};

/// How often the host's forward policy is looked at without a change announced: the fallback
/// where nftables events cannot be had, and the one look at legacy iptables appearing later.
const FORWARD_POLICY_SLOW_CHECK: Duration = Duration::from_secs(60);
/// The same while legacy (non-nft) iptables has tables: its changes announce nothing.
const FORWARD_POLICY_LEGACY_CHECK: Duration = Duration::from_secs(10);
/// After an nftables change, how long further ones are gathered before looking (Docker's start
/// is dozens of transactions in a row: one look, not dozens).
const FORWARD_POLICY_SETTLE: Duration = Duration::from_millis(20);

impl Supervisor {
    /// The containers that take traffic (DNS answers, published-port backends): running, not
    /// draining, and healthy where they have a healthcheck. A service none of whose replicas
    /// is healthy yet still answers with its starting ones, as Docker does.
    pub(super) fn serving_set(&self, st: &ProjectState) -> std::collections::HashSet<String> {
        let draining = self.shared.lock().unwrap().draining.clone();
        let up: Vec<&ContainerRecord> = st
            .containers
            .iter()
            .filter(|c| c.status == Status::Running && !draining.contains(&c.name))
            .collect();
        let healthy = |c: &ContainerRecord| matches!(c.health.as_deref(), None | Some("healthy"));
        // Services with at least one healthy replica (one pass, not one per container).
        let with_healthy: std::collections::HashSet<&str> = up
            .iter()
            .filter(|c| healthy(c))
            .map(|c| c.service.as_str())
            .collect();
        let mut out = std::collections::HashSet::new();
        for c in &up {
            // A service with no healthy replica (all starting, or all failing their checks at
            // once under load) still answers with what runs, as Docker does: never NXDOMAIN
            // for a service that has running containers.
            if healthy(c) || !with_healthy.contains(c.service.as_str()) {
                out.insert(c.name.clone());
            }
        }
        out
    }

    /// DNS: every running container answers on each of its networks under its service name,
    /// container name, hostname and aliases. Swapped in one piece; concurrent refreshes (a
    /// burst of starts or exits) share one rebuild that starts after each of them asked.
    pub(super) async fn refresh_dns(&self) {
        self.dns_runs.run(|| self.rebuild_dns()).await
    }

    async fn rebuild_dns(&self) {
        // Per service, what its records need from the plan: its own `dns:` servers, its
        // hostname, and the aliases `links: [SERVICE:ALIAS]` of any service give it (Docker
        // scopes those to the linking container; berth answers them network-wide). Taken
        // under the plan's lock alone (lock order: never `plan` and `state` together).
        type SvcDns = (Vec<std::net::SocketAddr>, Option<String>, Vec<String>);
        let per_service: HashMap<String, SvcDns> = {
            let plan = self.plan.lock().await;
            let mut m: HashMap<String, SvcDns> = HashMap::new();
            for s in plan.iter().flat_map(|p| p.services.iter()) {
                let upstreams = s
                    .dns
                    .iter()
                    .filter_map(|d| d.parse::<std::net::IpAddr>().ok())
                    .map(|ip| (ip, 53).into())
                    .collect();
                let e = m.entry(s.name.clone()).or_default();
                e.0 = upstreams;
                e.1 = s.hostname.clone();
                for (target, alias) in &s.links {
                    let t = m.entry(target.clone()).or_default();
                    if !t.2.contains(alias) {
                        t.2.push(alias.clone());
                    }
                }
            }
            m
        };
        let st = self.state.lock().await;
        let mut records = berth_network::dns::Records::default();
        records.set_upstreams(host_upstreams());
        for n in &st.networks {
            records.add_network(&n.key, n.gateway, n.internal);
            records.set_subnet(&n.key, n.subnet);
        }
        let ready = self.serving_set(&st);
        for c in st.containers.iter().filter(|c| ready.contains(&c.name)) {
            let svc = per_service.get(&c.service);
            for ep in &c.endpoints {
                let mut names = vec![
                    format!("{}.{}", c.name, ep.network_name),
                    c.service.clone(),
                    c.name.clone(),
                ];
                // A one-off: its container name, the rest only with `run --use-aliases`.
                let named = svc.filter(|_| !c.oneoff);
                if c.oneoff {
                    names.remove(1);
                }
                if let Some(h) = named.and_then(|s| s.1.clone()) {
                    names.push(h);
                }
                names.extend(ep.aliases.iter().cloned());
                for alias in named.iter().flat_map(|s| s.2.iter()) {
                    if !names.contains(alias) {
                        names.push(alias.clone());
                    }
                }
                records.add(&ep.network, &names, ep.ip);
                if let Some(s) = svc.filter(|s| !s.0.is_empty()) {
                    records.set_container_upstreams(ep.ip, s.0.clone());
                }
            }
        }
        let nets: Vec<(String, std::net::Ipv4Addr)> = st
            .networks
            .iter()
            .map(|n| (n.key.clone(), n.gateway))
            .collect();
        drop(st);
        // Swapped in one piece: a query sees the old records or the new ones, never a mix.
        self.dns.set_records(records);
        crate::trace::step(|| "dns: records swapped".into());
        for (key, _) in self.dns.listeners() {
            if !nets.iter().any(|(k, _)| *k == key) {
                self.dns.remove_listener(&key);
            }
        }
        for (key, gw) in nets {
            if let Err(e) = self.dns.add_listener(&key, gw).await {
                tracing::warn!("dns on {gw}: {e}");
            }
        }
    }

    /// Look at the host's forward policy now and whenever the host's nftables ruleset changes
    /// (`berth_network::nfevents`: Docker, ufw, firewalld or an admin, through nft or
    /// iptables-nft, seen within milliseconds); when it starts or stops dropping routed
    /// traffic, apply the firewall again (which moves the published ports to or from the
    /// relay). Without the subscription, and for legacy iptables (which announces nothing),
    /// it is looked at on a timer instead.
    pub(super) async fn watch_forward_policy(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        use tokio::io::unix::AsyncFd;
        let mut events = match berth_network::nfevents::NftEvents::subscribe().and_then(|ev| {
            // SAFETY: the events own their socket for as long as they live; its fd is the
            // same throughout.
            unsafe { AsyncFd::register_with_interest(ev, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
        }) {
            Ok(ev) => Some(ev),
            Err(e) => {
                tracing::warn!(
                    "no nftables change events ({e}): the host's forward policy is looked at \
                     every {} s",
                    FORWARD_POLICY_SLOW_CHECK.as_secs()
                );
                None
            }
        };
        let mut legacy_said = false;
        loop {
            let blocked = crate::rootless::active()
                || tokio::task::spawn_blocking(berth_network::firewall::routed_traffic_blocked)
                    .await
                    .unwrap_or(false);
            if self.routed_blocked.swap(blocked, Ordering::SeqCst) != blocked {
                tracing::info!("host forward policy drops routed traffic: {blocked}");
                if let Err(e) = self.apply_firewall().await {
                    tracing::warn!("firewall: {e:#}");
                }
            }
            // The same change may be an input drop policy appearing or going (ufw).
            self.sync_host_input().await;
            let legacy = berth_network::nfevents::legacy_iptables_in_use();
            if legacy && !legacy_said && events.is_some() {
                tracing::info!(
                    "legacy iptables is in use and announces no change: the host's forward \
                     policy is also looked at every {} s",
                    FORWARD_POLICY_LEGACY_CHECK.as_secs()
                );
            }
            legacy_said |= legacy;
            let period = if legacy {
                FORWARD_POLICY_LEGACY_CHECK
            } else {
                FORWARD_POLICY_SLOW_CHECK
            };
            let Some(ev) = events.as_mut() else {
                tokio::time::sleep(period).await;
                continue;
            };
            let deadline = tokio::time::Instant::now() + period;
            // Until a change outside berth's own table, or the period is over.
            let failed = loop {
                let ready = tokio::select! {
                    r = ev.readable_mut() => r,
                    _ = tokio::time::sleep_until(deadline) => break None,
                };
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => break Some(e),
                };
                // Read until the socket would block: the readiness is then really spent.
                let r = guard.get_inner_mut().read_pending();
                guard.clear_ready();
                match r {
                    Ok(true) => {
                        crate::trace::step(|| "nftables changed: forward policy check".into());
                        tokio::time::sleep(FORWARD_POLICY_SETTLE).await;
                        let _ = ev.get_mut().read_pending();
                        break None;
                    }
                    Ok(false) => {}
                    Err(e) => break Some(e),
                }
            };
            if let Some(e) = failed {
                tracing::warn!(
                    "nftables change events stopped ({e}): the host's forward policy is \
                     looked at every {} s",
                    FORWARD_POLICY_SLOW_CHECK.as_secs()
                );
                events = None;
            }
        }
    }

    /// berth's accepts in the host's input-hook chains whose policy is drop (ufw's INPUT): DNS
    /// on the project's gateways, replies from its networks, and in relay mode its relayed
    /// ports (`berth_network::hostinput`), for what was last applied; none once the rules
    /// are removed. Run on every host firewall change and after each apply.
    pub(super) async fn sync_host_input(&self) {
        let _one = self.fw.lock().await;
        let (last, removed) = {
            let sh = self.shared.lock().unwrap();
            (sh.last_fw.clone(), sh.fw_removed)
        };
        if last.is_none() && !removed {
            // Nothing applied by this supervisor yet (an adopting one): what a previous one
            // wrote stays as it is until the first apply.
            return;
        }
        let mut needs = berth_network::hostinput::InputNeeds {
            project: self.project.clone(),
            ..Default::default()
        };
        if let Some(fw) = last {
            let st = self.state.lock().await;
            needs.networks = st
                .networks
                .iter()
                .filter(|n| fw.networks.iter().any(|r| r.bridge == n.bridge))
                .map(|n| (n.bridge.clone(), n.gateway))
                .collect();
            drop(st);
            if fw.relay {
                needs.ports = fw
                    .ports
                    .iter()
                    .map(|p| {
                        let host = berth_network::hostinput::v4(p.host_ip);
                        (p.protocol, host, p.host_port)
                    })
                    .collect();
                needs.outbound = fw.outbound.clone();
            }
        }
        let r = tokio::task::spawn_blocking(move || berth_network::hostinput::sync(&needs)).await;
        match r {
            Ok(Err(e)) => tracing::warn!("accepts in the host's input chains: {e}"),
            Err(e) => tracing::warn!("accepts in the host's input chains: {e}"),
            Ok(Ok(())) => {}
        }
    }

    /// Remove the project's rules, and keep them removed until the next `up`.
    pub(super) async fn remove_firewall(&self) {
        let _one = self.fw.lock().await;
        let _ = berth_network::firewall::remove(&self.project);
        let project = self.project.clone();
        let _ =
            tokio::task::spawn_blocking(move || berth_network::hostinput::remove(&project)).await;
        self.relay.lock().unwrap().clear();
        let mut sh = self.shared.lock().unwrap();
        sh.last_fw = None;
        sh.fw_removed = true;
    }

    pub(super) async fn apply_firewall(&self) -> anyhow::Result<()> {
        let _one = self.fw.lock().await;
        if self.shared.lock().unwrap().fw_removed {
            return Ok(());
        }
        let st = self.state.lock().await;
        let serving = self.serving_set(&st);
        let relay = self
            .routed_blocked
            .load(std::sync::atomic::Ordering::SeqCst);
        // Relay mode: the networks' outbound listeners first, so their ports are in the rules.
        let outbound = if relay {
            let nets: Vec<(String, std::net::Ipv4Addr)> = st
                .networks
                .iter()
                .filter(|n| !n.internal)
                .map(|n| (n.bridge.clone(), n.gateway))
                .collect();
            self.relay.lock().unwrap().update_outbound(&nets)
        } else {
            vec![]
        };
        let mut fw = berth_network::firewall::ProjectFirewall {
            relay,
            outbound,
            project: self.project.clone(),
            networks: vec![],
            ports: vec![],
        };
        for n in &st.networks {
            fw.networks.push(berth_network::firewall::NetRule {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            });
        }
        type Backends = Vec<(std::net::Ipv4Addr, u16)>;
        let mut ports: HashMap<(Option<String>, u16, String), Backends> = HashMap::new();
        for c in st.containers.iter() {
            let Some(ip) = c.endpoints.first().map(|e| e.ip) else {
                continue;
            };
            for p in &c.ports {
                let e = ports
                    .entry((p.host_ip.clone(), p.host_port, p.protocol.clone()))
                    .or_default();
                if serving.contains(&c.name) {
                    e.push((ip, p.target));
                }
            }
        }
        for ((host_ip, host_port, proto), backends) in ports {
            fw.ports.push(berth_network::firewall::PortRule {
                host_ip: host_ip.and_then(|h| h.parse().ok()),
                host_port,
                protocol: if proto == "udp" {
                    berth_network::firewall::Proto::Udp
                } else {
                    berth_network::firewall::Proto::Tcp
                },
                backends,
            });
        }
        drop(st);
        // Same rules as last applied: nothing to do (saves an nft transaction per service).
        fw.ports.sort_by(|a, b| {
            (a.host_port, a.protocol.as_str(), a.host_ip).cmp(&(
                b.host_port,
                b.protocol.as_str(),
                b.host_ip,
            ))
        });
        for p in fw.ports.iter_mut() {
            p.backends.sort();
        }
        if self.shared.lock().unwrap().last_fw.as_ref() == Some(&fw) {
            return Ok(());
        }
        let applied = fw.clone();
        // Into relay mode: listen before the kernel stops DNATing routed clients; out of it:
        // stop listening once the DNAT is back. (The ports were checked free before `up`.)
        if relay {
            if let Err(e) = self.relay.lock().unwrap().update(&fw.ports) {
                tracing::warn!("relay: {e}");
            }
        }
        tokio::task::spawn_blocking(move || berth_network::firewall::apply(&fw)).await??;
        crate::trace::step(|| "firewall: nft transaction applied".into());
        if !relay {
            self.relay.lock().unwrap().clear();
        }
        self.shared.lock().unwrap().last_fw = Some(applied);
        drop(_one);
        self.sync_host_input().await;
        Ok(())
    }
}

/// Upstream resolvers for names outside the project: the host's resolv.conf, parsed again
/// only when the file changed (its inode, size or mtime; editors and resolvconf replace it by
/// rename), not on every container event.
fn host_upstreams() -> Vec<std::net::SocketAddr> {
    use std::os::unix::fs::MetadataExt;
    type Key = (u64, u64, i64, i64);
    static CACHE: std::sync::Mutex<Option<(Key, Vec<std::net::SocketAddr>)>> =
        std::sync::Mutex::new(None);
    const PATH: &str = "/etc/resolv.conf";
    let key = std::fs::metadata(PATH)
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        .ok();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(k), Some((ck, v))) = (key, cache.as_ref()) {
        if k == *ck {
            return v.clone();
        }
    }
    let text = std::fs::read_to_string(PATH).unwrap_or_default();
    let (servers, _, _) = berth_network::files::parse_resolv_conf(&text);
    let v: Vec<std::net::SocketAddr> = servers
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect();
    if let Some(k) = key {
        *cache = Some((k, v.clone()));
    }
    v
}

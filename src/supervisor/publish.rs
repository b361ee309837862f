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
        let mut by_service: HashMap<&str, Vec<&ContainerRecord>> = HashMap::new();
        for c in &st.containers {
            by_service.entry(c.service.as_str()).or_default().push(c);
        }
        by_service
            .values()
            .flat_map(|cs| serving(cs, &draining))
            .map(|c| c.name.clone())
            .collect()
    }

    /// DNS: every running container answers on each of its networks under its service name,
    /// container name, hostname and aliases. Concurrent refreshes (a burst of starts or exits)
    /// share one update that starts after each of them asked; an update recomputes only the
    /// services whose containers changed since the last one (`ProjectState::take_dns_changes`),
    /// applies the difference to the records (`dns::Incremental`) and swaps them in once.
    pub(super) async fn refresh_dns(&self) {
        self.dns_runs.run(|| self.update_dns()).await
    }

    async fn update_dns(&self) {
        // Per service, what its records need from the plan: its own `dns:` servers, its
        // hostname, and the aliases `links: [SERVICE:ALIAS]` of any service give it (Docker
        // scopes those to the linking container; berth answers them network-wide). Made again
        // only when the plan changed (`plan_rev`; every service is then looked at again).
        // Taken under the plan's lock alone (lock order: never `plan` and `state` together).
        let replanned = {
            let plan = self.plan.lock().await;
            let rev = self.plan_rev.load(std::sync::atomic::Ordering::Relaxed);
            let mut ds = self.dns_state.lock().unwrap();
            let same = ds.plan_rev == Some(rev);
            if !same {
                ds.plan_rev = Some(rev);
                ds.per_service = per_service_dns(plan.iter().flat_map(|p| p.services.iter()));
            }
            !same
        };
        let draining = self.shared.lock().unwrap().draining.clone();
        let mut st = self.state.lock().await;
        let (nets, snapshot) = {
            let mut changed = st.take_dns_changes();
            let mut ds = self.dns_state.lock().unwrap();
            let ds = &mut *ds;
            // Containers that started or stopped draining (a rolling update) change their service.
            for n in draining.symmetric_difference(&ds.draining) {
                if let Some(c) = st.container(n) {
                    changed.insert(c.service.clone());
                }
            }
            ds.draining = draining;
            if replanned || !ds.started {
                ds.started = true;
                changed.extend(st.containers.iter().map(|c| c.service.clone()));
                changed.extend(ds.records.owners().cloned());
            }
            let nets: Vec<(String, std::net::Ipv4Addr, bool, Option<ipnet::Ipv4Net>)> = st
                .networks
                .iter()
                .map(|n| (n.key.clone(), n.gateway, n.internal, Some(n.subnet)))
                .collect();
            let mut swap = ds.records.set_networks(nets.clone());
            swap |= ds.records.set_upstreams(host_upstreams());
            if !changed.is_empty() {
                // The changed services' containers (through the state's index: one
                // container's event looks at its service, not at every container).
                let of: Vec<(&str, Vec<&ContainerRecord>)> = changed
                    .iter()
                    .map(|s| (s.as_str(), st.of_service(s)))
                    .collect();
                for (service, containers) in of {
                    let entries = service_entries(
                        service,
                        &containers,
                        &ds.draining,
                        ds.per_service.get(service),
                    );
                    swap |= ds.records.set(service, entries);
                }
            }
            (nets, swap.then(|| ds.records.snapshot()))
        };
        drop(st);
        if let Some(records) = snapshot {
            // Swapped in one piece: a query sees the old records or the new ones, never a mix.
            self.dns.set_records(records);
            crate::trace::step(|| "dns: records swapped".into());
        }
        for (key, _) in self.dns.listeners() {
            if !nets.iter().any(|n| n.0 == key) {
                self.dns.remove_listener(&key);
            }
        }
        for (key, gw, ..) in nets {
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
        let mut st = self.state.lock().await;
        let relay = self
            .routed_blocked
            .load(std::sync::atomic::Ordering::SeqCst);
        // Nothing that the rules depend on changed since they were applied (the common
        // container event: a service without published ports): done, without looking at
        // every container. Else the rules are made again from the whole state below.
        let changed = st.take_firewall_changes();
        let draining = self.shared.lock().unwrap().draining.clone();
        {
            let sh = self.shared.lock().unwrap();
            let mut fs = self.fw_state.lock().unwrap();
            let same_draining = fs.draining == draining;
            fs.draining = draining;
            let same_base = sh.last_fw.as_ref().is_some_and(|l| {
                l.relay == relay
                    && l.networks.len() == st.networks.len()
                    && l.networks.iter().zip(&st.networks).all(|(r, n)| {
                        r.bridge == n.bridge && r.subnet == n.subnet && r.internal == n.internal
                    })
            });
            let ports_touched = changed.iter().any(|s| fs.ported.contains(s))
                || st
                    .containers
                    .iter()
                    .any(|c| !c.ports.is_empty() && changed.contains(&c.service));
            if same_base && same_draining && !fs.failed && !ports_touched {
                return Ok(());
            }
            // Until this apply succeeds, the next one is made whole.
            fs.failed = true;
        }
        let serving = self.serving_set(&st);
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
        let mut ported = std::collections::HashSet::new();
        for c in st.containers.iter() {
            let Some(ip) = c.endpoints.first().map(|e| e.ip) else {
                continue;
            };
            if !c.ports.is_empty() && !ported.contains(&c.service) {
                ported.insert(c.service.clone());
            }
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
            let mut fs = self.fw_state.lock().unwrap();
            fs.ported = ported;
            fs.failed = false;
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
        {
            let mut fs = self.fw_state.lock().unwrap();
            fs.ported = ported;
            fs.failed = false;
        }
        drop(_one);
        self.sync_host_input().await;
        Ok(())
    }
}

/// What the firewall's rules were last made from, beyond `Shared::last_fw`: to tell when a
/// container event cannot change them.
#[derive(Debug, Default)]
pub(super) struct FwState {
    /// Services with published ports.
    ported: std::collections::HashSet<String>,
    /// The draining containers (not backends).
    draining: std::collections::HashSet<String>,
    /// The last apply did not finish: the next one is made whole.
    failed: bool,
}

/// What the DNS needs of a service from the plan: its `dns:` servers, its hostname, and the
/// aliases other services' `links:` give it.
#[derive(Debug, Default, Clone)]
pub(super) struct SvcDns {
    upstreams: Vec<std::net::SocketAddr>,
    hostname: Option<String>,
    link_aliases: Vec<String>,
}

/// The supervisor's side of the DNS records: what was published, per service, and what it
/// was computed from.
#[derive(Debug, Default)]
pub(super) struct DnsState {
    records: berth_network::dns::Incremental,
    /// The plan's revision (`Supervisor::plan_rev`) `per_service` was made from.
    plan_rev: Option<u64>,
    per_service: HashMap<String, SvcDns>,
    /// The draining containers the last time.
    draining: std::collections::HashSet<String>,
    /// A first update was made (it looks at every service).
    started: bool,
}

fn per_service_dns<'a>(
    services: impl Iterator<Item = &'a crate::engine::plan::ServicePlan>,
) -> HashMap<String, SvcDns> {
    let mut m: HashMap<String, SvcDns> = HashMap::new();
    for s in services {
        let e = m.entry(s.name.clone()).or_default();
        e.upstreams = s
            .dns
            .iter()
            .filter_map(|d| d.parse::<std::net::IpAddr>().ok())
            .map(|ip| (ip, 53).into())
            .collect();
        e.hostname = s.hostname.clone();
        for (target, alias) in &s.links {
            let t = m.entry(target.clone()).or_default();
            if !t.link_aliases.contains(alias) {
                t.link_aliases.push(alias.clone());
            }
        }
    }
    m
}

/// A service's DNS entries: its serving containers (`serving`) on each of their networks,
/// under the service name, container name, hostname, the endpoint's aliases and link aliases.
fn service_entries(
    service: &str,
    containers: &[&ContainerRecord],
    draining: &std::collections::HashSet<String>,
    svc: Option<&SvcDns>,
) -> Vec<berth_network::dns::Entry> {
    let mut out = Vec::new();
    for c in serving(containers, draining) {
        for ep in &c.endpoints {
            // The first name is the address's PTR: `<container>.<network>`, as Docker answers
            // (it also resolves as a name).
            let mut names = vec![
                format!("{}.{}", c.name, ep.network_name),
                service.to_string(),
                c.name.clone(),
            ];
            // A one-off: its container name, the rest only with `run --use-aliases`.
            let named = svc.filter(|_| !c.oneoff);
            if c.oneoff {
                names.remove(1);
            }
            if let Some(h) = named.and_then(|s| s.hostname.clone()) {
                names.push(h);
            }
            names.extend(ep.aliases.iter().cloned());
            for alias in named.iter().flat_map(|s| s.link_aliases.iter()) {
                if !names.contains(alias) {
                    names.push(alias.clone());
                }
            }
            out.push(berth_network::dns::Entry {
                network: ep.network.clone(),
                names,
                ip: ep.ip,
                upstreams: svc.map(|s| s.upstreams.clone()).unwrap_or_default(),
            });
        }
    }
    out
}

/// Of one service's containers, those that take traffic: running, not draining, and healthy
/// where they have a healthcheck; a service none of whose replicas is healthy yet answers with
/// its starting ones, as Docker does (never NXDOMAIN for a service with running containers).
fn serving<'a>(
    containers: &[&'a ContainerRecord],
    draining: &std::collections::HashSet<String>,
) -> Vec<&'a ContainerRecord> {
    let up: Vec<&ContainerRecord> = containers
        .iter()
        .copied()
        .filter(|c| c.status == Status::Running && !draining.contains(&c.name))
        .collect();
    let healthy = |c: &ContainerRecord| matches!(c.health.as_deref(), None | Some("healthy"));
    if up.iter().any(|c| healthy(c)) {
        up.into_iter().filter(|c| healthy(c)).collect()
    } else {
        up
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EndpointRecord;

    fn rec(name: &str, ip: [u8; 4], status: Status, health: Option<&str>) -> ContainerRecord {
        let mut c = ContainerRecord::sample(name, "web");
        c.status = status;
        c.health = health.map(str::to_string);
        c.endpoints = vec![EndpointRecord {
            network: "default".into(),
            network_name: "p_default".into(),
            host_ifname: "v".into(),
            ip: ip.into(),
            aliases: vec!["w".into()],
        }];
        c
    }

    fn ips(e: &[berth_network::dns::Entry]) -> Vec<[u8; 4]> {
        e.iter().map(|e| e.ip.octets()).collect()
    }

    #[test]
    fn a_service_answers_with_its_healthy_running_replicas_not_draining() {
        let a = rec("p-web-1", [10, 0, 0, 2], Status::Running, Some("healthy"));
        let b = rec("p-web-2", [10, 0, 0, 3], Status::Running, Some("starting"));
        let c = rec("p-web-3", [10, 0, 0, 4], Status::Exited, None);
        let d = rec("p-web-4", [10, 0, 0, 5], Status::Running, None);
        let svc = SvcDns {
            upstreams: vec!["192.0.2.1:53".parse().unwrap()],
            hostname: Some("h".into()),
            link_aliases: vec!["legacy".into(), "w".into()],
        };
        let none = std::collections::HashSet::new();
        let e = service_entries("web", &[&a, &b, &c, &d], &none, Some(&svc));
        // Healthy (or without a check) and running: a and d; b still starts, c exited.
        assert_eq!(ips(&e), [[10, 0, 0, 2], [10, 0, 0, 5]]);
        // The first name (the PTR) is `<container>.<network>`, as Docker answers.
        assert_eq!(
            e[0].names,
            ["p-web-1.p_default", "web", "p-web-1", "h", "w", "legacy"]
        );
        assert_eq!(e[0].upstreams, svc.upstreams);
        // Draining replicas leave DNS.
        let draining = std::collections::HashSet::from(["p-web-1".to_string()]);
        let e = service_entries("web", &[&a, &b, &d], &draining, None);
        assert_eq!(ips(&e), [[10, 0, 0, 5]]);
        assert_eq!(e[0].names, ["p-web-4.p_default", "web", "p-web-4", "w"]);
        // A one-off answers to its container names only (its aliases come with
        // `run --use-aliases`, in its endpoint); not the service's hostname or link aliases.
        let mut o = rec("p-web-run-1", [10, 0, 0, 6], Status::Running, None);
        o.oneoff = true;
        o.endpoints[0].aliases.clear();
        let e = service_entries("web", &[&o], &none, Some(&svc));
        assert_eq!(e[0].names, ["p-web-run-1.p_default", "p-web-run-1"]);
        // None healthy yet: the starting ones answer (never NXDOMAIN while some run).
        let e = service_entries("web", &[&b, &c], &none, None);
        assert_eq!(ips(&e), [[10, 0, 0, 3]]);
        assert!(service_entries("web", &[&c], &none, None).is_empty());
    }
}

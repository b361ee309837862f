//! What the engine needs of a service, resolved from the Compose model in one place
//! (`from_model`), so that the rest of the engine never reads YAML-shaped data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::restart::Policy;

#[derive(Debug, Clone, Default)]
pub struct PortPlan {
    pub host_ip: Option<String>,
    /// Host port; None = pick a free one.
    pub host_port: Option<u16>,
    pub target: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    /// bind | volume | tmpfs
    pub kind: String,
    /// Host path (bind), real volume name (volume; None = anonymous), unused for tmpfs.
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    pub create_host_path: bool,
    pub nocopy: bool,
    pub tmpfs_size: Option<u64>,
    pub tmpfs_mode: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct NetPlan {
    /// The key in the compose file.
    pub key: String,
    pub aliases: Vec<String>,
    pub ipv4_address: Option<std::net::Ipv4Addr>,
    pub mac_address: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FilePlan {
    /// Where the content comes from: a file on the host, or inline content.
    pub file: Option<PathBuf>,
    pub content: Option<String>,
    pub target: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
}

#[derive(Debug, Clone, Default)]
pub struct HealthPlan {
    /// ["CMD", …] or ["CMD-SHELL", "…"]; empty or ["NONE"] = disabled.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

impl HealthPlan {
    pub fn enabled(&self) -> bool {
        !self.test.is_empty() && self.test[0] != "NONE"
    }
}

#[derive(Debug, Clone, Default)]
pub struct UpdatePlan {
    pub parallelism: u64,
    pub delay: Duration,
    pub order_start_first: bool,
    /// pause | continue | rollback
    pub failure_action: String,
    pub monitor: Duration,
    pub max_failure_ratio: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ServicePlan {
    pub name: String,
    pub image: String,
    /// The service has a `build:` section (its image may have to be built before `up`).
    pub build: bool,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub container_name: Option<String>,
    pub replicas: u64,
    pub ports: Vec<PortPlan>,
    pub mounts: Vec<MountPlan>,
    pub networks: Vec<NetPlan>,
    /// host | none | service:NAME | container:NAME; None = the service's networks.
    pub network_mode: Option<String>,
    pub init: bool,
    pub tty: bool,
    pub stdin_open: bool,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub ulimits: Vec<(String, u64, u64)>,
    pub sysctls: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub read_only: bool,
    pub security_opt: Vec<String>,
    pub shm_size: Option<u64>,
    pub tmpfs: Vec<String>,
    /// (host path, container path, cgroup permissions "rwm")
    pub devices: Vec<(String, String, String)>,
    pub mem_limit: Option<i64>,
    pub mem_reservation: Option<i64>,
    pub cpus: Option<f64>,
    pub cpu_shares: Option<u64>,
    pub cpuset: Option<String>,
    pub pids_limit: Option<i64>,
    pub oom_score_adj: Option<i32>,
    pub extra_hosts: Vec<(String, String)>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opt: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<HealthPlan>,
    /// `healthcheck: disable: true` (or test NONE): the image's HEALTHCHECK is not inherited.
    pub healthcheck_disabled: bool,
    pub restart: Policy,
    pub secrets: Vec<FilePlan>,
    /// env_file paths (watched for changes).
    pub env_files: Vec<PathBuf>,
    pub configs: Vec<FilePlan>,
    pub log_max_size: Option<u64>,
    pub log_max_file: u32,
    pub depends_on: Vec<(String, String, bool, bool)>,
    pub update: UpdatePlan,
    pub rollback: UpdatePlan,
    pub volumes_from: Vec<String>,
    /// `links`: (service, alias) — the alias resolves to the service in DNS.
    pub links: Vec<(String, String)>,
    pub config_hash: String,
    /// `--compatibility` / `COMPOSE_COMPATIBILITY`: compose v1 container names
    /// (`project_service_1`).
    pub compat_names: bool,
}

/// A resolved network of the project.
#[derive(Debug, Clone, Default)]
pub struct NetworkPlan {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub internal: bool,
    pub mtu: Option<u32>,
    pub subnet: Option<ipnet::Ipv4Net>,
    pub ip_range: Option<ipnet::Ipv4Net>,
    pub gateway: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Default)]
pub struct VolumePlan {
    pub key: String,
    pub name: String,
    pub external: bool,
}

/// The whole project as the engine sees it.
#[derive(Debug, Clone, Default)]
pub struct ProjectPlan {
    pub name: String,
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
    pub services: Vec<ServicePlan>,
    pub networks: Vec<NetworkPlan>,
    pub volumes: Vec<VolumePlan>,
    /// Services in start order, grouped in levels that may start in parallel.
    pub levels: Vec<Vec<String>>,
    /// The loader's warnings (obsolete `version`, unset variables, dropped shell tails…).
    pub warnings: Vec<String>,
}

impl ProjectPlan {
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn network(&self, key: &str) -> Option<&NetworkPlan> {
        self.networks.iter().find(|n| n.key == key)
    }
}

/// Parse a compose byte size ("512m", "1g", "100000") into bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    if n < 0.0 {
        return None;
    }
    Some((n * mult as f64) as u64)
}

/// Load the Compose model of a recorded project (as the CLI gave it: files, name, directory,
/// env files, profiles, environment), interpolated, with its env files read.
pub fn load_model(
    source: &crate::state::ProjectSource,
    services: &[String],
) -> Result<crate::compose::Project, crate::compose::LoadError> {
    let opts = crate::compose::LoadOptions {
        files: source.files.clone(),
        project_name: source.project_name.clone(),
        project_directory: source.project_directory.clone(),
        env_files: source.env_files.clone(),
        profiles: source.profiles.clone(),
        services: services.to_vec(),
        interpolate: true,
        working_dir: source.working_dir.clone(),
        environment: source.environment.clone(),
        resolve_env_files: true,
        ..Default::default()
    };
    crate::compose::load(&opts)
}

/// Load the project the way the CLI gave it, and resolve it into the engine's plan.
pub fn load_plan(
    source: &crate::state::ProjectSource,
    services: &[String],
) -> anyhow::Result<ProjectPlan> {
    let project = load_model(source, services)?;
    let mut plan = from_model(&project, services)?;
    plan.warnings = project.warnings.clone();
    if source
        .environment
        .get("COMPOSE_COMPATIBILITY")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True"))
    {
        for s in &mut plan.services {
            s.compat_names = true;
        }
    }
    // `--parallel N` / COMPOSE_PARALLEL_LIMIT: at most N services start (and stop) at once;
    // each level of independent services is cut into consecutive groups of N.
    if let Some(n) = source
        .environment
        .get("COMPOSE_PARALLEL_LIMIT")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        plan.levels = limit_parallelism(&plan.levels, n);
    }
    Ok(plan)
}

/// Cut each level into consecutive groups of at most `n` services (dependency order kept).
pub fn limit_parallelism(levels: &[Vec<String>], n: usize) -> Vec<Vec<String>> {
    levels
        .iter()
        .flat_map(|l| l.chunks(n.max(1)).map(<[String]>::to_vec))
        .collect()
}

fn dur(d: &Option<crate::compose::model::Duration>) -> Option<Duration> {
    d.as_ref().map(|d| d.as_std())
}

fn update_plan(u: Option<&crate::compose::model::UpdateConfig>) -> UpdatePlan {
    let Some(u) = u else {
        return UpdatePlan {
            parallelism: 1,
            failure_action: "pause".into(),
            monitor: Duration::from_secs(5),
            ..Default::default()
        };
    };
    UpdatePlan {
        parallelism: u.parallelism.unwrap_or(1),
        delay: dur(&u.delay).unwrap_or_default(),
        order_start_first: u.order.as_deref() == Some("start-first"),
        failure_action: u.failure_action.clone().unwrap_or_else(|| "pause".into()),
        monitor: dur(&u.monitor).unwrap_or(Duration::from_secs(5)),
        max_failure_ratio: u.max_failure_ratio.unwrap_or(0.0),
    }
}

/// Resolve the Compose model into the engine's plan. `services` (from the command line)
/// selects services and, unless empty, their dependencies.
pub fn from_model(
    project: &crate::compose::model::Project,
    services: &[String],
) -> anyhow::Result<ProjectPlan> {
    use anyhow::{anyhow, bail};
    let graph = crate::compose::graph::ServiceGraph::new(project)?;
    let mut selected: Vec<String> = Vec::new();
    if services.is_empty() {
        selected = project.services.keys().cloned().collect();
    } else {
        let mut stack: Vec<String> = services.to_vec();
        while let Some(s) = stack.pop() {
            if !project.services.contains_key(&s) {
                bail!("no such service: {s}");
            }
            if !selected.contains(&s) {
                selected.push(s.clone());
                for (d, _) in graph.dependencies(&s) {
                    stack.push(d);
                }
            }
        }
    }
    let mut plan = ProjectPlan {
        name: project.name.clone(),
        working_dir: project.working_dir.clone(),
        config_files: project.config_files.clone(),
        ..Default::default()
    };
    for lvl in graph.start_levels() {
        let l: Vec<String> = lvl.into_iter().filter(|s| selected.contains(s)).collect();
        if !l.is_empty() {
            plan.levels.push(l);
        }
    }
    for (key, n) in &project.networks {
        let pool = n.ipam.config.first();
        let parse_net = |s: &Option<String>| -> anyhow::Result<Option<ipnet::Ipv4Net>> {
            s.as_deref()
                .map(|x| {
                    x.parse::<ipnet::Ipv4Net>()
                        .map_err(|e| anyhow!("network {key}: {x}: {e}"))
                })
                .transpose()
        };
        plan.networks.push(NetworkPlan {
            key: key.clone(),
            name: n.name.clone(),
            external: n.external,
            internal: n.internal,
            mtu: n
                .driver_opts
                .get("com.docker.network.driver.mtu")
                .and_then(|m| m.parse().ok()),
            subnet: parse_net(&pool.and_then(|p| p.subnet.clone()))?,
            ip_range: parse_net(&pool.and_then(|p| p.ip_range.clone()))?,
            gateway: pool
                .and_then(|p| p.gateway.as_deref())
                .map(|g| g.parse())
                .transpose()
                .map_err(|e| anyhow!("network {key}: gateway: {e}"))?,
        });
    }
    for (key, v) in &project.volumes {
        plan.volumes.push(VolumePlan {
            key: key.clone(),
            name: v.name.clone(),
            external: v.external,
        });
    }
    for name in &selected {
        let s = &project.services[name];
        plan.services.push(service_plan(project, s)?);
    }
    Ok(plan)
}

fn service_plan(
    project: &crate::compose::model::Project,
    s: &crate::compose::model::Service,
) -> anyhow::Result<ServicePlan> {
    use anyhow::{anyhow, bail};
    let image = match &s.image {
        Some(i) => i.clone(),
        None if s.build.is_some() => format!("{}-{}", project.name, s.name),
        None => bail!(
            "service {:?} has neither an image nor a build context",
            s.name
        ),
    };
    let mut ports = Vec::new();
    for p in &s.ports {
        let published = p.published.clone().filter(|x| !x.is_empty());
        let host_port = match &published {
            None => None,
            Some(x) => {
                let first = x.split('-').next().unwrap_or(x);
                Some(
                    first
                        .parse::<u16>()
                        .map_err(|_| anyhow!("service {}: invalid published port {x:?}", s.name))?,
                )
            }
        };
        ports.push(PortPlan {
            host_ip: p.host_ip.clone(),
            host_port,
            target: p.target,
            protocol: p.protocol.clone(),
        });
    }
    let mut mounts = Vec::new();
    for v in &s.volumes {
        mounts.push(MountPlan {
            kind: v.kind.clone(),
            source: v.source.clone(),
            target: v.target.clone(),
            read_only: v.read_only,
            create_host_path: v.bind.as_ref().map(|b| b.create_host_path).unwrap_or(false),
            nocopy: v.volume.as_ref().map(|x| x.nocopy).unwrap_or(false),
            tmpfs_size: v.tmpfs.as_ref().and_then(|t| t.size),
            tmpfs_mode: v.tmpfs.as_ref().and_then(|t| t.mode),
        });
    }
    let mut networks: Vec<(i64, String, NetPlan)> = Vec::new();
    for (key, opts) in &s.networks {
        let o = opts.clone().unwrap_or_default();
        networks.push((
            o.priority.unwrap_or(0),
            key.clone(),
            NetPlan {
                key: key.clone(),
                aliases: o.aliases.clone(),
                ipv4_address: o
                    .ipv4_address
                    .as_deref()
                    .map(|a| a.parse())
                    .transpose()
                    .map_err(|e| anyhow!("service {}: ipv4_address: {e}", s.name))?,
                mac_address: o.mac_address.clone().or_else(|| s.mac_address.clone()),
            },
        ));
    }
    // Compose attaches by descending priority, then by name.
    networks.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut environment = Vec::new();
    for (k, v) in &s.environment {
        if let Some(v) = v {
            environment.push((k.clone(), v.clone()));
        } else if let Some(v) = project.environment.get(k) {
            environment.push((k.clone(), v.clone()));
        }
    }
    let restart = match s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
        Some(rp) => Policy::from_deploy(
            rp.condition.as_deref(),
            dur(&rp.delay),
            rp.max_attempts,
            dur(&rp.window),
        ),
        None => match &s.restart {
            Some(r) => Policy::parse_restart(r).map_err(|e| anyhow!("service {}: {e}", s.name))?,
            None => Policy::default(),
        },
    };
    let healthcheck = s
        .healthcheck
        .as_ref()
        .filter(|h| !h.disable)
        .map(|h| HealthPlan {
            test: h.test.clone(),
            interval: dur(&h.interval).unwrap_or(Duration::from_secs(30)),
            timeout: dur(&h.timeout).unwrap_or(Duration::from_secs(30)),
            retries: h.retries.unwrap_or(3) as u32,
            start_period: dur(&h.start_period).unwrap_or_default(),
            start_interval: dur(&h.start_interval).unwrap_or(Duration::from_secs(5)),
        });
    let files = |refs: &[crate::compose::model::FileReference],
                 top: &indexmap::IndexMap<String, crate::compose::model::FileObject>,
                 secrets: bool|
     -> anyhow::Result<Vec<FilePlan>> {
        let mut out = Vec::new();
        for r in refs {
            let obj = top.get(&r.source).ok_or_else(|| {
                anyhow!(
                    "service {}: undefined {} {:?}",
                    s.name,
                    if secrets { "secret" } else { "config" },
                    r.source
                )
            })?;
            let target = match &r.target {
                Some(t) if t.starts_with('/') => t.clone(),
                Some(t) if secrets => format!("/run/secrets/{t}"),
                Some(t) => format!("/{t}"),
                None if secrets => format!("/run/secrets/{}", r.source),
                None => format!("/{}", r.source),
            };
            let content = match (&obj.content, &obj.environment) {
                (Some(c), _) => Some(c.clone()),
                (None, Some(var)) => {
                    Some(project.environment.get(var).cloned().unwrap_or_default())
                }
                _ => None,
            };
            out.push(FilePlan {
                file: obj.file.clone(),
                content,
                target,
                uid: r.uid.as_deref().and_then(|u| u.parse().ok()),
                gid: r.gid.as_deref().and_then(|g| g.parse().ok()),
                mode: r.mode.unwrap_or(0o444),
            });
        }
        Ok(out)
    };
    let limits = s.deploy.as_ref().and_then(|d| d.resources.limits.clone());
    let reservations = s
        .deploy
        .as_ref()
        .and_then(|d| d.resources.reservations.clone());
    let log_opts = s
        .logging
        .as_ref()
        .map(|l| l.options.clone())
        .unwrap_or_default();
    let mut depends_on = Vec::new();
    for (d, dep) in &s.depends_on {
        depends_on.push((d.clone(), dep.condition.clone(), dep.required, dep.restart));
    }
    Ok(ServicePlan {
        build: s.build.is_some(),
        name: s.name.clone(),
        image,
        command: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        environment,
        working_dir: s.working_dir.clone(),
        user: s.user.clone(),
        hostname: s.hostname.clone(),
        domainname: s.domainname.clone(),
        container_name: s.container_name.clone(),
        replicas: s.replicas(),
        ports,
        mounts,
        networks: networks.into_iter().map(|x| x.2).collect(),
        network_mode: s.network_mode.clone(),
        init: s.init.unwrap_or(false),
        tty: s.tty,
        stdin_open: s.stdin_open,
        stop_signal: s.stop_signal.clone(),
        stop_grace_period: dur(&s.stop_grace_period),
        ulimits: s
            .ulimits
            .iter()
            .map(|(k, u)| {
                let (soft, hard) = u.limits();
                (k.clone(), soft.max(0) as u64, hard.max(0) as u64)
            })
            .collect(),
        sysctls: s
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        privileged: s.privileged,
        read_only: s.read_only,
        security_opt: s.security_opt.clone(),
        shm_size: s.shm_size,
        tmpfs: s.tmpfs.clone(),
        devices: s
            .devices
            .iter()
            .map(|d| {
                (
                    d.source.clone(),
                    d.target.clone(),
                    d.permissions.clone().unwrap_or_else(|| "rwm".into()),
                )
            })
            .collect(),
        mem_limit: limits
            .as_ref()
            .and_then(|l| l.memory)
            .or(s.mem_limit)
            .map(|m| m as i64),
        mem_reservation: reservations
            .as_ref()
            .and_then(|l| l.memory)
            .or(s.mem_reservation)
            .map(|m| m as i64),
        cpus: limits.as_ref().and_then(|l| l.cpus).or(s.cpus),
        cpu_shares: s.cpu_shares.map(|c| c.max(0) as u64),
        cpuset: s.cpuset.clone(),
        pids_limit: limits.as_ref().and_then(|l| l.pids).or(s.pids_limit),
        oom_score_adj: s.oom_score_adj.map(|o| o as i32),
        extra_hosts: s.extra_hosts.0.clone(),
        dns: s.dns.clone(),
        dns_search: s.dns_search.clone(),
        dns_opt: s.dns_opt.clone(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        healthcheck,
        healthcheck_disabled: s
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.disable || h.test.first().map(String::as_str) == Some("NONE")),
        restart,
        secrets: files(&s.secrets, &project.secrets, true)?,
        env_files: s.env_file.iter().map(|e| e.path.clone()).collect(),
        configs: files(&s.configs, &project.configs, false)?,
        log_max_size: log_opts.get("max-size").and_then(|v| parse_bytes(v)),
        log_max_file: log_opts
            .get("max-file")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        depends_on,
        update: update_plan(s.deploy.as_ref().and_then(|d| d.update_config.as_ref())),
        rollback: update_plan(s.deploy.as_ref().and_then(|d| d.rollback_config.as_ref())),
        volumes_from: s.volumes_from.clone(),
        links: s
            .links
            .iter()
            .map(|l| match l.split_once(':') {
                Some((svc, alias)) => (svc.to_string(), alias.to_string()),
                None => (l.clone(), l.clone()),
            })
            .collect(),
        config_hash: crate::compose::hash::service_hash(s),
        compat_names: false,
    })
}

/// The image's HEALTHCHECK (Docker's config, nanosecond durations) as a plan, for services that
/// declare none.
pub fn image_health(h: &berth_runtime::image::ImageHealthcheck) -> Option<HealthPlan> {
    let ns =
        |v: Option<u64>, d: Duration| v.filter(|n| *n > 0).map(Duration::from_nanos).unwrap_or(d);
    let plan = HealthPlan {
        test: h.test.clone(),
        interval: ns(h.interval, Duration::from_secs(30)),
        timeout: ns(h.timeout, Duration::from_secs(30)),
        retries: h.retries.filter(|r| *r > 0).unwrap_or(3),
        start_period: ns(h.start_period, Duration::ZERO),
        start_interval: ns(h.start_interval, Duration::from_secs(5)),
    };
    plan.enabled().then_some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("64MB"), Some(64 << 20));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("x"), None);
    }
}

#[cfg(test)]
mod parallel_tests {
    #[test]
    fn parallel_limit_cuts_levels_in_order() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let levels = vec![l(&["a", "b", "c"]), l(&["d"])];
        assert_eq!(
            super::limit_parallelism(&levels, 2),
            vec![l(&["a", "b"]), l(&["c"]), l(&["d"])]
        );
        assert_eq!(super::limit_parallelism(&levels, 1).len(), 4);
        assert_eq!(super::limit_parallelism(&levels, 10), levels);
    }
}

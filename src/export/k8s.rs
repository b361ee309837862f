//! `berth export k8s`: the normalised project as plain Kubernetes manifests.
//!
//! One workload per service (Deployment; StatefulSet for a replicated service with named
//! volumes; DaemonSet for `deploy.mode: global`; Job for one-shots), a Service for every
//! service another one can reach (headless when it has no port, so Compose's service-name
//! DNS keeps working), PVCs, ConfigMaps, Secrets and NetworkPolicies where Compose's network
//! membership is narrower than "everyone talks to everyone". What has no Kubernetes meaning is
//! reported (see `super::leftovers`).

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use serde_json::{json, Map, Value};

use super::{leftovers, Report, Used};
use crate::compose::{Duration, Project, Service};

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// The oldest Kubernetes the output is meant for: every API and field used is GA there.
pub const MIN_VERSION: (u32, u32) = (1, 25);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishType {
    #[default]
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: Option<String>,
    /// "1.30": checked against `MIN_VERSION`.
    pub k8s_version: String,
    /// Services to export (with their dependencies); empty = all.
    pub services: Vec<String>,
    pub publish: PublishType,
    pub allow_hostpath: bool,
    /// Registry the locally built images are pushed to (`REGISTRY/<image>`).
    pub registry: Option<String>,
    /// Storage requested by each PVC.
    pub volume_size: String,
    /// Image of the init containers that wait for a dependency.
    pub wait_image: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            k8s_version: "1.30".into(),
            services: Vec::new(),
            publish: PublishType::NodePort,
            allow_hostpath: false,
            registry: None,
            volume_size: "1Gi".into(),
            wait_image: "busybox:1.36".into(),
        }
    }
}

/// A DNS-1035 label (valid as every object name): lowercase alphanumerics and `-`, starting
/// with a letter, at most 63 characters.
pub fn dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let mut out = out.trim_matches('-').to_string();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out = format!("s-{out}").trim_end_matches('-').to_string();
    }
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

/// A label value: `[A-Za-z0-9._-]`, alphanumeric at both ends, at most 63 characters.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut v = v
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    v.truncate(63);
    v.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A ConfigMap/Secret key: `[-._a-zA-Z0-9]+`.
fn data_key(s: &str) -> String {
    let k: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if k.is_empty() || k == "." || k == ".." {
        "data".into()
    } else {
        k
    }
}

/// Seconds for a probe or grace period field: rounded up, at least `min`.
fn secs(d: Duration, min: u64) -> u64 {
    let d = d.as_std();
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(min)
}

/// Kubernetes expands `$(VAR)` in command, args and env values and reads `$$` as `$`.
fn k8s_escape(s: &str) -> String {
    s.replace('$', "$$")
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim_start_matches('v');
    let mut it = v.split('.');
    let maj = it.next()?.parse().ok()?;
    let min = it.next()?.parse().ok()?;
    Some((maj, min))
}

/// One Service port.
#[derive(Debug, Clone, PartialEq)]
struct Port {
    port: u16,
    target: u16,
    proto: String,
    published: bool,
    name: Option<String>,
    app_protocol: Option<String>,
}

/// An IANA service name: what a port `name` must be.
pub(super) fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// What the converter decided for a service before building objects (dependants need it).
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    kind: &'static str,
    ports: Vec<Port>,
    /// Has a Service object.
    service: bool,
    has_probe: bool,
}

fn one_shot(key: &str, s: &Service, p: &Project, selected: &BTreeSet<String>) -> bool {
    let r = s.restart.as_deref().unwrap_or("");
    let rp = s
        .deploy
        .as_ref()
        .and_then(|d| d.restart_policy.as_ref())
        .and_then(|r| r.condition.as_deref())
        .unwrap_or("");
    r == "no"
        || rp == "none"
        || p.services.iter().any(|(k, o)| {
            selected.contains(k)
                && o.depends_on
                    .get(key)
                    .is_some_and(|d| d.condition == "service_completed_successfully")
        })
}

fn named_volumes(s: &Service) -> bool {
    s.volumes
        .iter()
        .any(|v| v.kind == "volume" && v.source.is_some())
}

fn proto(p: &str) -> String {
    p.to_ascii_uppercase()
}

fn collect_ports(s: &Service) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    let mut push = |p: Port| {
        if !out.iter().any(|o| o.port == p.port && o.proto == p.proto) {
            out.push(p);
        }
    };
    for sp in &s.ports {
        let port = sp
            .published
            .as_deref()
            .and_then(|x| x.parse::<u16>().ok())
            .unwrap_or(sp.target);
        push(Port {
            port,
            target: sp.target,
            proto: proto(&sp.protocol),
            published: true,
            name: sp.name.clone().filter(|n| iana_svc_name(n)),
            app_protocol: sp.app_protocol.clone(),
        });
    }
    for e in &s.expose {
        let (range, pr) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
            continue;
        };
        for n in a..=b.min(a.saturating_add(100)) {
            push(Port {
                port: n,
                target: n,
                proto: proto(pr),
                published: false,
                name: None,
                app_protocol: None,
            });
        }
    }
    out
}

/// The services to export: the selection plus everything it depends on.
fn selection(p: &Project, o: &Options) -> BTreeSet<String> {
    if o.services.is_empty() {
        return p.services.keys().cloned().collect();
    }
    let mut sel = BTreeSet::new();
    let mut todo: Vec<String> = o.services.clone();
    while let Some(s) = todo.pop() {
        if let Some(svc) = p.services.get(&s) {
            if sel.insert(s.clone()) {
                todo.extend(svc.depends_on.keys().cloned());
            }
        }
    }
    sel
}

/// The networks a service is on (none with a `network_mode`).
fn membership(s: &Service) -> BTreeSet<String> {
    if s.network_mode.is_some() {
        return BTreeSet::new();
    }
    s.networks.keys().cloned().collect()
}

fn reason(field: &str) -> &'static str {
    let top = field.split('.').next().unwrap_or(field);
    match top {
        "container_name" => "Kubernetes names pods itself (the Service keeps the service name)",
        "logging" => "logging is configured on the cluster's nodes",
        "stop_signal" => "Kubernetes always sends SIGTERM (lifecycle.stopSignal is alpha)",
        "ulimits" => "no per-container rlimits in a Pod spec",
        "devices" | "device_cgroup_rules" => "devices need a device plugin",
        "links" => "service names resolve through their Service; link aliases are not created",
        "networks" => "no per-network aliases or addresses in Kubernetes",
        "cgroup_parent" | "cgroup" => "the kubelet owns the cgroup tree",
        "mem_swappiness" | "memswap_limit" | "oom_kill_disable" | "oom_score_adj" => {
            "memory tuning is the kubelet's"
        }
        "ports" => "host_ip and host-mode ports have no Service equivalent",
        "attach" | "stdin_open" | "tty" => "a terminal setting of the compose CLI",
        _ => "no Kubernetes equivalent",
    }
}

/// Export the project. Errors are in the report; the manifests are only meaningful when it
/// has none.
pub fn export(p: &Project, o: &Options) -> (Vec<Value>, Report) {
    let mut r = Report::default();
    match parse_version(&o.k8s_version) {
        Some(v) if v >= MIN_VERSION => {}
        _ => r.error(
            None,
            "--k8s-version",
            format!(
                "{:?}: expected 1.{} or newer (MAJOR.MINOR)",
                o.k8s_version, MIN_VERSION.1
            ),
        ),
    }
    for s in &o.services {
        if !p.services.contains_key(s) {
            r.error(None, s, "no such service");
        }
    }
    let sel = selection(p, o);
    let part_of = label_value(&p.name);

    // Names, one per service, checked for collisions.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for k in &sel {
        let n = dns_label(k);
        if let Some((other, _)) = names.iter().find(|(_, v)| **v == n) {
            r.error(
                Some(k),
                "name",
                format!("exported as {n:?}, which service {other:?} already uses"),
            );
        }
        if n != *k {
            r.note(
                Some(k),
                "name",
                format!("exported as {n:?} (Kubernetes names are RFC 1123 labels): other services must use that host name"),
            );
        }
        names.insert(k.clone(), n);
    }

    // Who can reach whom: services sharing a network, or named by depends_on/links.
    let members: BTreeMap<&String, BTreeSet<String>> = sel
        .iter()
        .map(|k| (k, membership(&p.services[k])))
        .collect();
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    for k in &sel {
        let s = &p.services[k];
        referenced.extend(s.depends_on.keys().cloned());
        referenced.extend(
            s.links
                .iter()
                .map(|l| l.split(':').next().unwrap_or(l).to_string()),
        );
    }
    let peers = |k: &String| -> BTreeSet<String> {
        sel.iter()
            .filter(|o| *o != k && !members[*o].is_disjoint(&members[k]))
            .cloned()
            .collect()
    };

    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    for k in &sel {
        let s = &p.services[k];
        let global = s.deploy.as_ref().and_then(|d| d.mode.as_deref()) == Some("global");
        let kind = if one_shot(k, s, p, &sel) {
            "Job"
        } else if global {
            "DaemonSet"
        } else if s.replicas() > 1 && named_volumes(s) {
            "StatefulSet"
        } else {
            "Deployment"
        };
        let ports = collect_ports(s);
        let reachable = !peers(k).is_empty() || referenced.contains(k);
        let service = s.network_mode.as_deref() != Some("none")
            && (!ports.is_empty() || reachable || kind == "StatefulSet");
        let has_probe = s
            .healthcheck
            .as_ref()
            .is_some_and(|h| !h.disable && h.test.first().is_some_and(|t| t != "NONE"));
        plans.insert(
            k.clone(),
            Plan {
                name: names[k].clone(),
                kind,
                ports,
                service,
                has_probe,
            },
        );
    }

    // Network policies only where Compose's membership is narrower than "all to all".
    let all_nets: BTreeSet<&String> = members.values().flatten().collect();
    let internal = |n: &String| p.networks.get(n).is_some_and(|x| x.internal);
    let uniform = sel.iter().all(|a| {
        sel.iter()
            .all(|b| a == b || !members[a].is_disjoint(&members[b]))
    });
    let policies = !uniform || all_nets.iter().any(|n| internal(n));

    let meta = |name: &str, extra: Option<&str>| -> Value {
        let mut labels = Map::new();
        labels.insert(PART_OF_LABEL.into(), json!(part_of));
        if let Some(n) = extra {
            labels.insert(NAME_LABEL.into(), json!(n));
        }
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("labels".into(), Value::Object(labels));
        if let Some(ns) = &o.namespace {
            m.insert("namespace".into(), json!(ns));
        }
        Value::Object(m)
    };

    let mut head: Vec<Value> = Vec::new();
    let mut pvcs: BTreeMap<String, Value> = BTreeMap::new();
    let mut services: Vec<Value> = Vec::new();
    let mut workloads: Vec<Value> = Vec::new();
    let mut netpols: Vec<Value> = Vec::new();
    if let Some(ns) = &o.namespace {
        if dns_label(ns) != *ns {
            r.error(
                None,
                "--namespace",
                format!("{ns:?} is not an RFC 1123 label"),
            );
        }
        head.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {PART_OF_LABEL: part_of}}}));
    }
    let mut configmaps: BTreeMap<String, Value> = BTreeMap::new();
    let mut secrets: BTreeMap<String, Value> = BTreeMap::new();
    // Volumes used by several services are shared: ReadWriteMany.
    let mut volume_users: BTreeMap<String, usize> = BTreeMap::new();
    for k in &sel {
        let mut seen = BTreeSet::new();
        for v in &p.services[k].volumes {
            if let (true, Some(src)) = (v.kind == "volume", &v.source) {
                if seen.insert(src.clone()) {
                    *volume_users.entry(src.clone()).or_default() += 1;
                }
            }
        }
    }

    for k in &sel {
        let s = &p.services[k];
        let plan = &plans[k];
        let n = plan.name.as_str();
        let mut used = Used::default();
        for f in [
            "profiles",
            "env_file",
            "scale",
            "deploy.replicas",
            "deploy.mode",
        ] {
            used.add(f);
        }
        let sel_labels = json!({NAME_LABEL: n, PART_OF_LABEL: part_of});

        // Image.
        let image = image_for(k, s, p, o, &mut r, &mut used);

        if let Some(m) = s.network_mode.as_deref() {
            match m {
                "none" | "bridge" | "default" => {
                    used.add("network_mode");
                    if m == "none" {
                        r.note(Some(k), "network_mode", "none: the pod still has a network; no Service is made for it");
                    }
                }
                _ => r.error(
                    Some(k),
                    "network_mode",
                    format!("{m:?} has no Kubernetes equivalent (a pod's network is its own); remove it or put the services in one pod by hand"),
                ),
            }
        }

        // Container.
        let mut c = Map::new();
        c.insert("name".into(), json!(n));
        c.insert("image".into(), json!(image));
        match s.pull_policy.as_deref() {
            Some("always") => {
                c.insert("imagePullPolicy".into(), json!("Always"));
            }
            Some("missing") | Some("if_not_present") => {
                c.insert("imagePullPolicy".into(), json!("IfNotPresent"));
            }
            _ => {}
        }
        if let Some(ep) = &s.entrypoint {
            if ep.is_empty() {
                r.unmapped(Some(k), "entrypoint", "an empty entrypoint (clear the image's) cannot be expressed: Kubernetes reads an empty command as the image's");
                used.add("entrypoint");
            } else {
                c.insert(
                    "command".into(),
                    json!(ep.iter().map(|a| k8s_escape(a)).collect::<Vec<_>>()),
                );
                used.add("entrypoint");
            }
        }
        if let Some(cmd) = &s.command {
            if !cmd.is_empty() {
                c.insert(
                    "args".into(),
                    json!(cmd.iter().map(|a| k8s_escape(a)).collect::<Vec<_>>()),
                );
            }
            used.add("command");
        }
        if let Some(w) = &s.working_dir {
            c.insert("workingDir".into(), json!(w));
            used.add("working_dir");
        }
        let mut env = Vec::new();
        for (name, val) in &s.environment {
            match val {
                Some(v) => {
                    env.push(json!({"name": name, "value": k8s_escape(v)}));
                    used.add(format!("environment.{name}"));
                }
                None => r.unmapped(
                    Some(k),
                    &format!("environment.{name}"),
                    "no value (compose would take it from the shell at `up`); set one",
                ),
            }
        }
        if !env.is_empty() {
            c.insert("env".into(), json!(env));
        }
        let cports: Vec<Value> = {
            let mut seen = BTreeSet::new();
            plan.ports
                .iter()
                .filter(|pt| seen.insert((pt.target, pt.proto.clone())))
                .map(|pt| json!({"containerPort": pt.target, "protocol": pt.proto}))
                .collect()
        };
        for (i, sp) in s.ports.iter().enumerate() {
            for f in ["target", "published", "protocol", "app_protocol"] {
                used.add(format!("ports.{i}.{f}"));
            }
            if sp.mode == "ingress" {
                used.add(format!("ports.{i}.mode"));
            }
            if sp.name.as_deref().is_some_and(iana_svc_name) {
                used.add(format!("ports.{i}.name"));
            }
            if sp.published.as_deref().is_some_and(|x| x.contains('-')) {
                r.note(
                    Some(k),
                    &format!("ports.{i}.published"),
                    "a published range: the Service uses the target port",
                );
            }
        }
        if !s.expose.is_empty() {
            used.add("expose");
        }
        if !cports.is_empty() {
            c.insert("ports".into(), json!(cports));
        }
        tty_stdin(s, &mut c, &mut used);

        // Security.
        let mut sc = Map::new();
        if s.privileged {
            sc.insert("privileged".into(), json!(true));
            used.add("privileged");
        }
        if s.read_only {
            sc.insert("readOnlyRootFilesystem".into(), json!(true));
            used.add("read_only");
        }
        if !s.cap_add.is_empty() || !s.cap_drop.is_empty() {
            let caps = |v: &Vec<String>| -> Vec<String> {
                v.iter()
                    .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
                    .collect()
            };
            let mut m = Map::new();
            if !s.cap_add.is_empty() {
                m.insert("add".into(), json!(caps(&s.cap_add)));
                used.add("cap_add");
            }
            if !s.cap_drop.is_empty() {
                m.insert("drop".into(), json!(caps(&s.cap_drop)));
                used.add("cap_drop");
            }
            sc.insert("capabilities".into(), Value::Object(m));
        }
        if let Some(u) = &s.user {
            let (uid, gid) = u.split_once(':').unwrap_or((u.as_str(), ""));
            match (uid.parse::<i64>(), gid.is_empty() || gid.parse::<i64>().is_ok()) {
                (Ok(uid), true) => {
                    sc.insert("runAsUser".into(), json!(uid));
                    if let Ok(g) = gid.parse::<i64>() {
                        sc.insert("runAsGroup".into(), json!(g));
                    }
                    used.add("user");
                }
                _ => r.unmapped(Some(k), "user", format!("{u:?}: Kubernetes needs a numeric uid (and gid); not exported, the image's user runs")),
            }
        }
        let mut seccomp = if s.privileged {
            None
        } else {
            Some("RuntimeDefault")
        };
        for (i, so) in s.security_opt.iter().enumerate() {
            let so_n = so.replace('=', ":");
            if so_n == "no-new-privileges" || so_n == "no-new-privileges:true" {
                sc.insert("allowPrivilegeEscalation".into(), json!(false));
                used.add(format!("security_opt.{i}"));
            } else if so_n == "seccomp:unconfined" {
                seccomp = Some("Unconfined");
                used.add(format!("security_opt.{i}"));
            }
        }
        if let Some(t) = seccomp {
            sc.insert("seccompProfile".into(), json!({"type": t}));
        }
        c.insert("securityContext".into(), Value::Object(sc));

        // Resources.
        resources(s, &mut c, &mut r, k, &mut used);

        // Health.
        if let Some(h) = &s.healthcheck {
            used.add("healthcheck");
            if h.disable || h.test.first().map(String::as_str) == Some("NONE") {
            } else if h.test.is_empty() {
                r.unmapped(
                    Some(k),
                    "healthcheck",
                    "the test is the image's HEALTHCHECK, which the export cannot see: no probes",
                );
            } else {
                let cmd: Vec<String> = match h.test[0].as_str() {
                    "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), h.test[1..].join(" ")],
                    "CMD" => h.test[1..].to_vec(),
                    _ => h.test.clone(),
                };
                let period = secs(h.interval.unwrap_or(Duration::from_secs(30)), 1);
                let timeout = secs(h.timeout.unwrap_or(Duration::from_secs(30)), 1);
                let retries = h.retries.unwrap_or(3).max(1);
                let probe = |period: u64, failures: u64| {
                    json!({"exec": {"command": cmd}, "periodSeconds": period,
                        "timeoutSeconds": timeout, "failureThreshold": failures})
                };
                c.insert("readinessProbe".into(), probe(period, retries));
                c.insert("livenessProbe".into(), probe(period, retries));
                if let Some(sp) = h.start_period.filter(|d| !d.as_std().is_zero()) {
                    let speriod = secs(h.start_interval.unwrap_or(Duration::from_secs(period)), 1);
                    let n = secs(sp, 1).div_ceil(speriod) + retries;
                    c.insert("startupProbe".into(), probe(speriod, n));
                }
            }
        }

        // Volumes.
        let mut vols: Vec<Value> = Vec::new();
        let mut mounts: Vec<Value> = Vec::new();
        let mut claims: Vec<Value> = Vec::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let path = format!("volumes.{i}");
            let mut mount = json!({"mountPath": v.target});
            if v.read_only {
                mount["readOnly"] = json!(true);
            }
            let vname;
            match (v.kind.as_str(), &v.source) {
                ("volume", Some(src)) => {
                    let pv = p.volumes.get(src);
                    let claim = match pv {
                        Some(x) if x.external => dns_label(&x.name),
                        _ => dns_label(src),
                    };
                    vname = claim.clone();
                    let shared = volume_users.get(src).copied().unwrap_or(0) > 1;
                    if pv.is_some_and(|x| x.external) {
                        r.note(
                            Some(k),
                            &path,
                            format!("external volume: a PVC named {claim:?} must exist"),
                        );
                        vols.push(
                            json!({"name": vname, "persistentVolumeClaim": {"claimName": claim}}),
                        );
                    } else if plan.kind == "StatefulSet" {
                        claims.push(json!({"metadata": {"name": claim}, "spec": pvc_spec(false, &o.volume_size)}));
                        r.note(Some(k), &path, format!("each of the {} replicas gets its own claim (Compose shares one volume)", s.replicas()));
                    } else {
                        if shared {
                            r.note(Some(k), &path, format!("{src:?} is shared by several services: ReadWriteMany, which needs a storage class that offers it"));
                        }
                        pvcs.entry(claim.clone()).or_insert_with(|| {
                            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": meta(&claim, Some(&claim)), "spec": pvc_spec(shared, &o.volume_size)})
                        });
                        vols.push(
                            json!({"name": vname, "persistentVolumeClaim": {"claimName": claim}}),
                        );
                    }
                    for f in ["type", "source", "target", "read_only"] {
                        used.add(format!("{path}.{f}"));
                    }
                    if let Some(sub) = v.volume.as_ref().and_then(|x| x.subpath.as_ref()) {
                        mount["subPath"] = json!(sub);
                        used.add(format!("{path}.volume.subpath"));
                    }
                }
                ("volume", None) => {
                    vname = format!("anon-{i}");
                    vols.push(json!({"name": vname, "emptyDir": {}}));
                    r.note(
                        Some(k),
                        &path,
                        "anonymous volume: an emptyDir, gone with the pod",
                    );
                    for f in ["type", "target", "read_only"] {
                        used.add(format!("{path}.{f}"));
                    }
                }
                ("bind", Some(src)) if o.allow_hostpath => {
                    vname = format!("host-{i}");
                    let create = v.bind.as_ref().is_some_and(|b| b.create_host_path);
                    let mut hp = json!({"path": src});
                    if create {
                        hp["type"] = json!("DirectoryOrCreate");
                    }
                    vols.push(json!({"name": vname, "hostPath": hp}));
                    r.note(Some(k), &path, format!("hostPath {src:?}: the path must exist on every node the pod may run on"));
                    for f in [
                        "type",
                        "source",
                        "target",
                        "read_only",
                        "bind.create_host_path",
                    ] {
                        used.add(format!("{path}.{f}"));
                    }
                }
                ("bind", src) => {
                    r.unmapped(Some(k), &path, format!(
                        "bind mount {}:{}: a host path does not exist on the other nodes; not exported (--allow-hostpath makes it a hostPath volume)",
                        src.as_deref().unwrap_or(""), v.target));
                    used.add(path.clone());
                    continue;
                }
                ("tmpfs", _) => {
                    vname = format!("tmpfs-{i}");
                    let mut ed = json!({"medium": "Memory"});
                    if let Some(sz) = v.tmpfs.as_ref().and_then(|t| t.size) {
                        ed["sizeLimit"] = json!(sz.to_string());
                        used.add(format!("{path}.tmpfs.size"));
                    }
                    vols.push(json!({"name": vname, "emptyDir": ed}));
                    for f in ["type", "target", "read_only"] {
                        used.add(format!("{path}.{f}"));
                    }
                }
                _ => continue, // reported by leftovers
            }
            mount["name"] = json!(vname);
            mounts.push(mount);
        }
        for (i, t) in s.tmpfs.iter().enumerate() {
            let (target, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
            let vname = format!("tmpfs-s{i}");
            let mut ed = json!({"medium": "Memory"});
            let mut rest = Vec::new();
            for opt in opts.split(',').filter(|x| !x.is_empty()) {
                match opt.strip_prefix("size=") {
                    Some(sz) => {
                        ed["sizeLimit"] = json!(sz
                            .trim_end_matches(['b', 'B'])
                            .to_uppercase()
                            .replace('K', "Ki")
                            .replace('M', "Mi")
                            .replace('G', "Gi"))
                    }
                    None => rest.push(opt),
                }
            }
            if rest.is_empty() {
                used.add(format!("tmpfs.{i}"));
            } else {
                r.unmapped(
                    Some(k),
                    &format!("tmpfs.{i}"),
                    format!(
                        "options {:?} have no emptyDir equivalent; mounted without them",
                        rest.join(",")
                    ),
                );
                used.add(format!("tmpfs.{i}"));
            }
            vols.push(json!({"name": vname, "emptyDir": ed}));
            mounts.push(json!({"name": vname, "mountPath": target}));
        }
        // Secrets and configs: one volume per reference, mounted at the file's path.
        for (what, list) in [("secrets", &s.secrets), ("configs", &s.configs)] {
            for (i, f) in list.iter().enumerate() {
                let path = format!("{what}.{i}");
                let top = if what == "secrets" {
                    &p.secrets
                } else {
                    &p.configs
                };
                let Some(obj) = top.get(&f.source) else {
                    r.error(
                        Some(k),
                        &path,
                        format!("{:?} is not defined at the top level", f.source),
                    );
                    continue;
                };
                let oname = if obj.external {
                    dns_label(&obj.name)
                } else {
                    dns_label(&f.source)
                };
                let key = data_key(&f.source);
                let target = match &f.target {
                    Some(t) if t.starts_with('/') => t.clone(),
                    Some(t) if what == "secrets" => format!("/run/secrets/{t}"),
                    Some(t) => format!("/{t}"),
                    None if what == "secrets" => format!("/run/secrets/{}", f.source),
                    None => format!("/{}", f.source),
                };
                let vname = format!("{}-{i}", &what[..what.len() - 1]);
                let mut item = json!({"key": key, "path": key});
                if let Some(m) = f.mode {
                    item["mode"] = json!(m);
                    used.add(format!("{path}.mode"));
                }
                let src = if what == "secrets" {
                    json!({"name": vname, "secret": {"secretName": oname, "items": [item]}})
                } else {
                    json!({"name": vname, "configMap": {"name": oname, "items": [item]}})
                };
                vols.push(src);
                mounts.push(
                    json!({"name": vname, "mountPath": target, "subPath": key, "readOnly": true}),
                );
                used.add(format!("{path}.source"));
                used.add(format!("{path}.target"));
                if obj.external {
                    r.note(
                        Some(k),
                        &path,
                        format!(
                            "external: a {} named {oname:?} with key {key:?} must exist",
                            if what == "secrets" {
                                "Secret"
                            } else {
                                "ConfigMap"
                            }
                        ),
                    );
                    continue;
                }
                let data = match file_object_data(p, obj) {
                    Ok(d) => d,
                    Err(e) => {
                        r.error(Some(k), &path, e);
                        continue;
                    }
                };
                let store = if what == "secrets" {
                    &mut secrets
                } else {
                    &mut configmaps
                };
                let m = meta(&oname, None);
                let doc = store.entry(oname.clone()).or_insert_with(|| {
                    if what == "secrets" {
                        json!({"apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque", "data": {}})
                    } else {
                        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m})
                    }
                });
                if what == "secrets" {
                    doc["data"][&key] = json!(super::base64(&data));
                } else {
                    match String::from_utf8(data) {
                        Ok(t) => doc["data"][&key] = json!(t),
                        Err(e) => doc["binaryData"][&key] = json!(super::base64(e.as_bytes())),
                    }
                }
            }
        }
        if what_secrets_note(s) {
            r.note(Some(k), "secrets", "the Secret holds the file's content (base64, not encrypted): keep the output private");
        }
        if !mounts.is_empty() {
            c.insert("volumeMounts".into(), json!(mounts));
        }

        // Dependencies: init containers that wait for the dependency's Service.
        let mut inits = Vec::new();
        for (dep, d) in &s.depends_on {
            let path = format!("depends_on.{dep}");
            used.add(format!("{path}.condition"));
            used.add(format!("{path}.required"));
            let Some(dp) = plans.get(dep) else {
                r.note(
                    Some(k),
                    &path,
                    "not exported (not in the project or not selected): no wait",
                );
                continue;
            };
            if d.condition == "service_completed_successfully" {
                r.unmapped(Some(k), &format!("{path}.condition"), format!(
                    "{dep:?} is a Job; a Pod cannot wait for a Job's completion without API access, so both start together"));
                continue;
            }
            if dp.kind == "Job" {
                // Its pod is gone once it has run: a wait for its Service could hang forever.
                r.unmapped(
                    Some(k),
                    &format!("{path}.condition"),
                    format!("{dep:?} is a Job; it may have finished before this pod starts, so nothing waits for it"),
                );
                continue;
            }
            if !dp.service {
                r.unmapped(
                    Some(k),
                    &path,
                    format!("{dep:?} has no Service to wait for"),
                );
                continue;
            }
            let host = &dp.name;
            let script = match dp.ports.first() {
                Some(pt) if pt.proto == "TCP" => format!(
                    "until nc -z -w 2 {host} {}; do echo waiting for {host}; sleep 2; done", pt.port),
                _ => format!("until nslookup {host} >/dev/null 2>&1; do echo waiting for {host}; sleep 2; done"),
            };
            if d.condition == "service_healthy" && !dp.has_probe {
                r.note(
                    Some(k),
                    &path,
                    format!("{dep:?} has no healthcheck: waits for its Service only"),
                );
            }
            inits.push(json!({"name": format!("wait-for-{host}"), "image": o.wait_image,
                "command": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": false, "seccompProfile": {"type": "RuntimeDefault"}}}));
        }

        // Pod spec.
        let mut pod = Map::new();
        pod.insert("containers".into(), json!([Value::Object(c)]));
        if !inits.is_empty() {
            pod.insert("initContainers".into(), json!(inits));
        }
        if !vols.is_empty() {
            pod.insert("volumes".into(), json!(vols));
        }
        pod.insert("automountServiceAccountToken".into(), json!(false));
        pod_fields(k, s, &mut pod, &mut r, &mut used);

        let mut annotations = Map::new();
        for (key, v) in s.labels.iter().chain(s.annotations.iter()) {
            if qualified_name(key) {
                annotations.insert(key.clone(), json!(v));
                let f = if s.labels.contains_key(key) {
                    "labels"
                } else {
                    "annotations"
                };
                used.add(format!("{f}.{key}"));
            }
        }
        let mut tmeta = json!({"labels": sel_labels});
        if !annotations.is_empty() {
            tmeta["annotations"] = Value::Object(annotations);
        }

        // Workload.
        let mut wmeta = meta(n, Some(n));
        if let Some(d) = &s.deploy {
            let mut a = Map::new();
            for (key, v) in &d.labels {
                if qualified_name(key) {
                    a.insert(key.clone(), json!(v));
                    used.add(format!("deploy.labels.{key}"));
                }
            }
            if !a.is_empty() {
                wmeta["annotations"] = Value::Object(a);
            }
        }
        let replicas = s.replicas();
        let mut spec = Map::new();
        match plan.kind {
            "Job" => {
                let (rp, backoff) = job_policy(s, &mut used);
                pod.insert("restartPolicy".into(), json!(rp));
                spec.insert("backoffLimit".into(), json!(backoff));
                if replicas != 1 {
                    spec.insert("completions".into(), json!(replicas));
                    spec.insert("parallelism".into(), json!(replicas));
                }
                let policy = s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref());
                if s.restart.is_none() && policy.is_none() {
                    r.note(
                        Some(k),
                        "restart",
                        "a dependant waits for its completion: exported as a Job",
                    );
                }
            }
            kind => {
                // A long-running service; on-failure keeps its meaning only for a clean exit.
                const ON_FAILURE: &str = "on-failure: a Deployment's pods are restarted whatever their exit status, without a limit";
                match s.restart.as_deref() {
                    Some("always") | Some("unless-stopped") | None => used.add("restart"),
                    Some(_) => r.unmapped(Some(k), "restart", ON_FAILURE),
                }
                if let Some(c) = s
                    .deploy
                    .as_ref()
                    .and_then(|d| d.restart_policy.as_ref())
                    .and_then(|r| r.condition.as_deref())
                {
                    if c == "any" {
                        used.add("deploy.restart_policy.condition");
                    } else {
                        r.unmapped(Some(k), "deploy.restart_policy.condition", ON_FAILURE);
                    }
                }
                spec.insert("selector".into(), json!({"matchLabels": sel_labels}));
                if kind != "DaemonSet" {
                    spec.insert("replicas".into(), json!(replicas));
                }
                update_strategy(k, kind, s, &mut spec, &mut r, &mut used);
                if kind == "StatefulSet" {
                    spec.insert("serviceName".into(), json!(n));
                    spec.insert("volumeClaimTemplates".into(), json!(claims));
                }
                if kind == "Deployment" && named_volumes(s) && !spec.contains_key("strategy") {
                    spec.insert("strategy".into(), json!({"type": "Recreate"}));
                    r.note(Some(k), "volumes", "named volume (ReadWriteOnce): Recreate strategy, the old pod stops before the new one starts");
                }
            }
        }
        spec.insert(
            "template".into(),
            json!({"metadata": tmeta, "spec": Value::Object(pod)}),
        );
        let api = if plan.kind == "Job" {
            "batch/v1"
        } else {
            "apps/v1"
        };
        workloads.push(json!({"apiVersion": api, "kind": plan.kind, "metadata": wmeta, "spec": Value::Object(spec)}));

        // Service.
        if plan.service {
            let mut spec = Map::new();
            spec.insert("selector".into(), sel_labels.clone());
            if plan.ports.is_empty() {
                spec.insert("clusterIP".into(), json!("None"));
            } else {
                let many = plan.ports.len() > 1;
                let ports: Vec<Value> = plan
                    .ports
                    .iter()
                    .map(|pt| {
                        let mut v =
                            json!({"port": pt.port, "targetPort": pt.target, "protocol": pt.proto});
                        if many {
                            v["name"] = json!(pt.name.clone().unwrap_or_else(|| format!(
                                "{}-{}",
                                pt.proto.to_lowercase(),
                                pt.port
                            )));
                        }
                        if let Some(a) = &pt.app_protocol {
                            v["appProtocol"] = json!(a);
                        }
                        v
                    })
                    .collect();
                spec.insert("ports".into(), json!(ports));
                if plan.ports.iter().any(|pt| pt.published) {
                    let t = match o.publish {
                        PublishType::NodePort => "NodePort",
                        PublishType::LoadBalancer => "LoadBalancer",
                    };
                    spec.insert("type".into(), json!(t));
                }
            }
            services.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(n, Some(n)), "spec": Value::Object(spec)}));
        }

        // Network policy.
        if policies && s.network_mode.is_none() {
            let peer_names: Vec<String> = peers(k).iter().map(|x| plans[x].name.clone()).collect();
            let mut ingress = Vec::new();
            if !peer_names.is_empty() {
                ingress.push(json!({"from": [{"podSelector": {"matchExpressions": [
                    {"key": NAME_LABEL, "operator": "In", "values": peer_names}]}}]}));
            }
            let published: Vec<Value> = plan
                .ports
                .iter()
                .filter(|pt| pt.published)
                .map(|pt| json!({"port": pt.target, "protocol": pt.proto}))
                .collect();
            if !published.is_empty() {
                ingress.push(json!({"ports": published}));
            }
            let mut pspec = json!({"podSelector": {"matchLabels": sel_labels}, "policyTypes": ["Ingress"], "ingress": ingress});
            let nets = &members[k];
            if !nets.is_empty() && nets.iter().all(internal) {
                let mut egress = vec![
                    json!({"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}),
                ];
                if !peer_names.is_empty() {
                    egress.insert(
                        0,
                        json!({"to": [{"podSelector": {"matchExpressions": [
                        {"key": NAME_LABEL, "operator": "In", "values": peer_names}]}}]}),
                    );
                }
                pspec["policyTypes"] = json!(["Ingress", "Egress"]);
                pspec["egress"] = json!(egress);
            }
            netpols.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(n, Some(n)), "spec": pspec}));
        }
        for (net, _) in &s.networks {
            used.add(format!("networks.{net}"));
        }
        if let Ok(Value::Object(ns)) = serde_json::to_value(&s.networks) {
            // The membership is used; per-network options (aliases, addresses) are not.
            for (net, opts) in ns {
                if let Value::Object(m) = opts {
                    for key in m.keys() {
                        r.unmapped(
                            Some(k),
                            &format!("networks.{net}.{key}"),
                            reason("networks"),
                        );
                    }
                }
            }
        }

        // Everything else: reported.
        let v = serde_json::to_value(s).unwrap_or(Value::Null);
        for f in leftovers(&v, &used) {
            r.unmapped(Some(k), &f, reason(&f));
        }
    }

    // Project-level objects.
    for (key, net) in &p.networks {
        if !members.values().any(|m| m.contains(key)) {
            continue;
        }
        let mut used = Used::default();
        used.add("name");
        used.add("internal");
        if net.external {
            r.unmapped(
                None,
                &format!("networks.{key}.external"),
                "an external network has no Kubernetes equivalent; treated as a project network",
            );
            used.add("external");
        }
        let v = serde_json::to_value(net).unwrap_or(Value::Null);
        for f in leftovers(&v, &used) {
            r.unmapped(
                None,
                &format!("networks.{key}.{f}"),
                "network drivers and addressing belong to the cluster's CNI",
            );
        }
    }
    for (key, vol) in &p.volumes {
        if !sel.iter().any(|k| {
            p.services[k]
                .volumes
                .iter()
                .any(|v| v.source.as_deref() == Some(key) && v.kind == "volume")
        }) {
            continue;
        }
        let mut used = Used::default();
        used.add("name");
        used.add("external");
        let v = serde_json::to_value(vol).unwrap_or(Value::Null);
        for f in leftovers(&v, &used) {
            r.unmapped(
                None,
                &format!("volumes.{key}.{f}"),
                "volume drivers belong to a StorageClass",
            );
        }
    }
    for (what, top) in [("secrets", &p.secrets), ("configs", &p.configs)] {
        for (key, obj) in top {
            let mut used = Used::default();
            for f in ["name", "file", "environment", "content", "external"] {
                used.add(f);
            }
            let v = serde_json::to_value(obj).unwrap_or(Value::Null);
            for f in leftovers(&v, &used) {
                r.unmapped(None, &format!("{what}.{key}.{f}"), reason(&f));
            }
        }
    }

    let mut docs = head;
    docs.extend(configmaps.into_values());
    docs.extend(secrets.into_values());
    docs.extend(pvcs.into_values());
    docs.extend(services);
    docs.extend(workloads);
    docs.extend(netpols);
    (docs, r)
}

fn what_secrets_note(s: &Service) -> bool {
    !s.secrets.is_empty()
}

/// An annotation key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 of `[A-Za-z0-9._-]`.
fn qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

fn pvc_spec(shared: bool, size: &str) -> Value {
    let mode = if shared {
        "ReadWriteMany"
    } else {
        "ReadWriteOnce"
    };
    json!({"accessModes": [mode], "resources": {"requests": {"storage": size}}})
}

fn file_object_data(p: &Project, obj: &crate::compose::FileObject) -> Result<Vec<u8>, String> {
    if let Some(f) = &obj.file {
        let f = if f.is_absolute() {
            f.clone()
        } else {
            p.working_dir.join(f)
        };
        return std::fs::read(&f).map_err(|e| format!("reading {}: {e}", f.display()));
    }
    if let Some(c) = &obj.content {
        return Ok(c.clone().into_bytes());
    }
    if let Some(var) = &obj.environment {
        return p
            .environment
            .get(var)
            .map(|v| v.clone().into_bytes())
            .ok_or_else(|| format!("environment variable {var:?} is not set"));
    }
    Err("neither file, content nor environment".into())
}

fn image_for(
    k: &str,
    s: &Service,
    p: &Project,
    o: &Options,
    r: &mut Report,
    used: &mut Used,
) -> String {
    used.add("image");
    used.add("build");
    used.add("pull_policy");
    if let Some(pp @ ("never" | "build")) = s.pull_policy.as_deref() {
        r.error(
            Some(k),
            "pull_policy",
            format!("{pp:?}: the image exists only on this host, the cluster cannot pull it"),
        );
    }
    let has_domain = |img: &str| {
        img.split_once('/')
            .is_some_and(|(d, _)| d.contains('.') || d.contains(':') || d == "localhost")
    };
    let local_domain = |img: &str| {
        img.split_once('/').is_some_and(|(d, _)| {
            d == "localhost"
                || d.starts_with("localhost:")
                || d.starts_with("127.")
                || d.starts_with("[::1]")
        })
    };
    let default_name = format!("{}-{}", p.name, k);
    match (&s.image, &s.build, &o.registry) {
        (img, Some(_), Some(reg)) => {
            let base = img.clone().unwrap_or(default_name);
            let base = if has_domain(&base) {
                base.split_once('/')
                    .map(|x| x.1.to_string())
                    .unwrap_or(base)
            } else {
                base
            };
            let out = format!("{}/{base}", reg.trim_end_matches('/'));
            r.note(
                Some(k),
                "build",
                format!("built locally: push it as {out:?}"),
            );
            out
        }
        (None, Some(_), None) => {
            r.error(Some(k), "build", "no image name: a locally built image cannot be pulled by the cluster; set `image:` to a registry name or pass --registry");
            default_name
        }
        (Some(img), Some(_), None) if !has_domain(img) || local_domain(img) => {
            r.error(Some(k), "image", format!("{img:?} is built here (build:) and names no registry the cluster can pull from; use a registry name or pass --registry"));
            img.clone()
        }
        (Some(img), Some(_), None) => {
            r.note(
                Some(k),
                "build",
                format!("built locally: push {img:?} before applying"),
            );
            img.clone()
        }
        (Some(img), None, _) => {
            if local_domain(img) {
                r.error(
                    Some(k),
                    "image",
                    format!(
                        "{img:?} is on this host's loopback: the cluster's nodes cannot pull it"
                    ),
                );
            }
            img.clone()
        }
        (None, None, _) => {
            r.error(Some(k), "image", "no image");
            default_name
        }
    }
}

fn tty_stdin(s: &Service, c: &mut Map<String, Value>, used: &mut Used) {
    if s.tty {
        c.insert("tty".into(), json!(true));
        used.add("tty");
    }
    if s.stdin_open {
        c.insert("stdin".into(), json!(true));
        used.add("stdin_open");
    }
}

fn cpu_quantity(c: f64) -> Option<String> {
    let m = (c * 1000.0).round() as i64;
    (m > 0).then(|| format!("{m}m"))
}

fn resources(s: &Service, c: &mut Map<String, Value>, r: &mut Report, k: &str, used: &mut Used) {
    let res = s.deploy.as_ref().map(|d| &d.resources);
    let lim = res.and_then(|x| x.limits.as_ref());
    let req = res.and_then(|x| x.reservations.as_ref());
    let mut limits = Map::new();
    let mut requests = Map::new();
    let mut cpu = |v: Option<f64>, field: &str, into: &mut Map<String, Value>, r: &mut Report| {
        if let Some(v) = v {
            match cpu_quantity(v) {
                Some(q) => {
                    into.insert("cpu".into(), json!(q));
                    used.add(field);
                }
                None => r.unmapped(Some(k), field, format!("{v} CPUs rounds to 0m")),
            }
        }
    };
    if lim.and_then(|l| l.cpus).is_some() {
        cpu(
            lim.and_then(|l| l.cpus),
            "deploy.resources.limits.cpus",
            &mut limits,
            r,
        );
    } else {
        cpu(s.cpus, "cpus", &mut limits, r);
    }
    cpu(
        req.and_then(|l| l.cpus),
        "deploy.resources.reservations.cpus",
        &mut requests,
        r,
    );
    let mut mem = |v: Option<u64>, field: &str, into: &mut Map<String, Value>| {
        if let Some(v) = v {
            into.insert("memory".into(), json!(v.to_string()));
            used.add(field);
        }
    };
    if lim.and_then(|l| l.memory).is_some() {
        mem(
            lim.and_then(|l| l.memory),
            "deploy.resources.limits.memory",
            &mut limits,
        );
    } else {
        mem(s.mem_limit, "mem_limit", &mut limits);
    }
    if req.and_then(|l| l.memory).is_some() {
        mem(
            req.and_then(|l| l.memory),
            "deploy.resources.reservations.memory",
            &mut requests,
        );
    } else {
        mem(s.mem_reservation, "mem_reservation", &mut requests);
    }
    let mut m = Map::new();
    if !limits.is_empty() {
        m.insert("limits".into(), Value::Object(limits));
    }
    if !requests.is_empty() {
        m.insert("requests".into(), Value::Object(requests));
    }
    if !m.is_empty() {
        c.insert("resources".into(), Value::Object(m));
    }
}

fn job_policy(s: &Service, used: &mut Used) -> (&'static str, u64) {
    let rp = s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref());
    used.add("restart");
    if rp.is_some() {
        used.add("deploy.restart_policy.condition");
        used.add("deploy.restart_policy.max_attempts");
    }
    let attempts = rp.and_then(|r| r.max_attempts);
    let r = s.restart.as_deref().unwrap_or("");
    let cond = rp.and_then(|r| r.condition.as_deref()).unwrap_or("");
    if let Some(n) = r.strip_prefix("on-failure:") {
        return ("OnFailure", n.parse().unwrap_or(6));
    }
    if r == "on-failure" || cond == "on-failure" {
        return ("OnFailure", attempts.unwrap_or(6));
    }
    ("Never", 0)
}

fn update_strategy(
    k: &str,
    kind: &str,
    s: &Service,
    spec: &mut Map<String, Value>,
    r: &mut Report,
    used: &mut Used,
) {
    let Some(u) = s.deploy.as_ref().and_then(|d| d.update_config.as_ref()) else {
        return;
    };
    if let Some(m) = u.monitor {
        spec.insert("minReadySeconds".into(), json!(secs(m, 0)));
        used.add("deploy.update_config.monitor");
    }
    match u.failure_action.as_deref() {
        Some("pause") | None => used.add("deploy.update_config.failure_action"),
        Some(a) => r.unmapped(Some(k), "deploy.update_config.failure_action", format!(
            "{a:?}: Kubernetes never rolls back by itself; a stalled rollout is marked failed after progressDeadlineSeconds (`kubectl rollout undo`)")),
    }
    if kind == "StatefulSet" {
        return; // parallelism/order: reported as leftovers (StatefulSets update one by one)
    }
    let par = u.parallelism.unwrap_or(1);
    let step = if par == 0 { json!("100%") } else { json!(par) };
    let (surge, unavail) = if u.order.as_deref() == Some("start-first") {
        (step, json!(0))
    } else {
        (json!(0), step)
    };
    used.add("deploy.update_config.parallelism");
    used.add("deploy.update_config.order");
    let key = if kind == "DaemonSet" {
        "updateStrategy"
    } else {
        "strategy"
    };
    spec.insert(key.into(), json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavail}}));
}

/// Pod-level fields: grace period, hostname, DNS, hosts, sysctls, namespaces, platform.
fn pod_fields(k: &str, s: &Service, pod: &mut Map<String, Value>, r: &mut Report, used: &mut Used) {
    if s.init == Some(true) {
        // The pause container becomes PID 1 and reaps zombies, as docker-init does.
        pod.insert("shareProcessNamespace".into(), json!(true));
        used.add("init");
        r.note(Some(k), "init", "shareProcessNamespace: the pod's pause process reaps zombies (processes see each other within the pod)");
    } else if s.init == Some(false) {
        used.add("init");
    }
    if let Some(g) = s.stop_grace_period {
        pod.insert("terminationGracePeriodSeconds".into(), json!(secs(g, 0)));
        used.add("stop_grace_period");
    }
    if let Some(h) = &s.hostname {
        if dns_label(h) == *h
            || (h
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !h.starts_with('-')
                && !h.ends_with('-')
                && h.len() <= 63)
        {
            pod.insert("hostname".into(), json!(h));
            used.add("hostname");
        }
    }
    if !s.dns.is_empty() || !s.dns_search.is_empty() || !s.dns_opt.is_empty() {
        let mut cfg = Map::new();
        if !s.dns.is_empty() {
            cfg.insert("nameservers".into(), json!(s.dns));
            pod.insert("dnsPolicy".into(), json!("None"));
            used.add("dns");
            r.note(
                Some(k),
                "dns",
                "dnsPolicy None: the cluster's DNS (service names) is not used by this pod",
            );
        }
        if !s.dns_search.is_empty() {
            cfg.insert("searches".into(), json!(s.dns_search));
            used.add("dns_search");
        }
        if !s.dns_opt.is_empty() {
            let opts: Vec<Value> = s
                .dns_opt
                .iter()
                .map(|o| match o.split_once(':') {
                    Some((n, v)) => json!({"name": n, "value": v}),
                    None => json!({"name": o}),
                })
                .collect();
            cfg.insert("options".into(), json!(opts));
            used.add("dns_opt");
        }
        pod.insert("dnsConfig".into(), Value::Object(cfg));
    }
    if !s.extra_hosts.is_empty() {
        let mut by_ip: IndexMap<String, Vec<String>> = IndexMap::new();
        for (h, ip) in &s.extra_hosts.0 {
            if ip == "host-gateway" {
                r.unmapped(
                    Some(k),
                    "extra_hosts",
                    format!("{h}=host-gateway: there is no host gateway address in a cluster"),
                );
                continue;
            }
            by_ip.entry(ip.clone()).or_default().push(h.clone());
        }
        let aliases: Vec<Value> = by_ip
            .into_iter()
            .map(|(ip, hs)| json!({"ip": ip, "hostnames": hs}))
            .collect();
        if !aliases.is_empty() {
            pod.insert("hostAliases".into(), json!(aliases));
        }
        used.add("extra_hosts");
    }
    let mut psc = Map::new();
    if !s.sysctls.is_empty() {
        let v: Vec<Value> = s
            .sysctls
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        psc.insert("sysctls".into(), json!(v));
        used.add("sysctls");
        r.note(Some(k), "sysctls", "sysctls outside the kubelet's safe set must be allowed on the nodes (--allowed-unsafe-sysctls)");
    }
    if !psc.is_empty() {
        pod.insert("securityContext".into(), Value::Object(psc));
    }
    if s.pid.as_deref() == Some("host") {
        pod.insert("hostPID".into(), json!(true));
        used.add("pid");
    }
    if s.ipc.as_deref() == Some("host") {
        pod.insert("hostIPC".into(), json!(true));
        used.add("ipc");
    } else if s.ipc.as_deref() == Some("shareable") || s.ipc.as_deref() == Some("private") {
        used.add("ipc");
    }
    if let Some(pl) = &s.platform {
        let mut parts = pl.split('/');
        let os = parts.next().unwrap_or("");
        let arch = parts.next();
        let mut ns = Map::new();
        if !os.is_empty() {
            ns.insert("kubernetes.io/os".into(), json!(os));
        }
        if let Some(a) = arch {
            ns.insert("kubernetes.io/arch".into(), json!(a));
        }
        pod.insert("nodeSelector".into(), Value::Object(ns));
        used.add("platform");
    }
}

#[cfg(test)]
#[path = "k8s_tests.rs"]
mod tests;

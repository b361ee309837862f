//! `berth export swarm`: the normalised project as a Compose file `docker stack deploy`
//! accepts (the v3.9 schema of docker/cli 20.10, which newer CLIs read too).
//!
//! Mostly filtering: what Swarm ignores or rejects is removed and reported, `restart` becomes
//! `deploy.restart_policy`, `build:` is replaced by the built image's tag, long `depends_on`
//! (rejected by newer CLIs, ignored by all) is removed with a note.

use serde_json::{json, Map, Value};

use super::{Report, Used};
use crate::compose::Project;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Registry the locally built images are pushed to (`REGISTRY/<image>`).
    pub registry: Option<String>,
}

/// Service keys of the v3.9 schema that a stack deploy honours.
const KEEP: &[&str] = &[
    "cap_add",
    "cap_drop",
    "command",
    "configs",
    "deploy",
    "dns",
    "dns_search",
    "domainname",
    "entrypoint",
    "environment",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "isolation",
    "labels",
    "logging",
    "networks",
    "ports",
    "read_only",
    "secrets",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "stdin_open",
    "ulimits",
    "user",
    "volumes",
    "working_dir",
];

/// Keys handled here (mapped, or consumed by the loader's normalisation).
const HANDLED: &[&str] = &[
    "restart",
    "build",
    "depends_on",
    "env_file",
    "profiles",
    "scale",
    "pull_policy",
];

fn why(key: &str) -> &'static str {
    match key {
        "container_name" => "Swarm names tasks itself",
        "links" | "external_links" => {
            "Swarm resolves service names on overlay networks; links are ignored"
        }
        "network_mode" => "Swarm services use overlay networks; network_mode is ignored",
        "privileged" | "devices" | "security_opt" | "userns_mode" | "cgroup_parent" | "ipc"
        | "pid" => "Swarm services do not support it (`docker stack deploy` ignores it)",
        _ => "not in the Compose file format `docker stack deploy` reads (v3.9)",
    }
}

fn escape(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Array(a) => a.iter_mut().for_each(escape),
        Value::Object(m) => m.values_mut().for_each(escape),
        _ => {}
    }
}

/// Keep `allowed` keys of an object; report the rest as `field.key`.
fn filter(v: &mut Value, allowed: &[&str], r: &mut Report, svc: Option<&str>, field: &str) {
    if let Value::Object(m) = v {
        let drop: Vec<String> = m
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in drop {
            m.remove(&k);
            let f = if field.is_empty() {
                k.clone()
            } else {
                format!("{field}.{k}")
            };
            r.unmapped(
                svc,
                &f,
                "not in the Compose file format `docker stack deploy` reads (v3.9)",
            );
        }
    }
}

pub fn export(p: &Project, o: &Options) -> (Value, Report) {
    let mut r = Report::default();
    let mut services = Map::new();
    for (k, s) in &p.services {
        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
        let Value::Object(m) = &mut v else { continue };
        let mut used = Used::default();

        // Image: the built tag replaces build:.
        let image = match (&s.image, &s.build, &o.registry) {
            (img, Some(_), reg) => {
                let base = img.clone().unwrap_or_else(|| format!("{}-{}", p.name, k));
                let out = match reg {
                    Some(reg) => format!(
                        "{}/{}",
                        reg.trim_end_matches('/'),
                        base.rsplit_once('/').map(|x| x.1).unwrap_or(&base)
                    ),
                    None => base,
                };
                r.note(
                    Some(k),
                    "build",
                    format!(
                        "removed: build and push {out:?} to a registry every node can pull from"
                    ),
                );
                out
            }
            (Some(img), None, _) => img.clone(),
            (None, None, _) => {
                r.error(Some(k), "image", "no image");
                String::new()
            }
        };
        m.insert("image".into(), json!(image));
        if let Some(pp @ ("never" | "build")) = s.pull_policy.as_deref() {
            r.note(
                Some(k),
                "pull_policy",
                format!("{pp:?}: the image must exist on every node"),
            );
        }
        used.add("pull_policy");

        // restart → deploy.restart_policy.
        let deploy = m.entry("deploy").or_insert_with(|| json!({}));
        if let Some(rs) = &s.restart {
            if deploy.get("restart_policy").is_some() {
                r.note(
                    Some(k),
                    "restart",
                    "deploy.restart_policy is set and wins; restart removed",
                );
            } else {
                let (cond, attempts) = match rs.as_str() {
                    "no" => ("none", None),
                    "always" => ("any", None),
                    "unless-stopped" => {
                        r.note(
                            Some(k),
                            "restart",
                            "unless-stopped: Swarm has no manual stop; mapped to condition any",
                        );
                        ("any", None)
                    }
                    x => (
                        "on-failure",
                        x.strip_prefix("on-failure:")
                            .and_then(|n| n.parse::<u64>().ok()),
                    ),
                };
                let mut rp = json!({"condition": cond});
                if let Some(n) = attempts {
                    rp["max_attempts"] = json!(n);
                }
                deploy["restart_policy"] = rp;
            }
        }
        // replicas from scale.
        if s.scale.is_some() && deploy.get("replicas").is_none() {
            deploy["replicas"] = json!(s.replicas());
        }
        if deploy.as_object().is_some_and(|d| d.is_empty()) {
            m.remove("deploy");
        }
        if let Some(d) = m.get_mut("deploy") {
            filter(
                d,
                &[
                    "mode",
                    "endpoint_mode",
                    "replicas",
                    "labels",
                    "rollback_config",
                    "update_config",
                    "resources",
                    "restart_policy",
                    "placement",
                ],
                &mut r,
                Some(k),
                "deploy",
            );
            for part in ["limits", "reservations"] {
                if let Some(res) = d.get_mut("resources").and_then(|x| x.get_mut(part)) {
                    filter(
                        res,
                        &["cpus", "memory"],
                        &mut r,
                        Some(k),
                        &format!("deploy.resources.{part}"),
                    );
                    if let Some(c) = res.get_mut("cpus") {
                        *c = json!(c.to_string().trim_matches('"'));
                    }
                }
            }
        }
        // Container-level cpus/mem_limit → deploy.resources (3.x has no service-level form).
        for (key, part, field) in [
            ("cpus", "limits", "cpus"),
            ("mem_limit", "limits", "memory"),
            ("mem_reservation", "reservations", "memory"),
        ] {
            if let Some(val) = m.remove(key) {
                let d = m.entry("deploy").or_insert_with(|| json!({}));
                let res = &mut d["resources"][part];
                if res.get(field).is_none() {
                    res[field] = json!(val.to_string().trim_matches('"'));
                }
            }
        }

        if !s.depends_on.is_empty() {
            let list: Vec<String> = s
                .depends_on
                .iter()
                .map(|(d, c)| format!("{d} ({})", c.condition))
                .collect();
            r.unmapped(Some(k), "depends_on", format!("removed: Swarm starts services in any order (was {}); make the service retry its dependencies", list.join(", ")));
        }
        if !s.env_file.is_empty() {
            // Its contents are already in `environment`.
        }
        if m.remove("expose").is_some() {
            r.note(Some(k), "expose", "removed (deprecated for stacks): services on a network reach each other on any port");
        }
        for h in HANDLED {
            m.remove(*h);
        }

        // Everything not in v3.9 (or ignored by stack deploy): removed and reported.
        let keys: Vec<String> = m.keys().cloned().collect();
        for key in keys {
            if !KEEP.contains(&key.as_str()) {
                m.remove(&key);
                r.unmapped(Some(k), &key, why(&key));
            }
        }

        // Shapes the v3.9 schema wants.
        if let Some(Value::Array(ports)) = m.get_mut("ports") {
            for (i, pt) in ports.iter_mut().enumerate() {
                if let Some(pb) = pt
                    .get("published")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                {
                    match pb.parse::<u64>() {
                        Ok(n) => pt["published"] = json!(n),
                        Err(_) => {
                            r.unmapped(
                                Some(k),
                                &format!("ports.{i}.published"),
                                format!("{pb:?}: a range; Swarm publishes single ports"),
                            );
                            pt.as_object_mut().map(|o| o.remove("published"));
                        }
                    }
                }
                filter(
                    pt,
                    &["mode", "target", "published", "protocol"],
                    &mut r,
                    Some(k),
                    &format!("ports.{i}"),
                );
            }
        }
        if let Some(Value::Array(vols)) = m.get_mut("volumes") {
            for (i, vol) in vols.iter_mut().enumerate() {
                if let Some(b) = vol.get_mut("bind") {
                    if b.get("create_host_path").and_then(|x| x.as_bool()) == Some(true) {
                        r.note(Some(k), &format!("volumes.{i}"), "bind mount: the host path must exist on every node (Swarm does not create it)");
                    }
                    b.as_object_mut().map(|o| o.remove("create_host_path"));
                    filter(
                        b,
                        &["propagation"],
                        &mut r,
                        Some(k),
                        &format!("volumes.{i}.bind"),
                    );
                    if b.as_object().is_some_and(|o| o.is_empty()) {
                        vol.as_object_mut().map(|o| o.remove("bind"));
                    }
                }
                if let Some(t) = vol.get_mut("tmpfs") {
                    filter(t, &["size"], &mut r, Some(k), &format!("volumes.{i}.tmpfs"));
                    if let Some(sz) = t
                        .get("size")
                        .and_then(|x| x.as_str())
                        .and_then(|x| x.parse::<u64>().ok())
                    {
                        t["size"] = json!(sz);
                    }
                }
                if let Some(vv) = vol.get_mut("volume") {
                    filter(
                        vv,
                        &["nocopy"],
                        &mut r,
                        Some(k),
                        &format!("volumes.{i}.volume"),
                    );
                }
                filter(
                    vol,
                    &[
                        "type",
                        "source",
                        "target",
                        "read_only",
                        "consistency",
                        "bind",
                        "volume",
                        "tmpfs",
                    ],
                    &mut r,
                    Some(k),
                    &format!("volumes.{i}"),
                );
            }
        }
        for what in ["secrets", "configs"] {
            if let Some(Value::Array(list)) = m.get_mut(what) {
                for (i, f) in list.iter_mut().enumerate() {
                    if let Some(mode) = f.get("mode").and_then(|x| x.as_str()).map(str::to_string) {
                        if let Ok(n) =
                            u32::from_str_radix(mode.trim_start_matches('0'), 8).or_else(|e| {
                                if mode.trim_start_matches('0').is_empty() {
                                    Ok(0)
                                } else {
                                    Err(e)
                                }
                            })
                        {
                            f["mode"] = json!(n);
                        }
                    }
                    filter(
                        f,
                        &["source", "target", "uid", "gid", "mode"],
                        &mut r,
                        Some(k),
                        &format!("{what}.{i}"),
                    );
                }
            }
        }
        if let Some(h) = m.get_mut("healthcheck") {
            filter(
                h,
                &[
                    "disable",
                    "interval",
                    "retries",
                    "test",
                    "timeout",
                    "start_period",
                ],
                &mut r,
                Some(k),
                "healthcheck",
            );
        }
        if let Some(Value::Object(nets)) = m.get_mut("networks") {
            for (net, opts) in nets.iter_mut() {
                if opts.is_object() {
                    filter(
                        opts,
                        &["aliases", "ipv4_address", "ipv6_address"],
                        &mut r,
                        Some(k),
                        &format!("networks.{net}"),
                    );
                }
            }
        }
        if let Some(l) = m.get_mut("logging") {
            filter(l, &["driver", "options"], &mut r, Some(k), "logging");
        }
        services.insert(k.clone(), v);
    }

    let mut top = Map::new();
    top.insert("version".into(), json!("3.9"));
    top.insert("services".into(), Value::Object(services));
    let default_name = |key: &str| format!("{}_{key}", p.name);
    let mut nets = Map::new();
    for (key, n) in &p.networks {
        let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
        if n.name == default_name(key) && !n.external {
            v.as_object_mut().map(|o| o.remove("name"));
        }
        if n.driver.as_deref() == Some("bridge") {
            v.as_object_mut().map(|o| o.remove("driver"));
            r.note(
                None,
                &format!("networks.{key}.driver"),
                "bridge is host-local; a stack uses the overlay driver",
            );
        }
        if let Some(Value::Array(cfgs)) = v.get_mut("ipam").and_then(|i| i.get_mut("config")) {
            for (i, c) in cfgs.iter_mut().enumerate() {
                filter(
                    c,
                    &["subnet"],
                    &mut r,
                    None,
                    &format!("networks.{key}.ipam.config.{i}"),
                );
            }
        }
        filter(
            &mut v,
            &[
                "name",
                "driver",
                "driver_opts",
                "ipam",
                "external",
                "internal",
                "attachable",
                "labels",
            ],
            &mut r,
            None,
            &format!("networks.{key}"),
        );
        nets.insert(key.clone(), v);
    }
    if !nets.is_empty() {
        top.insert("networks".into(), Value::Object(nets));
    }
    let mut vols = Map::new();
    for (key, vol) in &p.volumes {
        let mut v = serde_json::to_value(vol).unwrap_or(Value::Null);
        if vol.name == default_name(key) && !vol.external {
            v.as_object_mut().map(|o| o.remove("name"));
        }
        filter(
            &mut v,
            &["name", "driver", "driver_opts", "external", "labels"],
            &mut r,
            None,
            &format!("volumes.{key}"),
        );
        vols.insert(key.clone(), v);
    }
    if !vols.is_empty() {
        top.insert("volumes".into(), Value::Object(vols));
    }
    for (what, objs) in [("secrets", &p.secrets), ("configs", &p.configs)] {
        let mut out = Map::new();
        for (key, obj) in objs {
            let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
            if obj.name == default_name(key) && !obj.external {
                v.as_object_mut().map(|o| o.remove("name"));
            }
            if obj.file.is_none() && !obj.external {
                r.error(
                    None,
                    &format!("{what}.{key}"),
                    "Swarm takes a secret or config from a file or as external; write it to a file",
                );
            }
            filter(
                &mut v,
                &["name", "file", "external", "labels"],
                &mut r,
                None,
                &format!("{what}.{key}"),
            );
            out.insert(key.clone(), v);
        }
        if !out.is_empty() {
            top.insert(what.into(), Value::Object(out));
        }
    }
    r.note(
        None,
        "name",
        format!(
            "the stack name is given to `docker stack deploy` (e.g. {:?})",
            p.name
        ),
    );
    let mut v = Value::Object(top);
    escape(&mut v);
    (v, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{load, LoadOptions};

    fn project(yaml: &str) -> Project {
        let o = LoadOptions {
            files: vec!["-".into()],
            stdin: Some(yaml.into()),
            project_name: Some("demo".into()),
            working_dir: std::env::temp_dir(),
            interpolate: true,
            ..Default::default()
        };
        load(&o).unwrap()
    }

    #[test]
    fn restart_depends_on_build_and_ignored_fields() {
        let p = project(
            r#"
services:
  web:
    image: local/bb:1
    restart: on-failure:3
    depends_on:
      db: {condition: service_healthy}
    ports: ["8080:80"]
    deploy:
      replicas: 2
      update_config: {parallelism: 1, delay: 2s, order: start-first, failure_action: rollback, monitor: 5s}
    command: ["sh", "-c", "echo $$HOME"]
  db:
    build: ./db
    container_name: db1
    healthcheck: {test: ["CMD", "true"], interval: 5s, start_interval: 1s}
    restart: always
"#,
        );
        let (v, r) = export(
            &p,
            &Options {
                registry: Some("reg.example:5000".into()),
            },
        );
        let web = &v["services"]["web"];
        assert_eq!(v["version"], "3.9");
        assert_eq!(
            web["deploy"]["restart_policy"],
            json!({"condition": "on-failure", "max_attempts": 3})
        );
        assert_eq!(web["deploy"]["update_config"]["order"], "start-first");
        assert_eq!(web["deploy"]["update_config"]["delay"], "2s");
        assert_eq!(web["ports"][0]["published"], json!(8080));
        assert!(
            web.get("depends_on").is_none()
                && web.get("container_name").is_none()
                && web.get("restart").is_none()
        );
        // $ escaped again: the stack file is interpolated by docker too.
        assert_eq!(web["command"], json!(["sh", "-c", "echo $$HOME"]));
        assert!(r.names(super::super::Level::Unmapped, Some("db"), "container_name"));
        assert!(r.names(super::super::Level::Unmapped, Some("web"), "depends_on"));
        let db = &v["services"]["db"];
        assert_eq!(db["image"], "reg.example:5000/demo-db");
        assert!(db.get("build").is_none());
        assert_eq!(db["deploy"]["restart_policy"], json!({"condition": "any"}));
        assert!(r.names(
            super::super::Level::Unmapped,
            Some("db"),
            "healthcheck.start_interval"
        ));
        assert!(r.names(super::super::Level::Note, Some("db"), "build"));
        assert!(v.get("name").is_none());
        assert!(!r.has(super::super::Level::Error));
    }
}

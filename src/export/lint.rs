//! berth's own semantic checks of exported manifests: what the Kubernetes API server
//! validates beyond the OpenAPI schema (which `kubernetes-validate` covers), plus the
//! consistency between objects that no single-object check can see.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// RFC 1123 label: lowercase alphanumerics and `-`, alphanumeric at both ends, ≤ 63.
pub fn rfc1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1035 label (Service names): an RFC 1123 label that starts with a letter.
pub fn rfc1035_label(s: &str) -> bool {
    rfc1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253.
pub fn rfc1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(rfc1123_label)
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    !name.is_empty() && label_value_ok(name) && prefix.is_none_or(rfc1123_subdomain)
}

fn env_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && !n.starts_with(|c: char| c.is_ascii_digit())
}

/// A resource quantity (`500m`, `1Gi`, `536870912`, `1.5`).
pub fn quantity_ok(q: &str) -> bool {
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    !num.is_empty()
        && num.chars().filter(|c| *c == '.').count() <= 1
        && num != "."
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn subset(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// Check a set of manifests (one namespace). Returns one line per problem.
pub fn lint(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    let mut templates: Vec<BTreeMap<String, String>> = Vec::new();
    let mut service_names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("");
        if let Some(t) = d["spec"]["template"]["metadata"]["labels"].as_object() {
            let _ = t;
            templates.push(str_map(&d["spec"]["template"]["metadata"]["labels"]));
        }
        if kind == "Service" {
            service_names.insert(d["metadata"]["name"].as_str().unwrap_or("").to_string());
        }
    }
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("?");
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        let id = format!("{kind}/{name}");
        let mut err = |m: String| errs.push(format!("{id}: {m}"));
        if !seen.insert(id.clone()) {
            err("duplicate object".into());
        }
        let name_ok = match kind {
            "Service" | "Namespace" => {
                rfc1035_label(name) || (kind == "Namespace" && rfc1123_label(name))
            }
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => rfc1123_label(name),
            _ => rfc1123_subdomain(name),
        };
        if !name_ok {
            err(format!("name {name:?} is not a valid {kind} name"));
        }
        for part in ["labels", "annotations"] {
            for (k, v) in str_map(&d["metadata"][part]) {
                if !label_key_ok(&k) {
                    err(format!("{part} key {k:?} is not a qualified name"));
                }
                if part == "labels" && !label_value_ok(&v) {
                    err(format!("label {k}={v:?}: invalid value"));
                }
            }
        }
        match kind {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                let tl = str_map(&d["spec"]["template"]["metadata"]["labels"]);
                for (k, v) in &tl {
                    if !label_key_ok(k) || !label_value_ok(v) {
                        err(format!("template label {k}={v:?} is invalid"));
                    }
                }
                if kind != "Job" {
                    let sel = str_map(&d["spec"]["selector"]["matchLabels"]);
                    if sel.is_empty() {
                        err("empty selector".into());
                    }
                    if sel != tl {
                        err(format!("selector {sel:?} != template labels {tl:?}"));
                    }
                }
                if kind == "StatefulSet" {
                    let sn = d["spec"]["serviceName"].as_str().unwrap_or("");
                    if !service_names.contains(sn) {
                        err(format!("serviceName {sn:?} is not a Service of the export"));
                    }
                }
                for (k, v) in str_map(&d["spec"]["template"]["metadata"]["annotations"]) {
                    let _ = v;
                    if !label_key_ok(&k) {
                        err(format!(
                            "template annotation key {k:?} is not a qualified name"
                        ));
                    }
                }
                // A StatefulSet's claim templates are volumes of its pods too.
                let claims: Vec<String> = d["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| c["metadata"]["name"].as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                lint_pod(
                    &d["spec"]["template"]["spec"],
                    &claims,
                    &service_names,
                    &mut err,
                );
            }
            "Service" => {
                let spec = &d["spec"];
                let headless = spec["clusterIP"].as_str() == Some("None");
                let ports = spec["ports"].as_array().cloned().unwrap_or_default();
                if ports.is_empty() && !headless {
                    err("a non-headless Service without a port".into());
                }
                let mut pnames = BTreeSet::new();
                let mut pnums = BTreeSet::new();
                for p in &ports {
                    let n = p["port"].as_u64().unwrap_or(0);
                    if !(1..=65535).contains(&n) {
                        err(format!("port {n} out of range"));
                    }
                    if !pnums.insert((n, p["protocol"].as_str().unwrap_or("TCP").to_string())) {
                        err(format!("port {n} twice"));
                    }
                    if ports.len() > 1 {
                        let pn = p["name"].as_str().unwrap_or("");
                        if !super::k8s::iana_svc_name(pn) || !pnames.insert(pn.to_string()) {
                            err(format!("port name {pn:?} missing, invalid or repeated"));
                        }
                    }
                }
                let sel = str_map(&spec["selector"]);
                if sel.is_empty() {
                    err("no selector".into());
                } else if !templates.iter().any(|t| subset(&sel, t)) {
                    err(format!("selector {sel:?} selects no pod of the export"));
                }
            }
            "PersistentVolumeClaim" => {
                let modes = d["spec"]["accessModes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if modes.is_empty() {
                    err("no access mode".into());
                }
                let q = d["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .unwrap_or("");
                if !quantity_ok(q) {
                    err(format!("storage request {q:?} is not a quantity"));
                }
            }
            "ConfigMap" | "Secret" => {
                for part in ["data", "binaryData"] {
                    for k in str_map(&d[part]).keys() {
                        if !env_name_ok(k)
                            && !k
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                        {
                            err(format!("{part} key {k:?} is invalid"));
                        }
                    }
                }
            }
            "NetworkPolicy" => {
                let sel = str_map(&d["spec"]["podSelector"]["matchLabels"]);
                if !templates.iter().any(|t| subset(&sel, t)) {
                    err(format!("podSelector {sel:?} selects no pod of the export"));
                }
            }
            _ => {}
        }
    }
    errs
}

fn lint_pod(
    pod: &Value,
    claims: &[String],
    services: &BTreeSet<String>,
    err: &mut impl FnMut(String),
) {
    let mut volumes: Vec<String> = pod["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|x| x["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    volumes.extend(claims.iter().cloned());
    let mut vs = BTreeSet::new();
    for v in &volumes {
        if !rfc1123_label(v) || !vs.insert(v) {
            err(format!("volume name {v:?} invalid or repeated"));
        }
    }
    let mut names = BTreeSet::new();
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        err("no container".into());
    }
    let inits = pod["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (init, c) in inits
        .iter()
        .map(|c| (true, c))
        .chain(containers.iter().map(|c| (false, c)))
    {
        let cn = c["name"].as_str().unwrap_or("");
        if !rfc1123_label(cn) || !names.insert(cn.to_string()) {
            err(format!("container name {cn:?} invalid or repeated"));
        }
        if c["image"].as_str().unwrap_or("").is_empty() {
            err(format!("container {cn}: no image"));
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            if c[probe].is_null() {
                continue;
            }
            let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
                .iter()
                .filter(|h| !c[probe][**h].is_null())
                .count();
            if handlers != 1 {
                err(format!(
                    "container {cn}: {probe} has {handlers} handlers, not one"
                ));
            }
            if init {
                err(format!("init container {cn}: {probe} is not allowed"));
            }
            if probe != "readinessProbe"
                && c[probe]["successThreshold"]
                    .as_u64()
                    .is_some_and(|n| n != 1)
            {
                err(format!(
                    "container {cn}: {probe} successThreshold must be 1"
                ));
            }
        }
        if init {
            if let Some(target) = cn.strip_prefix("wait-for-") {
                if !services.contains(target) {
                    err(format!("init container {cn} waits for {target:?}, which is not a Service of the export"));
                }
                let script = c["command"]
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|s| s.as_str())
                    .unwrap_or("");
                if !script
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .any(|w| w == target)
                {
                    err(format!(
                        "init container {cn}: its command does not name {target:?}"
                    ));
                }
            }
        }
        for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
            let mn = m["name"].as_str().unwrap_or("");
            if !volumes.iter().any(|v| v == mn) {
                err(format!("container {cn}: mount of an unknown volume {mn:?}"));
            }
            if !m["mountPath"].as_str().unwrap_or("").starts_with('/') {
                err(format!(
                    "container {cn}: mountPath {:?} is not absolute",
                    m["mountPath"]
                ));
            }
        }
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let en = e["name"].as_str().unwrap_or("");
            if !env_name_ok(en) {
                err(format!("container {cn}: env name {en:?} is invalid"));
            }
        }
        let mut ports = BTreeSet::new();
        for p in c["ports"].as_array().cloned().unwrap_or_default() {
            let n = p["containerPort"].as_u64().unwrap_or(0);
            if !(1..=65535).contains(&n) || !ports.insert((n, p["protocol"].clone().to_string())) {
                err(format!(
                    "container {cn}: containerPort {n} invalid or repeated"
                ));
            }
        }
        for part in ["limits", "requests"] {
            for (k, q) in str_map(&c["resources"][part]) {
                if !quantity_ok(&q) {
                    err(format!(
                        "container {cn}: {part}.{k} {q:?} is not a quantity"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx",
                        "readinessProbe": {"exec": {"command": ["true"]}}}]}}}})
    }
    fn service() -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 80}]}})
    }

    #[test]
    fn a_consistent_pair_passes() {
        assert_eq!(lint(&[deployment(), service()]), Vec::<String>::new());
    }

    #[test]
    fn each_semantic_rule_catches_its_fault() {
        type Mutate = Box<dyn Fn(&mut Vec<Value>)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (
                Box::new(|d| d[0]["metadata"]["name"] = json!("Web_Bad")),
                "not a valid Deployment name",
            ),
            (
                Box::new(|d| d[1]["metadata"]["name"] = json!("1web")),
                "not a valid Service name",
            ),
            (
                Box::new(|d| d[0]["spec"]["selector"]["matchLabels"]["x"] = json!("y")),
                "!= template labels",
            ),
            (
                Box::new(|d| d[1]["spec"]["ports"] = json!([])),
                "without a port",
            ),
            (
                Box::new(|d| d[1]["spec"]["selector"] = json!({"app.kubernetes.io/name": "db"})),
                "selects no pod",
            ),
            (
                Box::new(|d| {
                    d[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
                        ["tcpSocket"] = json!({"port": 80})
                }),
                "2 handlers",
            ),
            (
                Box::new(|d| {
                    d[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
                        json!({"periodSeconds": 1})
                }),
                "0 handlers",
            ),
            (
                Box::new(
                    |d| d[0]["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "wait-for-db", "image": "busybox", "command": ["sh", "-c", "until nc -z db 5432; do sleep 2; done"]}]),
                ),
                "not a Service of the export",
            ),
            (
                Box::new(|d| {
                    d[0]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
                        json!([{"name": "data", "mountPath": "/d"}])
                }),
                "unknown volume",
            ),
            (
                Box::new(|d| {
                    d[0]["spec"]["template"]["spec"]["containers"][0]["resources"] =
                        json!({"limits": {"cpu": "half"}})
                }),
                "not a quantity",
            ),
            (
                Box::new(|d| d[1]["spec"]["ports"] = json!([{"port": 80}, {"port": 81}])),
                "port name",
            ),
        ];
        for (mutate, want) in cases {
            let mut docs = vec![deployment(), service()];
            mutate(&mut docs);
            let errs = lint(&docs);
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
    }

    #[test]
    fn headless_services_need_no_port_and_waits_name_their_service() {
        let mut s = service();
        s["spec"] = json!({"selector": {"app.kubernetes.io/name": "web"}, "clusterIP": "None"});
        let mut d = deployment();
        d["metadata"]["name"] = json!("app");
        d["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "wait-for-web", "image": "busybox",
            "command": ["sh", "-c", "until nslookup web; do sleep 2; done"]}]);
        assert_eq!(lint(&[deployment(), s, d]), Vec::<String>::new());
    }

    #[test]
    fn quantities() {
        for q in ["500m", "1Gi", "536870912", "1.5", "100Mi"] {
            assert!(quantity_ok(q), "{q}");
        }
        for q in ["", "half", "1.2.3", "5mb", "."] {
            assert!(!quantity_ok(q), "{q}");
        }
    }
}

//! Merging compose trees the way compose-go does (`override/merge.go` + `uncity.go`):
//! mappings merge recursively, scalars are replaced, sequences are appended and then made
//! unique by an attribute-specific key; a few attributes have their own rules; `!reset` drops
//! a value and `!override` replaces it wholesale.

use super::convert::R;
use super::error::LoadError;
use super::yaml::{Entry, Node, V};

/// Path patterns: `*` matches one segment.
fn matches(path: &[String], pattern: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    pat.len() == path.len() && pat.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
}

/// Attributes merged as key=value sets (list or mapping form), the override winning per key.
const KEY_VALUE: &[&str] = &[
    "networks.*.labels",
    "volumes.*.labels",
    "services.*.annotations",
    "services.*.build.args",
    "services.*.build.additional_contexts",
    "services.*.build.labels",
    "services.*.deploy.labels",
    "services.*.environment",
    "services.*.labels",
    "services.*.volumes.*.volume.labels",
    "services.*.sysctls",
];

/// Sequences (or a single string) appended then deduplicated by value.
const SEQ_UNIQUE: &[&str] = &[
    "services.*.dns",
    "services.*.dns_opt",
    "services.*.dns_search",
    "services.*.tmpfs",
    "services.*.env_file",
    "services.*.label_file",
    "services.*.extra_hosts",
    "services.*.build.extra_hosts",
];

const OVERRIDE: &[&str] = &[
    "services.*.command",
    "services.*.entrypoint",
    "services.*.healthcheck.test",
];

/// Merge `over` into `base` (later file wins).
pub fn merge(base: Node, over: Node) -> R<Node> {
    let mut path = Vec::new();
    let mut out = merge_at(base, over, &mut path)?;
    strip_reset(&mut out);
    Ok(out)
}

fn merge_at(base: Node, over: Node, path: &mut Vec<String>) -> R<Node> {
    if over.tag.as_deref() == Some("override") || over.tag.as_deref() == Some("reset") {
        return Ok(over);
    }
    let p = path.join(".");
    if OVERRIDE.iter().any(|pat| matches(path, pat)) {
        return Ok(over);
    }
    if KEY_VALUE.iter().any(|pat| matches(path, pat)) {
        return Ok(merge_key_value(base, over));
    }
    if SEQ_UNIQUE.iter().any(|pat| matches(path, pat)) {
        let mut items = into_seq(base);
        items.extend(into_seq(over.clone()));
        let mut out: Vec<Node> = Vec::new();
        for it in items {
            let k = seq_key(&it);
            if let Some(pos) = out.iter().position(|x| seq_key(x) == k) {
                out[pos] = it;
            } else {
                out.push(it);
            }
        }
        return Ok(Node::new(V::Seq(out), over.mark));
    }
    if matches(path, "services.*.depends_on") || matches(path, "services.*.networks") {
        let with_default = path.last().map(|s| s == "depends_on").unwrap_or(false);
        let b = seq_to_map(base, with_default);
        let o = seq_to_map(over, with_default);
        return merge_maps(b, o, path);
    }
    if matches(path, "services.*.build") {
        let b = build_to_map(base);
        let o = build_to_map(over);
        return merge_maps(b, o, path);
    }
    if matches(path, "services.*.logging") {
        let bd = base
            .get("driver")
            .and_then(|n| n.scalar())
            .map(String::from);
        let od = over
            .get("driver")
            .and_then(|n| n.scalar())
            .map(String::from);
        if bd.is_some() && od.is_some() && bd != od {
            return Ok(over);
        }
        return merge_maps(base, over, path);
    }
    if matches(path, "services.*.ulimits.*") {
        return Ok(over);
    }
    if over.is_null() {
        return Ok(base);
    }
    match (&base.v, &over.v) {
        (V::Map(_), V::Map(_)) => merge_maps(base, over, path),
        (V::Seq(_), V::Seq(_)) => {
            let (V::Seq(mut a), V::Seq(b)) = (base.v, over.v) else {
                unreachable!()
            };
            a.extend(b);
            Ok(Node::new(V::Seq(a), over.mark))
        }
        (V::Map(_), _) | (V::Seq(_), _) if !matches!(base.v, V::Null) => Err(LoadError::at(
            &over.mark,
            p,
            format!("cannot override a {} with a {}", base.kind(), over.kind()),
        )),
        _ => Ok(over),
    }
}

fn merge_maps(base: Node, over: Node, path: &mut Vec<String>) -> R<Node> {
    let mark = base.mark.clone();
    let tag = base.tag.clone();
    let V::Map(mut entries) = base.v else {
        return Ok(over);
    };
    let V::Map(oentries) = over.v else {
        return Ok(Node {
            v: V::Map(entries),
            mark,
            tag,
        });
    };
    for oe in oentries {
        if let Some(pos) = entries.iter().position(|e| e.key == oe.key) {
            let old = entries[pos].val.clone();
            path.push(oe.key.clone());
            let merged = merge_at(old, oe.val, path);
            path.pop();
            entries[pos].val = merged?;
        } else {
            entries.push(oe);
        }
    }
    Ok(Node {
        v: V::Map(entries),
        mark,
        tag,
    })
}

fn into_seq(n: Node) -> Vec<Node> {
    match n.v {
        V::Seq(items) => items,
        V::Null => vec![],
        V::Scalar(..) => vec![n],
        V::Map(entries) => {
            // Mapping form (extra_hosts): `host: ip` → "host=ip".
            let mut out = Vec::new();
            for e in entries {
                match e.val.v {
                    V::Seq(ips) => {
                        for ip in ips {
                            let s = format!("{}={}", e.key, ip.scalar().unwrap_or(""));
                            out.push(Node::str(s, e.kmark.clone()));
                        }
                    }
                    V::Scalar(s, _) => {
                        out.push(Node::str(format!("{}={s}", e.key), e.kmark.clone()))
                    }
                    _ => out.push(Node::str(e.key, e.kmark)),
                }
            }
            out
        }
    }
}

fn seq_key(n: &Node) -> String {
    match &n.v {
        V::Scalar(s, _) => s.clone(),
        V::Map(_) => n
            .get("path")
            .and_then(|p| p.scalar())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

/// `["A=1", "B"]` or `{A: 1, B: null}` → mapping node.
fn kv_map(n: Node) -> Vec<Entry> {
    match n.v {
        V::Map(m) => m,
        V::Seq(items) => items
            .into_iter()
            .filter_map(|it| {
                let s = it.scalar()?.to_string();
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Node::str(v, it.mark.clone())),
                    None => (s.clone(), Node::new(V::Null, it.mark.clone())),
                };
                Some(Entry {
                    key: k,
                    kmark: it.mark,
                    val: v,
                })
            })
            .collect(),
        _ => vec![],
    }
}

fn merge_key_value(base: Node, over: Node) -> Node {
    let mark = over.mark.clone();
    let was_seq = matches!(base.v, V::Seq(_)) || matches!(over.v, V::Seq(_));
    let _ = was_seq;
    let mut entries = kv_map(base);
    for e in kv_map(over) {
        if let Some(x) = entries.iter_mut().find(|x| x.key == e.key) {
            x.val = e.val;
        } else {
            entries.push(e);
        }
    }
    Node::new(V::Map(entries), mark)
}

fn seq_to_map(n: Node, depends_default: bool) -> Node {
    match n.v {
        V::Seq(items) => {
            let entries = items
                .into_iter()
                .filter_map(|it| {
                    let k = it.scalar()?.to_string();
                    let val = if depends_default {
                        let m = it.mark.clone();
                        Node::map(
                            vec![
                                Entry {
                                    key: "condition".into(),
                                    kmark: m.clone(),
                                    val: Node::str("service_started", m.clone()),
                                },
                                Entry {
                                    key: "required".into(),
                                    kmark: m.clone(),
                                    val: Node::new(V::Scalar("true".into(), true), m.clone()),
                                },
                            ],
                            m,
                        )
                    } else {
                        Node::new(V::Null, it.mark.clone())
                    };
                    Some(Entry {
                        key: k,
                        kmark: it.mark,
                        val,
                    })
                })
                .collect();
            Node::new(V::Map(entries), n.mark)
        }
        _ => n,
    }
}

fn build_to_map(n: Node) -> Node {
    match &n.v {
        V::Scalar(s, _) => {
            let m = n.mark.clone();
            Node::map(
                vec![Entry {
                    key: "context".into(),
                    kmark: m.clone(),
                    val: Node::str(s.clone(), m.clone()),
                }],
                m,
            )
        }
        _ => n,
    }
}

/// Drop `!reset` values (they only mean "forget what was there") and clear `!override` tags.
pub fn strip_reset(n: &mut Node) {
    match &mut n.v {
        V::Map(m) => {
            m.retain(|e| e.val.tag.as_deref() != Some("reset"));
            for e in m {
                strip_reset(&mut e.val);
            }
        }
        V::Seq(items) => {
            items.retain(|e| e.tag.as_deref() != Some("reset"));
            for i in items {
                strip_reset(i);
            }
        }
        _ => {}
    }
    if n.tag.as_deref() == Some("override") {
        n.tag = None;
    }
}

/// compose-go's `EnforceUnicity`: later duplicates replace earlier ones in place.
pub fn enforce_unicity(root: &mut Node) {
    let Some(services) = root.get_mut("services").and_then(|s| s.as_map_mut()) else {
        return;
    };
    for svc in services {
        let Some(attrs) = svc.val.as_map_mut() else {
            continue;
        };
        for a in attrs {
            let indexer: fn(&Node) -> Option<String> = match a.key.as_str() {
                "cap_add" | "cap_drop" | "dns" | "dns_opt" | "dns_search" | "links"
                | "profiles" | "tmpfs" | "expose" => key_value_key,
                "ports" => port_key,
                "volumes" | "devices" => target_key,
                "secrets" => |n: &Node| mount_key(n, "/run/secrets"),
                "configs" => |n: &Node| mount_key(n, ""),
                _ => continue,
            };
            if let V::Seq(items) = &mut a.val.v {
                let mut out: Vec<Node> = Vec::new();
                let mut keys: Vec<Option<String>> = Vec::new();
                for it in items.drain(..) {
                    let k = indexer(&it);
                    if let Some(j) = k
                        .as_ref()
                        .and_then(|k| keys.iter().position(|x| x.as_ref() == Some(k)))
                    {
                        out[j] = it;
                    } else {
                        out.push(it);
                        keys.push(k);
                    }
                }
                *items = out;
            }
        }
    }
}

fn key_value_key(n: &Node) -> Option<String> {
    let s = n.scalar()?;
    Some(s.split_once('=').map(|(k, _)| k).unwrap_or(s).to_string())
}

fn port_key(n: &Node) -> Option<String> {
    match &n.v {
        V::Scalar(s, _) => Some(s.clone()),
        V::Map(_) => {
            let g = |k: &str, d: &str| n.get(k).and_then(|x| x.scalar()).unwrap_or(d).to_string();
            Some(format!(
                "{}:{}:{}/{}",
                g("host_ip", "0.0.0.0"),
                g("published", ""),
                g("target", ""),
                g("protocol", "tcp")
            ))
        }
        _ => None,
    }
}

fn target_key(n: &Node) -> Option<String> {
    match &n.v {
        V::Scalar(s, _) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(if parts.len() == 1 { parts[0] } else { parts[1] }.to_string())
        }
        V::Map(_) => n.get("target").and_then(|t| t.scalar()).map(String::from),
        _ => None,
    }
}

fn mount_key(n: &Node, default: &str) -> Option<String> {
    match &n.v {
        V::Scalar(s, _) => Some(format!("{default}/{s}")),
        V::Map(_) => match n.get("target").and_then(|t| t.scalar()) {
            Some(t) => Some(t.to_string()),
            None => Some(format!(
                "{default}/{}",
                n.get("source").and_then(|t| t.scalar()).unwrap_or("")
            )),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(s: &str) -> Node {
        super::super::yaml::parse(s, &Arc::from("t.yaml"))
            .unwrap()
            .unwrap()
    }
    fn m(a: &str, b: &str) -> Node {
        let mut n = merge(p(a), p(b)).unwrap();
        enforce_unicity(&mut n);
        n
    }
    fn emit(n: &Node) -> String {
        super::super::yaml::emit(n)
    }

    #[test]
    fn scalars_override_and_maps_merge() {
        let n = m(
            "services: {a: {image: x, environment: [A=1, B=2]}}",
            "services: {a: {image: y, environment: {B: 3, C: 4}}}",
        );
        let a = n.get("services").unwrap().get("a").unwrap();
        assert_eq!(a.get("image").unwrap().scalar(), Some("y"));
        let env = a.get("environment").unwrap();
        assert_eq!(env.get("A").unwrap().scalar(), Some("1"));
        assert_eq!(env.get("B").unwrap().scalar(), Some("3"));
        assert_eq!(env.get("C").unwrap().scalar(), Some("4"));
    }

    #[test]
    fn command_overrides_and_ports_are_unique() {
        let n = m(
            "services: {a: {command: [a, b], ports: ['80:80', '443:443'], cap_add: [X]}}",
            "services: {a: {command: [c], ports: ['80:80', '8080:80'], cap_add: [X, Y]}}",
        );
        let a = n.get("services").unwrap().get("a").unwrap();
        assert_eq!(emit(a.get("command").unwrap()), "- c\n");
        assert_eq!(
            emit(a.get("ports").unwrap()),
            "- \"80:80\"\n- \"443:443\"\n- \"8080:80\"\n"
        );
        assert_eq!(emit(a.get("cap_add").unwrap()), "- X\n- Y\n");
    }

    #[test]
    fn volumes_unique_by_target_and_depends_on_list_to_map() {
        let n = m(
            "services: {a: {volumes: ['./a:/data', 'v:/x'], depends_on: [db]}}",
            "services: {a: {volumes: ['./b:/data'], depends_on: {cache: {condition: service_healthy}}}}",
        );
        let a = n.get("services").unwrap().get("a").unwrap();
        assert_eq!(emit(a.get("volumes").unwrap()), "- ./b:/data\n- v:/x\n");
        let d = a.get("depends_on").unwrap();
        assert_eq!(
            d.get("db").unwrap().get("condition").unwrap().scalar(),
            Some("service_started")
        );
        assert!(d.get("cache").is_some());
    }

    #[test]
    fn reset_and_override_tags() {
        let n = m(
            "services: {a: {ports: ['80:80'], environment: {A: 1, B: 2}, image: x}}",
            "services: {a: {ports: !reset [], environment: !override {C: 3}}}",
        );
        let a = n.get("services").unwrap().get("a").unwrap();
        assert!(a.get("ports").is_none());
        let env = a.get("environment").unwrap();
        assert!(env.get("A").is_none());
        assert_eq!(env.get("C").unwrap().scalar(), Some("3"));
        assert_eq!(a.get("image").unwrap().scalar(), Some("x"));
    }

    #[test]
    fn logging_driver_change_replaces_options() {
        let n = m(
            "services: {a: {logging: {driver: json-file, options: {max-size: 1m}}}}",
            "services: {a: {logging: {driver: syslog, options: {tag: x}}}}",
        );
        let l = n
            .get("services")
            .unwrap()
            .get("a")
            .unwrap()
            .get("logging")
            .unwrap();
        assert!(l.get("options").unwrap().get("max-size").is_none());
        let n = m(
            "services: {a: {logging: {driver: json-file, options: {max-size: 1m}}}}",
            "services: {a: {logging: {options: {tag: x}}}}",
        );
        let l = n
            .get("services")
            .unwrap()
            .get("a")
            .unwrap()
            .get("logging")
            .unwrap();
        assert!(l.get("options").unwrap().get("max-size").is_some());
    }

    #[test]
    fn type_mismatch_is_an_error() {
        let e = merge(
            p("services: {a: {volumes: [x:/y]}}"),
            p("services: {a: {volumes: {}}}"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("services.a.volumes"), "{e}");
    }
}

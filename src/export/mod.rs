//! `berth export k8s` and `berth export swarm`: the loaded, normalised project translated for
//! a distributed engine. Pure: it works from `compose::Project` (profiles, overrides and
//! interpolation applied) and reads only the files the project names (configs).
//!
//! Nothing is dropped silently: every converter records the model paths it used, and
//! `leftovers` walks the service's serialised model for everything else, which is reported
//! once per service and field (`--strict` turns those reports into an error).

#[cfg(test)]
mod corpus_tests;
pub mod k8s;
pub mod lint;
pub mod swarm;

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::compose::yaml::{self, Entry, Mark, Node, V};

/// Standard base64 (RFC 4648, padded): Secret and ConfigMap `binaryData` values.
pub use berth_runtime::image::pull::b64encode as base64;

/// How serious a report line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The export cannot be correct: no output is written.
    Error,
    /// A Compose field the target has no meaning for: not exported (an error with `--strict`).
    Unmapped,
    /// Something the user must know (a rename, a wait, an image to push); not a loss.
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub level: Level,
    /// `None` for project-level fields (top-level `networks`, `volumes`, ...).
    pub service: Option<String>,
    /// The Compose key path, e.g. `deploy.update_config.delay`.
    pub field: String,
    pub msg: String,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lvl = match self.level {
            Level::Error => "error",
            Level::Unmapped => "unmapped",
            Level::Note => "note",
        };
        let path = match &self.service {
            Some(s) => format!("services.{s}.{}", self.field),
            None => self.field.clone(),
        };
        write!(f, "{lvl}: {path}: {}", self.msg)
    }
}

/// Everything an export has to say besides its output.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    fn push(&mut self, level: Level, service: Option<&str>, field: &str, msg: String) {
        let it = Item {
            level,
            service: service.map(str::to_string),
            field: field.to_string(),
            msg,
        };
        // Once per service and field.
        if !self
            .items
            .iter()
            .any(|x| x.level == it.level && x.service == it.service && x.field == it.field)
        {
            self.items.push(it);
        }
    }
    pub fn error(&mut self, service: Option<&str>, field: &str, msg: impl Into<String>) {
        self.push(Level::Error, service, field, msg.into())
    }
    pub fn unmapped(&mut self, service: Option<&str>, field: &str, msg: impl Into<String>) {
        self.push(Level::Unmapped, service, field, msg.into())
    }
    pub fn note(&mut self, service: Option<&str>, field: &str, msg: impl Into<String>) {
        self.push(Level::Note, service, field, msg.into())
    }
    pub fn count(&self, level: Level) -> usize {
        self.items.iter().filter(|i| i.level == level).count()
    }
    pub fn has(&self, level: Level) -> bool {
        self.count(level) > 0
    }
    #[cfg(test)]
    /// Does the report name this (service, field) at this level?
    pub fn names(&self, level: Level, service: Option<&str>, field: &str) -> bool {
        self.items
            .iter()
            .any(|i| i.level == level && i.service.as_deref() == service && i.field == field)
    }
}

/// The model paths a converter used (`deploy.replicas`, `ports.0`): a path covers itself and
/// everything under it.
#[derive(Debug, Default, Clone)]
pub struct Used(Vec<String>);

impl Used {
    pub fn add(&mut self, path: impl Into<String>) {
        self.0.push(path.into());
    }
    fn covers(&self, path: &str) -> bool {
        self.0.iter().any(|u| {
            path == u
                || (path.starts_with(u.as_str()) && path.as_bytes().get(u.len()) == Some(&b'.'))
        })
    }
    fn has_below(&self, path: &str) -> bool {
        let pre = format!("{path}.");
        path.is_empty() || self.0.iter().any(|u| u.starts_with(&pre))
    }
}

/// The paths of `value` (a serialised model object) that `used` does not cover: the
/// shallowest uncovered node under which nothing was used, so one line per lost field.
pub fn leftovers(value: &Value, used: &Used) -> Vec<String> {
    fn walk(v: &Value, path: &str, used: &Used, out: &mut Vec<String>) {
        if !path.is_empty() && used.covers(path) {
            return;
        }
        // An empty object or list sets nothing (the model's `volume: {}` defaults).
        match v {
            Value::Null => return,
            Value::Object(m) if m.is_empty() => return,
            Value::Array(a) if a.is_empty() => return,
            _ => {}
        }
        if !used.has_below(path) && !partly_mapped(path) {
            out.push(path.to_string());
            return;
        }
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| walk(c, &join(k), used, out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| walk(c, &join(&i.to_string()), used, out)),
            _ => out.push(path.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(value, "", used, &mut out);
    out
}

/// Objects of which some fields usually map and others not: a loss inside is named by its
/// own field (`deploy.resources.limits.pids`, not `deploy.resources`).
fn partly_mapped(path: &str) -> bool {
    const PARTLY: &[&str] = &[
        "deploy",
        "deploy.resources",
        "deploy.resources.limits",
        "deploy.resources.reservations",
        "deploy.update_config",
        "deploy.restart_policy",
        "healthcheck",
        "ports.*",
        "volumes.*",
        "secrets.*",
        "configs.*",
    ];
    let parts: Vec<&str> = path.split('.').collect();
    PARTLY.iter().any(|pat| {
        let pp: Vec<&str> = pat.split('.').collect();
        pp.len() == parts.len() && pp.iter().zip(&parts).all(|(a, b)| *a == "*" || a == b)
    })
}

/// A JSON value as a YAML node (strings quoted where YAML would retype them).
pub fn to_node(v: &Value) -> Node {
    let m = Mark::synthetic(&Arc::from("<export>"));
    let n = match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Scalar(b.to_string(), true),
        Value::Number(n) => V::Scalar(n.to_string(), true),
        Value::String(s) => V::Scalar(s.clone(), false),
        Value::Array(a) => V::Seq(a.iter().map(to_node).collect()),
        Value::Object(o) => V::Map(
            ordered(o)
                .into_iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    kmark: m.clone(),
                    val: to_node(v),
                })
                .collect(),
        ),
    };
    Node::new(n, m)
}

/// Keys as Kubernetes manifests are usually written: `apiVersion`, `kind`, `metadata`,
/// `name` first, then the rest in order.
fn ordered(o: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    const FIRST: [&str; 4] = ["apiVersion", "kind", "metadata", "name"];
    let mut v: Vec<(&String, &Value)> = o.iter().collect();
    v.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
    v
}

/// Several objects as one YAML stream (`---` between documents).
pub fn yaml_stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| yaml::emit(&to_node(d)))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leftovers_report_the_shallowest_unused_paths() {
        let v = json!({
            "image": "x",
            "deploy": {"replicas": 2, "update_config": {"parallelism": 1, "delay": "5s"}},
            "stop_signal": "SIGINT",
            "ports": [{"target": 80, "host_ip": "127.0.0.1"}]
        });
        let mut u = Used::default();
        u.add("image");
        u.add("deploy.replicas");
        u.add("deploy.update_config.parallelism");
        u.add("ports.0.target");
        assert_eq!(
            leftovers(&v, &u),
            [
                "deploy.update_config.delay",
                "ports.0.host_ip",
                "stop_signal"
            ]
        );
        // A used prefix covers everything under it, but not a sibling with a longer name.
        let mut u2 = Used::default();
        u2.add("deploy");
        u2.add("port");
        assert_eq!(leftovers(&v, &u2), ["image", "ports", "stop_signal"]);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn report_names_a_field_once() {
        let mut r = Report::default();
        r.unmapped(Some("web"), "stop_signal", "a");
        r.unmapped(Some("web"), "stop_signal", "b");
        r.unmapped(Some("db"), "stop_signal", "a");
        assert_eq!(r.count(Level::Unmapped), 2);
        assert_eq!(
            r.items[0].to_string(),
            "unmapped: services.web.stop_signal: a"
        );
    }

    #[test]
    fn yaml_quotes_strings_that_would_retype() {
        let s = yaml_stream(&[
            json!({"a": "80", "b": 80, "c": "yes", "d": true}),
            json!({"e": []}),
        ]);
        assert_eq!(s, "a: \"80\"\nb: 80\nc: \"yes\"\nd: true\n---\ne: []\n");
        let s = yaml_stream(&[
            json!({"spec": 1, "kind": "K", "apiVersion": "v1", "metadata": {"name": "web", "labels": {}}}),
        ]);
        assert_eq!(
            s,
            "apiVersion: v1\nkind: K\nmetadata:\n  name: web\n  labels: {}\nspec: 1\n"
        );
    }
}

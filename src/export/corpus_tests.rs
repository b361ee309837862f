//! Every stack of ../shared/compose-corpus that loads, the examples and compose-files, through
//! `export k8s`: berth's lint, then `kubernetes-validate --strict` for Kubernetes 1.30 and the
//! newest version the package ships. Also the Kompose comparison table of README.md
//! (`cargo test --bin berth export::corpus_tests -- --nocapture` prints it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::k8s::{export, Options};
use super::lint::lint;
use super::{swarm, Level};
use crate::compose::corpus_tests::{opts_for, yaml_files};
use crate::compose::load;

/// Kompose's loader (kubernetes/kompose pkg/loader/compose, compose-go): the service keys it
/// reads, and its `unsupportedKey` list (warned once per project, then ignored). Any other
/// key a file sets is ignored without a word.
const KOMPOSE_READS: &[&str] = &[
    "image",
    "working_dir",
    "labels",
    "cap_add",
    "cap_drop",
    "expose",
    "privileged",
    "user",
    "stdin_open",
    "tty",
    "tmpfs",
    "container_name",
    "entrypoint",
    "command",
    "hostname",
    "domainname",
    "secrets",
    "stop_grace_period",
    "networks",
    "mem_limit",
    "deploy",
    "restart",
    "healthcheck",
    "build",
    "environment",
    "ports",
    "volumes",
    "volumes_from",
    "configs",
    "group_add",
    "pid",
];
const KOMPOSE_WARNS: &[&str] = &[
    "cgroup_parent",
    "cpuset",
    "cpu_shares",
    "devices",
    "depends_on",
    "dns",
    "dns_search",
    "env_file",
    "external_links",
    "extra_hosts",
    "ipc",
    "logging",
    "mac_address",
    "memswap_limit",
    "network_mode",
    "security_opt",
    "shm_size",
    "stop_signal",
    "volume_driver",
    "uts",
    "read_only",
    "ulimits",
    "sysctls",
    "links",
];

#[derive(Default, Debug)]
struct Tally {
    fields: usize,
    kept: usize,
    reported: usize,
    silent: usize,
}

#[test]
fn corpus_exports_validate_strictly_for_1_30_and_the_newest_kubernetes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("../shared/compose-corpus");
    assert!(corpus.is_dir(), "../shared/compose-corpus missing");
    let mut files = yaml_files(&corpus);
    files.extend(yaml_files(&root.join("examples")));
    files.extend(yaml_files(&root.join("compose-files")));
    let out = tempfile::tempdir().unwrap();
    let o = Options {
        registry: Some("registry.example/berth".into()),
        ..Default::default()
    };
    let (mut loaded, mut exported, mut refused) = (0, 0, Vec::new());
    let mut written = Vec::new();
    let (mut kompose, mut berth) = (Tally::default(), Tally::default());
    let mut semantic: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut kompose_silent: BTreeMap<String, usize> = BTreeMap::new();
    let mut berth_reported: BTreeMap<String, usize> = BTreeMap::new();
    for (n, f) in files.iter().enumerate() {
        let Ok(p) = load(&opts_for(f, &[])) else {
            continue;
        };
        if crate::compose::graph::ServiceGraph::new(&p).is_err() {
            continue;
        }
        loaded += 1;
        let (docs, r) = export(&p, &o);
        // Swarm export of the same stack never panics and names its fields too.
        let _ = swarm::export(&p, &swarm::Options::default());

        // The comparison: each (service, top-level key) the file sets.
        for (k, s) in &p.services {
            let v = serde_json::to_value(s).unwrap();
            for key in v.as_object().unwrap().keys() {
                if key == "profiles" {
                    continue; // applied by the loader, for both
                }
                kompose.fields += 1;
                berth.fields += 1;
                if KOMPOSE_READS.contains(&key.as_str()) {
                    kompose.kept += 1;
                } else if KOMPOSE_WARNS.contains(&key.as_str()) {
                    kompose.reported += 1;
                } else {
                    kompose.silent += 1;
                    *kompose_silent.entry(key.clone()).or_default() += 1;
                }
                let named = r.items.iter().any(|i| {
                    i.level != Level::Note
                        && i.service.as_deref() == Some(k)
                        && (i.field == *key || i.field.starts_with(&format!("{key}.")))
                });
                if named {
                    berth.reported += 1;
                    *berth_reported.entry(key.clone()).or_default() += 1;
                } else {
                    berth.kept += 1;
                }
            }
        }
        if r.has(Level::Error) {
            // Bad input is refused per field, never exported half-right.
            for it in r.items.iter().filter(|i| i.level == Level::Error) {
                let ok = it.service.is_some()
                    && !it.field.is_empty()
                    && (it.field == "network_mode" || it.msg.starts_with("reading "));
                if !ok {
                    problems.push(format!("{}: unexpected export error: {it}", f.display()));
                }
            }
            refused.push(f.clone());
            continue;
        }
        exported += 1;
        // What each side makes of the stacks that export (Kompose: a Service only with
        // ports or expose, liveness only, no depends_on).
        for s in p.services.values() {
            semantic.entry("services").or_default().0 += 1;
            if !s.ports.is_empty() || !s.expose.is_empty() {
                semantic.entry("Service objects").or_default().0 += 1;
            }
            if s.healthcheck
                .as_ref()
                .is_some_and(|h| !h.disable && !h.test.is_empty() && h.test[0] != "NONE")
            {
                semantic.entry("healthchecks").or_default().0 += 1;
            }
            semantic.entry("depends_on edges").or_default().0 += s.depends_on.len();
        }
        for e in lint(&docs) {
            problems.push(format!("{}: lint: {e}", f.display()));
        }
        for d in &docs {
            let k = d["kind"].as_str().unwrap_or("");
            if k == "Service" {
                semantic.entry("Service objects").or_default().1 += 1;
            }
            if let Some(cs) = d["spec"]["template"]["spec"]["containers"].as_array() {
                for c in cs {
                    if c["readinessProbe"].is_object() {
                        semantic.entry("readinessProbes").or_default().1 += 1;
                    }
                }
            }
            if let Some(ic) = d["spec"]["template"]["spec"]["initContainers"].as_array() {
                semantic.entry("wait init containers").or_default().1 += ic.len();
            }
        }
        let path = out.path().join(format!("{n}.yaml"));
        std::fs::write(&path, super::yaml_stream(&docs)).unwrap();
        written.push(path);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(loaded >= 140, "only {loaded} stacks loaded");
    assert!(
        exported >= 135,
        "only {exported} stacks exported; refused: {refused:#?}"
    );
    assert!(refused.len() <= 6, "refused: {refused:#?}");

    // The schema check, strict, for the oldest version we target and the newest shipped.
    let script = root.join("tests/export/k8s_validate.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg("1.30,latest")
        .args(&written)
        .output()
        .expect("running python3 (kubernetes-validate must be installed: see .ci/run)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_ne!(
        run.status.code(),
        Some(2),
        "kubernetes-validate is not installed (pip install kubernetes-validate): {stderr}"
    );
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let docs: usize = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("validated "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(docs >= 400, "{stdout}");

    let keys: BTreeSet<&str> = KOMPOSE_READS.iter().chain(KOMPOSE_WARNS).copied().collect();
    assert_eq!(keys.len(), KOMPOSE_READS.len() + KOMPOSE_WARNS.len());
    eprintln!(
        "stacks: {loaded} load, {exported} exported, {} refused per field",
        refused.len()
    );
    eprintln!("{stdout}");
    eprintln!(
        "| service fields set (service × key): {} | Kompose | berth |",
        berth.fields
    );
    eprintln!("| kept (mapped) | {} | {} |", kompose.kept, berth.kept);
    eprintln!("| reported | {} | {} |", kompose.reported, berth.reported);
    eprintln!(
        "| dropped silently | {} | {} |",
        kompose.silent, berth.silent
    );
    eprintln!("Kompose silent: {kompose_silent:?}");
    eprintln!("berth reported: {berth_reported:?}");
    for (k, (a, b)) in &semantic {
        eprintln!("| {k} | {a} | {b} |");
    }
}

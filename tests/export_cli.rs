//! `berth export k8s|swarm` from the command line: output on stdout or in files, the report
//! on stderr, exit codes, `--strict`, bad input. No root needed.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn berth(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const STACK: &str = r#"
name: shop
services:
  web:
    image: nginx:1.27
    ports: ["8080:80"]
    stop_signal: SIGQUIT
    depends_on: [api]
  api:
    image: registry.example/shop/api:2
    expose: ["9000"]
    secrets: [token]
secrets:
  token: {file: ./token.txt}
"#;

#[test]
fn export_k8s_writes_manifests_and_reports_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), STACK).unwrap();
    std::fs::write(dir.path().join("token.txt"), "t0ken").unwrap();
    let o = berth(dir.path(), &["export", "k8s"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.starts_with("apiVersion: v1\nkind: Secret\n"), "{out}");
    assert!(
        out.contains("\n---\napiVersion: apps/v1\nkind: Deployment\n"),
        "{out}"
    );
    assert!(out.contains("name: wait-for-api"), "{out}");
    // The report: on stderr only, one line per service and field.
    assert!(
        err.contains("unmapped: services.web.stop_signal: "),
        "{err}"
    );
    assert_eq!(err.matches("services.web.stop_signal").count(), 1, "{err}");
    assert!(!out.contains("unmapped"));

    // -o DIR: one file per object, private (a Secret's data is in there).
    let o = berth(
        dir.path(),
        &["export", "k8s", "-o", "out", "--namespace", "shop"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "deployment-api.yaml",
            "deployment-web.yaml",
            "namespace-shop.yaml",
            "secret-token.yaml",
            "service-api.yaml",
            "service-web.yaml"
        ]
    );
    let mode = std::fs::metadata(dir.path().join("out/secret-token.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // --strict: the unmapped field is an error, nothing is written.
    let o = berth(dir.path(), &["export", "k8s", "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        text(&o.stderr).contains("--strict: 1 field(s)"),
        "{}",
        text(&o.stderr)
    );

    // A service selection brings its dependencies along.
    let o = berth(dir.path(), &["export", "k8s", "api"]);
    assert!(o.status.success());
    assert!(!text(&o.stdout).contains("name: web\n"));
}

#[test]
fn bad_input_fails_per_field_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  app: {build: .}\n  host: {image: nginx, network_mode: host}\n",
    )
    .unwrap();
    let o = berth(dir.path(), &["export", "k8s"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty());
    assert!(
        err.contains("error: services.app.build: no image name"),
        "{err}"
    );
    assert!(
        err.contains("error: services.host.network_mode: \"host\""),
        "{err}"
    );
    // With a registry the built image has a name the cluster can pull.
    let o = berth(
        dir.path(),
        &["export", "k8s", "--registry", "reg.example/team", "app"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("image: reg.example/team/"));

    // Any other first word is compose's `export SERVICE` (a container's filesystem).
    let o = berth(dir.path(), &["export", "nomad"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr)
            .contains("export nomad: not a container of this project (or give `k8s` or `swarm`)"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn export_swarm_writes_a_stack_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), STACK).unwrap();
    std::fs::write(dir.path().join("token.txt"), "t0ken").unwrap();
    let o = berth(dir.path(), &["export", "swarm", "-o", "stack.yml"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let stack = std::fs::read_to_string(dir.path().join("stack.yml")).unwrap();
    assert!(stack.contains("version: \"3.9\""), "{stack}");
    assert!(!stack.contains("depends_on"), "{stack}");
    assert!(err.contains("unmapped: services.web.depends_on: "), "{err}");
    assert!(o.stdout.is_empty());
}

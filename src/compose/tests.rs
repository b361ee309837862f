//! Loader behaviour: discovery, project names, .env, interpolation, merge, extends, include,
//! profiles, every short syntax, and every error class (message, line and key path).

use std::collections::HashMap;
use std::path::PathBuf;

use super::corpus_tests::{corpus, opts_for};
use super::model::*;
use super::{load, LoadError};

/// A temp project: files written relative to its root.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let d = Dir(tempfile::tempdir().unwrap());
        for (p, c) in files {
            let path = d.0.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        d
    }
    fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
    fn opts(&self) -> LoadOptions {
        LoadOptions {
            interpolate: true,
            working_dir: self.path(),
            environment: [("HOME".to_string(), "/home/u".to_string())].into(),
            resolve_env_files: true,
            ..Default::default()
        }
    }
    fn load(&self) -> Result<Project, LoadError> {
        load(&self.opts())
    }
}

fn one(yaml: &str) -> Result<Project, LoadError> {
    Dir::new(&[("compose.yaml", yaml)]).load()
}

fn svc(yaml: &str) -> Service {
    let mut p = one(yaml).unwrap_or_else(|e| panic!("{e}"));
    p.services.shift_remove("w").expect("service w")
}

/// Assert an error: message fragment, line, and key path.
fn err(yaml: &str, line: usize, path: &str, msg: &str) {
    let e = one(yaml).expect_err("must fail");
    assert_eq!(e.path(), Some(path), "{e}");
    assert_eq!(e.position().map(|p| p.0), Some(line), "{e}");
    assert!(e.to_string().contains(msg), "{e}");
    assert!(e.to_string().contains("compose.yaml:"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Discovery and project names

#[test]
fn discovery_walks_up_and_reads_override() {
    let d = Dir::new(&[
        ("compose.yaml", "services: {web: {image: a}}"),
        ("compose.override.yaml", "services: {web: {image: b}}"),
        ("sub/deeper/.keep", ""),
    ]);
    let mut o = d.opts();
    o.working_dir = d.path().join("sub/deeper");
    let p = load(&o).unwrap();
    assert_eq!(p.services["web"].image.as_deref(), Some("b"));
    assert_eq!(p.config_files.len(), 2);
    assert_eq!(p.working_dir, d.path());
    let d = Dir::new(&[("docker-compose.yml", "services: {web: {image: a}}")]);
    assert!(d.load().is_ok());
    let d = Dir::new(&[("x.txt", "")]);
    assert!(d
        .load()
        .unwrap_err()
        .to_string()
        .contains("no configuration file provided"));
}

#[test]
fn project_name_rules() {
    let base = corpus().join("compose-go/cli/testdata/simple/compose.yaml");
    let mut o = opts_for(&base, &[]);
    assert_eq!(load(&o).unwrap().name, "simple");
    o.project_name = Some("my_project".into());
    assert_eq!(load(&o).unwrap().name, "my_project");
    o.project_name = Some("42my_project_num".into());
    assert_eq!(load(&o).unwrap().name, "42my_project_num");
    for bad in ["-my_project", "_my_project", "www.my.project", "MY_PROJECT"] {
        o.project_name = Some(bad.into());
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains(&format!("invalid project name {bad:?}")), "{e}");
        let mut o2 = opts_for(&base, &[("COMPOSE_PROJECT_NAME", bad)]);
        o2.project_name = None;
        assert!(load(&o2).is_err());
    }
    let unnorm = corpus().join("compose-go/cli/testdata/UNNORMALIZED PATH/compose.yaml");
    assert_eq!(
        load(&opts_for(&unnorm, &[])).unwrap().name,
        "unnormalizedpath"
    );
    let envd = corpus().join("compose-go/cli/testdata/env-file/compose-with-env-file.yaml");
    assert_eq!(
        load(&opts_for(&envd, &[])).unwrap().name,
        "my_project_from_dot_env"
    );
    let named = corpus().join("compose-go/cli/testdata/simple/compose-name.yaml");
    assert_eq!(
        load(&opts_for(&named, &[("TEST", "expected")]))
            .unwrap()
            .name,
        "test-expected-test"
    );
    // cwd "/" with stdin: no name to derive.
    let mut o = opts_for(&base, &[]);
    o.files = vec![PathBuf::from("-")];
    o.stdin = Some("services: {a: {image: x}}".into());
    o.working_dir = PathBuf::from("/");
    assert_eq!(
        load(&o).unwrap_err().to_string(),
        "project name must not be empty"
    );
}

#[test]
fn cli_testdata_overrides_variables_and_env_files() {
    let dir = corpus().join("compose-go/cli/testdata");
    let mut o = opts_for(&dir.join("simple/compose.yaml"), &[]);
    o.files.push(dir.join("simple/compose-with-overrides.yaml"));
    assert_eq!(
        load(&o).unwrap().services["simple"].image.as_deref(),
        Some("haproxy")
    );
    let mut o = opts_for(&dir.join("simple/compose-with-variables.yaml"), &[]);
    o.env_files = vec![];
    let d = Dir::new(&[(".env", "PUBLIC_PORT=8000\n")]);
    o.env_files = vec![d.path().join(".env")];
    let p = load(&o).unwrap();
    let s = p.services.values().next().unwrap();
    assert_eq!(s.ports[0].published.as_deref(), Some("8000"));
    let envdir = dir.join("env-file");
    let mut o = opts_for(&envdir.join("compose-with-env-files.yaml"), &[]);
    o.env_files = vec![envdir.join(".env"), envdir.join("override.env")];
    let p = load(&o).unwrap();
    let s = &p.services["simple"];
    assert_eq!(s.ports[0].published.as_deref(), Some("9000"));
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("`version` is obsolete")));
}

#[test]
fn dotenv_sets_compose_file_and_profiles_in_two_passes() {
    let dir = corpus().join("docker-compose-e2e/dotenv");
    let mut o = opts_for(&dir.join("x"), &[]);
    o.files = vec![];
    o.working_dir = dir.clone();
    let p = load(&o).unwrap();
    let images: Vec<_> = p
        .services
        .values()
        .filter_map(|s| s.image.clone())
        .collect();
    assert!(images.contains(&"test:latest".to_string()), "{images:?}");
    assert!(
        images.contains(&"enabled:profile".to_string()),
        "{images:?}"
    );
    o.project_directory = Some(dir.join("development"));
    let p = load(&o).unwrap();
    let images: Vec<_> = p
        .services
        .values()
        .filter_map(|s| s.image.clone())
        .collect();
    assert!(images.contains(&"backend:latest".to_string()), "{images:?}");
}

#[test]
fn nested_dotenv_cwd_wins_over_project_dir() {
    let dir = corpus().join("docker-compose-e2e/nested");
    let mut o = opts_for(&dir.join("x"), &[]);
    o.files = vec![];
    o.working_dir = dir.join("sub");
    let p = load(&o).unwrap();
    assert_eq!(p.environment.get("WIN").map(String::as_str), Some("sub"));
    o.working_dir = dir.clone();
    let p = load(&o).unwrap();
    assert_eq!(p.environment.get("WIN").map(String::as_str), Some("root"));
}

// ---------------------------------------------------------------------------------------------
// Interpolation

#[test]
fn interpolation_env_beats_dotenv_and_warns_on_unset() {
    let d = Dir::new(&[
        (".env", "TAG=fromdotenv\nPORT=8080\n"),
        (
            "compose.yaml",
            "services:\n  web:\n    image: \"nginx:${TAG}\"\n    ports: [\"${PORT}:80\"]\n    environment: {X: \"${MISSING}\", Y: \"$${LITERAL}\", Z: \"${D:-dflt}\"}\n",
        ),
    ]);
    let mut o = d.opts();
    o.environment.insert("TAG".into(), "fromenv".into());
    let p = load(&o).unwrap();
    let s = &p.services["web"];
    assert_eq!(s.image.as_deref(), Some("nginx:fromenv"));
    assert_eq!(s.ports[0].published.as_deref(), Some("8080"));
    assert_eq!(s.environment["X"].as_deref(), Some(""));
    assert_eq!(s.environment["Y"].as_deref(), Some("${LITERAL}"));
    assert_eq!(s.environment["Z"].as_deref(), Some("dflt"));
    assert_eq!(
        p.warnings,
        vec!["The \"MISSING\" variable is not set. Defaulting to a blank string.".to_string()]
    );
    let d = Dir::new(&[("compose.yaml", "services: {web: {image: \"nginx:${TAG}\"}}")]);
    let mut o = d.opts();
    o.interpolate = false;
    let p = load(&o).unwrap();
    assert_eq!(p.services["web"].image.as_deref(), Some("nginx:${TAG}"));
    assert!(p.warnings.is_empty());
}

#[test]
fn interpolation_required_error_has_position_and_path() {
    err(
        "services:\n  web:\n    image: \"${IMG:?set IMG}\"\n",
        3,
        "services.web.image",
        "required variable IMG is missing a value: set IMG",
    );
    err(
        "services:\n  web:\n    image: \"${IMG\"\n",
        3,
        "services.web.image",
        "Invalid template",
    );
}

#[test]
fn typed_fields_accept_interpolated_values() {
    let f = corpus().join("compose-go/schema/using-variables.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    // One variable per line, valued by what the key on that line expects.
    let mut env: Vec<(String, String)> = Vec::new();
    let mut lines = Vec::new();
    let mut parent = String::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if !line.contains("${VARIABLE}") {
            if t.ends_with(':') {
                parent = t.trim_end_matches(':').to_string();
            }
            lines.push(line.to_string());
            continue;
        }
        let key = if t.starts_with("- ${") {
            format!("list:{parent}")
        } else {
            t.trim_start_matches("- ")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string()
        };
        let v = match key.as_str() {
            "delay" | "monitor" | "window" | "interval" | "timeout" | "start_period"
            | "start_interval" | "stop_grace_period" => "10s",
            "max_failure_ratio" | "cpus" => "0.5",
            "privileged" | "read_only" | "stdin_open" | "tty" | "init" | "external"
            | "internal" | "attachable" | "enable_ipv6" | "disable" | "nocopy" | "required"
            | "oom_kill_disable" => "true",
            "restart" => "always",
            "condition" => "on-failure",
            "ipv4_address" => "10.0.0.1",
            "subnet" => "10.0.0.0/24",
            "order" => "start-first",
            "test" => "true",
            "list:extra_hosts" => "h:1.2.3.4",
            "list:ports" | "list:expose" => "80",
            "list:tmpfs" | "list:volumes" | "target" => "/t",
            "memory" | "size" => "1m",
            "mode" if parent.is_empty() => "1",
            "image"
            | "hostname"
            | "mac_address"
            | "ipv6_address"
            | "name"
            | "spread"
            | "failure_action"
            | "endpoint_mode"
            | "kind"
            | "source"
            | "uid"
            | "gid"
            | "driver"
            | "gateway"
            | "ip_range"
            | "user"
            | "stop_signal"
            | "host1"
            | "list:aliases"
            | "list:external_links"
            | "list:dns" => "x",
            _ => "1",
        };
        if t.ends_with(':') {
            parent = t.trim_end_matches(':').to_string();
        }
        let name = format!("V{n}");
        lines.push(line.replace("${VARIABLE}", &format!("${{{name}}}")));
        env.push((name, v.to_string()));
    }
    let d = Dir::new(&[("compose.yaml", &lines.join("\n"))]);
    let f = d.path().join("compose.yaml");
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    // Every value casts; the file's references (secret "x", some-network) are undefined
    // on purpose upstream (it is a schema fixture), so loading stops at the reference check.
    let e = load(&opts_for(&f, &env_ref)).unwrap_err().to_string();
    assert!(e.contains("undefined"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Merge, extends, include, profiles

#[test]
fn multiple_files_merge_with_compose_rules() {
    let d = Dir::new(&[
        (
            "a.yaml",
            "services:\n  web:\n    image: a\n    command: [x, y]\n    ports: ['80:80']\n    environment: [A=1]\n    volumes: ['./a:/data']\n",
        ),
        (
            "b.yaml",
            "services:\n  web:\n    command: z\n    ports: ['443:443']\n    environment: {B: '2'}\n    volumes: ['./b:/data']\n",
        ),
    ]);
    let mut o = d.opts();
    o.files = vec!["a.yaml".into(), "b.yaml".into()];
    let p = load(&o).unwrap();
    let s = &p.services["web"];
    assert_eq!(s.command, Some(vec!["z".to_string()]));
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.environment.len(), 2);
    assert_eq!(s.volumes.len(), 1);
    assert!(s.volumes[0].source.as_ref().unwrap().ends_with("/b"));
}

#[test]
fn extends_corpus_cases() {
    let dir = corpus().join("compose-go/loader/testdata/extends");
    // Upstream loads base.yaml without consistency checks (`with-port` has no image).
    assert!(load(&opts_for(&dir.join("base.yaml"), &[]))
        .unwrap_err()
        .to_string()
        .contains("neither an image nor a build context"));
    let p = super::load::load_unchecked(&opts_for(&dir.join("base.yaml"), &[])).unwrap();
    assert_eq!(p.services["another"].image.as_deref(), Some("base"));
    assert!(p.services.contains_key("nil"));
    let wb = &p.services["with-build"];
    assert_eq!(
        wb.build.as_ref().unwrap().context.as_deref(),
        Some(dir.to_str().unwrap())
    );
    let p = load(&opts_for(&dir.join("reset.yaml"), &[])).unwrap();
    assert_eq!(p.services["base"].command, None);
    assert_eq!(p.services["base"].image.as_deref(), Some("alpine:latest"));
    let p = load(&opts_for(&dir.join("nested.yaml"), &[])).unwrap();
    assert!(!p.services.is_empty());
    let p = load(&opts_for(&dir.join("withdir/compose.yaml"), &[])).unwrap();
    for s in p.services.values() {
        if let Some(b) = &s.build {
            assert!(
                b.context.as_ref().unwrap().contains("/withdir/dir"),
                "{:?}",
                b.context
            );
        }
    }
    // Extending from another file does not import what the base refers to.
    let d = Dir::new(&[(
        "compose.yaml",
        &format!(
            "services:\n  bar:\n    extends:\n      file: {}\n      service: with_depends_on\n",
            dir.join("depends_on.yaml").display()
        ),
    )]);
    let e = d.load().unwrap_err().to_string();
    assert!(
        e.contains("service \"bar\" depends on undefined service \"zot\""),
        "{e}"
    );
    let d = Dir::new(&[(
        "compose.yaml",
        &format!(
            "services:\n  bar:\n    extends:\n      file: {}\n      service: with_depends_on\n  zot:\n    image: z\n",
            dir.join("depends_on.yaml").display()
        ),
    )]);
    assert!(d.load().is_ok());
}

#[test]
fn extends_chain_ports_and_interpolation() {
    let d = Dir::new(&[
        (
            "base.yaml",
            "services:\n  root: {image: \"img:${TAG}\", ports: ['80:80'], environment: {A: '1'}}\n  mid: {extends: root, environment: {B: '2'}}\n",
        ),
        (
            "compose.yaml",
            "services:\n  top:\n    extends: {file: base.yaml, service: mid}\n    ports: ['80:80', '81:81']\n    environment: {C: '3'}\n",
        ),
    ]);
    let mut o = d.opts();
    o.environment.insert("TAG".into(), "v1".into());
    let p = load(&o).unwrap();
    let s = &p.services["top"];
    assert_eq!(s.image.as_deref(), Some("img:v1"));
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.environment.len(), 3);
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  a: {extends: b}\n  b: {extends: a}\n",
    )]);
    assert!(d.load().unwrap_err().to_string().contains("circular"));
    let d = Dir::new(&[("compose.yaml", "services:\n  a: {extends: nope}\n")]);
    assert!(d
        .load()
        .unwrap_err()
        .to_string()
        .contains("service not found"));
}

#[test]
fn include_corpus_cases() {
    let dir = corpus().join("compose-go/loader/testdata");
    let p = load(&opts_for(&dir.join("include/compose.yaml"), &[])).unwrap();
    let s = &p.services["included"];
    assert_eq!(
        s.build.as_ref().unwrap().context.as_deref(),
        Some(dir.join("include").to_str().unwrap())
    );
    assert_eq!(
        s.volumes[0].source.as_deref(),
        Some(dir.join("include").to_str().unwrap())
    );
    let p = load(&opts_for(&dir.join("compose-include.yaml"), &[])).unwrap();
    assert!(p.services.contains_key("bar"));
    assert!(p.services.len() >= 2);
    let e = load(&opts_for(&dir.join("compose-include-cycle.yaml"), &[]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("include cycle detected"), "{e}");
    let p = load(&opts_for(&dir.join("include/project-directory.yaml"), &[]));
    assert!(p.is_ok(), "{}", p.unwrap_err());
}

#[test]
fn include_conflicts_are_errors() {
    let d = Dir::new(&[
        ("inc.yaml", "services: {web: {image: a}}"),
        (
            "compose.yaml",
            "include: [inc.yaml]\nservices: {web: {image: b}}",
        ),
    ]);
    let e = d.load().unwrap_err().to_string();
    assert!(e.contains("conflicts"), "{e}");
}

#[test]
fn profiles_enable_services() {
    let y = "services:\n  web: {image: a}\n  debug: {image: b, profiles: [dev]}\n  tool: {image: c, profiles: [ops], depends_on: [helper]}\n  helper: {image: d, profiles: [ops]}\n";
    let d = Dir::new(&[("compose.yaml", y)]);
    let p = d.load().unwrap();
    assert_eq!(p.services.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(p.all_profiles(), ["dev", "ops"]);
    let mut o = d.opts();
    o.profiles = vec!["dev".into()];
    assert_eq!(load(&o).unwrap().services.len(), 2);
    let mut o = d.opts();
    o.services = vec!["tool".into()];
    let p = load(&o).unwrap();
    assert!(p.services.contains_key("tool") && p.services.contains_key("helper"));
    let mut o = d.opts();
    o.environment
        .insert("COMPOSE_PROFILES".into(), "dev,ops".into());
    assert_eq!(load(&o).unwrap().services.len(), 4);
    let mut o = d.opts();
    o.profiles = vec!["*".into()];
    assert_eq!(load(&o).unwrap().services.len(), 4);
    // An enabled service depending on a disabled one is an error.
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  web: {image: a, depends_on: [db]}\n  db: {image: b, profiles: [x]}\n",
    )]);
    assert!(d.load().unwrap_err().to_string().contains("disabled"));
}

#[test]
fn env_file_resolution_is_lazy_per_service() {
    let dir = corpus().join("docker-compose-e2e/env_file");
    let f = super::corpus_tests::yaml_files(&dir)[0].clone();
    let mut o = opts_for(&f, &[]);
    o.services = vec!["serviceA".into()];
    assert!(load(&o).is_ok());
    o.services = vec!["serviceB".into()];
    let e = load(&o).unwrap_err().to_string();
    assert!(e.contains("env file /doesnotexist/.env not found"), "{e}");
    o.resolve_env_files = false;
    assert!(load(&o).is_ok());
}

#[test]
fn env_file_merges_under_environment() {
    let d = Dir::new(&[
        ("a.env", "A=from_file\nB=from_file\n"),
        (
            "compose.yaml",
            "services:\n  web:\n    image: x\n    env_file:\n      - a.env\n      - path: missing.env\n        required: false\n    environment: {B: from_env}\n",
        ),
    ]);
    let p = d.load().unwrap();
    let s = &p.services["web"];
    assert_eq!(s.environment["A"].as_deref(), Some("from_file"));
    assert_eq!(s.environment["B"].as_deref(), Some("from_env"));
    // Resolved into environment: compose drops env_file from the model then.
    assert!(s.env_file.is_empty());
    let mut o = d.opts();
    o.resolve_env_files = false;
    let p = load(&o).unwrap();
    assert!(!p.services["web"].env_file[1].required);
    assert_eq!(p.services["web"].environment.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Short syntax → long form

#[test]
fn short_syntax_ports_volumes_environment() {
    let s = svc("services:\n  w:\n    image: x\n    ports: [80, '8080:80/udp', '127.0.0.1:9000-9001:9000-9001', {target: 22, published: 2222}]\n    volumes: ['data:/data:ro', './src:/src:rw,z', '~/cfg:/cfg', '/anon', {type: tmpfs, target: /t, tmpfs: {size: 64m, mode: 01777}}]\n    environment: [A=1, B, C=]\nvolumes: {data: {}}\n");
    assert_eq!(s.ports.len(), 5);
    assert_eq!(s.ports[1].protocol, "udp");
    assert_eq!(s.ports[3].published.as_deref(), Some("9001"));
    assert_eq!(s.ports[4].published.as_deref(), Some("2222"));
    assert_eq!(s.volumes[0].kind, "volume");
    assert!(s.volumes[0].read_only);
    assert_eq!(s.volumes[1].kind, "bind");
    assert!(s.volumes[1].source.as_ref().unwrap().starts_with('/'));
    assert_eq!(
        s.volumes[1].bind.as_ref().unwrap().selinux.as_deref(),
        Some("z")
    );
    assert_eq!(s.volumes[2].source.as_deref(), Some("/home/u/cfg"));
    assert_eq!(s.volumes[3].source, None);
    let t = s.volumes[4].tmpfs.as_ref().unwrap();
    assert_eq!(t.size, Some(64 << 20));
    assert_eq!(t.mode, Some(0o1777));
    assert_eq!(s.environment["A"].as_deref(), Some("1"));
    assert_eq!(s.environment["B"], None);
    assert_eq!(s.environment["C"].as_deref(), Some(""));
}

#[test]
fn short_syntax_commands_healthcheck_depends_on() {
    let s = svc("services:\n  w:\n    image: x\n    command: echo \"hello world\" 'a b'\n    entrypoint: [/bin/sh, -c]\n    healthcheck: {test: curl -f http://localhost, interval: 1m30s, timeout: 500ms, retries: 3, start_period: 1h}\n    depends_on: [db]\n    stop_grace_period: 1m\n  db: {image: y}\n");
    assert_eq!(
        s.command,
        Some(vec!["echo".into(), "hello world".into(), "a b".into()])
    );
    assert_eq!(s.entrypoint.as_ref().unwrap().len(), 2);
    let h = s.healthcheck.unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost"]);
    assert_eq!(h.interval.unwrap().to_string(), "1m30s");
    assert_eq!(h.timeout.unwrap().to_string(), "500ms");
    assert_eq!(h.start_period.unwrap().to_string(), "1h0m0s");
    assert_eq!(h.retries, Some(3));
    assert_eq!(s.depends_on["db"], DependsOn::default());
    assert_eq!(s.stop_grace_period.unwrap().to_string(), "1m0s");
}

#[test]
fn short_syntax_networks_secrets_misc() {
    let p = one("services:\n  w:\n    image: x\n    networks:\n      front: {aliases: [web], ipv4_address: 10.0.0.5}\n      back:\n    secrets: [s1, {source: s2, target: /x, mode: 0440, uid: '1'}]\n    configs: [c1]\n    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 65535}\n    sysctls: [net.core.somaxconn=1024]\n    labels: [a=b, c]\n    extra_hosts: ['h1:1.2.3.4', 'h2=::1']\n    devices: ['/dev/fuse', '/dev/a:/dev/b:r']\n    tmpfs: /run\n    mem_limit: 512m\n    shm_size: 1g\n    cpus: 0.5\n    deploy: {replicas: 3, resources: {limits: {memory: 512m, cpus: '0.5'}}, restart_policy: {condition: on-failure, max_attempts: 2, delay: 5s}, update_config: {parallelism: 1, order: start-first, delay: 10s}}\nnetworks: {front: {}, back: {}}\nsecrets: {s1: {file: ./s1}, s2: {environment: X}}\nconfigs: {c1: {content: hi}}\n").unwrap();
    let s = &p.services["w"];
    let front = s.networks["front"].as_ref().unwrap();
    assert_eq!(front.aliases, ["web"]);
    assert_eq!(front.ipv4_address.as_deref(), Some("10.0.0.5"));
    assert_eq!(s.networks["back"], None);
    assert!(!p.networks.contains_key("default"));
    assert_eq!(s.secrets[1].mode, Some(0o440));
    assert_eq!(s.ulimits["nofile"].limits(), (1024, 2048));
    assert_eq!(s.ulimits["nproc"].limits(), (65535, 65535));
    assert_eq!(s.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(s.labels["c"], "");
    assert_eq!(s.extra_hosts.as_list(":"), ["h1:1.2.3.4", "h2:::1"]);
    assert_eq!(s.devices[1].permissions.as_deref(), Some("r"));
    assert_eq!(s.tmpfs, ["/run"]);
    assert_eq!(s.mem_limit, Some(512 << 20));
    assert_eq!(s.shm_size, Some(1 << 30));
    assert_eq!(s.cpus, Some(0.5));
    let d = s.deploy.as_ref().unwrap();
    assert_eq!(s.replicas(), 3);
    assert_eq!(d.resources.limits.as_ref().unwrap().memory, Some(512 << 20));
    assert_eq!(d.restart_policy.as_ref().unwrap().max_attempts, Some(2));
    assert_eq!(
        d.update_config.as_ref().unwrap().order.as_deref(),
        Some("start-first")
    );
    assert!(p.secrets["s1"].file.as_ref().unwrap().is_absolute());
    assert_eq!(p.networks["front"].name, format!("{}_front", p.name));
}

#[test]
fn default_network_and_names() {
    let p = one("name: demo\nservices:\n  a: {image: x}\n  b: {image: y, network_mode: host}\n  c: {image: z, networks: [ext, named], volumes: ['v:/v', 'e:/e']}\nnetworks: {ext: {external: true}, named: {name: custom}, unused: {}}\nvolumes: {v: {}, e: {external: true}, unused: {}}\n").unwrap();
    // Unused resources are dropped, as docker compose does.
    assert!(!p.networks.contains_key("unused") && !p.volumes.contains_key("unused"));
    assert_eq!(p.name, "demo");
    assert_eq!(
        p.services["a"].networks.keys().collect::<Vec<_>>(),
        ["default"]
    );
    assert!(p.services["b"].networks.is_empty());
    assert_eq!(p.networks["default"].name, "demo_default");
    assert_eq!(p.networks["ext"].name, "ext");
    assert_eq!(p.networks["named"].name, "custom");
    assert_eq!(p.volumes["v"].name, "demo_v");
    assert_eq!(p.volumes["e"].name, "e");
}

#[test]
fn yaml_anchors_merge_keys_and_extensions() {
    let s = svc("x-common: &common\n  image: base\n  environment: {A: '1'}\nservices:\n  w:\n    <<: *common\n    x-private: yes\n    command: run\n");
    assert_eq!(s.image.as_deref(), Some("base"));
    assert_eq!(s.environment["A"].as_deref(), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// Error classes

#[test]
fn error_unknown_key_with_suggestion() {
    err(
        "services:\n  web:\n    image: x\n    enviroment: {A: 1}\n",
        4,
        "services.web.enviroment",
        "did you mean \"environment\"",
    );
    err("servics: {}\n", 1, "servics", "did you mean \"services\"");
    let f = corpus().join("docker-compose-e2e/wrong-composefile/compose.yaml");
    let e = load(&opts_for(&f, &[])).unwrap_err();
    assert_eq!(e.path(), Some("services.simple.wrongField"));
    assert_eq!(e.position(), Some((4, 5)));
}

#[test]
fn error_wrong_types() {
    err(
        "services:\n  web:\n    image: [a]\n",
        3,
        "services.web.image",
        "must be a string",
    );
    err(
        "services:\n  web:\n    image: x\n    privileged: maybe\n",
        4,
        "services.web.privileged",
        "must be a boolean",
    );
    err(
        "services:\n  web:\n    image: x\n    scale: many\n",
        4,
        "services.web.scale",
        "must be an integer",
    );
    err(
        "services:\n  web:\n    image: x\n    ports: {a: 1}\n",
        4,
        "services.web.ports",
        "must be a list",
    );
    err("services: [a]\n", 1, "services", "must be a mapping");
}

#[test]
fn error_bad_syntax_values() {
    err(
        "services:\n  web:\n    image: x\n    ports: ['80:80', 'eighty']\n",
        4,
        "services.web.ports[1]",
        "invalid port \"eighty\"",
    );
    err(
        "services:\n  web:\n    image: x\n    stop_grace_period: 10\n",
        4,
        "services.web.stop_grace_period",
        "invalid duration",
    );
    err(
        "services:\n  web:\n    image: x\n    healthcheck:\n      interval: 5 minutes\n",
        5,
        "services.web.healthcheck.interval",
        "invalid duration",
    );
    err(
        "services:\n  web:\n    image: x\n    mem_limit: lots\n",
        4,
        "services.web.mem_limit",
        "invalid byte size",
    );
    err(
        "services:\n  web:\n    image: x\n    restart: sometimes\n",
        4,
        "services.web.restart",
        "invalid restart policy",
    );
    err(
        "services:\n  web:\n    image: x\n    volumes: ['a:b:c:d']\n",
        4,
        "services.web.volumes[0]",
        "invalid volume",
    );
    err("services:\n  web:\n    image: x\n    depends_on: {db: {condition: service_up}}\n  db: {image: y}\n", 4, "services.web.depends_on.db.condition", "invalid condition \"service_up\"");
}

#[test]
fn error_undefined_references() {
    err(
        "services:\n  web:\n    image: x\n    networks: [front]\n",
        4,
        "services.web.networks[0]",
        "undefined network \"front\"",
    );
    err(
        "services:\n  web:\n    image: x\n    volumes: ['data:/data']\n",
        4,
        "services.web.volumes[0]",
        "undefined volume \"data\"",
    );
    err(
        "services:\n  web:\n    image: x\n    secrets: [pw]\n",
        4,
        "services.web.secrets[0]",
        "undefined secret \"pw\"",
    );
    err(
        "services:\n  web:\n    image: x\n    configs: [cfg]\n",
        4,
        "services.web.configs[0]",
        "undefined config \"cfg\"",
    );
    err("services:\n  web:\n    image: x\n    depends_on:\n      db: {condition: service_healthy}\n", 5, "services.web.depends_on.db", "depends on undefined service \"db\"");
    // Links imply a dependency (found by the fuzzer: it used to load, then not reload).
    err(
        "services:\n  web:\n    image: x\n    links: ['460:58432']\n",
        4,
        "services.web.links",
        "depends on undefined service \"460\"",
    );
    // required: false tolerates a dependency disabled by profiles, not an undefined one.
    assert!(one("services:\n  web:\n    image: x\n    depends_on:\n      db: {condition: service_started, required: false}\n  db: {image: y, profiles: [x]}\n").is_ok());
    err("services:\n  web:\n    image: x\n    depends_on:\n      db: {condition: service_started, required: false}\n", 5, "services.web.depends_on.db", "depends on undefined service \"db\"");
}

#[test]
fn error_conflicts() {
    err(
        "services:\n  a: {image: x, container_name: same}\n  b: {image: y, container_name: same}\n",
        3,
        "services.b.container_name",
        "already used by service \"a\"",
    );
    err(
        "services:\n  a: {image: x, ports: ['8080:80']}\n  b: {image: y, ports: ['8080:81']}\n",
        3,
        "services.b.ports[0]",
        "published port 8080/tcp is already used by service \"a\"",
    );
    // Different protocols or host IPs do not collide.
    assert!(one("services:\n  a: {image: x, ports: ['8080:80', '8080:80/udp']}\n  b: {image: y, ports: ['127.0.0.1:9000:80']}\n  c: {image: y, ports: ['127.0.0.2:9000:80']}\n").is_ok());
}

#[test]
fn error_yaml_and_empty_files() {
    let e = one("services:\n  web:\n    image: x\n  image: y\n   bad: indent\n").unwrap_err();
    assert!(matches!(e, LoadError::Yaml { .. }), "{e}");
    assert!(e.to_string().contains("compose.yaml:"), "{e}");
    let e = one("# nothing\n").unwrap_err();
    assert!(e.to_string().ends_with("empty compose file"), "{e}");
    let e = one("services:\n  a: {image: x}\n  a: {image: y}\n").unwrap_err();
    assert_eq!(e.position(), Some((3, 3)));
}

#[test]
fn corpus_failures_name_file_and_cause() {
    let dir = corpus().join("compose-go/loader/testdata");
    let graph_err = |f: &str| {
        let p = load(&opts_for(&dir.join(f), &[])).unwrap();
        super::graph::ServiceGraph::new(&p).unwrap_err().to_string()
    };
    assert_eq!(
        graph_err("compose-depends-on-cycle.yaml"),
        "dependency cycle detected: service1 -> service2 -> service3 -> service1"
    );
    assert_eq!(
        graph_err("compose-depends-on-profile-no-cycle.yaml"),
        "dependency cycle detected: service1 -> service2 -> service3 -> service1"
    );
    assert_eq!(
        graph_err("compose-depends-on-self.yaml"),
        "dependency cycle detected: service1 -> service1"
    );
    let e = load(&opts_for(&dir.join("empty.yaml"), &[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("empty.yaml") && e.contains("empty compose file"),
        "{e}"
    );
}

#[test]
fn config_output_is_idempotent_for_the_kitchen_sink() {
    let d = Dir::new(&[
        ("s1", "x"),
        ("compose.yaml", "services:\n  w:\n    image: x\n    command: sh -c 'echo $$HOME'\n    ports: ['80', '8000-8001:9000-9001']\n    volumes: ['./d:/d:ro', 'v:/v:nocopy']\n    healthcheck: {test: [CMD, true], interval: 90s}\n    environment: {EMPTY: '', NULL: null, NUM: 1, BOOL: 'true'}\n    labels: {a: '0123', b: 'yes', c: 'null', d: ' pad', e: 'x: y', f: '#x'}\n    secrets: [{source: s, mode: 0400}]\n    deploy: {resources: {limits: {memory: 1.5g}}}\n    ulimits: {nofile: 1024}\nvolumes: {v: {}}\nsecrets: {s: {file: ./s1}}\n"),
    ]);
    let p = d.load().unwrap();
    let out = super::render::render(&p, false, true).unwrap();
    let mut o = d.opts();
    o.files = vec!["-".into()];
    o.stdin = Some(out.clone());
    let p2 = load(&o).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let out2 = super::render::render(&p2, false, true).unwrap();
    assert_eq!(out, out2);
    assert_eq!(p.services["w"].labels, p2.services["w"].labels);
    let json = super::render::render(&p, true, true).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["services"]["w"]["ports"][1]["published"], "8000");
    assert_eq!(v["services"]["w"]["secrets"][0]["mode"], "0400");
}

#[test]
fn full_example_matches_golden_in_key_places() {
    // The golden was built from a struct that combines network_mode and networks, which
    // docker compose rejects ("mutually exclusive"): load a copy without network_mode.
    let src = corpus().join("compose-go/full-example");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text: String = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.starts_with("network_mode:") && !t.starts_with("replicas:")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // Services it depends on are not in the fixture (upstream skips consistency checks).
        let text = text
            .replacen(
                "services:\n",
                "services:\n  db: {image: db}\n  redis: {image: redis}\n",
                1,
            )
            .replacen(
                "\nnetworks:\n",
                "\nnetworks:\n  other-other-network: {}\n",
                1,
            )
            .replacen("\nvolumes:\n", "\nvolumes:\n  datavolume: {}\n", 1);
        std::fs::write(dir.join(e.file_name()), text).unwrap();
    }
    let mut o = opts_for(
        &dir.join("full-example.yml"),
        &[("BAR", "this is a secret"), ("QUX", "qux_from_environment")],
    );
    o.project_name = Some("full_example_project_name".into());
    let p = load(&o).unwrap_or_else(|e| panic!("{e}"));
    let out = super::render::render(&p, true, true).unwrap();
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    let golden = std::fs::read_to_string(dir.join("full-example.expected.json"))
        .unwrap()
        .replace("__WORKDIR__", dir.to_str().unwrap())
        .replace("__HOME__", "/home/tester");
    let want: serde_json::Value = serde_json::from_str(&golden).unwrap();
    let foo_g = &want["services"]["foo"];
    let foo = &got["services"]["foo"];
    for key in [
        "ports",
        "environment",
        "labels",
        "command",
        "entrypoint",
        "healthcheck",
        "ulimits",
        "sysctls",
        "secrets",
        "configs",
        "dns",
        "cap_add",
        "extra_hosts",
        "tmpfs",
        "devices",
        "stop_grace_period",
        "container_name",
        "depends_on",
    ] {
        assert_eq!(foo[key], foo_g[key], "services.foo.{key}");
    }
    let _ = HashMap::<(), ()>::new();
}

// ---------------------------------------------------------------------------------------------
// develop.watch

#[test]
fn develop_watch_rules_are_kept_with_absolute_paths() {
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  w:\n    image: x\n    develop:\n      watch:\n        - action: sync\n          path: ./src\n          target: /app\n          ignore: [node_modules/]\n          initial_sync: true\n        - action: sync+exec\n          path: cfg\n          target: /etc/x\n          exec:\n            command: kill -HUP 1\n            user: root\n",
    )]);
    let mut p = d.load().unwrap_or_else(|e| panic!("{e}"));
    let s = p.services.shift_remove("w").unwrap();
    let w = &s.develop.as_ref().unwrap().watch;
    assert_eq!(w.len(), 2);
    assert_eq!(w[0].action, "sync");
    assert_eq!(w[0].path, d.path().join("src").display().to_string());
    assert_eq!(w[0].target.as_deref(), Some("/app"));
    assert_eq!(w[0].ignore, vec!["node_modules/"]);
    assert!(w[0].initial_sync);
    let x = w[1].exec.as_ref().unwrap();
    assert_eq!(x.command, vec!["kill", "-HUP", "1"]);
    assert_eq!(x.user.as_deref(), Some("root"));
    // Watch rules do not recreate containers.
    let mut t = s.clone();
    t.develop = None;
    assert_eq!(super::hash::service_hash(&s), super::hash::service_hash(&t));
}

#[test]
fn develop_watch_errors_name_the_rule() {
    err(
        "services:\n  w:\n    image: x\n    develop:\n      watch:\n        - action: copy\n          path: .\n",
        6,
        "services.w.develop.watch[0].action",
        "invalid watch action \"copy\"",
    );
    err(
        "services:\n  w:\n    image: x\n    develop:\n      watch:\n        - action: sync\n          path: .\n",
        6,
        "services.w.develop.watch[0]",
        "needs a target",
    );
    err(
        "services:\n  w:\n    image: x\n    develop:\n      watch:\n        - action: sync\n          path: .\n          target: /a\n          ignored: [x]\n",
        9,
        "services.w.develop.watch[0].ignored",
        "did you mean \"ignore\"",
    );
}

#[test]
fn project_name_flag_is_compose_project_name_during_interpolation() {
    let d = Dir::new(&[
        (".env", "COMPOSE_PROJECT_NAME=fromdotenv\n"),
        (
            "compose.yaml",
            "services:\n  web:\n    image: busybox\n    environment:\n      P: ${COMPOSE_PROJECT_NAME}\n",
        ),
    ]);
    let env_of = |p: &Project| {
        p.services["web"].environment["P"]
            .clone()
            .unwrap_or_default()
    };
    // -p wins over the .env, for the name and for interpolation (as docker compose v2.40).
    let mut o = d.opts();
    o.project_name = Some("cliname".into());
    let p = load(&o).unwrap();
    assert_eq!(p.name, "cliname");
    assert_eq!(env_of(&p), "cliname");
    // Without -p the .env decides both.
    let p = d.load().unwrap();
    assert_eq!(p.name, "fromdotenv");
    assert_eq!(env_of(&p), "fromdotenv");
    // Neither: the file's `name:`, else the directory's name, and no "not set" warning.
    let d = Dir::new(&[(
        "compose.yaml",
        "name: fromfile\nservices:\n  web:\n    image: busybox\n    environment:\n      P: ${COMPOSE_PROJECT_NAME}\n",
    )]);
    let p = d.load().unwrap();
    assert_eq!(
        (p.name.as_str(), env_of(&p).as_str()),
        ("fromfile", "fromfile")
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(!p.environment.contains_key("COMPOSE_PROJECT_NAME"));
}

#[test]
fn string_command_with_shell_operators_warns_with_service_and_tail() {
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  app:\n    image: busybox\n    command: migrate && serve --port 80\n    entrypoint: run.sh; echo done\n",
    )]);
    let p = d.load().unwrap();
    let s = &p.services["app"];
    assert_eq!(s.command.as_deref(), Some(&["migrate".to_string()][..]));
    assert_eq!(s.entrypoint.as_deref(), Some(&["run.sh".to_string()][..]));
    let w: Vec<&String> = p
        .warnings
        .iter()
        .filter(|w| w.contains("shell operator"))
        .collect();
    assert_eq!(w.len(), 2, "{:?}", p.warnings);
    assert!(
        w[0].contains("\"app\"") && w[0].contains("\"&& serve --port 80\""),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains(r#"["sh","-c","migrate && serve --port 80"]"#),
        "{}",
        w[0]
    );
    assert!(
        w[1].contains("entrypoint") && w[1].contains("\"; echo done\""),
        "{}",
        w[1]
    );
    // A list form, or operators in quotes, say nothing.
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  app:\n    image: busybox\n    command: [\"sh\", \"-c\", \"a && b\"]\n    entrypoint: echo 'a;b'\n",
    )]);
    assert!(d.load().unwrap().warnings.is_empty());
}

#[test]
fn all_resources_keeps_what_no_service_uses() {
    let d = Dir::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: busybox\nvolumes:\n  unused: {}\nnetworks:\n  lonely: {}\n",
    )]);
    let p = d.load().unwrap();
    assert!(!p.volumes.contains_key("unused") && !p.networks.contains_key("lonely"));
    let mut o = d.opts();
    o.all_resources = true;
    let p = load(&o).unwrap();
    assert!(p.volumes.contains_key("unused") && p.networks.contains_key("lonely"));
}

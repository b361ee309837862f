//! `berth export swarm`, deployed for real: Debian's dockerd + containerd started by the test
//! in network, mount and pid namespaces of their own (their bridges, rules, netns and mounts
//! die with them; when dockerd, the pid namespace's init, exits, the kernel kills whatever
//! is left), on a private unix socket, data-root, exec-root and cgroup parent. `docker swarm init` on 127.0.0.1, the busybox test image
//! loaded, `docker stack deploy` of the exported file; the replicas converge and `docker
//! service inspect` shows the update, restart and health settings exactly as the Compose file
//! gave them. Then the stack and swarm are removed and the daemons stopped by pid.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's docker CLI (PATH may hold another `docker` first).
const DOCKER: &str = "/usr/bin/docker";

struct Engine {
    dir: tempfile::TempDir,
    /// The `unshare` process; its child is the namespaces' pid 1, dockerd.
    unshare: Option<Child>,
    dockerd: i32,
    containerd: i32,
    /// `pid:[inode]` of the daemons' pid namespace. When dockerd (its pid 1) exits, the
    /// kernel kills whatever is left in it: no process can outlive the test.
    pidns: String,
    cgroup: String,
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 1 && unsafe { libc::kill(pid, 0) == 0 }
}

fn ns_of(pid: i32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// SIGTERM one pid this test started, SIGKILL after `grace`.
fn stop_pid(pid: i32, grace: Duration) {
    if !pid_alive(pid) {
        return;
    }
    // SAFETY: signalling a single pid this test started (never 0, -1 or 1: pid_alive).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while pid_alive(pid) && !comm(pid).is_empty() && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(100));
    }
    if pid_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Engine {
    fn start() -> Engine {
        common::require_root();
        for bin in [
            DOCKER,
            "/usr/sbin/dockerd",
            "/usr/bin/containerd",
            "/usr/bin/unshare",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: apt-get install docker.io (see .ci/run)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-swarm-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let cgroup = format!("berth-swarm-test-{}", std::process::id());
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{0}/containerd-root\"\nstate = \"{0}/containerd-state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n\
                 [debug]\n  address = \"{0}/containerd-debug.sock\"\n",
                d.display()
            ),
        )
        .unwrap();
        // An empty config file: /etc/docker/daemon.json is not read.
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        // New net, mount and pid namespaces: containerd in the background, dockerd exec'd as
        // the pid namespace's init.
        let script = format!(
            "set -e\nip link set lo up\n\
             containerd --config {0}/containerd.toml >{0}/containerd.log 2>&1 &\n\
             exec dockerd -H unix://{0}/docker.sock --containerd {0}/containerd.sock \
             --data-root {0}/data --exec-root {0}/exec --pidfile {0}/dockerd.pid \
             --config-file {0}/daemon.json --cgroup-parent /{1} \
             --iptables=false --ip6tables=false --bridge=none >{0}/dockerd.log 2>&1\n",
            d.display(),
            cgroup
        );
        let child = Command::new("/usr/bin/unshare")
            .args([
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting unshare + dockerd");
        let upid = child.id() as i32;
        let mut e = Engine {
            dir,
            unshare: Some(child),
            dockerd: 0,
            containerd: 0,
            pidns: String::new(),
            cgroup,
        };
        let t = Instant::now();
        loop {
            if e.docker(&["info"]).status.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not come up:\n{}",
                std::fs::read_to_string(e.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // dockerd answers: it is unshare's only child, containerd is its child.
        e.dockerd = children(upid).into_iter().next().expect("dockerd's pid");
        assert_eq!(comm(e.dockerd), "dockerd");
        e.containerd = children(e.dockerd)
            .into_iter()
            .find(|p| comm(*p) == "containerd")
            .expect("containerd's pid");
        e.pidns = ns_of(e.dockerd, "pid");
        for ns in ["pid", "net", "mnt"] {
            assert_ne!(
                ns_of(e.dockerd, ns),
                ns_of(std::process::id() as i32, ns),
                "{ns}"
            );
        }
        e
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}/docker.sock", self.dir.path().display()),
            )
            .output()
            .expect("running docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn inspect(&self, service: &str, tmpl: &str) -> Value {
        serde_json::from_str(
            self.ok(&["service", "inspect", service, "--format", tmpl])
                .trim(),
        )
        .unwrap()
    }

    /// Stop the daemons by pid (dockerd first, then containerd); returns what is left.
    fn stop(&mut self) -> Vec<String> {
        let Some(mut unshare) = self.unshare.take() else {
            return Vec::new();
        };
        if self.dockerd > 0 {
            let _ = self.docker(&["swarm", "leave", "--force"]);
        }
        let containerd = self.containerd;
        stop_pid(self.dockerd, Duration::from_secs(30));
        stop_pid(containerd, Duration::from_secs(15));
        // unshare exits once its child (the namespace's init) is gone; the kernel has
        // killed anything else in the pid namespace by then.
        let t = Instant::now();
        let mut left = Vec::new();
        loop {
            match unshare.try_wait() {
                Ok(Some(_)) => break,
                _ if t.elapsed() > Duration::from_secs(30) => {
                    left.push("unshare did not exit".to_string());
                    // SAFETY: the one process this test spawned.
                    unsafe { libc::kill(unshare.id() as i32, libc::SIGKILL) };
                    let _ = unshare.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        if !self.pidns.is_empty() {
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                    if ns_of(pid, "pid") == self.pidns {
                        left.push(format!("process {pid} ({}) in {}", comm(pid), self.pidns));
                    }
                }
            }
        }
        for ctl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let cg = ctl.path().join(&self.cgroup);
            if cg.exists() {
                // Only empty directories can go; a busy one is a leak.
                let subs: Vec<PathBuf> = std::fs::read_dir(&cg)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                for s in &subs {
                    let _ = std::fs::remove_dir(s);
                }
                if std::fs::remove_dir(&cg).is_err() {
                    left.push(format!("cgroup {}", cg.display()));
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let d = self.dir.path().display().to_string();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&d))
                .map(|l| format!("mount {l}")),
        );
        left
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("swarm engine left: {left:?}");
        }
    }
}

const STACK: &str = r#"
services:
  web:
    image: berth-test/busybox:1
    build: .
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    restart: on-failure:3
    stop_grace_period: 1s
    depends_on:
      worker: {condition: service_healthy}
    deploy:
      replicas: 2
      update_config: {parallelism: 1, delay: 2s, failure_action: rollback, monitor: 5s, order: start-first}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 2s
      timeout: 1s
      retries: 3
  worker:
    image: berth-test/busybox:1
    container_name: the-worker
    command: ["sh", "-c", "echo $$HOSTNAME; exec sleep 3600"]
    stop_grace_period: 1s
    deploy:
      restart_policy: {condition: any, delay: 3s, max_attempts: 5, window: 10s}
"#;

#[test]
fn exported_stack_deploys_on_swarm_and_keeps_update_and_restart_settings() {
    let mut e = Engine::start();
    let work = e.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let compose = work.join("compose.yaml");
    std::fs::write(&compose, STACK).unwrap();
    let stack = common::unique("bsw");
    let exported = work.join("exported.yml");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("-f")
        .arg(&compose)
        .args(["-p", &stack, "export", "swarm", "-o"])
        .arg(&exported)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // What Swarm ignores is named, once, by service and field.
    assert!(
        stderr.contains("unmapped: services.worker.container_name: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("unmapped: services.web.depends_on: "),
        "{stderr}"
    );
    assert!(stderr.contains("note: services.web.build: "), "{stderr}");
    // --strict refuses the same stack.
    let strict = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("-f")
        .arg(&compose)
        .args(["-p", &stack, "export", "swarm", "--strict"])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert!(strict.stdout.is_empty());

    e.ok(&["load", "-i", common::image_tar().to_str().unwrap()]);
    e.ok(&[
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1",
        "--listen-addr",
        "127.0.0.1:2377",
    ]);
    e.ok(&["stack", "deploy", "-c", exported.to_str().unwrap(), &stack]);

    // The replicas converge, and the web tasks' healthchecks pass.
    let (web, worker) = (format!("{stack}_web"), format!("{stack}_worker"));
    let t = Instant::now();
    loop {
        let ls = e.ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]);
        let healthy = e
            .ok(&[
                "ps",
                "-q",
                "--filter",
                "health=healthy",
                "--filter",
                &format!("label=com.docker.swarm.service.name={web}"),
            ])
            .lines()
            .count();
        if ls.contains(&format!("{web} 2/2"))
            && ls.contains(&format!("{worker} 1/1"))
            && healthy == 2
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "not converged: {ls} ({healthy} healthy)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The settings, 1:1.
    assert_eq!(
        e.inspect(&web, "{{json .Spec.UpdateConfig}}"),
        json!({"Parallelism": 1, "Delay": 2_000_000_000u64, "FailureAction": "rollback",
            "Monitor": 5_000_000_000u64, "MaxFailureRatio": 0, "Order": "start-first"})
    );
    let rp = e.inspect(&web, "{{json .Spec.TaskTemplate.RestartPolicy}}");
    assert_eq!(
        (&rp["Condition"], &rp["MaxAttempts"]),
        (&json!("on-failure"), &json!(3))
    );
    assert_eq!(
        e.inspect(&worker, "{{json .Spec.TaskTemplate.RestartPolicy}}"),
        json!({"Condition": "any", "Delay": 3_000_000_000u64, "MaxAttempts": 5, "Window": 10_000_000_000u64})
    );
    assert_eq!(
        e.inspect(
            &web,
            "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck}}"
        ),
        json!({"Test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"],
            "Interval": 2_000_000_000u64, "Timeout": 1_000_000_000u64, "Retries": 3})
    );
    assert_eq!(
        e.inspect(&web, "{{json .Spec.Mode}}"),
        json!({"Replicated": {"Replicas": 2}})
    );
    assert_eq!(
        e.inspect(
            &web,
            "{{json .Spec.TaskTemplate.ContainerSpec.StopGracePeriod}}"
        ),
        json!(1_000_000_000u64)
    );
    // `$$` stayed a literal `$` through the stack file's own interpolation.
    assert_eq!(
        e.inspect(&worker, "{{json .Spec.TaskTemplate.ContainerSpec.Args}}"),
        json!(["sh", "-c", "echo $HOSTNAME; exec sleep 3600"])
    );

    // Down: the stack, then the swarm, then the daemons; nothing left.
    // `docker stack rm` removes the services, then the network, without waiting for the
    // services' tasks to be gone: the network removal can fail with "is in use by task"
    // on a slow machine. That is swarm's own race; repeat the rm (bounded) until it
    // succeeds, as its users do.
    let t = Instant::now();
    loop {
        let o = e.docker(&["stack", "rm", &stack]);
        if o.status.success() {
            break;
        }
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains("in use by task") && t.elapsed() < Duration::from_secs(60),
            "docker stack rm: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The node drops its copy of the overlay network once the last task is gone.
    let t = Instant::now();
    while !e.ok(&["ps", "-aq"]).trim().is_empty()
        || e.ok(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n.starts_with(&format!("{stack}_")))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "stack containers or network not removed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    e.ok(&["swarm", "leave", "--force"]);
    let left = e.stop();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Every stack of the corpus that exports, read by `docker stack deploy` itself (docker/cli
/// 20.10's loader and v3.9 schema run before it contacts a daemon; the socket here does not
/// exist): no schema error, and no "Ignoring unsupported/deprecated options" either, since
/// berth removes and reports all of those.
#[test]
fn corpus_swarm_exports_pass_docker_stack_deploys_loader() {
    assert!(
        Path::new(DOCKER).exists(),
        "{DOCKER} missing: apt-get install docker.io (see .ci/run)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![
        root.join("../shared/compose-corpus"),
        root.join("examples"),
        root.join("compose-files"),
    ];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yml" | "yaml")) {
                files.push(p);
            }
        }
    }
    files.sort();
    let out = tempfile::tempdir().unwrap();
    let nosock = format!("unix://{}/no.sock", out.path().display());
    let (mut checked, mut failures) = (0, Vec::new());
    for (i, f) in files.iter().enumerate() {
        let stack = out.path().join(format!("{i}.yml"));
        let o = Command::new(env!("CARGO_BIN_EXE_berth"))
            .current_dir(f.parent().unwrap())
            .arg("-f")
            .arg(f)
            .args(["export", "swarm", "-o"])
            .arg(&stack)
            .output()
            .unwrap();
        if !o.status.success() {
            // Files that do not load (the corpus holds invalid ones on purpose).
            assert!(String::from_utf8_lossy(&o.stderr).contains("error"));
            continue;
        }
        checked += 1;
        let d = Command::new(DOCKER)
            .args(["stack", "deploy", "-c"])
            .arg(&stack)
            .arg("x")
            .env("DOCKER_HOST", &nosock)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&d.stderr);
        if !err.contains("Cannot connect to the Docker daemon") || err.contains("Ignoring") {
            failures.push(format!("{}: {err}", f.display()));
        }
    }
    assert!(checked >= 125, "only {checked} stacks exported");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! End-to-end: `berth watch` follows `develop.watch` rules into a running container: a sync
//! lands within 1 s of the write, a burst of edits is one action, ignore rules and deletions
//! are honoured, sync+exec runs its command. A rebuild rule builds the image again and rolls it
//! out (`up --watch`) with no failed request from a client in the project; a broken build
//! leaves the running replicas alone and watching goes on.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const STACK: &str = r#"services:
  box:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    develop:
      watch:
        - action: sync
          path: ./src
          target: /app
          ignore: ["*.tmp", "gen/"]
        - action: sync+exec
          path: ./cfg
          target: /etc/cfg
          exec:
            command: ["sh", "-c", "cat /etc/cfg/c.conf > /tmp/reloaded"]
        - action: sync+restart
          path: ./rst
          target: /rst
"#;

struct Watch {
    child: Child,
    err: Arc<Mutex<String>>,
}

impl Watch {
    fn start(b: &Berth, f: &Path) -> Watch {
        Watch::start_with(b, f, &["watch"])
    }
    /// `berth -f F ARGS…` (watch, or up --watch), once it says "Watch enabled".
    fn start_with(b: &Berth, f: &Path, args: &[&str]) -> Watch {
        let mut child = b
            .cmd()
            .arg("-f")
            .arg(f)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let err = Arc::new(Mutex::new(String::new()));
        let sink = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let w = Watch { child, err };
        wait_for("watch to start", Duration::from_secs(180), || {
            w.log().contains("Watch enabled").then_some(())
        });
        w
    }
    fn log(&self) -> String {
        self.err.lock().unwrap().clone()
    }
    /// SIGINT, as a terminal's Ctrl-C; the process must exit within `limit`.
    fn interrupt_and_wait(&mut self, limit: Duration) {
        // SAFETY: kill(2) on the child's pid, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < limit,
                "still running {limit:?} after SIGINT; it said:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// [`wait_for`], with what watch said when it times out.
    fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; watch said:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn syncs(&self) -> usize {
        self.log().matches("Syncing service \"box\"").count()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container's view of `path`, through its pid 1's root.
fn in_ctr(b: &Berth, p: &str, path: &str) -> PathBuf {
    let st = b.state(p).unwrap();
    let pid = st["containers"][0]["pid"].as_i64().unwrap();
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

#[test]
fn watch_syncs_edits_into_the_container() {
    let b = Berth::new();
    let p = unique("watch");
    let f = b.compose(&p, STACK);
    let dir = b.dir.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    std::fs::create_dir_all(dir.join("rst")).unwrap();
    std::fs::write(dir.join("src/a.txt"), "v1").unwrap();

    // watch brings the project up itself.
    let w = Watch::start(&b, &f);
    let ps = b.ok(&f, &["ps", "--format", "json"]);
    assert!(ps.contains("\"running\""), "{ps}");

    // One edit: in the container within 1 s of the write.
    let target = in_ctr(&b, &p, "/app/a.txt");
    let t0 = Instant::now();
    std::fs::write(dir.join("src/a.txt"), "v2").unwrap();
    loop {
        if std::fs::read_to_string(&target).ok().as_deref() == Some("v2") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "not synced within 1 s; watch said: {}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    eprintln!("synced in {took:?}");

    // A burst of 30 edits (new directory included) is one sync; ignored files stay out.
    wait_for("the first sync line", Duration::from_secs(5), || {
        (w.syncs() == 1).then_some(())
    });
    std::fs::create_dir_all(dir.join("src/d/e")).unwrap();
    for i in 0..30 {
        std::fs::write(dir.join(format!("src/d/e/f{i}")), format!("{i}")).unwrap();
    }
    std::fs::write(dir.join("src/skip.tmp"), "no").unwrap();
    std::fs::create_dir_all(dir.join("src/gen")).unwrap();
    std::fs::write(dir.join("src/gen/x"), "no").unwrap();
    wait_for("the burst in the container", Duration::from_secs(5), || {
        (std::fs::read_to_string(in_ctr(&b, &p, "/app/d/e/f29")).ok()? == "29").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.syncs(), 2, "one sync for the burst: {}", w.log());
    for i in 0..30 {
        assert!(in_ctr(&b, &p, &format!("/app/d/e/f{i}")).exists(), "f{i}");
    }
    assert!(!in_ctr(&b, &p, "/app/skip.tmp").exists());
    assert!(!in_ctr(&b, &p, "/app/gen").exists());

    // A deletion is synced too.
    std::fs::remove_file(dir.join("src/a.txt")).unwrap();
    wait_for("the deletion", Duration::from_secs(5), || {
        (!in_ctr(&b, &p, "/app/a.txt").exists()).then_some(())
    });

    // sync+exec: the file, then the command in the container.
    std::fs::write(dir.join("cfg/c.conf"), "level=3").unwrap();
    wait_for("the exec after the sync", Duration::from_secs(5), || {
        (std::fs::read_to_string(in_ctr(&b, &p, "/tmp/reloaded")).ok()? == "level=3").then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(in_ctr(&b, &p, "/etc/cfg/c.conf")).unwrap(),
        "level=3"
    );

    // sync+restart: the file, then a new pid 1 that sees it.
    let pid = |b: &Berth| b.state(&p).unwrap()["containers"][0]["pid"].as_i64();
    let before = pid(&b).unwrap();
    std::fs::write(dir.join("rst/flag"), "on").unwrap();
    wait_for(
        "the restart after the sync",
        Duration::from_secs(15),
        || {
            let now = pid(&b)?;
            (now != before
                && std::fs::read_to_string(format!("/proc/{now}/root/rst/flag")).ok()? == "on")
                .then_some(())
        },
    );
    assert!(
        w.log().contains("Restarting service \"box\""),
        "{}",
        w.log()
    );
    drop(w);

    // A rebuild rule needs a build: section, which is said plainly.
    let g = b.compose(
        &format!("{p}b"),
        "services:\n  box:\n    image: berth-test/busybox:1\n    develop:\n      watch:\n        - action: rebuild\n          path: ./src\n",
    );
    let e = b.fails(&g, &["watch", "--no-up"]);
    assert!(e.contains("needs a build section"), "{e}");
    // No rule at all: compose's message.
    let h = b.compose(
        &format!("{p}c"),
        "services:\n  box:\n    image: berth-test/busybox:1\n",
    );
    let e = b.fails(&h, &["watch", "--no-up"]);
    assert!(
        e.contains("none of the selected services is configured for watch"),
        "{e}"
    );

    b.ok(&f, &["down", "-t", "1"]);
}

/// A service built from `./app` (busybox httpd serving index.html), two replicas rolled
/// start-first and gated on health, with a rebuild rule on its context; and a client in the
/// project that fetches it by name at most `fetches` times (each fetch bounded by `timeout`),
/// until the test creates `ctl/stop`. `extra` goes into web's `update_config`.
fn built_stack(fetches: u32, extra: &str) -> String {
    format!(
        r#"services:
  web:
    build: ./app
    init: true
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        order: start-first{extra}
    volumes: ["flag:/flag"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/index.html"]
      interval: 200ms
      timeout: 3s
      retries: 5
    develop:
      watch:
        - action: rebuild
          path: ./app
  client:
    image: {IMAGE}
    init: true
    volumes: ["./ctl:/ctl"]
    depends_on:
      web:
        condition: service_healthy
    command: ["sh", "-c", "i=0; while [ $$i -lt {fetches} ] && [ ! -e /ctl/stop ]; do i=$$((i+1)); r=$$(timeout 10 wget -q -O- http://web/index.html 2>&1) && echo OK $$r || echo FAIL $$r; sleep 0.03; done; echo DONE; sleep 60"]
volumes:
  flag: {{}}
"#
    )
}

const DOCKERFILE: &str = "FROM berth-test/busybox:1\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n";

fn write_app(dir: &Path, dockerfile: &str, index: &str) {
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::create_dir_all(dir.join("ctl")).unwrap();
    std::fs::write(dir.join("app/Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("app/index.html"), index).unwrap();
}

/// (name, image id, config hash, status, health) of the service's containers, by name.
fn replicas(b: &Berth, p: &str, service: &str) -> Vec<[String; 5]> {
    let st = b.state(p).unwrap();
    let mut out: Vec<[String; 5]> = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["service"] == service)
        .map(|c| {
            ["name", "image_id", "config_hash", "status", "health"]
                .map(|k| c[k].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}

/// The client's answers: OK lines' bodies, and the FAIL lines.
fn answers(log: &str) -> (Vec<String>, Vec<String>) {
    let ok = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("OK ").map(str::to_string))
        .collect();
    let fail = log
        .lines()
        .filter(|l| l.contains("FAIL"))
        .map(str::to_string)
        .collect();
    (ok, fail)
}

/// Image ids in the test's store.
fn image_ids(b: &Berth) -> Vec<String> {
    let db: serde_json::Value = serde_json::from_slice(
        &std::fs::read(b.root.path().join("data/images/images.json")).unwrap(),
    )
    .unwrap();
    db["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Issue 15's acceptance: `up --watch` (compose's meaning) follows a rebuild rule; an edit of a
/// source file builds a new image (new id) and rolls it out to both replicas, start-first and
/// health-gated, while a client in the project fetches the service by name: no fetch fails, the
/// new content is served within a bound, the old replicas and the replaced image are gone.
#[test]
fn rebuild_rule_rolls_a_new_image_out_with_no_failed_request() {
    const FETCHES: u32 = 6000;
    let b = Berth::new();
    let p = unique("wreb");
    let dir = b.dir.path();
    write_app(dir, DOCKERFILE, "v1");
    let f = b.compose(&p, &built_stack(FETCHES, ""));
    // Builds the missing image, brings the stack up, then follows the rules (and the logs).
    let w = Watch::start_with(&b, &f, &["up", "--watch"]);
    let client_log = || b.ok(&f, &["logs", "--no-log-prefix", "client"]);
    wait_for(
        "the client to get v1 answers",
        Duration::from_secs(60),
        || (answers(&client_log()).0.len() >= 5).then_some(()),
    );
    let before = replicas(&b, &p, "web");
    assert_eq!(before.len(), 2, "two replicas: {before:?}");
    let old_id = before[0][1].clone();
    assert!(old_id.starts_with("sha256:"), "{before:?}");
    assert!(before.iter().all(|r| r[1] == old_id));

    // One edit of a source file.
    let t0 = Instant::now();
    std::fs::write(dir.join("app/index.html"), "v2").unwrap();
    let after = wait_for(
        "the rebuilt image on both replicas",
        Duration::from_secs(180),
        || {
            let now = replicas(&b, &p, "web");
            (now.len() == 2
                && now
                    .iter()
                    .all(|r| r[1] != old_id && r[3] == "running" && r[4] == "healthy"))
            .then_some(now)
        },
    );
    wait_for("v2 answers", Duration::from_secs(30), || {
        answers(&client_log())
            .0
            .iter()
            .any(|a| a == "v2")
            .then_some(())
    });
    eprintln!("rolled out in {:?} of wall time", t0.elapsed());
    let new_id = after[0][1].clone();
    assert!(after.iter().all(|r| r[1] == new_id), "{after:?}");
    assert_ne!(new_id, old_id, "a content change gives a new image id");
    // The same service config: what changed is the image, and that is what the plan saw.
    assert_eq!(after[0][2], before[0][2], "config hash unchanged");
    for old in &before {
        assert!(
            !after.iter().any(|r| r[0] == old[0]),
            "old replica {} still there: {after:?}",
            old[0]
        );
        let bundle = b.root.path().join("data/containers").join(&old[0]);
        w.wait(
            &format!("{} to leave no bundle", old[0]),
            Duration::from_secs(30),
            || (!bundle.exists()).then_some(()),
        );
    }
    let log = w.log();
    assert_eq!(
        log.matches("Rebuilding service(s) [\"web\"] after changes were detected")
            .count(),
        1,
        "one rebuild for one edit: {log}"
    );
    assert!(log.contains("successfully built"), "{log}");
    eprintln!("up --watch said:\n{log}");
    // --prune (the default): the replaced image is gone once the rollout is over (its last
    // old replica may still be draining when the new ones are healthy).
    w.wait("the replaced image pruned", Duration::from_secs(60), || {
        (!image_ids(&b).contains(&old_id)).then_some(())
    });
    assert!(image_ids(&b).contains(&new_id));

    // The client stops its bounded loop; every fetch it made was answered.
    std::fs::write(dir.join("ctl/stop"), "").unwrap();
    let log = wait_for("the client's DONE", Duration::from_secs(60), || {
        let l = client_log();
        l.contains("DONE").then_some(l)
    });
    let (ok, fail) = answers(&log);
    let v1 = ok.iter().filter(|a| *a == "v1").count();
    let v2 = ok.iter().filter(|a| *a == "v2").count();
    eprintln!(
        "client fetches by name: {v1} v1, {v2} v2, {} failed",
        fail.len()
    );
    assert!(
        fail.is_empty(),
        "failed fetches during the rollout: {fail:?}"
    );
    assert_eq!(v1 + v2, ok.len(), "only v1 and v2 answers: {ok:?}");
    assert!(v1 >= 5 && v2 >= 1, "{v1} v1, {v2} v2");
    assert!((ok.len() as u32) < FETCHES, "the loop ended on ctl/stop");
    assert_eq!(ok.last().map(String::as_str), Some("v2"));
    // Ctrl-C after a rebuild (the builder had SIGINT while it ran) is up's again: it stops
    // the stack gracefully and exits.
    let mut w = w;
    w.interrupt_and_wait(Duration::from_secs(60));
    let ps = b.ok(&f, &["ps", "--format", "json"]);
    assert!(
        !ps.contains("\"running\""),
        "Ctrl-C stopped the stack: {ps}"
    );
    drop(w);
    b.ok(&f, &["down", "-t", "1"]);
}

/// A Dockerfile edit that breaks the build is reported in the watch stream; the replicas keep
/// running and serving the old content, untouched. An image that builds but fails its
/// healthcheck on the second replica is rolled back (`failure_action: rollback`) to the old
/// image, by id, though its name now gives the new one. The next good edit rolls out (watch went
/// on).
#[test]
fn broken_build_leaves_the_old_replicas_serving() {
    let b = Berth::new();
    let p = unique("wbrk");
    let dir = b.dir.path();
    write_app(dir, DOCKERFILE, "v1");
    let f = b.compose(&p, &built_stack(1, "\n        failure_action: rollback"));
    // Detached, --watch is berth's compose-file reload only; the rules need a foreground
    // process, which up says.
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args(["up", "-d", "--wait", "--watch"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("develop.watch rules of [\"web\"] are followed in the foreground only"),
        "{err}"
    );
    let before = replicas(&b, &p, "web");
    assert_eq!(before.len(), 2);
    let pids = |b: &Berth| -> Vec<i64> {
        let st = b.state(&p).unwrap();
        let mut v: Vec<i64> = st["containers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["service"] == "web")
            .filter_map(|c| c["pid"].as_i64())
            .collect();
        v.sort();
        v
    };
    let pids_before = pids(&b);
    let fetch = |index: &str| {
        b.ok(
            &f,
            &[
                "exec",
                "-T",
                "--index",
                index,
                "web",
                "timeout",
                "5",
                "wget",
                "-q",
                "-O-",
                "http://127.0.0.1/index.html",
            ],
        )
    };
    let w = Watch::start_with(&b, &f, &["watch", "--no-up"]);

    // A RUN that fails, and a content change that must not reach anyone.
    std::fs::write(
        dir.join("app/Dockerfile"),
        DOCKERFILE.replace("CMD", "RUN echo broken-step; exit 3\nCMD"),
    )
    .unwrap();
    std::fs::write(dir.join("app/index.html"), "v2").unwrap();
    wait_for(
        "the failed build in the stream",
        Duration::from_secs(120),
        || w.log().contains("Build failed").then_some(()),
    );
    let log = w.log();
    assert!(
        log.contains("exit 3") || log.contains("broken-step"),
        "{log}"
    );
    assert_eq!(replicas(&b, &p, "web"), before, "replicas untouched");
    assert_eq!(pids(&b), pids_before, "same processes");
    for i in ["1", "2"] {
        assert_eq!(fetch(i).trim(), "v1", "replica {i} still serves v1");
    }

    // Builds, but only the first new replica serves (it takes the flag in the shared volume);
    // the second never gets healthy: the rollout goes back to the image the old replicas ran.
    let old_id = before[0][1].clone();
    std::fs::write(
        dir.join("app/Dockerfile"),
        DOCKERFILE.replace(
            "CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]",
            "CMD [\"sh\", \"-c\", \"if mkdir /flag/taken; then exec httpd -f -p 80 -h /www; else exec sleep 3600; fi\"]",
        ),
    )
    .unwrap();
    std::fs::write(dir.join("app/index.html"), "v1").unwrap();
    w.wait("the rollback", Duration::from_secs(180), || {
        w.log().contains("rolled back").then_some(())
    });
    let now = wait_for(
        "both replicas back on the old image",
        Duration::from_secs(60),
        || {
            let now = replicas(&b, &p, "web");
            (now.len() == 2 && now.iter().all(|r| r[3] == "running" && r[4] == "healthy"))
                .then_some(now)
        },
    );
    assert!(
        now.iter().all(|r| r[1] == old_id),
        "rolled back to {old_id}: {now:?}\n{}",
        w.log()
    );
    for i in ["1", "2"] {
        assert_eq!(
            fetch(i).trim(),
            "v1",
            "replica {i} serves v1 after the rollback"
        );
    }

    // Fixed: watching went on, the next edit rolls out.
    std::fs::write(dir.join("app/Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(dir.join("app/index.html"), "v2").unwrap();
    w.wait(
        "the fixed build rolled out",
        Duration::from_secs(180),
        || {
            let now = replicas(&b, &p, "web");
            (now.len() == 2
                && now
                    .iter()
                    .all(|r| r[1] != before[0][1] && r[3] == "running" && r[4] == "healthy"))
            .then_some(())
        },
    );
    for i in ["1", "2"] {
        assert_eq!(fetch(i).trim(), "v2", "replica {i} serves v2");
    }
    // And `watch`'s Ctrl-C ends it after a rebuild, as before one.
    let mut w = w;
    w.interrupt_and_wait(Duration::from_secs(30));
    drop(w);
    b.ok(&f, &["down", "-t", "1"]);
}

/// Without `update_config`, one replica: compose's recreate (stop, then the new container).
/// Attached `up --watch` goes on through the moment no container runs, and serves the new
/// content after.
#[test]
fn rebuild_without_update_config_recreates_and_up_watch_stays() {
    let b = Berth::new();
    let p = unique("wrec");
    let dir = b.dir.path();
    write_app(dir, DOCKERFILE, "v1");
    let f = b.compose(
        &p,
        "services:\n  web:\n    build: ./app\n    init: true\n    develop:\n      watch:\n        - action: rebuild\n          path: ./app\n",
    );
    let mut w = Watch::start_with(&b, &f, &["up", "--watch"]);
    let before = replicas(&b, &p, "web");
    assert_eq!(before.len(), 1);
    std::fs::write(dir.join("app/index.html"), "v2").unwrap();
    let after = w.wait("the recreated replica", Duration::from_secs(180), || {
        let now = replicas(&b, &p, "web");
        (now.len() == 1 && now[0][1] != before[0][1] && now[0][3] == "running").then_some(now)
    });
    // Recreated in place: the same name, as compose does.
    assert_eq!(after[0][0], before[0][0]);
    let got = w.wait("v2 served", Duration::from_secs(30), || {
        let out = b
            .cmd()
            .arg("-f")
            .arg(&f)
            .args(["exec", "-T", "web", "timeout", "5", "wget", "-q", "-O-"])
            .arg("http://127.0.0.1/index.html")
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (body == "v2").then_some(body)
    });
    assert_eq!(got, "v2");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "up --watch ended during the recreate: {}",
        w.log()
    );
    w.interrupt_and_wait(Duration::from_secs(60));
    drop(w);
    b.ok(&f, &["down", "-t", "1"]);
}

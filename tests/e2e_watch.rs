//! End-to-end: `berth watch` follows `develop.watch` rules into a running container: a sync
//! lands within 1 s of the write, a burst of edits is one action, ignore rules and deletions
//! are honoured, sync+exec runs its command; a rebuild rule is a clear error.

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
        let mut child = b
            .cmd()
            .arg("-f")
            .arg(f)
            .arg("watch")
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
        wait_for("watch to start", Duration::from_secs(30), || {
            w.log().contains("Watch enabled").then_some(())
        });
        w
    }
    fn log(&self) -> String {
        self.err.lock().unwrap().clone()
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

    // A rebuild rule needs build:, which is said plainly.
    let g = b.compose(
        &format!("{p}b"),
        "services:\n  box:\n    image: berth-test/busybox:1\n    develop:\n      watch:\n        - action: rebuild\n          path: ./src\n",
    );
    let e = b.fails(&g, &["watch", "--no-up"]);
    assert!(e.contains("needs build: support"), "{e}");
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

//! End-to-end: a simulated reboot. Every process of the project is killed (containers and the
//! supervisor), the kernel state a reboot takes away is taken away (mounts under the state
//! root, the project's cgroups and nftables chains, the run directory itself), and
//! `berth resume` must bring back exactly the services Docker would: `always` ones (even
//! stopped by the user) and `unless-stopped` ones the user had not stopped, as the same
//! containers (their writable layer kept, as Docker restarts rather than recreates them), with
//! their named volumes' data; the others stay stopped and `start` brings them back whole;
//! `down` then leaves nothing, nor does a failing run (`CgroupSweep`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const STACK: &str = r#"services:
  always:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: always
    volumes: ["data:/data"]
    secrets: [token]
  shares:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: always
    network_mode: "service:always"
  unless:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: unless-stopped
  unless_stopped:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: unless-stopped
  always_stopped:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: always
  never:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
  onfail:
    image: berth-test/busybox:1
    command: ["sleep", "3600"]
    init: true
    restart: on-failure
volumes:
  data: {}
secrets:
  token:
    file: ./resume-secret.txt
"#;

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// What a reboot does to berth's state: no processes, no mounts, no cgroups, no nftables
/// rules of the project, an empty /run.
fn simulate_reboot(b: &Berth, p: &str) {
    let st = b.state(p).unwrap();
    let mut pids = vec![b.supervisor_pid(p) as i64];
    for c in st["containers"].as_array().unwrap() {
        if let Some(pid) = c["pid"].as_i64() {
            pids.push(pid);
        }
    }
    for pid in &pids {
        // SAFETY: signalling processes of this test's own project.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    wait_for("every process to die", Duration::from_secs(10), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    // Mounts under the state root, deepest first (overlay roots, netns files, tmpfs).
    let root = b.root.path().to_string_lossy().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&root))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let c = std::ffi::CString::new(m.as_str()).unwrap();
        // SAFETY: unmounting a path under this test's private root.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    // The project's cgroups (empty now), deepest first, in every hierarchy (v1 and v2).
    let mut dirs = vec![];
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let mut stack = vec![h.path().join("berth").join(p)];
        if !stack[0].is_dir() {
            continue;
        }
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
    // The inits are dead, their pid namespaces' other processes die with them but not at
    // once: a cgroup is removable when its last task is gone.
    for d in dirs {
        wait_for(
            &format!("rmdir {}", d.display()),
            Duration::from_secs(10),
            || std::fs::remove_dir(&d).ok(),
        );
    }
    berth_network::firewall::remove(p).unwrap();
    std::fs::remove_dir_all(b.root.path().join("run")).unwrap();
}

/// On a failing test, after `Berth`'s own `down` (declare it before the `Berth`): a resume
/// that failed half way may leave containers no record names; kill what is left in the
/// project's cgroups and remove them, so a failure leaks nothing either.
struct CgroupSweep(String);

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut dirs = vec![];
        for h in hs.flatten() {
            let mut stack = vec![h.path().join("berth").join(&self.0)];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                dirs.push(d);
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: a process in this test's own project's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for d in &dirs {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn states(b: &Berth, f: &Path) -> Vec<(String, String)> {
    // One JSON object per line, as compose prints `ps --format json`.
    let ps = json_lines(&b.ok(f, &["ps", "-a", "--format", "json"]));
    let mut v: Vec<(String, String)> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Service"].as_str().unwrap().to_string(),
                c["State"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn resume_after_a_simulated_reboot_brings_back_exactly_docker_s_set() {
    let p = unique("resume");
    let _sweep = CgroupSweep(p.clone());
    let b = Berth::new();
    let f = b.compose(&p, STACK);
    std::fs::write(b.dir.path().join("resume-secret.txt"), "s3cret").unwrap();
    b.ok(&f, &["up", "-d"]);
    b.ok(
        &f,
        &["exec", "-T", "always", "sh", "-c", "echo kept > /data/f"],
    );
    // Written in the containers' own filesystems (their overlay upper dirs), not in volumes.
    for svc in ["always", "unless", "unless_stopped", "never"] {
        b.ok(
            &f,
            &[
                "exec",
                "-T",
                svc,
                "sh",
                "-c",
                &format!("echo {svc} > /etc/mine"),
            ],
        );
    }
    let bundle_mtime = |svc: &str| {
        let dir = b.container(&p, svc)["dir"].as_str().unwrap().to_string();
        std::fs::metadata(Path::new(&dir).join("config.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let bundles: Vec<_> = ["always", "unless", "unless_stopped", "never"]
        .iter()
        .map(|s| bundle_mtime(s))
        .collect();
    b.ok(&f, &["stop", "-t", "1", "unless_stopped", "always_stopped"]);

    // Nothing to do while the supervisor runs.
    let out = b.cmd().args(["resume"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its supervisor runs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    simulate_reboot(&b, &p);
    // --dry-run says what would come back and does nothing.
    let out = b.cmd().args(["resume", "--dry-run"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix(&format!("project {p}: resuming ")))
        .unwrap_or_else(|| panic!("{err}"));
    let mut said: Vec<&str> = line.split(", ").collect();
    said.sort();
    assert_eq!(
        said,
        ["always", "always_stopped", "shares", "unless"],
        "{err}"
    );
    assert!(!b
        .root
        .path()
        .join("run/projects")
        .join(&p)
        .join("supervisor.sock")
        .exists());

    let out = b.cmd().args(["resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "resume failed: {err}");

    let want = vec![
        ("always".to_string(), "running".to_string()),
        ("always_stopped".to_string(), "running".to_string()),
        ("never".to_string(), "exited".to_string()),
        ("onfail".to_string(), "exited".to_string()),
        ("shares".to_string(), "running".to_string()),
        ("unless".to_string(), "running".to_string()),
        ("unless_stopped".to_string(), "exited".to_string()),
    ];
    assert_eq!(states(&b, &f), want, "resume said: {err}");
    let data = b.ok(&f, &["exec", "-T", "always", "cat", "/data/f"]);
    assert_eq!(data.trim(), "kept", "the named volume's data came back");
    // Its secret is back in its tmpfs; the container sharing its netns is in it again.
    let secret = b.ok(&f, &["exec", "-T", "always", "cat", "/run/secrets/token"]);
    assert_eq!(secret, "s3cret");
    let addrs = |svc: &str| {
        b.ok(
            &f,
            &["exec", "-T", svc, "ip", "-4", "-o", "addr", "show", "eth0"],
        )
    };
    let theirs = addrs("always");
    assert!(theirs.contains("inet "), "{theirs}");
    assert_eq!(addrs("shares"), theirs, "shares always's network namespace");
    // The resumed containers are on the network again: names resolve.
    b.ok(&f, &["exec", "-T", "unless", "nslookup", "always"]);
    // Restarted, not recreated (as Docker): the same bundles, the writable layer kept.
    for svc in ["always", "unless"] {
        let mine = b.ok(&f, &["exec", "-T", svc, "cat", "/etc/mine"]);
        assert_eq!(mine.trim(), svc, "{svc}'s own filesystem came back");
    }

    // A container that stayed stopped across the reboot can be started again.
    b.ok(&f, &["start", "never", "unless_stopped"]);
    let st = states(&b, &f);
    for svc in ["never", "unless_stopped"] {
        assert!(
            st.contains(&(svc.to_string(), "running".to_string())),
            "{st:?}"
        );
        let mine = b.ok(&f, &["exec", "-T", svc, "cat", "/etc/mine"]);
        assert_eq!(mine.trim(), svc, "{svc}'s own filesystem came back");
    }
    let now: Vec<_> = ["always", "unless", "unless_stopped", "never"]
        .iter()
        .map(|s| bundle_mtime(s))
        .collect();
    assert_eq!(
        now, bundles,
        "the same containers, their bundles not written again"
    );
    // Their network is whole again: a name resolves and the peer answers.
    b.ok(
        &f,
        &[
            "exec", "-T", "never", "ping", "-c", "1", "-W", "5", "always",
        ],
    );

    // Only the supervisor dies (no reboot): resume adopts the running containers, the same
    // processes, instead of recreating them.
    let pid_of = |svc: &str| -> i64 { b.container(&p, svc)["pid"].as_i64().unwrap() };
    let before = pid_of("always");
    let sup = b.supervisor_pid(&p);
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        (!alive(sup as i64)).then_some(())
    });
    let out = b.cmd().args(["resume", &p]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pid_of("always"), before, "adopted, not recreated");
    assert!(alive(before));

    b.ok(&f, &["down", "-v", "-t", "1"]);
    assert!(b.state(&p).is_none());
    let l = leaks(b.root.path(), std::slice::from_ref(&p));
    assert!(l.is_empty(), "{l:#?}");
}

#[test]
fn systemd_install_writes_and_uninstall_removes_the_unit() {
    let b = Berth::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = b.run(&["systemd", "install", "--print"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    let exe = env!("CARGO_BIN_EXE_berth");
    assert!(
        text.contains(&format!("\nExecStart={exe} resume\n")),
        "{text}"
    );
    assert!(text.contains("\nAfter=network-online.target"), "{text}");
    assert!(text.contains(&format!(
        "\nEnvironment=BERTH_ROOT={}\n",
        b.root.path().display()
    )));
    let out = b.run(&["systemd", "install", "--unit-dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = dir.path().join("berth-resume.service");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text);
    let out = b.run(&["systemd", "uninstall", "--unit-dir", d]);
    assert!(out.status.success());
    assert!(!unit.exists());
}

//! Differential tests: the same bundle under berth-runtime and Debian's runc must look the
//! same from inside (caps, mounts, masked/read-only behaviour, ids, env, cwd, hostname,
//! rlimits, exit code).
mod common;

use std::process::{Command, Stdio};

use common::Ctr;
use serde_json::json;

const PROBE: &str = "id; hostname; pwd; env | sort; \
    grep -E '^(Cap|NoNewPrivs|Seccomp:|SigIgn|SigBlk)' /proc/self/status; ulimit -n; ulimit -Hn; umask; \
    awk '{print $5, $6}' /proc/self/mountinfo | sort; ls -l /dev | awk '{print $1, $NF}'; \
    cat /proc/kcore 2>/dev/null | wc -c; echo b > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?; \
    touch /sys/x 2>/dev/null; echo sys=$?; touch /x 2>/dev/null; echo root=$?; \
    unshare -U true 2>/dev/null; echo unshare=$?; exit 3";

fn runc_available() -> bool {
    Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Run the bundle under runc: (code, stdout).
fn runc_run(c: &Ctr, id: &str) -> (i32, String, String) {
    let root = c.dir.path().join("runc-root");
    let mut cmd = Command::new("runc");
    clean_signals(&mut cmd);
    let out = cmd
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&c.bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", id])
        .output();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both runtimes are started with default signal dispositions (the test harness inherits
/// ignored signals from its environment; runc passes inherited ones on, berth resets them).
fn clean_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            berth_runtime::process::reset_signals();
            Ok(())
        });
    }
}

/// runc also joins name=systemd and the unified hierarchy and leaves parents behind.
fn cleanup_runc_cgroups(path: &str) {
    let rel = path.trim_start_matches('/');
    for h in [
        "systemd", "unified", "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
        "pids",
    ] {
        let mut p = std::path::Path::new("/sys/fs/cgroup").join(h).join(rel);
        loop {
            let _ = std::fs::remove_dir(&p);
            match p.parent() {
                Some(par) if par.starts_with(format!("/sys/fs/cgroup/{h}/berth")) => {
                    p = par.to_path_buf()
                }
                _ => break,
            }
        }
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{h}/berth"));
    }
}

/// One comparison at a time: runc's `mkdir -p` of its cgroup is not safe against berth's (and
/// `cleanup_runc_cgroups`') removal of empty parents under the shared /berth/rt-test-<pid>,
/// which a comparison running beside it does (seen once in CI: runc's mkdir got ENOENT).
/// berth's own `Cgroup::create` redoes a parent removed under it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn compare(tag: &str, tweak: impl Fn(&mut serde_json::Value)) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = Ctr::new(tag);
    let mut spec = c.spec(&["sh", "-c", PROBE]);
    tweak(&mut spec);
    c.write(&spec);
    let mut cmd = c.cmd();
    clean_signals(&mut cmd);
    let out = cmd
        .args(["run", "--bundle"])
        .arg(&c.bundle)
        .arg(&c.id)
        .output()
        .unwrap();
    let (code, ours, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 3, "berth: {err}");
    let runc_id = format!("{}-runc", c.id);
    let runc_cg = format!("{}-runc", c.cgroups_path);
    spec["linux"]["cgroupsPath"] = json!(runc_cg);
    c.write(&spec);
    let (rcode, theirs, rerr) = runc_run(&c, &runc_id);
    cleanup_runc_cgroups(&runc_cg);
    assert_eq!(rcode, 3, "runc: {rerr}");
    // Intended difference: runc leaves the v1 /sys/fs/cgroup tmpfs writable (only the
    // hierarchies are ro); berth makes the tmpfs read-only too.
    let ours = ours.replace(
        "/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime",
        "/sys/fs/cgroup rw,nosuid,nodev,noexec,relatime",
    );
    let a: Vec<&str> = ours.lines().collect();
    let b: Vec<&str> = theirs.lines().collect();
    let only_ours: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_runc: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_ours.is_empty() && only_runc.is_empty(),
        "berth only: {only_ours:#?}\nrunc only: {only_runc:#?}"
    );
}

#[test]
fn same_view_as_runc_root() {
    need_root!();
    if !runc_available() {
        eprintln!("skipped: no runc");
        return;
    }
    compare("vsrunc", |_| {});
}

#[test]
fn same_view_as_runc_user_readonly_caps() {
    need_root!();
    if !runc_available() {
        eprintln!("skipped: no runc");
        return;
    }
    compare("vsrunc2", |spec| {
        spec["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [50, 10], "umask": 23});
        spec["process"]["cwd"] = json!("/tmp");
        spec["process"]["env"] = json!(["PATH=/bin", "A=1"]);
        spec["root"]["readonly"] = json!(true);
        spec["process"]["noNewPrivileges"] = json!(false);
        let caps = json!(["CAP_KILL", "CAP_NET_ADMIN", "CAP_SYS_CHROOT"]);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            spec["process"]["capabilities"][set] = caps.clone();
        }
        spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 512}]);
    });
}

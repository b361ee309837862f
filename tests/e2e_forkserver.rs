//! The runtime's fork server (`berth __runtime serve`, src/engine/runtime.rs): containers made
//! through it hold no fd of berth's, it is a child of the supervisor while it has work, it ends
//! when idle and with `down`, and a failing `create` still reports the runtime's error.
mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// Pids of this state root's fork servers.
fn servers(root: &Path) -> Vec<i32> {
    let runtime_root = root.join("run/runtime");
    let want = format!("--root\0{}\0serve\0", runtime_root.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).into_owned();
            // A container's init is forked from the server too and carries its command line
            // until it execs (an instant after `start`): it made its own session.
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let sid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(4)?
                .parse()
                .ok()?;
            (cmd.contains("__runtime") && cmd.contains(&want) && sid != pid).then_some(pid)
        })
        .collect()
}

fn ppid(pid: i32) -> Option<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    st.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A container's pid 1's open fds once it runs its own program (until then it is berth's init
/// code, with the runtime's own fds).
fn fds_after_exec(pid: i32) -> Vec<(i32, String)> {
    wait_for("the container's exec", Duration::from_secs(10), || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (comm.trim() != "berth").then_some(())
    });
    fds(pid)
}

/// A process's open fds, as (fd, link target).
fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    v.sort();
    v
}

/// `berth -f F up -d` with one variable set in its environment (and so the supervisor's),
/// asserting success.
fn up_with(b: &Berth, f: &Path, key: &str, value: &str) {
    let out = b
        .cmd()
        .env(key, value)
        .arg("-f")
        .arg(f)
        .args(["up", "-d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "up with {key}={value}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn containers_made_through_the_fork_server_hold_only_their_stdio() {
    let b = Berth::new();
    let p = unique("fsrv");
    let f = b.compose(
        &p,
        "services:\n  plain:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n  \
         tini:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    init: true\n  \
         term:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    tty: true\n",
    );
    // A long idle time: the server is still there when `up` returns.
    up_with(&b, &f, "BERTH_RUNTIME_FORK_IDLE_MS", "120000");
    let sup = b.supervisor_pid(&p);
    let srv = servers(b.root.path());
    assert_eq!(srv.len(), 1, "one fork server for the project: {srv:?}");
    assert_eq!(
        ppid(srv[0]),
        Some(sup),
        "the server is the supervisor's child"
    );
    // The server holds its stdio and the control socket, nothing of the requests it served.
    let sockets = fds(srv[0])
        .into_iter()
        .filter(|(fd, t)| *fd > 2 && t.starts_with("socket:"))
        .count();
    assert_eq!(sockets, 1, "the server's fds: {:?}", fds(srv[0]));
    for svc in ["plain", "tini", "term"] {
        let pid = b.container(&p, svc)["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            ppid(pid),
            Some(sup),
            "{svc}'s pid 1 is the supervisor's child"
        );
        // The pid comes from the runtime's state: no pid file is made per create.
        let bundle = b.root.path().join(format!("data/containers/{p}-{svc}-1"));
        assert!(bundle.join("config.json").exists());
        assert!(!bundle.join("init.pid").exists(), "{svc}: a pid file");
        let open = fds_after_exec(pid);
        let numbers: Vec<i32> = open.iter().map(|(fd, _)| *fd).collect();
        assert_eq!(
            numbers,
            vec![0, 1, 2],
            "{svc}'s pid 1 holds only its stdio: {open:?}"
        );
        if svc == "term" {
            assert!(open[0].1.starts_with("/dev/pts/"), "{svc}: {open:?}");
        } else {
            assert!(open[1].1.ends_with(".stdout"), "{svc}: {open:?}");
            assert!(open[2].1.ends_with(".stderr"), "{svc}: {open:?}");
        }
    }
    // Output and exit codes still flow: a one-off through the same server.
    let out = b
        .cmd()
        .arg("-f")
        .arg(&f)
        .args([
            "run",
            "--rm",
            "-T",
            "plain",
            "sh",
            "-c",
            "echo served; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "run's exit code: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("served"));
    b.ok(&f, &["down", "-t", "1"]);
    wait_for(
        "the fork server to end with down",
        Duration::from_secs(10),
        || servers(b.root.path()).is_empty().then_some(()),
    );
    // The supervisor reaped it before exiting: the keeper recorded no orphan's exit.
    let exits = b.root.path().join(format!("run/projects/{p}/exits"));
    let left: Vec<_> = std::fs::read_dir(&exits)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "exit records left after down: {left:?}");
}

#[test]
fn the_fork_server_ends_when_idle_and_comes_back() {
    let b = Berth::new();
    let p = unique("fidle");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    init: true\n",
    );
    up_with(&b, &f, "BERTH_RUNTIME_FORK_IDLE_MS", "300");
    wait_for(
        "the idle fork server to end",
        Duration::from_secs(10),
        || servers(b.root.path()).is_empty().then_some(()),
    );
    // The next create starts another one.
    b.ok(&f, &["restart", "-t", "1", "a"]);
    let st = b.container(&p, "a");
    assert_eq!(st["status"], "running", "{st}");
    b.ok(&f, &["down", "-t", "1"]);
    // A create that fails in the runtime reports the runtime's own error.
    let q = unique("fbad");
    let g = b.compose(
        &q,
        "services:\n  bad:\n    image: berth-test/busybox:1\n    command: [\"no-such-binary\"]\n",
    );
    let err = b.fails(&g, &["up", "-d"]);
    assert!(err.contains("no-such-binary"), "the runtime's error: {err}");
    b.ok(&g, &["down", "-t", "1"]);
    wait_for("no fork server after down", Duration::from_secs(10), || {
        servers(b.root.path()).is_empty().then_some(())
    });
}

#[test]
fn without_the_fork_server_create_re_execs() {
    let b = Berth::new();
    let p = unique("fnone");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n",
    );
    up_with(&b, &f, "BERTH_RUNTIME_FORK", "0");
    assert!(
        servers(b.root.path()).is_empty(),
        "no fork server when turned off"
    );
    let pid = b.container(&p, "a")["pid"].as_i64().unwrap() as i32;
    let numbers: Vec<i32> = fds_after_exec(pid).iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    b.ok(&f, &["down", "-t", "1"]);
}

#[test]
fn a_dead_fork_server_costs_one_re_exec_then_is_replaced() {
    let b = Berth::new();
    let p = unique("fdead");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    init: true\n",
    );
    up_with(&b, &f, "BERTH_RUNTIME_FORK_IDLE_MS", "120000");
    let srv = servers(b.root.path());
    assert_eq!(srv.len(), 1, "{srv:?}");
    // SAFETY: a plain kill of the server this test's project started.
    unsafe { libc::kill(srv[0], libc::SIGKILL) };
    wait_for("the killed server to go", Duration::from_secs(10), || {
        let st = std::fs::read_to_string(format!("/proc/{}/stat", srv[0])).unwrap_or_default();
        (st.is_empty() || st.contains(") Z ")).then_some(())
    });
    // The next create finds it gone before it forked anything: the runtime is re-executed.
    b.ok(&f, &["restart", "-t", "1", "a"]);
    assert_eq!(b.container(&p, "a")["status"], "running");
    // And the one after starts a new server.
    b.ok(&f, &["restart", "-t", "1", "a"]);
    assert_eq!(b.container(&p, "a")["status"], "running");
    let now = servers(b.root.path());
    assert!(
        now.len() == 1 && now[0] != srv[0],
        "a new fork server: {now:?} (the old one was {})",
        srv[0]
    );
    b.ok(&f, &["down", "-t", "1"]);
}

/// The supervisor and its keeper hold none of the calling command's fds beyond stdio: a shell or
/// harness fd left without close-on-exec (fd 9 here) would otherwise stay open for the
/// supervisor's whole life, and in everything it starts.
#[test]
fn the_supervisor_holds_none_of_the_callers_fds() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let b = Berth::new();
    let p = unique("fdinh");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n",
    );
    let marker = tempfile::NamedTempFile::new().unwrap();
    let marker_path = marker.path().to_string_lossy().into_owned();
    let held = std::fs::File::open(marker.path()).unwrap();
    let raw = held.as_raw_fd();
    let mut cmd = b.cmd();
    cmd.arg("-f").arg(&f).args(["up", "-d"]);
    // SAFETY: dup2 is async-signal-safe; the new fd 9 has no close-on-exec, as a shell's would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sup = b.supervisor_pid(&p);
    let keeper = ppid(sup).unwrap();
    for (who, pid) in [("supervisor", sup), ("keeper", keeper)] {
        let open = fds(pid);
        assert!(
            !open.iter().any(|(_, t)| *t == marker_path),
            "the {who} holds the caller's fd 9: {open:?}"
        );
    }
    drop(held);
    b.ok(&f, &["down", "-t", "1"]);
}

/// `BERTH_TRACE=1`: the runtime's own steps of a `create` (create process and init) come back
/// on the command's timeline, in order; the trace file goes, and neither it nor anything else
/// of berth's reaches the container (its pid 1 holds only its stdio once it runs). The
/// supervisor's cgroup warming (`berth_runtime::warm`) moves nothing: the supervisor is in
/// the same cgroups after the `up` as before the create.
#[test]
fn the_trace_shows_the_runtimes_steps_and_leaves_nothing_behind() {
    let b = Berth::new();
    let p = unique("ftrace");
    let f = b.compose(
        &p,
        "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    init: true\n  \
         b:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n    depends_on: [a]\n",
    );
    let out = b
        .cmd()
        .env("BERTH_TRACE", "1")
        .arg("-f")
        .arg(&f)
        .args(["up", "-d"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "up: {err}");
    let ms = |step: &str| -> f64 {
        let line = err
            .lines()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no {step:?} in the trace:\n{err}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let a = format!("{p}-a-1: ");
    let steps = [
        "runtime create (fork server)",
        "runtime create: start",
        "runtime create: cgroup made",
        "runtime create: init moved into its cgroup",
        "runtime init: namespaces unshared",
        "runtime init: pivot_root, old root detached",
        "runtime init: user, capabilities, seccomp",
        "runtime create: init ready",
        "runtime created, init",
    ];
    let times: Vec<f64> = steps.iter().map(|s| ms(&format!("{a}{s}"))).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "steps out of order: {:?}\n{err}",
        steps.iter().zip(&times).collect::<Vec<_>>()
    );
    let bundle = b.root.path().join(format!("data/containers/{p}-a-1"));
    assert!(
        !bundle.join("create.trace").exists(),
        "the trace file stays in {}",
        bundle.display()
    );
    let sup = b.supervisor_pid(&p);
    let cg = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let keeper = ppid(sup).unwrap();
    assert_eq!(
        cg(sup),
        cg(keeper),
        "the supervisor left its keeper's cgroups"
    );
    for svc in ["a", "b"] {
        let pid = b.container(&p, svc)["pid"].as_i64().unwrap() as i32;
        let open: Vec<i32> = fds_after_exec(pid).iter().map(|(fd, _)| *fd).collect();
        assert_eq!(
            open,
            vec![0, 1, 2],
            "{svc}'s pid 1 holds more than its stdio"
        );
    }
    b.ok(&f, &["down", "-t", "1"]);
}

/// A tmpfs mounted for the length of a test (unmounted even when the test fails).
struct TmpMount(std::path::PathBuf);

impl TmpMount {
    fn new(at: &Path) -> TmpMount {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "berth-test", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs on {}", at.display());
        TmpMount(at.to_path_buf())
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

/// Containers made through the fork server start from its mount template (a copy of the host's
/// mounts without every container's rootfs and netns mount, `berth_runtime::mnttmpl`), and
/// still see what the host mounted after the template was made: their bind sources are copied
/// from the host's namespace. A rootfs the template cannot show (its bundle on a mount newer
/// than the template) takes the usual path and runs as well.
#[test]
fn containers_start_from_the_mount_template_and_see_the_hosts_later_mounts() {
    let b = Berth::new();
    let p = unique("ftmpl");
    let late = tempfile::tempdir().unwrap();
    let src = late.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = b.compose(
        &p,
        &format!(
            "services:\n  a:\n    image: berth-test/busybox:1\n    command: [\"sleep\", \"300\"]\n  \
             b:\n    image: berth-test/busybox:1\n    command: [\"sh\", \"-c\", \"cat /v/late; sleep 300\"]\n    volumes: [\"{}:/v\"]\n  \
             c:\n    image: berth-test/busybox:1\n    command: [\"sh\", \"-c\", \"echo c runs; sleep 300\"]\n",
            src.display()
        ),
    );
    let up = |svc: &str| -> String {
        let out = b
            .cmd()
            .env("BERTH_TRACE", "1")
            .env("BERTH_RUNTIME_FORK_IDLE_MS", "120000")
            .arg("-f")
            .arg(&f)
            .args(["up", "-d", svc])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "up {svc}: {err}");
        err
    };
    let joined = |trace: &str, svc: &str| {
        trace.contains(&format!("{p}-{svc}-1: runtime init: mount template joined"))
    };
    let t = up("a");
    assert!(joined(&t, "a"), "a did not start from the template:\n{t}");
    let srv = servers(b.root.path());
    assert_eq!(srv.len(), 1, "one fork server: {srv:?}");
    // Mounted after the server made its template.
    let _m = TmpMount::new(&src);
    std::fs::write(src.join("late"), "from a later mount\n").unwrap();
    let t = up("b");
    assert!(joined(&t, "b"), "b did not start from the template:\n{t}");
    assert_eq!(servers(b.root.path()), srv, "b was made by the same server");
    // c's bundle directory is a mount newer than the template: its rootfs is not there.
    let _c = TmpMount::new(&b.root.path().join(format!("data/containers/{p}-c-1")));
    let t = up("c");
    assert!(
        !joined(&t, "c"),
        "c joined a template that cannot show its rootfs:\n{t}"
    );
    wait_for("b and c to write", Duration::from_secs(10), || {
        let logs = b.ok(&f, &["logs", "--no-log-prefix"]);
        (logs.contains("from a later mount") && logs.contains("c runs")).then_some(())
    });
    b.ok(&f, &["down", "-t", "1"]);
}

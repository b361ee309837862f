//! End-to-end: rootless berth. The test (root) makes a unique unprivileged user with a home
//! (and, through useradd, a /etc/subuid range), gives it the berth binary and the busybox
//! image, and as that user loads the image and brings up a two-service stack: `web` (busybox
//! httpd, published on 127.0.0.1) and `client`. From the host: the published port serves the
//! page; `client` resolves `web` through the embedded DNS and fetches from it; `ps` shows both
//! running; `down` leaves no process of the user, no mount and nothing in its run directory.
//! Everything of the user (processes, namespaces, files) is removed at the end, even on failure.
//! Where the kernel refuses unprivileged user namespaces the test prints why and returns.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// The test's user, removed with everything it has when dropped.
struct TestUser {
    name: String,
    uid: u32,
    home: PathBuf,
    /// `XDG_RUNTIME_DIR` given to berth, if any (as a systemd login session has).
    xdg_runtime: Option<PathBuf>,
}

impl TestUser {
    fn create() -> TestUser {
        let name = format!("brl{}", unique("u").trim_start_matches('u'));
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", &name])
            .output()
            .expect("running useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = PathBuf::from(format!("/home/{name}"));
        let uid = std::fs::metadata(&home).expect("the new user's home").uid();
        TestUser {
            name,
            uid,
            home,
            xdg_runtime: None,
        }
    }

    /// The pids of the user's processes (zombies included: they are gone only once reaped).
    fn processes(&self) -> Vec<(i32, String)> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(md) = std::fs::metadata(e.path()) else {
                continue;
            };
            if md.uid() == self.uid {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                v.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
        v
    }

    fn run_dir(&self) -> PathBuf {
        match &self.xdg_runtime {
            Some(x) => x.join("berth"),
            None => PathBuf::from(format!("/tmp/berth-{}", self.uid)),
        }
    }

    /// Give berth an `XDG_RUNTIME_DIR` under /run, as logind makes it.
    fn with_xdg_runtime(&mut self) {
        let x = PathBuf::from(format!("/run/user/{}", self.uid));
        std::fs::create_dir_all(&x).unwrap();
        std::os::unix::fs::chown(&x, Some(self.uid), Some(self.uid)).unwrap();
        std::fs::set_permissions(&x, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        self.xdg_runtime = Some(x);
    }

    /// `berth ARGS` as the user, in `dir`, with a clean environment, bounded in time.
    fn berth(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("180")
            .args(["runuser", "-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            // A plain user's PATH (Debian's): no sbin dirs, where nft lives.
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .args(
                self.xdg_runtime
                    .iter()
                    .map(|x| format!("XDG_RUNTIME_DIR={}", x.display())),
            )
            .arg(self.home.join("berth"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running berth as the test user")
    }

    /// `berth ARGS` as the user, started (by a root shell, as systemd starts a user's
    /// service) in the cgroup `cg` (its leaf, once berth has moved the processes there).
    fn berth_in(&self, cg: &Delegated, dir: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("180")
            .arg("sh")
            .arg("-c")
            .arg(
                "for d in $CGS; do if [ -d $d/berth-leaf ]; then d=$d/berth-leaf; fi; \
                 echo $$ > $d/cgroup.procs || exit 97; done; exec \"$@\"",
            )
            .arg("sh")
            .env(
                "CGS",
                cg.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .args(["runuser", "-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg(self.home.join("berth"))
            .args(args)
            .current_dir(dir);
        cmd.output().expect("running berth as the test user")
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.berth(dir, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "berth {args:?} as {}: {text}",
            self.name
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes first (the namespace holder keeps the user's namespaces), bounded.
        for _ in 0..50 {
            let procs = self.processes();
            if procs.is_empty() {
                break;
            }
            for (pid, _) in procs {
                // SAFETY: signalling a process of the test's own user.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("userdel")
            .args(["--remove", "--force", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.run_dir());
        if let Some(x) = &self.xdg_runtime {
            let _ = std::fs::remove_dir_all(x);
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Why unprivileged user namespaces cannot be made here, if they cannot.
fn userns_refused(user: &TestUser) -> Option<String> {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return Some("user.max_user_namespaces is 0".into());
    }
    let out = Command::new("timeout")
        .args(["30", "runuser", "-u", &user.name, "--"])
        .args(["unshare", "--user", "--map-root-user", "true"])
        .output()
        .expect("running unshare");
    (!out.status.success()).then(|| {
        format!(
            "unshare --user as an unprivileged user fails: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Give the user a file: a hard link where the file system allows, else a copy.
fn give(user: &TestUser, from: &Path, name: &str) -> PathBuf {
    let to = user.home.join(name);
    if std::fs::hard_link(from, &to).is_err() {
        std::fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(user.uid), None).unwrap();
    }
    to
}

#[test]
fn rootless_stack_with_dns_and_published_port() {
    require_root();
    let user = TestUser::create();
    if let Some(why) = userns_refused(&user) {
        eprintln!("SKIPPED rootless test: the kernel forbids unprivileged user namespaces: {why}");
        return;
    }
    // useradd gave the user a /etc/subuid range: mapped through newuidmap/newgidmap.
    stack_as(&user);
}

/// A user without a /etc/subuid range: berth maps the user's own ids only (no setuid helper
/// involved) and the same stack works; its run dir here is under `XDG_RUNTIME_DIR` in /run
/// (the namespace's own /run must keep showing it).
#[test]
fn rootless_stack_with_a_single_id_map() {
    require_root();
    let mut user = TestUser::create();
    user.with_xdg_runtime();
    if let Some(why) = userns_refused(&user) {
        eprintln!("SKIPPED rootless test: the kernel forbids unprivileged user namespaces: {why}");
        return;
    }
    for (flag, file) in [
        ("--del-subuids", "/etc/subuid"),
        ("--del-subgids", "/etc/subgid"),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{}:", user.name)));
        if let Some(range) = line.and_then(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let start: u64 = f.get(1)?.parse().ok()?;
            let count: u64 = f.get(2)?.parse().ok()?;
            Some(format!("{start}-{}", start + count - 1))
        }) {
            let out = Command::new("usermod")
                .args([flag, &range, &user.name])
                .output()
                .unwrap();
            assert!(out.status.success(), "usermod {flag}: {out:?}");
        }
    }
    stack_as(&user);
    // The holder's namespace mapped exactly one id (checked while it ran, in stack_as).
}

fn stack_as(user: &TestUser) {
    give(user, Path::new(env!("CARGO_BIN_EXE_berth")), "berth");
    give(user, &image_tar(), "image.tar");
    let proj = user.home.join("proj");
    std::fs::create_dir(&proj).unwrap();
    let port = free_port();
    std::fs::write(
        proj.join("compose.yaml"),
        format!(
            r#"name: rl
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && echo hello-rootless > /www/index.html && httpd -p 8080 -h /www && exec httpd -f -p 80 -h /www"]
    init: true
    stop_grace_period: 2s
    ports:
      - "127.0.0.1:{port}:80"
      - "127.0.0.1::8080"
  client:
    image: {IMAGE}
    command: ["sleep", "3600"]
    init: true
    stop_grace_period: 2s
    mem_limit: 64m
"#
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&proj, Some(user.uid), None).unwrap();
    std::os::unix::fs::chown(proj.join("compose.yaml"), Some(user.uid), None).unwrap();

    // Reading the Compose file needs no namespace: nothing is started for it.
    let cfg = user.ok(&proj, &["config", "--services"]);
    assert!(cfg.contains("web") && cfg.contains("client"), "{cfg}");
    assert!(user.processes().is_empty(), "{:?}", user.processes());

    let out = user.ok(&proj, &["load", "-i", "../image.tar"]);
    assert!(out.contains(IMAGE), "{out}");
    // The user's data lives under ~/.local/share/berth, its runtime state under /tmp/berth-<uid>
    // (no XDG_RUNTIME_DIR here).
    assert!(user.home.join(".local/share/berth/images").is_dir());
    // The namespace maps the user as root, plus its /etc/subuid range when it has one.
    let pids = std::fs::read_to_string(user.run_dir().join("rootless/ns.pid")).unwrap();
    let child = pids.split_whitespace().nth(1).expect("holder pids");
    let map = std::fs::read_to_string(format!("/proc/{child}/uid_map")).unwrap();
    let map: Vec<Vec<String>> = map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(map[0], ["0", &user.uid.to_string(), "1"], "{map:?}");
    let has_range = std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{}:", user.name)));
    // (The range goes through newuidmap/newgidmap: Debian's uidmap, which .ci/run installs.)
    let helpers = ["/usr/bin/newuidmap", "/usr/bin/newgidmap"]
        .iter()
        .all(|p| Path::new(p).exists());
    assert_eq!(
        map.len(),
        if has_range && helpers { 2 } else { 1 },
        "{map:?}"
    );
    // Its /run is its own (a tmpfs), with the host's entries bound back and private lock and
    // switch dirs.
    let mounts = std::fs::read_to_string(format!("/proc/{child}/mountinfo")).unwrap();
    let at = |p: &str| {
        mounts
            .lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(p))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        at("/run").iter().any(|l| l.contains(" - tmpfs ")),
        "{mounts}"
    );
    assert!(!at("/run/lock").is_empty(), "{mounts}");
    assert!(!at("/run/berth-switch").is_empty(), "{mounts}");
    assert_eq!(
        std::fs::metadata(user.run_dir()).unwrap().mode() & 0o777,
        0o700
    );

    let up = user.berth(&proj, &["up", "-d"]);
    let up_err = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up: {up_err}");
    // No cgroup delegation here (no systemd user session): the limit cannot be applied, and
    // `up` says so, naming the service.
    assert!(
        up_err.contains("resource limits of client are not applied"),
        "{up_err}"
    );
    // ... and what to enable.
    assert!(
        up_err.contains("no cgroup delegation for this user") && up_err.contains("Delegate="),
        "{up_err}"
    );

    // The published port, from the host's loopback.
    let page = wait_for("the published port", Duration::from_secs(30), || {
        http_get(port, "/index.html")
    });
    assert!(page.contains("hello-rootless"), "{page}");

    // A random host port (`127.0.0.1::8080`) is one the host had free, and it serves too.
    let shown = user.ok(&proj, &["port", "web", "8080"]);
    let random: u16 = shown
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("berth port: {shown:?}"));
    assert_ne!(random, port);
    let page = wait_for("the random published port", Duration::from_secs(30), || {
        http_get(random, "/index.html")
    });
    assert!(page.contains("hello-rootless"), "{page}");

    // Service names through the embedded DNS, and a fetch by name, inside the stack.
    let ns = user.ok(&proj, &["exec", "client", "nslookup", "web"]);
    assert!(ns.contains("Name:") && ns.contains("web"), "{ns}");
    let fetched = user.ok(&proj, &["exec", "client", "wget", "-qO-", "http://web/"]);
    assert!(fetched.contains("hello-rootless"), "{fetched}");

    // The holder killed under a running stack: the next command's new holder keeps the
    // stack's namespaces (found through its supervisor), so `exec` still reaches it.
    let old = std::fs::read_to_string(user.run_dir().join("rootless/ns.pid")).unwrap();
    let old: Vec<i32> = old.split_whitespace().map(|p| p.parse().unwrap()).collect();
    // SAFETY: killing the test user's holder by its pid.
    unsafe { libc::kill(old[0], libc::SIGKILL) };
    wait_for("the old holder to die", Duration::from_secs(10), || {
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|st| {
                    st.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        (gone(old[0]) && gone(old[1])).then_some(())
    });
    let fetched = user.ok(&proj, &["exec", "client", "wget", "-qO-", "http://web/"]);
    assert!(fetched.contains("hello-rootless"), "{fetched}");
    let new = std::fs::read_to_string(user.run_dir().join("rootless/ns.pid")).unwrap();
    let new_child = new.split_whitespace().nth(1).unwrap();
    let sup = std::fs::read_to_string(user.run_dir().join("projects/rl/supervisor.pid")).unwrap();
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_eq!(
        ns(new_child),
        ns(sup.trim()),
        "a new, empty namespace was made"
    );
    assert!(http_get(port, "/index.html").is_some());

    let ps = user.ok(&proj, &["ps"]);
    for c in ["rl-web-1", "rl-client-1"] {
        let line = ps.lines().find(|l| l.starts_with(c));
        assert!(
            line.is_some_and(|l| l.contains("Up")),
            "{c} not running: {ps}"
        );
    }
    // Nothing of the user's stack is in the host's namespaces: the bridge, the nft rules and
    // the containers' mounts are the rootless namespace's.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&user.home.to_string_lossy().to_string()),
        "a mount of the user's in the host's mount namespace"
    );

    // A host port something else holds on the host (invisible from the rootless network
    // namespace), and one below the unprivileged port range: `up` refuses both, saying why,
    // and leaves nothing of that project.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let other = user.home.join("other");
    std::fs::create_dir(&other).unwrap();
    std::os::unix::fs::chown(&other, Some(user.uid), None).unwrap();
    let low_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut cases = vec![(busy_port, "in use")];
    if low_start > 1 {
        cases.push((1, "ip_unprivileged_port_start"));
    }
    for (hp, why) in cases {
        std::fs::write(
            other.join("compose.yaml"),
            format!(
                "name: rl2\nservices:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"60\"]\n    ports: [\"127.0.0.1:{hp}:80\"]\n"
            ),
        )
        .unwrap();
        let out = user.berth(&other, &["up", "-d"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "up with host port {hp} succeeded: {err}"
        );
        assert!(
            err.contains(&format!("port {hp}/tcp on the host")) && err.contains(why),
            "{err}"
        );
    }
    drop(busy);
    let ps = user.ok(&other, &["ps", "-a"]);
    assert!(!ps.contains("rl2-web"), "{ps}");

    user.ok(&proj, &["down"]);
    let left = wait_for_none(user);
    assert!(
        left.is_empty(),
        "processes of the user after down: {left:?}"
    );
    assert!(
        http_get(port, "/index.html").is_none(),
        "the port still answers"
    );
    let run_left: Vec<PathBuf> = walk(&user.run_dir());
    assert!(run_left.is_empty(), "left in the run dir: {run_left:?}");
}

/// Wait (bounded) until the user has no process; what is left then.
fn wait_for_none(user: &TestUser) -> Vec<(i32, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let p = user.processes();
        if p.is_empty() || std::time::Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        v.push(e.path());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            v.extend(walk(&e.path()));
        }
    }
    v
}

/// A cgroup delegated to the test user the way systemd's `Delegate=yes` does it: the directory
/// and its cgroup.procs, cgroup.subtree_control, cgroup.threads (v1: tasks) chowned to the
/// user, the controllers enabled in the parent. On a v1 host, the same path in every
/// hierarchy. Removed (processes moved back to the root first) when dropped.
struct Delegated {
    dirs: Vec<PathBuf>,
    v2: bool,
}

const V1: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];

impl Delegated {
    fn create(user: &TestUser) -> Delegated {
        let name = unique("brlcg");
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let roots: Vec<PathBuf> = if v2 {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            V1.iter()
                .map(|h| Path::new("/sys/fs/cgroup").join(h))
                .filter(|p| p.exists())
                .collect()
        };
        let mut me = Delegated { dirs: vec![], v2 };
        for root in roots {
            if v2 {
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory +pids");
            }
            let d = root.join(&name);
            std::fs::create_dir(&d).unwrap();
            me.dirs.push(d.clone());
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(root.join(f)) {
                    let _ = std::fs::write(d.join(f), v.trim());
                }
            }
            for f in [
                "",
                "cgroup.procs",
                "cgroup.subtree_control",
                "cgroup.threads",
                "tasks",
            ] {
                let p = if f.is_empty() { d.clone() } else { d.join(f) };
                if p.exists() {
                    std::os::unix::fs::chown(&p, Some(user.uid), Some(user.uid)).unwrap();
                }
            }
        }
        me
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        for d in &self.dirs {
            let root = d.parent().unwrap().to_path_buf();
            // Deepest first: move what still runs to the root, then remove the directory.
            let mut all = vec![d.clone()];
            all.extend(walk(d).into_iter().filter(|p| p.is_dir()));
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for c in all {
                for _ in 0..50 {
                    let procs = std::fs::read_to_string(c.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.split_whitespace() {
                        let _ = std::fs::write(root.join("cgroup.procs"), pid);
                    }
                    if std::fs::remove_dir(&c).is_ok() || !c.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// With a delegated cgroup (as systemd's `Delegate=yes` user@.service gives), the limits of a
/// rootless stack apply: the container's cgroup is under the delegated one, with its
/// memory and pids limits; `down` removes berth's cgroups.
#[test]
fn rootless_limits_in_a_delegated_cgroup() {
    require_root();
    let user = TestUser::create();
    if let Some(why) = userns_refused(&user) {
        eprintln!("SKIPPED rootless test: the kernel forbids unprivileged user namespaces: {why}");
        return;
    }
    let cg = Delegated::create(&user);
    give(&user, Path::new(env!("CARGO_BIN_EXE_berth")), "berth");
    give(&user, &image_tar(), "image.tar");
    let proj = user.home.join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(
        proj.join("compose.yaml"),
        format!(
            "name: dl\nservices:\n  limited:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    init: true\n    stop_grace_period: 2s\n    mem_limit: 64m\n    pids_limit: 77\n  plain:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    init: true\n    stop_grace_period: 2s\n"
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&proj, Some(user.uid), None).unwrap();
    std::os::unix::fs::chown(proj.join("compose.yaml"), Some(user.uid), None).unwrap();
    let run = |args: &[&str]| {
        let out = user.berth_in(&cg, &proj, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "berth {args:?}: {text}");
        text
    };
    run(&["load", "-i", "../image.tar"]);
    let up = run(&["up", "-d"]);
    assert!(!up.contains("not applied"), "{up}");
    // From the host: the container's cgroup is under the delegated one, with the limits.
    let (mem_file, limit) = if cg.v2 {
        ("memory.max", "67108864")
    } else {
        ("memory.limit_in_bytes", "67108864")
    };
    let find = |file: &str| -> Vec<(PathBuf, String)> {
        cg.dirs
            .iter()
            .flat_map(|d| walk(&d.join("berth").join("dl")))
            .filter(|p| p.file_name().is_some_and(|n| n == file))
            .map(|p| {
                let v = std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                (p, v)
            })
            .collect()
    };
    let mem = find(mem_file);
    assert!(mem.iter().any(|(_, v)| v == limit), "{mem:?}");
    let pids = find("pids.max");
    assert!(pids.iter().any(|(_, v)| v == "77"), "{pids:?}");
    // berth's default pids limit, for the service that sets none.
    assert!(
        pids.iter()
            .any(|(p, v)| p.to_string_lossy().contains("dl-plain-1") && v == "2048"),
        "{pids:?}"
    );
    if cg.v2 {
        // The delegated cgroup holds no process itself (they moved to berth's leaf).
        let procs = std::fs::read_to_string(cg.dirs[0].join("cgroup.procs")).unwrap();
        assert!(procs.trim().is_empty(), "{procs}");
    }
    run(&["down"]);
    let left = wait_for_none(&user);
    assert!(left.is_empty(), "processes of the user left: {left:?}");
    for d in &cg.dirs {
        assert!(
            !d.join("berth").exists(),
            "{} left",
            d.join("berth").display()
        );
    }
}

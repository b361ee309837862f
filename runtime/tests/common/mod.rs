//! Shared helpers for the runtime's root tests: a busybox bundle in a temp dir, a Docker-like
//! spec, the CLI, and a Drop guard that removes the container, its cgroups and its state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub const DOCKER_CAPS: [&str; 14] = berth_runtime::capabilities::DOCKER_DEFAULT_CAPS;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip (return early) when not root: these tests need real namespaces.
#[macro_export]
macro_rules! need_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Build a busybox rootfs under `dir`.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in [
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/alice",
        "work",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if a == "busybox" || a.is_empty() {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(a));
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\nwheel:x:10:root,alice\nnogroup:x:65534:\n",
    )
    .unwrap();
}

pub struct Ctr {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
    pub cgroups_path: String,
}

impl Ctr {
    pub fn new(tag: &str) -> Ctr {
        let dir = tempfile::Builder::new()
            .prefix("berth-rt-")
            .tempdir()
            .unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("berth-t{}-{tag}-{n}", std::process::id());
        let bundle = dir.path().join("bundle");
        busybox_rootfs(&bundle.join("rootfs"));
        let root = dir.path().join("state");
        let cgroups_path = format!("/berth/rt-test-{}/{id}", std::process::id());
        Ctr {
            dir,
            root,
            bundle,
            id,
            cgroups_path,
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// A Docker-like spec: default caps, masked/ro paths, Docker's seccomp, NNP, cgroupns.
    pub fn spec(&self, args: &[&str]) -> Value {
        let caps: Vec<String> = DOCKER_CAPS.iter().map(|s| s.to_string()).collect();
        let seccomp = serde_json::to_value(berth_runtime::seccomp::docker_default(&caps)).unwrap();
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "berthbox",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}
            ],
            "linux": {
                "resources": {
                    "devices": [
                        {"allow": false, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"}
                    ],
                    "pids": {"limit": 2048}
                },
                "cgroupsPath": self.cgroups_path,
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                "maskedPaths": berth_runtime::rootfs::docker_masked_paths(),
                "readonlyPaths": berth_runtime::rootfs::DOCKER_READONLY_PATHS,
                "seccomp": seccomp
            }
        })
    }

    pub fn write(&self, spec: &Value) {
        std::fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(spec).unwrap(),
        )
        .unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `run` the spec in the foreground: (exit code, stdout, stderr).
    pub fn run(&self, spec: &Value) -> (i32, String, String) {
        self.write(spec);
        let out = self
            .cmd()
            .arg("run")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg(&self.id)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `create` (stdio to null, except stdout/stderr to files in the temp dir) then `start`.
    pub fn create(&self, spec: &Value) -> Output {
        self.write(spec);
        let out = std::fs::File::create(self.dir.path().join("out")).unwrap();
        let err = std::fs::File::create(self.dir.path().join("err")).unwrap();
        let status = self
            .cmd()
            .arg("create")
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(self.dir.path().join("pid"))
            .arg(&self.id)
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap();
        Output {
            status,
            stdout: vec![],
            stderr: std::fs::read(self.dir.path().join("err")).unwrap_or_default(),
        }
    }

    pub fn out(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    pub fn state(&self) -> berth_runtime::State {
        berth_runtime::state(&self.root, &self.id).unwrap()
    }

    /// Wait (bounded) until the container is stopped.
    pub fn wait_stopped(&self, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if self.state().status == berth_runtime::Status::Stopped {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    pub fn exec(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .cmd()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroups_path.trim_start_matches('/');
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().join(rel))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = berth_runtime::delete(&self.root, &self.id, true);
        // Belt and braces: a failed create may leave a cgroup; remove it and empty parents.
        if let Ok(cg) = berth_runtime::cgroups::Cgroup::new(&self.cgroups_path) {
            cg.kill_all();
            let _ = cg.remove();
        }
    }
}

/// Parse "CapEff:\t00000000a80425fb" from /proc/self/status text.
pub fn status_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().to_string())
    })
}

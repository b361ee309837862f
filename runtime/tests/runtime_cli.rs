//! The runtime driven through its CLI, as root, observing from inside the container.
mod common;

use common::{status_field, Ctr};
use serde_json::json;

#[test]
fn pid1_hostname_env_cwd_args_exactly() {
    need_root!();
    let c = Ctr::new("basic");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "echo \"pid=$$\"; hostname; pwd; echo \"args=$#:$1:$2\"; env | sort; ps -o pid,comm > /tmp/ps; tail -n +2 /tmp/ps | awk '{print $2}' | tr '\\n' ' '",
        "argv0",
        "one two",
        "x",
    ]);
    spec["process"]["cwd"] = json!("/work");
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz", "EMPTY="]);
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1");
    assert_eq!(lines[1], "berthbox");
    assert_eq!(lines[2], "/work");
    assert_eq!(lines[3], "args=2:one two:x");
    assert!(lines.contains(&"FOO=bar baz"), "{out}");
    assert!(lines.contains(&"EMPTY="), "{out}");
    assert!(lines.contains(&"PATH=/bin"), "{out}");
    assert!(!out.contains("CARGO"), "host env leaked: {out}");
    // Only sh (pid 1) and ps itself: no host process is visible.
    assert_eq!(lines.last().unwrap().trim(), "sh ps", "{out}");
}

#[test]
fn exit_codes_and_signals() {
    need_root!();
    let c = Ctr::new("exit");
    let (code, _, _) = c.run(&c.spec(&["sh", "-c", "exit 42"]));
    assert_eq!(code, 42);
    // The init killed from outside: 128+9.
    let c = Ctr::new("sig");
    c.write(&c.spec(&["sleep", "30"]));
    let mut child = c
        .cmd()
        .args(["run", "--bundle"])
        .arg(&c.bundle)
        .arg(&c.id)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while berth_runtime::state(&c.root, &c.id).map(|s| s.status).ok()
        != Some(berth_runtime::Status::Running)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    berth_runtime::kill(&c.root, &c.id, nix::sys::signal::Signal::SIGKILL, false).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
    let c = Ctr::new("nocmd");
    let (code, _, err) = c.run(&c.spec(&["no-such-command"]));
    assert_ne!(code, 0);
    assert!(err.contains("executable file not found"), "{err}");
    assert!(
        !std::path::Path::new(&c.root).join(&c.id).exists(),
        "state left after failed create"
    );
    assert!(
        c.cgroup_dirs().is_empty(),
        "cgroup left after failed create"
    );
}

#[test]
fn lifecycle_state_kill_delete_leaves_nothing() {
    need_root!();
    let c = Ctr::new("life");
    let out = c.create(&c.spec(&["sh", "-c", "echo started; exec sleep 60"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.state();
    assert_eq!(st.status, berth_runtime::Status::Created);
    let pid_file: i32 = std::fs::read_to_string(c.dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid_file, st.pid);
    // The state keeps the spec this create read: the bundle's file itself (a hard link, no
    // new inode, bundle and state on one file system here), which a later rewrite of the
    // bundle's config.json (a new file renamed over it) leaves alone.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let kept = c.root.join(&c.id).join("config.json");
    assert_eq!(ino(&kept), ino(&c.bundle.join("config.json")));
    let other = c.spec(&["true"]);
    let tmp = c.bundle.join("config.json.new");
    std::fs::write(&tmp, serde_json::to_vec(&other).unwrap()).unwrap();
    std::fs::rename(&tmp, c.bundle.join("config.json")).unwrap();
    let kept_spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(
        kept_spec["process"]["args"][0], "sh",
        "the kept spec changed with the bundle"
    );
    // Not started: the user process has not run.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(c.out(), "");
    let json: serde_json::Value = serde_json::from_slice(&c.cli(&["state", &c.id]).stdout).unwrap();
    assert_eq!(json["status"], "created");
    assert_eq!(json["ociVersion"], "1.0.2");
    assert!(c.cli(&["start", &c.id]).status.success());
    assert_eq!(c.state().status, berth_runtime::Status::Running);
    assert!(!c.cli(&["start", &c.id]).status.success(), "start twice");
    assert!(
        !c.cli(&["delete", &c.id]).status.success(),
        "delete running without force"
    );
    let list = String::from_utf8_lossy(&c.cli(&["list", "--format", "json"]).stdout).into_owned();
    assert!(list.contains(&c.id));
    let pids: Vec<i32> =
        serde_json::from_slice(&c.cli(&["ps", "--format", "json", &c.id]).stdout).unwrap();
    assert_eq!(pids, vec![st.pid]);
    assert!(c.cli(&["pause", &c.id]).status.success());
    assert_eq!(c.state().status, berth_runtime::Status::Paused);
    assert!(c.cli(&["resume", &c.id]).status.success());
    assert_eq!(c.state().status, berth_runtime::Status::Running);
    assert!(c.cli(&["kill", &c.id, "TERM"]).status.success());
    // sleep as pid 1 has no handler: TERM is ignored (like Docker without init).
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(c.state().status, berth_runtime::Status::Running);
    assert!(c.cli(&["kill", &c.id, "9"]).status.success());
    assert!(c.wait_stopped(5));
    assert!(c.out().contains("started"));
    let rootfs = c.rootfs();
    assert!(c.cli(&["delete", &c.id]).status.success());
    assert!(c.cgroup_dirs().is_empty());
    assert!(!c.root.join(&c.id).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(rootfs.to_str().unwrap()),
        "mount left on the host"
    );
    assert!(!c.cli(&["state", &c.id]).status.success());
}

#[test]
fn in_process_api_and_stats() {
    need_root!();
    let c = Ctr::new("api");
    let mut spec = c.spec(&["sleep", "30"]);
    spec["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    spec["linux"]["resources"]["pids"] = json!({"limit": 50});
    assert!(c.create(&spec).status.success());
    berth_runtime::start(&c.root, &c.id).unwrap();
    let s = berth_runtime::stats(&c.root, &c.id).unwrap();
    assert_eq!(s.memory_limit, Some(64 << 20));
    assert_eq!(s.pids_limit, Some(50));
    assert_eq!(s.pids_current, 1);
    assert_eq!(berth_runtime::pids(&c.root, &c.id).unwrap().len(), 1);
    assert!(berth_runtime::list(&c.root)
        .unwrap()
        .iter()
        .any(|s| s.id == c.id));
    let cli: serde_json::Value =
        serde_json::from_slice(&c.cli(&["events", "--stats", &c.id]).stdout).unwrap();
    assert_eq!(cli["data"]["pids_limit"], 50);
    assert_eq!(cli["type"], "stats");
    berth_runtime::kill(
        &c.root,
        &c.id,
        berth_runtime::parse_signal("SIGKILL").unwrap(),
        false,
    )
    .unwrap();
    assert!(c.wait_stopped(5));
    berth_runtime::delete(&c.root, &c.id, false).unwrap();
    assert!(c.cgroup_dirs().is_empty());
}

#[test]
fn capabilities_default_and_changed() {
    need_root!();
    let c = Ctr::new("caps");
    let (code, out, err) = c.run(&c.spec(&["cat", "/proc/self/status"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_field(&out, "CapEff").unwrap(), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapBnd").unwrap(), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapPrm").unwrap(), "00000000a80425fb");
    assert_eq!(status_field(&out, "CapInh").unwrap(), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs").unwrap(), "1");
    assert_eq!(status_field(&out, "Seccomp").unwrap(), "2");

    // cap_add NET_ADMIN, cap_drop CHOWN
    let c = Ctr::new("caps2");
    let mut caps: Vec<String> = common::DOCKER_CAPS.iter().map(|s| s.to_string()).collect();
    caps.retain(|c| c != "CAP_CHOWN");
    caps.push("CAP_NET_ADMIN".into());
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "cat /proc/self/status; chown 1 /tmp; echo chown=$?",
    ]);
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set] = json!(caps);
    }
    let (code, out, _) = c.run(&spec);
    assert_eq!(code, 0);
    let want = berth_runtime::capabilities::mask_of(&caps);
    assert_eq!(
        u64::from_str_radix(&status_field(&out, "CapEff").unwrap(), 16).unwrap(),
        want
    );
    assert!(
        out.contains("chown=1"),
        "chown must fail without CAP_CHOWN: {out}"
    );
}

#[test]
fn user_and_groups_by_name() {
    need_root!();
    let c = Ctr::new("user");
    let u = berth_runtime::user::resolve(&c.rootfs(), "alice", &["wheel".into()]).unwrap();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "id; cat /proc/self/status | grep -E '^(CapEff|Groups)'; touch /root/x; echo touch=$?",
    ]);
    spec["process"]["user"] =
        json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("uid=1000(alice) gid=1000(alice) groups="),
        "{out}"
    );
    assert!(
        out.contains("50(staff)") && out.contains("10(wheel)"),
        "{out}"
    );
    // A non-root user has no effective capabilities after execve.
    assert_eq!(status_field(&out, "CapEff").unwrap(), "0000000000000000");
    assert!(out.contains("touch=1"), "{out}");
}

#[test]
fn masked_and_readonly_paths() {
    need_root!();
    let c = Ctr::new("mask");
    let script =
        "cat /proc/kcore 2>/dev/null | wc -c; cat /proc/keys | wc -c; ls /sys/firmware | wc -l; \
                  echo 1 > /proc/sys/kernel/domainname 2>/dev/null; echo sys=$?; \
                  echo b > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?; \
                  touch /sys/x 2>/dev/null; echo sysfs=$?; \
                  mkdir /sys/fs/cgroup/memory/x 2>/dev/null; echo cgroup=$?";
    let (code, out, err) = c.run(&c.spec(&["sh", "-c", script]));
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(&l[..3], &["0", "0", "0"], "{out}");
    assert_eq!(
        &l[3..],
        &["sys=1", "sysrq=1", "sysfs=1", "cgroup=1"],
        "{out}"
    );
}

#[test]
fn readonly_rootfs_and_tmpfs_bind_mounts() {
    need_root!();
    let c = Ctr::new("ro");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from host\n").unwrap();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null; echo root=$?; cat /data/f; touch /data/g 2>/dev/null; echo data=$?; \
         touch /rw/h; echo rw=$?; touch /scratch/t; echo tmp=$?; stat -c %a /scratch; df -k /scratch | tail -1 | awk '{print $2}'",
    ]);
    spec["root"]["readonly"] = json!(true);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/rw", "type": "bind", "source": host.path(), "options": ["bind", "rw", "rprivate"]}));
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=1770"]}));
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(
        l,
        vec![
            "root=1",
            "from host",
            "data=1",
            "rw=0",
            "tmp=0",
            "1770",
            "1024"
        ],
        "{out}"
    );
    assert!(host.path().join("h").exists());
}

#[test]
fn seccomp_blocks_unshare_keyctl_and_mount() {
    need_root!();
    let c = Ctr::new("seccomp");
    let script = "unshare -U true 2>/dev/null; echo unshare=$?; \
                  mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?; \
                  insmod /bin/busybox 2>/dev/null; echo insmod=$?; \
                  echo ok > /tmp/w && cat /tmp/w";
    let (code, out, err) = c.run(&c.spec(&["sh", "-c", script]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "unshare=1\nmount=255\ninsmod=1\nok\n".replace("mount=255", &mount_line(&out)),
        "{out}"
    );
    assert!(!out.contains("mount=0"));
}

fn mount_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("mount="))
        .unwrap_or("mount=?")
        .to_string()
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    need_root!();
    let c = Ctr::new("pids");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        // The inner shell dies at its first failed fork; its sleeps stay, pid 1 execs.
        "sh -c 'for i in $(seq 1 60); do sleep 5 & done' 2>/dev/null; exec sleep 10",
    ]);
    spec["linux"]["resources"]["pids"] = json!({"limit": 20});
    assert!(c.create(&spec).status.success());
    berth_runtime::start(&c.root, &c.id).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = berth_runtime::stats(&c.root, &c.id).unwrap();
    assert!(s.pids_current <= 20 && s.pids_current >= 15, "{s:?}");
    assert!(berth_runtime::pids(&c.root, &c.id).unwrap().len() <= 20);
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    need_root!();
    let c = Ctr::new("oom");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
    ]);
    spec["linux"]["resources"]["memory"] = json!({"limit": 16 << 20, "swap": 16 << 20});
    assert!(c.create(&spec).status.success());
    berth_runtime::start(&c.root, &c.id).unwrap();
    assert!(c.wait_stopped(20), "allocation did not end");
    let s = berth_runtime::stats(&c.root, &c.id).unwrap();
    assert!(s.oom_kills >= 1, "{s:?}");
    assert_eq!(s.memory_max_usage, 16 << 20, "{s:?}");
    assert!(!c.out().contains("survived"));
}

#[test]
fn init_reaps_zombies_and_forwards_signals() {
    need_root!();
    // Without init, an orphan that exits stays a zombie under a pid 1 that never waits.
    let zombies = |init: bool| -> String {
        let c = Ctr::new(if init { "init" } else { "noinit" });
        let mut spec = c.spec(&["sh", "-c", "(sleep 0.1 &); exec sleep 10"]);
        if init {
            spec["annotations"] = json!({"berth.init": "true"});
        }
        assert!(c.create(&spec).status.success());
        assert!(c.cli(&["start", &c.id]).status.success());
        std::thread::sleep(std::time::Duration::from_millis(600));
        let (_, out, err) = c.exec(&["sh", "-c", "ps -o stat | grep -c Z"]);
        format!("{}{err}", out.trim())
    };
    assert_eq!(zombies(false), "1", "expected a zombie without init");
    assert_eq!(zombies(true), "0", "init did not reap");

    // Signals are forwarded to the child: TERM kills a sleeping sh (not pid 1 any more).
    let c = Ctr::new("initsig");
    let mut spec = c.spec(&["sleep", "30"]);
    spec["annotations"] = json!({"berth.init": "true"});
    assert!(c.create(&spec).status.success());
    assert!(c.cli(&["start", &c.id]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(c.cli(&["kill", &c.id, "SIGTERM"]).status.success());
    assert!(c.wait_stopped(5), "TERM not forwarded");
}

/// pids listed in /proc/<pid>/task/<pid>/children (zombies included until reaped).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

fn open_fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Poll `f` every 20 ms for up to `secs` seconds.
fn poll<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run `sh -c '(sleep 1 &); exec sleep 30'` under `berth.init=true` in the foreground and check,
/// from the host: the init is pid 1 with the user process (pid 2, clean signal state and fds)
/// as its child, the orphaned `sleep 1` is reparented to it and reaped, and SIGTERM sent to
/// the container is forwarded (exit 143). Returns the init's PSS in kB, measured while the
/// container runs, and the target of its /proc/<pid>/exe. `deny_execveat`: a seccomp
/// profile without execveat, which leaves the runtime's in-process reaper as pid 1.
fn check_init(tag: &str, deny_execveat: bool) -> (String, u64) {
    let c = Ctr::new(tag);
    let mut spec = c.spec(&["sh", "-c", "(sleep 1 &); exec sleep 30"]);
    spec["annotations"] = json!({"berth.init": "true"});
    if deny_execveat {
        for rule in spec["linux"]["seccomp"]["syscalls"].as_array_mut().unwrap() {
            if let Some(names) = rule["names"].as_array_mut() {
                names.retain(|n| n != "execveat");
            }
        }
    }
    c.write(&spec);
    let mut run = c
        .cmd()
        .args(["run", "--bundle"])
        .arg(&c.bundle)
        .arg(&c.id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let init = poll(10, || {
        berth_runtime::state(&c.root, &c.id)
            .ok()
            .filter(|s| s.status == berth_runtime::Status::Running)
            .map(|s| s.pid)
    })
    .expect("container not running");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(
        status_field(&status, "NSpid").unwrap().ends_with("\t1"),
        "{status}"
    );
    // The orphan shows up as the init's second child, then goes away entirely: reaped, not
    // left as a zombie (a zombie stays in the children list and in /proc).
    // Both by their final command lines: pid 2 is `sh` until it execs `sleep 30`, and the
    // subshell is briefly a second child before it exits.
    let kids = poll(5, || {
        let k = children_of(init);
        let named = |c: &str| k.iter().any(|p| cmdline(*p) == c);
        (k.len() == 2 && named("sleep 30 ") && named("sleep 1 ")).then_some(k)
    })
    .expect("the orphan was not reparented to the init");
    let user = *kids.iter().find(|p| cmdline(**p) == "sleep 30 ").unwrap();
    let orphan = *kids.iter().find(|p| **p != user).unwrap();
    assert_eq!(cmdline(orphan), "sleep 1 ");
    poll(5, || {
        (children_of(init) == vec![user]
            && !std::path::Path::new(&format!("/proc/{orphan}")).exists())
        .then_some(())
    })
    .expect("the orphan was not reaped");
    let ustatus = std::fs::read_to_string(format!("/proc/{user}/status")).unwrap();
    assert_eq!(status_field(&ustatus, "PPid").unwrap(), init.to_string());
    assert!(
        status_field(&ustatus, "NSpid").unwrap().ends_with("\t2"),
        "{ustatus}"
    );
    for f in ["SigBlk", "SigIgn", "SigCgt"] {
        assert_eq!(
            status_field(&ustatus, f).unwrap(),
            "0000000000000000",
            "{f} of the user process"
        );
    }
    assert_eq!(open_fds(user), ["0", "1", "2"], "fds of the user process");
    let exe = std::fs::read_link(format!("/proc/{init}/exe"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    if !deny_execveat {
        // Nothing but stdio: the memfd the init came from was close-on-exec.
        assert_eq!(open_fds(init), ["0", "1", "2"], "fds of the init");
        assert!(cmdline(init).starts_with("berth-init /bin/sh sh -c "));
    }
    let rollup = std::fs::read_to_string(format!("/proc/{init}/smaps_rollup")).unwrap();
    let pss: u64 = status_field(&rollup, "Pss")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{rollup}"));
    assert!(c.cli(&["kill", &c.id, "SIGTERM"]).status.success());
    let code = poll(10, || run.try_wait().unwrap()).expect("SIGTERM not forwarded");
    assert_eq!(code.code(), Some(143));
    (exe, pss)
}

#[test]
fn tiny_init_is_pid1_reaps_forwards_and_stays_small() {
    need_root!();
    let (exe, pss) = check_init("tinyinit", false);
    assert!(exe.starts_with("/memfd:berth-init"), "pid 1 runs {exe}");
    // The static init measures ~16 kB (a code page, a stack page or two); a forked copy of
    // the runtime, the in-process fallback, is >= 500 kB even from a release build (2.2 MiB
    // from `berth`). 256 kB is far above the first and far below the second.
    assert!(pss < 256, "pid 1 PSS {pss} kB");
}

#[test]
fn init_falls_back_in_process_when_execveat_is_denied() {
    need_root!();
    // Same semantics when the seccomp profile refuses execveat: the forked runtime reaps.
    let (exe, pss) = check_init("initfallback", true);
    assert!(!exe.contains("memfd"), "pid 1 runs {exe}");
    eprintln!("in-process init: PSS {pss} kB");
}

#[test]
fn exec_joins_the_same_namespaces() {
    need_root!();
    let c = Ctr::new("exec");
    assert!(c.create(&c.spec(&["sleep", "30"])).status.success());
    assert!(c.cli(&["start", &c.id]).status.success());
    let (code, out, err) = c.exec(&[
        "sh",
        "-c",
        "for n in mnt net pid ipc uts cgroup; do [ $(readlink /proc/1/ns/$n) = $(readlink /proc/self/ns/$n) ] || echo diff $n; done; \
         hostname; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):'; pwd",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("diff"), "{out}");
    assert!(out.contains("berthbox"));
    assert_eq!(status_field(&out, "CapEff").unwrap(), "00000000a80425fb");
    assert_eq!(status_field(&out, "Seccomp").unwrap(), "2");
    // exec process is in the container's cgroup
    let (_, out, _) = c.exec(&["cat", "/proc/self/cgroup"]);
    assert!(
        out.lines()
            .all(|l| l.ends_with(":/") || l.contains("name=systemd") || l.starts_with("0::")),
        "{out}"
    );
    // overrides and exit status
    let out = c
        .cmd()
        .args([
            "exec",
            "--cwd",
            "/tmp",
            "--env",
            "A=b",
            "--user",
            "alice",
            &c.id,
            "sh",
            "-c",
            "pwd; echo $A; id -u; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp\nb\n1000\n");
    let (code, _, _) = c.exec(&["sh", "-c", "kill -KILL $$"]);
    assert_eq!(code, 137);
}

#[test]
fn tty_over_console_socket() {
    need_root!();
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let c = Ctr::new("tty");
    let sock = c.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo is-a-tty; ls -l /dev/console | cut -c1",
    ]);
    spec["process"]["terminal"] = json!(true);
    c.write(&spec);
    let mut child = c
        .cmd()
        .args(["create", "--bundle"])
        .arg(&c.bundle)
        .arg("--console-socket")
        .arg(&sock)
        .arg(&c.id)
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let mut master = None;
    for m in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = m {
            master = Some(fds[0]);
        }
    }
    let master = master.expect("no pty master received");
    assert!(child.wait().unwrap().success());
    assert!(c.cli(&["start", &c.id]).status.success());
    // SAFETY: fd received over SCM_RIGHTS, owned by us now.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master) };
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match f.read(&mut chunk) {
            Ok(0) | Err(_) => break, // EIO once the slave is closed
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("/dev/pts/0") || text.contains("/dev/console"),
        "{text}"
    );
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(text.contains('c'), "{text}");
}

#[test]
fn rlimits_umask_oom_score_adj() {
    need_root!();
    let c = Ctr::new("limits");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; umask; cat /proc/self/oom_score_adj",
    ]);
    spec["process"]["user"]["umask"] = json!(0o027);
    spec["process"]["oomScoreAdj"] = json!(300);
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1024\n4096\n0027\n300\n");
    // No ignored or blocked signal leaks in (Rust ignores SIGPIPE in the runtime itself; the
    // harness may ignore others). grep is the container's process itself, no shell between.
    let c = Ctr::new("sigs");
    let (code, out, err) = c.run(&c.spec(&["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn cgroup_resources_are_written() {
    need_root!();
    let c = Ctr::new("cgres");
    let mut spec = c.spec(&["sleep", "30"]);
    spec["linux"]["resources"]["cpu"] =
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"});
    spec["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "reservation": 16 << 20});
    assert!(c.create(&spec).status.success(), "{}", c.out());
    let rel = c.cgroups_path.trim_start_matches('/');
    let read = |ctrl: &str, f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/{rel}/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if berth_runtime::cgroups::host_version() == berth_runtime::cgroups::Version::V1 {
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            read("memory", "memory.soft_limit_in_bytes"),
            (16u64 << 20).to_string()
        );
        let devices = read("devices", "devices.list");
        assert!(
            devices.contains("c 1:3 rwm") && !devices.contains("a *:* rwm"),
            "{devices}"
        );
    }
    // The init is in every hierarchy's leaf.
    let pid = c.state().pid.to_string();
    for d in c.cgroup_dirs() {
        if d.starts_with("/sys/fs/cgroup/systemd") || d.starts_with("/sys/fs/cgroup/unified") {
            continue;
        }
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid, "{}", d.display());
    }
}

#[test]
fn sysctls_are_applied_in_the_container_namespaces() {
    need_root!();
    let c = Ctr::new("sysctl");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range",
    ]);
    spec["linux"]["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"});
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "0", "2147483647"]
    );
    // the host is untouched
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_ne!(host.trim(), "0");
}

#[test]
fn exec_with_tty_proxy_and_process_file() {
    need_root!();
    use std::io::Write;
    let c = Ctr::new("exectty");
    assert!(c.create(&c.spec(&["sleep", "30"])).status.success());
    assert!(c.cli(&["start", &c.id]).status.success());
    let mut child = c
        .cmd()
        .args(["exec", "--tty", &c.id, "sh"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"tty; exit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // --process: a full OCI process object
    let p = json!({
        "user": {"uid": 1000, "gid": 1000},
        "args": ["sh", "-c", "id -u; pwd; echo $X"],
        "env": ["PATH=/bin", "X=from-process-file"],
        "cwd": "/home/alice",
        "capabilities": {"bounding": ["CAP_KILL"], "effective": [], "permitted": []}
    });
    let pf = c.dir.path().join("process.json");
    std::fs::write(&pf, serde_json::to_vec(&p).unwrap()).unwrap();
    let out = c
        .cmd()
        .args(["exec", "--process"])
        .arg(&pf)
        .arg(&c.id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n/home/alice\nfrom-process-file\n"
    );
    // exec into a stopped container fails cleanly
    berth_runtime::kill(&c.root, &c.id, nix::sys::signal::Signal::SIGKILL, false).unwrap();
    assert!(c.wait_stopped(5));
    assert!(!c.cli(&["exec", &c.id, "true"]).status.success());
}

#[test]
fn foreground_run_forwards_signals() {
    need_root!();
    let c = Ctr::new("fwd");
    // pid 1 with a TERM handler: exits 7 when the signal reaches it.
    c.write(&c.spec(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; while true; do sleep 0.05; done",
    ]));
    let mut child = c
        .cmd()
        .args(["run", "--bundle"])
        .arg(&c.bundle)
        .arg(&c.id)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while berth_runtime::state(&c.root, &c.id).map(|s| s.status).ok()
        != Some(berth_runtime::Status::Running)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(7));
    assert!(
        !c.root.join(&c.id).exists(),
        "run must delete the container"
    );
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

#[test]
fn network_namespace_joined_by_path_or_host() {
    need_root!();
    let name = format!("berth-t{}-ns", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip netns add");
    let _g = NetnsGuard(name.clone());
    let path = format!("/run/netns/{name}");
    use std::os::unix::fs::MetadataExt;
    let want = format!("net:[{}]", std::fs::metadata(&path).unwrap().ino());
    let c = Ctr::new("netpath");
    let mut spec = c.spec(&["readlink", "/proc/self/ns/net"]);
    for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(path);
        }
    }
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), want);
    // The netns outlives the container.
    assert!(std::path::Path::new(&path).exists());

    // No network namespace at all: the host's (and /sys still mounts, bound from the host).
    let c = Ctr::new("nethost");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "readlink /proc/self/ns/net; ls /sys/class/net | grep -c lo",
    ]);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(out.lines().next().unwrap(), host.to_string_lossy());
}

#[test]
fn a_hanging_setup_times_out_and_is_cleaned_up() {
    need_root!();
    // A 1 ms limit: the init's setup takes longer, unless the runtime itself is descheduled
    // between "go" and its wait (a loaded machine) and the init wins the race. Then the create
    // succeeded: delete that container and try again. Stdio go to files, never to pipes the
    // created init would hold open.
    for attempt in 0..10 {
        let c = Ctr::new("timeout");
        c.write(&c.spec(&["true"]));
        let err_path = c.dir.path().join("create-err");
        let out = c
            .cmd()
            .env("BERTH_RUNTIME_CREATE_TIMEOUT_MS", "1")
            .args(["create", "--bundle"])
            .arg(&c.bundle)
            .arg(&c.id)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        if out.success() {
            eprintln!("attempt {attempt}: the init finished its setup within 1 ms; again");
            assert!(c.cli(&["delete", "--force", &c.id]).status.success());
            continue;
        }
        let err = std::fs::read_to_string(&err_path).unwrap();
        assert!(err.contains("did not finish its setup"), "{err}");
        assert!(!c.root.join(&c.id).exists());
        assert!(c.cgroup_dirs().is_empty());
        return;
    }
    panic!("the init finished its setup within 1 ms ten times in a row");
}

struct UmountGuard(std::path::PathBuf);

impl Drop for UmountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn readonly_rbind_is_readonly_all_the_way_down() {
    need_root!();
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _g = UmountGuard(sub.clone());
    let c = Ctr::new("rro");
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "touch /ro/top 2>/dev/null; echo top=$?; touch /ro/sub/x 2>/dev/null; echo sub=$?; touch /rw/sub/y; echo rw=$?",
    ]);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/ro", "type": "bind", "source": host.path(), "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/rw", "type": "bind", "source": host.path(), "options": ["rbind", "rw"]}));
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "top=1\nsub=1\nrw=0\n");
    assert!(sub.join("y").exists());
}

#[test]
fn force_delete_removes_a_half_created_container() {
    need_root!();
    let c = Ctr::new("partial");
    let spec = c.spec(&["true"]);
    // What a runtime killed between mkdir and state.json leaves: the dir, the spec copy, the cgroup.
    let d = c.root.join(&c.id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    berth_runtime::cgroups::Cgroup::new(&c.cgroups_path)
        .unwrap()
        .create()
        .unwrap();
    assert!(!c.cgroup_dirs().is_empty());
    assert!(!c.cli(&["delete", &c.id]).status.success());
    assert!(c.cli(&["delete", "--force", &c.id]).status.success());
    assert!(!d.exists());
    assert!(c.cgroup_dirs().is_empty());
    // and the id is usable again
    let (code, _, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn time_namespace_with_boottime_offset() {
    need_root!();
    let c = Ctr::new("timens");
    let mut spec = c.spec(&["sleep", "30"]);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    spec["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400 * 365, "nanosecs": 0}});
    let out = c.create(&spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.cli(&["start", &c.id]).status.success());
    let host_up: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // the exec'd process joins the container's time namespace too
    let (code, out, err) = c.exec(&[
        "sh",
        "-c",
        "readlink /proc/self/ns/time; cut -d' ' -f1 /proc/uptime",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut l = out.lines();
    let ns = l.next().unwrap();
    assert_ne!(
        ns,
        std::fs::read_link("/proc/self/ns/time")
            .unwrap()
            .to_string_lossy()
    );
    let up: f64 = l.next().unwrap().parse().unwrap();
    assert!(
        up - host_up > 86400.0 * 364.0,
        "uptime {up} vs host {host_up}"
    );
}

/// `berth.init=true`: a TERM sent after `create`, before `start` even, is not lost. pid 1 of a
/// pid namespace drops a signal it has no handler for at the moment it is sent, unless it is
/// blocked; the runtime blocks everything before `create` returns and berth-init forwards what
/// is pending once it runs. (Before, a `down` right after an `up` could wait out its whole
/// grace period.) The user process still starts with nothing blocked.
#[test]
fn init_keeps_a_signal_sent_before_start() {
    need_root!();
    let c = Ctr::new("initearly");
    let mut spec = c.spec(&["sleep", "30"]);
    spec["annotations"] = json!({"berth.init": "true"});
    let out = c.create(&spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.cli(&["kill", &c.id, "SIGTERM"]).status.success());
    assert!(c.cli(&["start", &c.id]).status.success());
    assert!(
        c.wait_stopped(5),
        "the TERM sent before start was lost: the container still runs"
    );
    let _ = c.cli(&["delete", "--force", &c.id]);
}

//! Escape attempts: each must fail, observed from inside and checked on the host.
mod common;

use common::Ctr;
use serde_json::json;

#[test]
fn rootfs_with_proc_symlink_is_refused() {
    need_root!();
    let c = Ctr::new("procsym");
    let proc_ = c.rootfs().join("proc");
    std::fs::remove_dir(&proc_).unwrap();
    std::os::unix::fs::symlink("/", &proc_).unwrap();
    let (code, _, err) = c.run(&c.spec(&["true"]));
    assert_ne!(code, 0);
    assert!(err.contains("symlink"), "{err}");
    assert!(c.cgroup_dirs().is_empty());
    assert!(!c.root.join(&c.id).exists());
}

#[test]
fn bind_destination_symlink_cannot_point_outside() {
    need_root!();
    let c = Ctr::new("bindsym");
    let outside = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("payload"), "x\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), c.rootfs().join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", c.rootfs().join("up")).unwrap();
    let mut spec = c.spec(&["sh", "-c", "cat /escape/sub/payload; ls /up/etc/passwd"]);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/escape/sub", "type": "bind", "source": src.path(), "options": ["bind", "ro"]}));
    mounts.push(
        json!({"destination": "/up/etc/made", "type": "tmpfs", "source": "tmpfs", "options": []}),
    );
    let (code, out, err) = c.run(&spec);
    assert_eq!(code, 0, "{err}");
    // The symlinks were followed inside the rootfs: the container sees the mount...
    assert_eq!(out, "x\n/up/etc/passwd\n");
    // ...and nothing was created or mounted on the host side.
    assert!(!outside.path().join("sub").exists());
    assert!(!std::path::Path::new("/etc/made").exists());
    let inside = c
        .rootfs()
        .join(outside.path().strip_prefix("/").unwrap())
        .join("sub");
    assert!(inside.is_dir());
}

#[test]
fn sysrq_modules_mount_and_devices_are_refused() {
    need_root!();
    let c = Ctr::new("priv");
    let script = "echo c > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?; \
                  insmod /bin/busybox 2>/dev/null; echo insmod=$?; \
                  mount -t proc proc /mnt 2>/dev/null; echo mount=$?; \
                  mount --bind / /mnt 2>/dev/null; echo bind=$?; \
                  mknod /tmp/sda b 8 0 && head -c1 /tmp/sda >/dev/null 2>&1; echo blockdev=$?; \
                  mknod /tmp/kmsg c 1 11 && head -c1 /tmp/kmsg >/dev/null 2>&1; echo kmsg=$?";
    let (code, out, err) = c.run(&c.spec(&["sh", "-c", script]));
    assert_eq!(code, 0, "{err}");
    for l in out.lines() {
        assert!(!l.ends_with("=0"), "{l} succeeded:\n{out}");
    }
    assert_eq!(out.lines().count(), 6, "{out}");
}

#[test]
fn leaked_fd_and_cwd_do_not_reach_the_host() {
    need_root!();
    use std::os::unix::process::CommandExt;
    // CVE-2024-21626: the caller leaks an fd to a host directory and the spec's cwd points at it.
    let c = Ctr::new("leak");
    let mut spec = c.spec(&["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '; pwd"]);
    let host_dir = std::fs::File::open("/sys/fs/cgroup").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&host_dir);
    let run = |spec: &serde_json::Value| {
        c.write(spec);
        let mut cmd = c.cmd();
        cmd.args(["run", "--bundle"]).arg(&c.bundle).arg(&c.id);
        // SAFETY: dup2/fcntl only, in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::dup2(raw, 7);
                libc::fcntl(7, libc::F_SETFD, 0);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let out = run(&spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // only stdio and ls's own directory fd
    assert_eq!(text, "0 1 2 3 /\n", "{text}");
    spec["process"]["cwd"] = json!("/proc/self/fd/7");
    let out = run(&spec);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("cgroup") && !text.contains("memory"),
        "escaped: {text}"
    );
    drop(host_dir);
}

/// The binary's bytes (compared directly: hashing 40 MB in a debug build takes seconds).
fn sha(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn runtime_binary_cannot_be_overwritten_from_inside() {
    need_root!();
    // CVE-2019-5736: with berth.init the runtime's own code is pid 1 in the container.
    let bin = std::path::Path::new(common::BIN);
    let before = sha(bin);
    let c = Ctr::new("selfexe");
    std::fs::write(c.rootfs().join("bin/evil"), "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(
        c.rootfs().join("bin/evil"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut spec = c.spec(&["sleep", "10"]);
    spec["annotations"] = json!({"berth.init": "true"});
    assert!(c.create(&spec).status.success());
    assert!(c.cli(&["start", &c.id]).status.success());
    let (_, out, err) = c.exec(&[
        "sh",
        "-c",
        "echo pwned >> /proc/1/exe; echo w=$?; cat /proc/1/exe > /dev/null; echo r=$?; \
         /bin/evil >/dev/null 2>&1; echo x >> /proc/self/exe; echo self=$?",
    ]);
    assert!(out.contains("w=1"), "{out}{err}");
    assert!(out.contains("r=1"), "{out}{err}");
    assert!(out.contains("self=1"), "{out}{err}");
    // And the exec path through `#!/proc/self/exe` runs a read-only copy: still unchanged.
    assert!(sha(bin) == before, "the runtime binary changed");
}

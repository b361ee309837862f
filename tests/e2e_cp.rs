//! End-to-end (root): `berth cp` between the host and service containers, running or stopped,
//! and tar streams.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

#[test]
fn cp_copies_both_ways_and_stays_inside_the_container() {
    let b = Berth::new();
    let p = unique("cp");
    let f = b.compose(
        &p,
        &stack("cp_copies_both_ways_and_stays_inside_the_container"),
    );
    b.ok(&f, &["up", "-d"]);
    let exec = |svc: &str, args: &[&str]| -> String {
        let mut a = vec!["exec", "-T", svc];
        a.extend(args);
        b.ok(&f, &a)
    };
    wait_for("the box to be ready", Duration::from_secs(10), || {
        exec("box", &["cat", "/data/v.txt"])
            .contains("in-volume")
            .then_some(())
    });
    let host = tempfile::tempdir().unwrap();

    // Host → container: a file (owned by root inside, mode kept) and a directory tree with a
    // symlink, into a named volume.
    let file = host.path().join("app.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&file, Some(4321), Some(4321)).unwrap();
    b.ok(&f, &["cp", file.to_str().unwrap(), "box:/etc/app.conf"]);
    assert_eq!(exec("box", &["cat", "/etc/app.conf"]), "key=value\n");
    assert_eq!(
        exec("box", &["stat", "-c", "%u:%g %a", "/etc/app.conf"]).trim(),
        "0:0 640"
    );
    b.ok(&f, &["cp", "-a", file.to_str().unwrap(), "box:/tmp/"]);
    assert_eq!(
        exec("box", &["stat", "-c", "%u", "/tmp/app.conf"]).trim(),
        "4321"
    );
    let tree = host.path().join("site");
    std::fs::create_dir_all(tree.join("css")).unwrap();
    std::fs::write(tree.join("index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(tree.join("css/a.css"), "body{}").unwrap();
    std::os::unix::fs::symlink("index.html", tree.join("home.html")).unwrap();
    b.ok(&f, &["cp", tree.to_str().unwrap(), "box:/data"]);
    assert_eq!(exec("box", &["cat", "/data/site/css/a.css"]), "body{}");
    assert_eq!(
        exec("box", &["readlink", "/data/site/home.html"]).trim(),
        "index.html"
    );

    // Container → host: the volume's file and the whole tree, "dir/." for contents.
    b.ok(
        &f,
        &["cp", "box:/data/v.txt", host.path().to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("v.txt")).unwrap(),
        "in-volume\n"
    );
    let back = host.path().join("back");
    b.ok(&f, &["cp", "box:/data/.", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("site/index.html")).unwrap(),
        "<h1>hi</h1>"
    );
    assert_eq!(
        std::fs::read_link(back.join("site/home.html")).unwrap(),
        std::path::PathBuf::from("index.html")
    );
    assert_eq!(std::fs::metadata(back.join("v.txt")).unwrap().uid(), 0);

    // /escape -> /root in the container: it resolves in the container's /root, never the
    // host's, in both directions.
    let marker = format!("berth-cp-{p}");
    b.ok(
        &f,
        &[
            "cp",
            file.to_str().unwrap(),
            &format!("box:/escape/{marker}"),
        ],
    );
    assert!(!std::path::Path::new("/root").join(&marker).exists());
    assert_eq!(
        exec("box", &["cat", &format!("/root/{marker}")]),
        "key=value\n"
    );
    // The host's /etc/hostname is not what comes out of the container's.
    let out = host.path().join("hn");
    b.ok(
        &f,
        &["cp", "box:/escape/../etc/hostname", out.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        exec("box", &["cat", "/etc/hostname"])
    );

    // Errors: a read-only root filesystem, a missing container directory, no service side,
    // and a service that is not running.
    let e = b.fails(&f, &["cp", file.to_str().unwrap(), "ro:/app.conf"]);
    assert!(e.contains("Read-only file system"), "{e}");
    let e = b.fails(&f, &["cp", file.to_str().unwrap(), "box:/nowhere/x"]);
    assert!(e.contains("no such directory in the container"), "{e}");
    let e = b.fails(&f, &["cp", file.to_str().unwrap(), "/tmp/x"]);
    assert!(e.contains("SERVICE:PATH"), "{e}");
    // A stopped container: copying out works (its snapshot), into a read-only one does not.
    b.ok(&f, &["stop", "-t", "1", "ro"]);
    let got = host.path().join("ro-passwd");
    b.ok(&f, &["cp", "ro:/etc/passwd", got.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&got).unwrap().starts_with("root:"));
    let e = b.fails(&f, &["cp", file.to_str().unwrap(), "ro:/app.conf"]);
    assert!(e.contains("read-only root filesystem"), "{e}");
    b.ok(&f, &["down", "-v", "-t", "1"]);
}

/// `cp` from and into a stopped container (its snapshot: what it wrote survives, what we copy
/// in is there when it starts again) and tar streams both ways (`-`), ownership kept.
#[test]
fn cp_with_a_stopped_container_and_tar_streams() {
    let b = Berth::new();
    let p = unique("cps");
    let f = b.compose(
        &p,
        "services:\n  box:\n    image: berth-test/busybox:1\n    init: true\n    command: [\"sh\", \"-c\", \"echo at-run > /made && exec sleep 120\"]\n",
    );
    b.ok(&f, &["up", "-d"]);
    let host = tempfile::tempdir().unwrap();
    wait_for("the container's file", Duration::from_secs(10), || {
        let o = b
            .cmd()
            .args([
                "-f",
                f.to_str().unwrap(),
                "exec",
                "-T",
                "box",
                "cat",
                "/made",
            ])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&o.stdout).trim() == "at-run").then_some(())
    });

    // Tar in: a directory with an owner and a mode, into an existing directory.
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/a"), "from-tar").unwrap();
    let tarball = host.path().join("in.tar");
    let st = std::process::Command::new("tar")
        .args(["--owner=1234", "--group=4321", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("dir")
        .status()
        .unwrap();
    assert!(st.success());
    let out = b
        .cmd()
        .args(["-f", f.to_str().unwrap(), "cp", "-", "box:/tmp"])
        .stdin(std::fs::File::open(&tarball).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exec = |args: &[&str]| {
        let mut v = vec!["exec", "-T", "box"];
        v.extend_from_slice(args);
        b.ok(&f, &v)
    };
    assert_eq!(exec(&["cat", "/tmp/dir/a"]), "from-tar");
    assert_eq!(
        exec(&["stat", "-c", "%u:%g", "/tmp/dir/a"]).trim(),
        "1234:4321"
    );
    // A tar stream needs a directory to land in.
    let out = b
        .cmd()
        .args(["-f", f.to_str().unwrap(), "cp", "-", "box:/made"])
        .stdin(std::fs::File::open(&tarball).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be a directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Tar out: the entry under its own name, the container's owner kept.
    let out = b
        .cmd()
        .args(["-f", f.to_str().unwrap(), "cp", "box:/tmp/dir", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = tar_list(&out.stdout);
    assert!(
        listed.contains("1234/4321") && listed.contains("dir/a"),
        "{listed}"
    );

    // Stopped: what it wrote comes out; what goes in is there after start.
    b.ok(&f, &["stop", "-t", "1"]);
    let made = host.path().join("made");
    b.ok(&f, &["cp", "box:/made", made.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "at-run\n");
    let out = b
        .cmd()
        .args(["-f", f.to_str().unwrap(), "cp", "box:/tmp/dir/a", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tar_list(&out.stdout).contains(" a"),
        "{}",
        tar_list(&out.stdout)
    );
    let conf = host.path().join("new.conf");
    std::fs::write(&conf, "copied-while-stopped").unwrap();
    b.ok(&f, &["cp", conf.to_str().unwrap(), "box:/etc/new.conf"]);
    b.ok(&f, &["start", "box"]);
    wait_for("box running again", Duration::from_secs(10), || {
        let o = b
            .cmd()
            .args([
                "-f",
                f.to_str().unwrap(),
                "exec",
                "-T",
                "box",
                "cat",
                "/etc/new.conf",
            ])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&o.stdout) == "copied-while-stopped").then_some(())
    });
    b.ok(&f, &["down", "-t", "1"]);
}

/// `tar -tv` of an archive in memory.
fn tar_list(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("tar")
        .args(["--numeric-owner", "-tvf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "not a tar stream");
    String::from_utf8_lossy(&o.stdout).to_string()
}

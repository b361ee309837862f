//! End-to-end (root): `berth cp` between the host and running service containers.

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
    b.ok(&f, &["stop", "-t", "1", "ro"]);
    let e = b.fails(&f, &["cp", "ro:/etc/hostname", out.to_str().unwrap()]);
    assert!(e.contains("is not running"), "{e}");
    b.ok(&f, &["down", "-v", "-t", "1"]);
}

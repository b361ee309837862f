//! Image store: loads (`docker save`, OCI layouts), records, rmi/prune, malicious archives and
//! overlay snapshots. Snapshot tests need root (overlayfs mounts).

#[path = "image_support.rs"]
mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_runtime::image::{snapshot, ImageError, ImageStore};
use support::*;

/// The peers' test image: `shared/` sits beside the checkout (here and in CI).
fn peer(rel: &str) -> std::path::PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peers/images")
        .join(rel);
    if beside.exists() {
        beside
    } else {
        Path::new("/work/shared/peers/images").join(rel)
    }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let t = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&t.path().join("images")).unwrap();
    (t, s)
}

#[test]
fn loads_the_peers_docker_save_archive() {
    let (peer_tar, peer_oci) = (peer("lab-busybox-1.docker.tar"), peer("oci"));
    if !peer_tar.exists() {
        eprintln!("skipping: {} missing", peer_tar.display());
        return;
    }
    let (_t, s) = store();
    let refs = s.load(&peer_tar).unwrap();
    assert_eq!(refs, vec!["docker.io/lab/busybox:1".to_string()]);
    let img = s.get("lab/busybox:1").unwrap().expect("loaded");
    assert!(img.id.starts_with("sha256:"));
    assert_eq!(img.layers.len(), 1);
    assert!(img.layers[0].join("bin/busybox").is_file());
    assert!(std::fs::symlink_metadata(img.layers[0].join("bin/sh"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Every spelling finds it.
    for r in [
        "docker.io/lab/busybox:1",
        &img.id,
        &img.id[7..19],
        &img.id[..15],
    ] {
        assert_eq!(s.get(r).unwrap().map(|i| i.id), Some(img.id.clone()), "{r}");
    }
    assert!(s.get("lab/busybox:2").unwrap().is_none());
    assert!(s.get("lab/busybox").unwrap().is_none());
    // Loading again is idempotent.
    assert_eq!(s.load(&peer_tar).unwrap(), refs);
    assert_eq!(s.list().unwrap().len(), 1);
    if peer_oci.is_dir() {
        let r = s.load(&peer_oci).unwrap();
        assert_eq!(r, vec!["localhost/lab-busybox-1:latest".to_string()]);
        assert!(s.get("localhost/lab-busybox-1").unwrap().is_some());
    }
}

#[test]
fn loads_built_images_in_both_layouts_with_all_compressions() {
    let (t, s) = store();
    let base = LayerBuilder::new().busybox().tar();
    let top = LayerBuilder::new()
        .dir("etc")
        .file("etc/.wh.passwd", 0o644, b"")
        .file("etc/motd", 0o644, b"hello\n")
        .dir("tmp")
        .file("tmp/.wh..wh..opq", 0o644, b"")
        .tar();
    let third = LayerBuilder::new()
        .dir("srv")
        .file("srv/z", 0o600, b"zstd")
        .tar();
    let img = BuiltImage::new(
        vec![base.clone(), top, third],
        vec![Comp::Gzip, Comp::None, Comp::Zstd],
        "built",
    );

    // docker save
    let save = t.path().join("save.tar");
    img.docker_save(&save, "berth-test/built:1");
    assert_eq!(
        s.load(&save).unwrap(),
        vec!["docker.io/berth-test/built:1".to_string()]
    );
    let got = s.get("berth-test/built:1").unwrap().unwrap();
    assert_eq!(got.id, img.id);
    assert_eq!(got.layers.len(), 3);
    let env = got.config.config().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"LABEL=built".to_string()));
    let hc = got.healthcheck.clone().expect("image healthcheck");
    assert_eq!(hc.test, vec!["CMD-SHELL".to_string(), "true".into()]);
    assert_eq!(
        (hc.interval, hc.retries, hc.timeout),
        (Some(2_000_000_000), Some(3), None)
    );

    // The Docker 25+ flavour (symlinked layer.tar into blobs/) loads the same image.
    let save25 = t.path().join("save25.tar");
    img.docker_save_symlinked(&save25, "berth-test/built:25");
    assert_eq!(
        s.load(&save25).unwrap(),
        vec!["docker.io/berth-test/built:25".to_string()]
    );
    assert_eq!(s.get("berth-test/built:25").unwrap().unwrap().id, img.id);
    s.remove("berth-test/built:25").unwrap();

    // OCI layout directory, then the same as a tar archive and a gzipped tar archive.
    let oci = t.path().join("oci");
    img.oci_layout(&oci, "example.com/built:2");
    assert_eq!(
        s.load(&oci).unwrap(),
        vec!["example.com/built:2".to_string()]
    );
    let oci_tar = t.path().join("oci.tar");
    tar_dir(&oci, &oci_tar);
    assert_eq!(
        s.load(&oci_tar).unwrap(),
        vec!["example.com/built:2".to_string()]
    );
    let gz = t.path().join("oci.tar.gz");
    std::fs::write(
        &gz,
        compress(&std::fs::read(&oci_tar).unwrap(), Comp::Gzip).0,
    )
    .unwrap();
    assert_eq!(
        s.load(&gz).unwrap(),
        vec!["example.com/built:2".to_string()]
    );
    let by_digest = s.list().unwrap();
    assert_eq!(by_digest.len(), 1, "one image, two names: {by_digest:?}");
    assert_eq!(by_digest[0].repo_tags.len(), 2);
    assert_eq!(by_digest[0].repo_digests.len(), 1);
    let dref = by_digest[0].repo_digests[0].clone();
    assert_eq!(s.get(&dref).unwrap().unwrap().id, img.id);

    if is_root() {
        let wh = std::fs::symlink_metadata(got.layers[1].join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        let opq = xattr::get(got.layers[1].join("tmp"), "trusted.overlay.opaque").unwrap();
        assert_eq!(opq.as_deref(), Some(&b"y"[..]));
        assert_eq!(
            std::fs::metadata(got.layers[2].join("srv/z"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
    }

    // A second image sharing the base layer reuses it.
    let other = BuiltImage::new(vec![base], vec![Comp::None], "other");
    let save2 = t.path().join("save2.tar");
    other.docker_save(&save2, "berth-test/other:1");
    s.load(&save2).unwrap();
    let o = s.get("berth-test/other").unwrap();
    assert!(o.is_none(), "tag latest was not loaded");
    let o = s.get("berth-test/other:1").unwrap().unwrap();
    assert_eq!(o.layers[0], got.layers[0]);

    // rmi by tag keeps the image while another tag names it; prune then frees nothing shared.
    s.remove("berth-test/built:1").unwrap();
    assert!(s.get("berth-test/built:1").unwrap().is_none());
    assert!(s.get("example.com/built:2").unwrap().is_some());
    s.remove("example.com/built:2").unwrap();
    assert!(s.get(&img.id).unwrap().is_none());
    assert!(o.layers[0].is_dir(), "shared layer survives");
    assert!(!got.layers[2].exists(), "unshared layer removed");
    assert!(matches!(
        s.remove("berth-test/built:1"),
        Err(ImageError::NotFound(_))
    ));
    s.remove(&o.id).unwrap();
    let rep = s.prune().unwrap();
    assert!(rep.layers.is_empty(), "rmi already collected: {rep:?}");
    assert_eq!(
        std::fs::read_dir(s.root().join("layers")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(s.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn tampered_and_malicious_archives_are_rejected() {
    let (t, s) = store();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A layer whose content does not match the config's diff_id.
    let good = LayerBuilder::new().busybox().tar();
    let mut img = BuiltImage::new(vec![good], vec![Comp::None], "x");
    img.layers[0] = LayerBuilder::new().file("evil", 0o644, b"swapped").tar();
    let p = t.path().join("tampered.tar");
    img.docker_save(&p, "berth-test/tampered:1");
    assert!(matches!(s.load(&p), Err(ImageError::DigestMismatch { .. })));
    // Tar slips: each is rejected and leaves no layer behind.
    let slips: Vec<Vec<u8>> = vec![
        raw_tar(&[("../../outside/evil", tar::EntryType::Regular, "")]),
        raw_tar(&[("/tmp/berth-evil-abs2", tar::EntryType::Regular, "")]),
        raw_tar(&[
            ("l", tar::EntryType::Symlink, "../../outside"),
            ("l/evil", tar::EntryType::Regular, ""),
        ]),
        raw_tar(&[("h", tar::EntryType::Link, "../../../etc/passwd")]),
        raw_tar(&[("../.wh.outside", tar::EntryType::Regular, "")]),
    ];
    for (i, layer) in slips.into_iter().enumerate() {
        let img = BuiltImage::new(vec![layer], vec![Comp::None], "slip");
        let p = t.path().join(format!("slip{i}.tar"));
        img.docker_save(&p, "berth-test/slip:1");
        let r = s.load(&p);
        assert!(
            matches!(r, Err(ImageError::UnsafeEntry { .. })),
            "case {i}: {r:?}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!Path::new("/tmp/berth-evil-abs2").exists());
    assert_eq!(
        std::fs::read_dir(s.root().join("layers")).unwrap().count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    assert!(s.list().unwrap().is_empty());
    // Not an image at all.
    let junk = t.path().join("junk.tar");
    std::fs::write(&junk, raw_tar(&[("hello", tar::EntryType::Regular, "")])).unwrap();
    assert!(matches!(s.load(&junk), Err(ImageError::Archive { .. })));
}

fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn snapshots_share_layers_and_keep_writes_apart() {
    if !is_root() {
        eprintln!("skipping: overlay snapshots need root");
        return;
    }
    let (t, s) = store();
    let _g = MountGuard(t.path().to_path_buf());
    let img = BuiltImage::new(
        vec![
            LayerBuilder::new().busybox().tar(),
            LayerBuilder::new()
                .dir("etc")
                .file("etc/.wh.passwd", 0o644, b"")
                .tar(),
        ],
        vec![Comp::Gzip, Comp::None],
        "snap",
    );
    let save = t.path().join("s.tar");
    img.docker_save(&save, "berth-test/snap:1");
    s.load(&save).unwrap();
    let image = s.get("berth-test/snap:1").unwrap().unwrap();
    let (a, b) = (t.path().join("containers/a"), t.path().join("containers/b"));
    let ra = s.snapshot("berth-test-a", &image, &a).unwrap();
    let rb = snapshot::mount(&image.layers, &b).unwrap();
    assert_eq!(ra, a.join("rootfs"));
    assert!(ra.join("bin/busybox").is_file() && rb.join("bin/busybox").is_file());
    assert!(
        !ra.join("etc/passwd").exists(),
        "the whiteout hides the lower file"
    );
    std::fs::write(ra.join("tmp/only-a"), b"a").unwrap();
    std::fs::write(ra.join("bin/busybox"), b"clobbered in a").unwrap();
    assert!(!rb.join("tmp/only-a").exists());
    assert_ne!(
        std::fs::read(rb.join("bin/busybox")).unwrap(),
        b"clobbered in a"
    );
    assert_ne!(
        std::fs::read(image.layers[0].join("bin/busybox")).unwrap(),
        b"clobbered in a"
    );
    // Mounting again is a no-op; restart (unmount + mount) keeps the writable layer.
    assert_eq!(snapshot::mount(&image.layers, &a).unwrap(), ra);
    snapshot::unmount(&a).unwrap();
    assert!(!ra.join("tmp/only-a").exists());
    snapshot::mount(&image.layers, &a).unwrap();
    assert_eq!(std::fs::read(ra.join("tmp/only-a")).unwrap(), b"a");
    // Container a holds a lease: rmi is a conflict, rmi -f untags but keeps the image.
    let r = s.remove("berth-test/snap:1");
    assert!(matches!(r, Err(ImageError::InUse { .. })), "{r:?}");
    s.remove_with("berth-test/snap:1", true).unwrap();
    assert!(s.get("berth-test/snap:1").unwrap().is_none());
    assert!(
        s.get(&image.id).unwrap().is_some(),
        "kept (untagged) while leased"
    );
    // Unmounted (a stopped container) but leased: prune keeps everything.
    snapshot::unmount(&a).unwrap();
    let rep = s.prune().unwrap();
    assert!(rep.layers.is_empty() && rep.images.is_empty(), "{rep:?}");
    assert!(image.layers.iter().all(|l| l.is_dir()));
    // b is mounted without a lease: its mount alone protects the layers too.
    s.remove_snapshot("berth-test-a", &a).unwrap();
    s.prune().unwrap();
    assert!(
        image.layers.iter().all(|l| l.is_dir()),
        "mounted layers survive prune"
    );
    snapshot::remove(&b).unwrap();
    assert!(mounts_under(t.path()).is_empty());
    assert!(!a.join("upper").exists() && !a.join("rootfs").exists());
    let rep = s.prune().unwrap();
    assert_eq!(rep.images, vec![image.id.clone()]);
    assert!(image.layers.iter().all(|l| !l.exists()));
    assert!(s.list().unwrap().is_empty());
    assert!(matches!(
        s.snapshot("../x", &image, &a),
        Err(ImageError::Unsupported { .. })
    ));
    // Removing twice is fine.
    snapshot::remove(&a).unwrap();
}

#[test]
fn many_layer_snapshot_beyond_the_option_page_limit() {
    if !is_root() {
        eprintln!("skipping: overlay snapshots need root");
        return;
    }
    let (t, s) = store();
    let _g = MountGuard(t.path().to_path_buf());
    let mut layers = vec![LayerBuilder::new().busybox().tar()];
    for i in 0..60 {
        layers.push(
            LayerBuilder::new()
                .dir("d")
                .file(&format!("d/f{i}"), 0o644, format!("{i}").as_bytes())
                .tar(),
        );
    }
    let n = layers.len();
    // 61 layers × ~80-byte absolute paths > 4096 bytes of lowerdir= option.
    let img = BuiltImage::new(layers, vec![Comp::None; n], "many");
    let save = t.path().join("many.tar");
    img.docker_save(&save, "berth-test/many:1");
    s.load(&save).unwrap();
    let image = s.get("berth-test/many:1").unwrap().unwrap();
    let total: usize = image.layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096, "{total}");
    let dir = t.path().join("containers/many");
    let t0 = std::time::Instant::now();
    let root = snapshot::mount(&image.layers, &dir).unwrap();
    let mount_ms = t0.elapsed().as_secs_f64() * 1000.0;
    println!("FIGURE snapshot mount of {n} layers: {mount_ms:.2} ms");
    assert!(mount_ms < 2000.0, "mounting took {mount_ms} ms");
    assert_eq!(std::fs::read_to_string(root.join("d/f59")).unwrap(), "59");
    assert!(root.join("d/f0").is_file());
    let t0 = std::time::Instant::now();
    snapshot::remove(&dir).unwrap();
    println!(
        "FIGURE snapshot remove: {:.2} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert!(mounts_under(t.path()).is_empty());
}

#[test]
fn repeated_layers_mount() {
    if !is_root() {
        eprintln!("skipping: overlay snapshots need root");
        return;
    }
    let (t, s) = store();
    let _g = MountGuard(t.path().to_path_buf());
    // Docker images repeat the empty layer (same diff_id) between real ones.
    let empty = LayerBuilder::new().tar();
    let layers = vec![
        empty.clone(),
        LayerBuilder::new().busybox().tar(),
        empty.clone(),
        LayerBuilder::new().file("x", 0o644, b"x").tar(),
        empty,
    ];
    let img = BuiltImage::new(layers, vec![Comp::Gzip; 5], "dup");
    let save = t.path().join("dup.tar");
    img.docker_save(&save, "berth-test/dup:1");
    s.load(&save).unwrap();
    let image = s.get("berth-test/dup:1").unwrap().unwrap();
    assert_eq!(image.layers.len(), 5);
    assert_eq!(image.layers[0], image.layers[2]);
    let dir = t.path().join("containers/dup");
    let root = snapshot::mount(&image.layers, &dir).unwrap();
    assert!(root.join("bin/busybox").is_file() && root.join("x").is_file());
    snapshot::remove(&dir).unwrap();
    assert!(mounts_under(t.path()).is_empty());
}

#[test]
fn crash_leftovers_are_invisible_and_cleaned() {
    let (t, s) = store();
    let img = BuiltImage::new(
        vec![LayerBuilder::new().busybox().tar()],
        vec![Comp::None],
        "crash",
    );
    let save = t.path().join("c.tar");
    img.docker_save(&save, "berth-test/crash:1");
    // What a crash mid-load leaves: a half-unpacked layer and a half-written blob in tmp/.
    let half = s.root().join("tmp/layer-99999-0-0");
    std::fs::create_dir_all(half.join("bin")).unwrap();
    std::fs::write(half.join("bin/busybox"), b"trunc").unwrap();
    std::fs::write(s.root().join("tmp/write-99999-1-0"), b"{\"partial").unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(s.get("berth-test/crash:1").unwrap().is_none());
    // The next open (no writer active) sweeps tmp/; a load then works normally.
    let s2 = ImageStore::open(s.root()).unwrap();
    assert_eq!(std::fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
    s2.load(&save).unwrap();
    assert!(s2.get("berth-test/crash:1").unwrap().is_some());
    // A corrupt record file is an error, not a panic.
    std::fs::write(s2.root().join("images.json"), b"{not json").unwrap();
    assert!(matches!(s2.list(), Err(ImageError::Json { .. })));
}

#[test]
fn concurrent_loads_of_one_image_are_safe() {
    let (t, s) = store();
    let img = BuiltImage::new(
        vec![LayerBuilder::new().busybox().tar()],
        vec![Comp::Gzip],
        "conc",
    );
    let save = t.path().join("c.tar");
    img.docker_save(&save, "berth-test/conc:1");
    let root = s.root().to_path_buf();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (root, save) = (root.clone(), save.clone());
            std::thread::spawn(move || ImageStore::open(&root).unwrap().load(&save).unwrap())
        })
        .collect();
    for h in hs {
        assert_eq!(
            h.join().unwrap(),
            vec!["docker.io/berth-test/conc:1".to_string()]
        );
    }
    assert_eq!(s.list().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// Child half of `two_processes_load_and_prune_at_once`.
#[test]
#[ignore]
fn child_load_loop() {
    let (Ok(root), Ok(list)) = (
        std::env::var("BERTH_IMG_CHILD_ROOT"),
        std::env::var("BERTH_IMG_CHILD_TARS"),
    ) else {
        return;
    };
    let s = ImageStore::open(Path::new(&root)).unwrap();
    for _ in 0..3 {
        for tar in list.split(':') {
            s.load(Path::new(tar)).unwrap();
        }
    }
}

#[test]
fn two_processes_load_and_prune_at_once() {
    let (t, s) = store();
    let mut tars = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let img = BuiltImage::new(
            vec![
                LayerBuilder::new().busybox().tar(),
                LayerBuilder::new()
                    .file(&format!("f{i}"), 0o644, b"x")
                    .tar(),
            ],
            vec![Comp::Gzip, Comp::Zstd],
            &format!("p{i}"),
        );
        let p = t.path().join(format!("p{i}.tar"));
        img.docker_save(&p, &format!("berth-test/proc{i}:1"));
        tars.push(p.display().to_string());
        ids.push(img.id);
    }
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_load_loop",
                "--test-threads=1",
                "--quiet",
            ])
            .env("BERTH_IMG_CHILD_ROOT", s.root())
            .env("BERTH_IMG_CHILD_TARS", tars.join(":"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    struct Reap(Vec<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut kids = Reap(vec![spawn(), spawn()]);
    // Prune and rmi-free reads while both children load.
    let start = std::time::Instant::now();
    let mut prunes = 0;
    while kids.0.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "children hung"
        );
        s.prune().unwrap();
        s.list().unwrap();
        prunes += 1;
    }
    for c in &mut kids.0 {
        assert!(c.wait().unwrap().success(), "a child load failed");
    }
    assert!(prunes > 0);
    s.prune().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let img = s
            .get(&format!("berth-test/proc{i}:1"))
            .unwrap()
            .expect("loaded");
        assert_eq!(&img.id, id);
        assert!(img.layers[0].join("bin/busybox").is_file());
        assert!(img.layers[1].join(format!("f{i}")).is_file());
    }
    assert_eq!(
        std::fs::read_dir(s.root().join("layers")).unwrap().count(),
        4
    );
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

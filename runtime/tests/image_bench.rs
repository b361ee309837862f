//! Benchmark (ignored by default): pull + unpack of a generated ~200 MB, 4-layer gzip image
//! from a local `docker-registry`, berth vs `skopeo copy` + `tar -x`. Wall time and peak RSS of
//! each side, measured with /usr/bin/time in separate processes:
//!
//!     cargo test --release -p berth-runtime --test image_bench -- --ignored --nocapture
//!
//! `BERTH_BENCH_MB` changes the size (default 200).

#[path = "image_support.rs"]
mod support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::image::{ImageStore, PullOptions};
use support::*;

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Incompressible and compressible halves, like real binaries + text.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    let text = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    while v.len() < len {
        v.extend_from_slice(text);
    }
    v.truncate(len);
    v
}

/// Runs `cmd` under /usr/bin/time; returns (seconds, peak RSS in MiB).
fn timed(cmd: Command) -> (f64, f64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(out.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    let st = t.stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "{cmd:?} failed");
    let s = std::fs::read_to_string(out.path()).unwrap();
    let mut it = s.split_whitespace();
    let secs: f64 = it.next().unwrap().parse().unwrap();
    let kb: f64 = it.next().unwrap().parse().unwrap();
    (secs, kb / 1024.0)
}

/// Child half: pull `BERTH_BENCH_REF` into `BERTH_BENCH_STORE`.
#[test]
#[ignore]
fn bench_pull_child() {
    let (Ok(r), Ok(root)) = (
        std::env::var("BERTH_BENCH_REF"),
        std::env::var("BERTH_BENCH_STORE"),
    ) else {
        return;
    };
    let s = ImageStore::open(Path::new(&root)).unwrap();
    s.pull(&r, &PullOptions::default(), &mut |_| {}).unwrap();
}

#[test]
#[ignore]
fn bench_pull_vs_skopeo() {
    for b in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/time",
    ] {
        if !Path::new(b).exists() {
            eprintln!("skipping: {b} missing");
            return;
        }
    }
    let mb: usize = std::env::var("BERTH_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = t.path().join("reg.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            t.path().join("regdata").display()
        ),
    )
    .unwrap();
    let _reg = Registry(
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    // 4 layers, each a few files.
    let per_layer = mb * 1024 * 1024 / 4;
    let mut layers = Vec::new();
    for l in 0..4u64 {
        let mut b = LayerBuilder::new().dir(&format!("l{l}"));
        for f in 0..8u64 {
            b = b.file(
                &format!("l{l}/f{f}"),
                0o644,
                &payload(l * 100 + f + 1, per_layer / 8),
            );
        }
        layers.push(b.tar());
    }
    let img = BuiltImage::new(layers, vec![Comp::Gzip; 4], "bench");
    let lay = t.path().join("layout");
    img.oci_layout(&lay, "bench");
    let compressed: u64 = std::fs::read_dir(lay.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let st = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:bench", lay.display()))
        .arg(format!("docker://127.0.0.1:{port}/bench/big:1"))
        .status()
        .unwrap();
    assert!(st.success());
    let reference = format!("127.0.0.1:{port}/bench/big:1");

    // berth: a child process running bench_pull_child.
    let store = t.path().join("store");
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "bench_pull_child",
        "--test-threads=1",
    ])
    .env("BERTH_BENCH_REF", &reference)
    .env("BERTH_BENCH_STORE", &store);
    let (b_secs, b_mib) = timed(c);
    let s = ImageStore::open(&store).unwrap();
    let got = s.get(&reference).unwrap().expect("pulled");
    assert_eq!(got.layers.len(), 4);

    // skopeo copy to an OCI layout, then unpack each layer with tar.
    let dst = t.path().join("skopeo");
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
    ])
    .arg(format!("docker://{reference}"))
    .arg(format!("oci:{}:bench", dst.display()));
    let (s_secs, s_mib) = timed(c);
    let m: serde_json::Value = {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
        let d = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
        serde_json::from_slice(&std::fs::read(dst.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap()
    };
    let mut tar_secs = 0.0;
    let mut tar_mib: f64 = 0.0;
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let d = l["digest"].as_str().unwrap();
        let out = t.path().join(format!("unpacked/{i}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut c = Command::new("tar");
        c.arg("-xzf")
            .arg(dst.join("blobs/sha256").join(&d[7..]))
            .arg("-C")
            .arg(&out);
        let (secs, mib) = timed(c);
        tar_secs += secs;
        tar_mib = tar_mib.max(mib);
    }
    // skopeo verifies digests but keeps the compressed blobs; berth streams into the layer dirs.
    println!(
        "BENCH image {mb} MB uncompressed ({:.0} MB gzip), 4 layers\n  berth pull+unpack: {b_secs:.2} s, peak RSS {b_mib:.1} MiB\n  skopeo copy: {s_secs:.2} s, peak RSS {s_mib:.1} MiB; + tar -xzf: {tar_secs:.2} s (peak {tar_mib:.1} MiB); total {:.2} s",
        compressed as f64 / 1048576.0,
        s_secs + tar_secs
    );
}

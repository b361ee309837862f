//! Registry pulls against real registries on loopback: Debian's `docker-registry` (anonymous
//! and htpasswd basic auth) fed with `skopeo copy`, plus a small registry written here that
//! demands a bearer token (Docker Hub's flow), serves a tampered blob, or fails transiently.
//! No public registry is ever contacted.

#[path = "image_support.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_runtime::image::{ImageError, ImageStore, PullOptions, PullProgress};
use support::*;

fn have(bin: &str) -> bool {
    Path::new(bin).exists()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` process on 127.0.0.1; killed and reaped on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Self::start_with(htpasswd, None)
    }

    /// `tls`: (certificate, key) PEM files; the registry then speaks only HTTPS.
    fn start_with(htpasswd: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth = String::new();
        if let Some((u, p)) = htpasswd {
            let f = dir.path().join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc", f.to_str().unwrap(), u, p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                f.display()
            );
        }
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            dir.path().join("data").display(),
            tls = tls
                .map(|(c, k)| format!("  tls:\n    certificate: {}\n    key: {}\n", c.display(), k.display()))
                .unwrap_or_default()
        );
        let cfgp = dir.path().join("config.yml");
        std::fs::write(&cfgp, cfg).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfgp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry { child, port, dir };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `skopeo copy [--all] oci:<dir>:<name> docker://<dest>`.
fn push(layout: &Path, name: &str, dest: &str, creds: Option<&str>, all: bool) {
    push_as(layout, name, dest, creds, all, None)
}

fn push_as(
    layout: &Path,
    name: &str,
    dest: &str,
    creds: Option<&str>,
    all: bool,
    format: Option<&str>,
) {
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
    ]);
    if let Some(f) = format {
        c.args(["--format", f]);
    }
    if all {
        c.arg("--all");
    }
    if let Some(cr) = creds {
        c.args(["--dest-creds", cr]);
    }
    let out = c
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let t = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&t.path().join("images")).unwrap();
    (t, s)
}

fn collect() -> (Arc<Mutex<Vec<PullProgress>>>, impl FnMut(PullProgress)) {
    let v = Arc::new(Mutex::new(Vec::new()));
    let v2 = v.clone();
    (v, move |p| v2.lock().unwrap().push(p))
}

fn two_layer_image(label: &str) -> BuiltImage {
    BuiltImage::new(
        vec![
            LayerBuilder::new().busybox().tar(),
            LayerBuilder::new()
                .dir("srv")
                .file("srv/label", 0o644, label.as_bytes())
                .tar(),
        ],
        vec![Comp::Gzip, Comp::Zstd],
        label,
    )
}

#[test]
fn pulls_by_tag_digest_and_platform_from_docker_registry() {
    if !have("/usr/bin/docker-registry") || !have("/usr/bin/skopeo") {
        eprintln!("skipping: docker-registry or skopeo missing");
        return;
    }
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // Single-platform image with a gzip and a zstd layer.
    let img = two_layer_image("tagged");
    let lay = t.path().join("single");
    img.oci_layout(&lay, "v1");
    push(
        &lay,
        "v1",
        &format!("{}/berth/app:v1", reg.host()),
        None,
        false,
    );
    // Multi-platform index: the host's architecture and another one.
    let multi = t.path().join("multi");
    let host_img = two_layer_image("host-arch");
    let other_arch = if arch() == "amd64" { "arm64" } else { "amd64" };
    let other_img = BuiltImage::for_arch(
        vec![LayerBuilder::new().file("other", 0o644, b"other").tar()],
        vec![Comp::Gzip],
        "other-arch",
        other_arch,
    );
    let (hd, hs) = host_img.write_manifest(&multi);
    let (od, os_) = other_img.write_manifest(&multi);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": od, "size": os_, "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": hd, "size": hs, "platform": {"os": "linux", "architecture": arch()}}
        ]
    }))
    .unwrap();
    let idx_digest = sha(&index);
    std::fs::write(multi.join("blobs/sha256").join(&idx_digest[7..]), &index).unwrap();
    write_index(
        &multi,
        &[
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx_digest, "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}),
        ],
    );
    push(
        &multi,
        "multi",
        &format!("{}/berth/multi:1", reg.host()),
        None,
        true,
    );

    let (_t2, s) = store();
    let opts = PullOptions::default();
    let (events, mut cb) = collect();
    let got = s
        .pull(&format!("{}/berth/app:v1", reg.host()), &opts, &mut cb)
        .unwrap();
    assert_eq!(got.id, img.id);
    assert_eq!(got.layers.len(), 2);
    assert!(got.layers[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read(got.layers[1].join("srv/label")).unwrap(),
        b"tagged"
    );
    {
        let ev = events.lock().unwrap();
        assert!(
            matches!(ev.first(), Some(PullProgress::Resolved { layers: 2, .. })),
            "{ev:?}"
        );
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, PullProgress::Done { .. }))
                .count(),
            2
        );
        assert!(ev
            .iter()
            .any(|e| matches!(e, PullProgress::Downloading { .. })));
    }
    // Found again by short reference; the repo digest is the manifest's.
    let summary = s.list().unwrap();
    let rd = summary[0].repo_digests[0].clone();
    assert!(
        rd.starts_with(&format!("{}/berth/app@sha256:", reg.host())),
        "{rd}"
    );
    assert!(s
        .get(&format!("{}/berth/app:v1", reg.host()))
        .unwrap()
        .is_some());
    // By digest: nothing to download.
    let (events, mut cb) = collect();
    let by_digest = s.pull(&rd, &opts, &mut cb).unwrap();
    assert_eq!(by_digest.id, img.id);
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, PullProgress::Exists { .. }))
            .count(),
        2
    );
    // A digest that does not exist.
    let missing = format!("{}/berth/app@sha256:{}", reg.host(), "0".repeat(64));
    assert!(matches!(
        s.pull(&missing, &opts, &mut |_| {}),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        s.pull(
            &format!("{}/berth/app:nope", reg.host()),
            &opts,
            &mut |_| {}
        ),
        Err(ImageError::NotFound(_))
    ));
    // Multi-platform: the host's manifest is chosen; the index digest is the repo digest.
    let m = s
        .pull(&format!("{}/berth/multi:1", reg.host()), &opts, &mut |_| {})
        .unwrap();
    assert_eq!(m.id, host_img.id);
    assert_eq!(
        std::fs::read(m.layers[1].join("srv/label")).unwrap(),
        b"host-arch"
    );
    let rec = s
        .list()
        .unwrap()
        .into_iter()
        .find(|x| x.id == m.id)
        .unwrap();
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/berth/multi@{}", reg.host(), idx_digest)]
    );
    // An explicit other platform, and one the index lacks.
    let o = s
        .pull(
            &format!("{}/berth/multi:1", reg.host()),
            &PullOptions {
                platform: Some(format!("linux/{other_arch}")),
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(o.id, other_img.id);
    let r = s.pull(
        &format!("{}/berth/multi:1", reg.host()),
        &PullOptions {
            platform: Some("linux/s390x".into()),
            ..Default::default()
        },
        &mut |_| {},
    );
    assert!(matches!(r, Err(ImageError::NoPlatform { .. })), "{r:?}");
    // A blob corrupted in the registry's storage is rejected and leaves nothing behind.
    let bad = two_layer_image("corrupt-me");
    let lay_bad = t.path().join("bad");
    bad.oci_layout(&lay_bad, "bad");
    push(
        &lay_bad,
        "bad",
        &format!("{}/berth/bad:1", reg.host()),
        None,
        false,
    );
    let zst = sha(&compress(&bad.layers[1], Comp::Zstd).0);
    let data = reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&zst[7..9])
        .join(&zst[7..])
        .join("data");
    let mut b = std::fs::read(&data).unwrap();
    let n = b.len();
    b[n - 5] ^= 0x55;
    std::fs::write(&data, b).unwrap();
    let r = s.pull(&format!("{}/berth/bad:1", reg.host()), &opts, &mut |_| {});
    assert!(
        matches!(
            r,
            Err(ImageError::DigestMismatch { .. }) | Err(ImageError::Io { .. })
        ),
        "{r:?}"
    );
    assert!(s
        .get(&format!("{}/berth/bad:1", reg.host()))
        .unwrap()
        .is_none());
    assert!(!s
        .root()
        .join("layers")
        .join(&sha(&bad.layers[1])[7..])
        .exists());
    // Docker schema2 manifest (gzip layers; skopeo converts the OCI manifest and config).
    let v2 = BuiltImage::new(
        vec![
            LayerBuilder::new().busybox().tar(),
            LayerBuilder::new().file("v2", 0o644, b"v2").tar(),
        ],
        vec![Comp::Gzip, Comp::Gzip],
        "schema2",
    );
    let lay2 = t.path().join("v2s2");
    v2.oci_layout(&lay2, "v2");
    push_as(
        &lay2,
        "v2",
        &format!("{}/berth/docker:v2", reg.host()),
        None,
        false,
        Some("v2s2"),
    );
    let d = s
        .pull(
            &format!("{}/berth/docker:v2", reg.host()),
            &opts,
            &mut |_| {},
        )
        .unwrap();
    assert!(d.layers[1].join("v2").is_file());
    let m = s
        .list()
        .unwrap()
        .into_iter()
        .find(|x| x.id == d.id)
        .unwrap();
    let raw = std::fs::read(
        s.root()
            .join("blobs/sha256")
            .join(&m.repo_digests[0].rsplit_once('@').unwrap().1[7..]),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&raw)
        .contains("application/vnd.docker.distribution.manifest.v2+json"));
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn basic_auth_from_docker_config() {
    if !have("/usr/bin/docker-registry") || !have("/usr/bin/skopeo") || !have("/usr/bin/htpasswd") {
        eprintln!("skipping: docker-registry, skopeo or htpasswd missing");
        return;
    }
    let reg = Registry::start(Some(("berth", "s3cret")));
    let t = tempfile::tempdir().unwrap();
    let img = BuiltImage::new(
        vec![LayerBuilder::new().busybox().tar()],
        vec![Comp::Gzip],
        "private",
    );
    let lay = t.path().join("p");
    img.oci_layout(&lay, "p");
    push(
        &lay,
        "p",
        &format!("{}/private/app:1", reg.host()),
        Some("berth:s3cret"),
        false,
    );
    let (_t2, s) = store();
    let r = format!("{}/private/app:1", reg.host());
    // No credentials: a clear auth error.
    let none = PullOptions {
        docker_config: Some(t.path().join("absent.json")),
        ..Default::default()
    };
    assert!(matches!(
        s.pull(&r, &none, &mut |_| {}),
        Err(ImageError::Auth { .. })
    ));
    // Wrong password.
    let bad = t.path().join("bad.json");
    std::fs::write(
        &bad,
        serde_json::to_vec(
            &serde_json::json!({"auths": {reg.host(): {"username": "berth", "password": "nope"}}}),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        s.pull(
            &r,
            &PullOptions {
                docker_config: Some(bad),
                ..Default::default()
            },
            &mut |_| {}
        ),
        Err(ImageError::Auth { .. })
    ));
    // `auth` as docker login writes it.
    let good = t.path().join("config.json");
    let auth = {
        use std::process::Command;
        let o = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        o.stdin
            .as_ref()
            .unwrap()
            .write_all(b"berth:s3cret")
            .unwrap();
        String::from_utf8(o.wait_with_output().unwrap().stdout).unwrap()
    };
    std::fs::write(
        &good,
        serde_json::to_vec(
            &serde_json::json!({"auths": {format!("http://{}", reg.host()): {"auth": auth}}}),
        )
        .unwrap(),
    )
    .unwrap();
    let got = s
        .pull(
            &r,
            &PullOptions {
                docker_config: Some(good),
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(got.id, img.id);
}

// ---- a registry written here: token auth, tampering, transient failures -------------------

#[derive(Default)]
struct FakeState {
    /// path → (content type, body)
    files: HashMap<String, (String, Vec<u8>)>,
    token: String,
    token_requests: AtomicUsize,
    unauthorized: AtomicUsize,
    /// Paths that fail with 503 this many times first.
    flaky: Mutex<HashMap<String, usize>>,
}

struct FakeRegistry {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    state: Arc<FakeState>,
}

impl FakeRegistry {
    fn start(state: FakeState) -> FakeRegistry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = Arc::new(state);
        let (st, stop2) = (state.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(c, &st, port));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeRegistry {
            port,
            stop,
            handle: Some(handle),
            state,
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(c: TcpStream, st: &FakeState, port: u16) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    // A TLS ClientHello (berth probes HTTPS first on loopback): not spoken here, hang up.
    if r.fill_buf()
        .map(|b| b.first() == Some(&0x16))
        .unwrap_or(true)
    {
        return;
    }
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
        }
        let reply = |w: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
            let mut s = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in headers {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
            s.push_str("\r\n");
            let _ = w.write_all(s.as_bytes());
            let _ = w.write_all(body);
        };
        if path.starts_with("/token?") {
            st.token_requests.fetch_add(1, Ordering::SeqCst);
            assert!(
                path.contains("scope=repository%3Atok%2Fapp%3Apull"),
                "{path}"
            );
            assert!(path.contains("service=fake"), "{path}");
            reply(
                &mut w,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                format!(r#"{{"token":"{}"}}"#, st.token).as_bytes(),
            );
            continue;
        }
        if auth != format!("Bearer {}", st.token) {
            st.unauthorized.fetch_add(1, Ordering::SeqCst);
            let ch = format!(
                r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:tok/app:pull""#
            );
            reply(
                &mut w,
                "401 Unauthorized",
                &[("WWW-Authenticate", ch)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
            );
            continue;
        }
        {
            let mut fl = st.flaky.lock().unwrap();
            if let Some(n) = fl.get_mut(&path) {
                if *n > 0 {
                    *n -= 1;
                    reply(&mut w, "503 Service Unavailable", &[], b"try again");
                    continue;
                }
            }
        }
        match st.files.get(&path) {
            Some((ct, body)) => reply(&mut w, "200 OK", &[("Content-Type", ct.clone())], body),
            None => reply(
                &mut w,
                "404 Not Found",
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
            ),
        }
    }
}

/// Serve an OCI layout's manifest as `/v2/tok/app/manifests/<tag>` and its blobs.
fn fake_from_layout(layout: &Path, tag: &str, tamper: Option<usize>) -> (FakeState, Vec<String>) {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let m = blob(&md);
    let mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let mut st = FakeState {
        token: "t0k3n".into(),
        ..Default::default()
    };
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    st.files.insert(
        format!("/v2/tok/app/manifests/{tag}"),
        (mt.clone(), m.clone()),
    );
    st.files
        .insert(format!("/v2/tok/app/manifests/{md}"), (mt, m));
    let cd = mv["config"]["digest"].as_str().unwrap();
    st.files.insert(
        format!("/v2/tok/app/blobs/{cd}"),
        ("application/octet-stream".into(), blob(cd)),
    );
    let mut layers = Vec::new();
    for (i, l) in mv["layers"].as_array().unwrap().iter().enumerate() {
        let d = l["digest"].as_str().unwrap();
        let mut b = blob(d);
        if tamper == Some(i) {
            let n = b.len();
            b[n / 2] ^= 0xff;
        }
        st.files.insert(
            format!("/v2/tok/app/blobs/{d}"),
            ("application/octet-stream".into(), b),
        );
        layers.push(d.to_string());
    }
    (st, layers)
}

#[test]
fn bearer_token_flow_retries_and_tampered_blobs() {
    let t = tempfile::tempdir().unwrap();
    let img = two_layer_image("token");
    let lay = t.path().join("tok");
    img.oci_layout(&lay, "1");
    let (st, layers) = fake_from_layout(&lay, "1", None);
    // The second layer fails twice with 503 before it is served.
    st.flaky
        .lock()
        .unwrap()
        .insert(format!("/v2/tok/app/blobs/{}", layers[1]), 2);
    let fake = FakeRegistry::start(st);
    let (_t2, s) = store();
    let (events, mut cb) = collect();
    let got = s
        .pull(
            &format!("localhost:{}/tok/app:1", fake.port),
            &PullOptions::default(),
            &mut cb,
        )
        .unwrap();
    assert_eq!(got.id, img.id);
    assert!(
        fake.state.unauthorized.load(Ordering::SeqCst) >= 1,
        "the challenge was issued"
    );
    assert!(
        fake.state.token_requests.load(Ordering::SeqCst) >= 1,
        "a token was fetched"
    );
    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PullProgress::Retry { .. }))
        .count();
    assert_eq!(retries, 2);
    // Retries are bounded: a layer that keeps failing is an error.
    let img2 = two_layer_image("flaky");
    let lay2 = t.path().join("flaky");
    img2.oci_layout(&lay2, "2");
    let (st2, layers2) = fake_from_layout(&lay2, "2", None);
    st2.flaky
        .lock()
        .unwrap()
        .insert(format!("/v2/tok/app/blobs/{}", layers2[1]), 100);
    let fake2 = FakeRegistry::start(st2);
    let (_t3, s2) = store();
    let r = s2.pull(
        &format!("127.0.0.1:{}/tok/app:2", fake2.port),
        &PullOptions {
            retries: 2,
            ..Default::default()
        },
        &mut |_| {},
    );
    assert!(
        matches!(r, Err(ImageError::Http { status: 503, .. })),
        "{r:?}"
    );
    assert!(s2.list().unwrap().is_empty());
    // A tampered layer blob: rejected, nothing kept.
    let img3 = two_layer_image("tampered");
    let lay3 = t.path().join("tampered");
    img3.oci_layout(&lay3, "3");
    let (st3, _) = fake_from_layout(&lay3, "3", Some(1));
    let fake3 = FakeRegistry::start(st3);
    let (_t4, s3) = store();
    let r = s3.pull(
        &format!("127.0.0.1:{}/tok/app:3", fake3.port),
        &PullOptions::default(),
        &mut |_| {},
    );
    assert!(
        matches!(
            r,
            Err(ImageError::DigestMismatch { .. }) | Err(ImageError::Io { .. })
        ),
        "{r:?}"
    );
    assert!(s3.list().unwrap().is_empty());
    assert!(s3
        .get(&format!("127.0.0.1:{}/tok/app:3", fake3.port))
        .unwrap()
        .is_none());
    assert_eq!(std::fs::read_dir(s3.root().join("tmp")).unwrap().count(), 0);
    let kept: Vec<PathBuf> = std::fs::read_dir(s3.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        kept.len() <= 1,
        "only the untampered layer may remain: {kept:?}"
    );
    // ... and a prune leaves nothing.
    s3.prune().unwrap();
    assert_eq!(
        std::fs::read_dir(s3.root().join("layers")).unwrap().count(),
        0
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_registry_with_a_private_ca_from_certs_dir() {
    for b in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/openssl",
    ] {
        if !have(b) {
            eprintln!("skipping: {b} missing");
            return;
        }
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=berth test CA",
            ],
        ]
        .concat(),
        d,
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
        d,
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
        d,
    );
    let reg = Registry::start_with(None, Some((&d.join("srv.crt"), &d.join("srv.key"))));
    let img = BuiltImage::new(
        vec![LayerBuilder::new().busybox().tar()],
        vec![Comp::Gzip],
        "tls",
    );
    let lay = d.join("l");
    img.oci_layout(&lay, "t");
    push(&lay, "t", &format!("{}/tls/app:1", reg.host()), None, false);
    let r = format!("{}/tls/app:1", reg.host());
    let (_t2, s) = store();
    // Unknown CA: HTTPS fails verification, plain HTTP is refused by the TLS-only registry.
    let no_ca = PullOptions {
        certs_dir: Some(d.join("empty-certs.d")),
        ..Default::default()
    };
    assert!(s.pull(&r, &no_ca, &mut |_| {}).is_err());
    // Docker's layout: certs.d/<host:port>/ca.crt.
    let certs = d.join("certs.d").join(reg.host());
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(d.join("ca.crt"), certs.join("ca.crt")).unwrap();
    let with_ca = PullOptions {
        certs_dir: Some(d.join("certs.d")),
        ..Default::default()
    };
    let got = s.pull(&r, &with_ca, &mut |_| {}).unwrap();
    assert_eq!(got.id, img.id);
}

/// `ImageStore::push`: a stored image (loaded from a docker-save archive) goes to a real
/// registry and comes back through a pull into another store with the same files, modes,
/// symlinks and whiteouts; a second push finds every blob already there.
#[test]
fn pushes_a_stored_image_and_pulls_it_back() {
    use berth_runtime::image::push::PushProgress;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    if !have("/usr/bin/docker-registry") {
        eprintln!("skipping: docker-registry missing");
        return;
    }
    if !is_root() {
        // Unpacking a whiteout (a 0/0 character device) needs CAP_MKNOD.
        eprintln!("skipping: needs root");
        return;
    }
    let reg = Registry::start(None);
    let img = BuiltImage::new(
        vec![
            LayerBuilder::new()
                .dir("srv")
                .file("srv/a", 0o644, b"one")
                .file("srv/gone", 0o644, b"x")
                .symlink("srv/l", "a")
                .tar(),
            LayerBuilder::new()
                .dir("srv")
                .file("srv/.wh.gone", 0o644, b"")
                .file("srv/b", 0o600, b"two")
                .tar(),
        ],
        vec![Comp::Gzip, Comp::Zstd],
        "pushme",
    );
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("img.tar");
    img.docker_save(&archive, "berth/src:1");
    let (_t1, s1) = store();
    s1.load(&archive).unwrap();
    let target = format!("{}/berth/pushed:v2", reg.host());
    let mut first = Vec::new();
    let digest = s1
        .push("berth/src:1", &target, &PullOptions::default(), &mut |p| {
            first.push(p)
        })
        .unwrap();
    assert_eq!(
        first
            .iter()
            .filter(|p| matches!(p, PushProgress::Pushed { .. }))
            .count(),
        2,
        "{first:?}"
    );
    let mut again = Vec::new();
    let digest2 = s1
        .push("berth/src:1", &target, &PullOptions::default(), &mut |p| {
            again.push(p)
        })
        .unwrap();
    assert_eq!(digest, digest2, "the same image gives the same manifest");
    assert_eq!(
        again
            .iter()
            .filter(|p| matches!(p, PushProgress::Exists { .. }))
            .count(),
        2,
        "{again:?}"
    );

    let (_t2, s2) = store();
    let (events, mut cb) = collect();
    let got = s2.pull(&target, &PullOptions::default(), &mut cb).unwrap();
    let resolved = events.lock().unwrap().iter().find_map(|e| match e {
        PullProgress::Resolved { digest, .. } => Some(digest.clone()),
        _ => None,
    });
    assert_eq!(resolved.as_deref(), Some(digest.as_str()));
    assert_eq!(got.layers.len(), 2);
    let (low, top) = (&got.layers[0], &got.layers[1]);
    assert_eq!(std::fs::read(low.join("srv/a")).unwrap(), b"one");
    assert_eq!(
        std::fs::read_link(low.join("srv/l")).unwrap(),
        Path::new("a")
    );
    let b = std::fs::metadata(top.join("srv/b")).unwrap();
    assert_eq!(b.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(top.join("srv/b")).unwrap(), b"two");
    let wh = std::fs::symlink_metadata(top.join("srv/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "the whiteout survives the round trip"
    );
    let orig = s1.get("berth/src:1").unwrap().unwrap();
    assert_eq!(
        got.config.config().as_ref().and_then(|c| c.cmd().clone()),
        orig.config.config().as_ref().and_then(|c| c.cmd().clone())
    );
}

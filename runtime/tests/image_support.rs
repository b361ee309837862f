//! Helpers shared by the image tests: build images from Debian's busybox-static in the
//! `docker save` and OCI-layout forms. Included with `#[path]` by the other image tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One layer: entries added in order.
pub struct LayerBuilder(tar::Builder<Vec<u8>>);

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        LayerBuilder(b)
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    /// busybox-static as /bin/busybox with a few applet links.
    pub fn busybox(self) -> Self {
        let bb = std::fs::read("/bin/busybox").expect("busybox-static is installed (/bin/busybox)");
        let mut s = self.dir("bin").file("bin/busybox", 0o755, &bb);
        for a in ["sh", "ls", "cat", "echo", "sleep", "touch", "stat"] {
            s = s.symlink(&format!("bin/{a}"), "/bin/busybox");
        }
        s.dir("etc")
            .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
            .dir("tmp")
    }
    pub fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            (
                gz.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

pub fn config(diff_ids: &[String], cmd: &[&str], arch: &str, label: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "created": "2026-11-23T10:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin", format!("LABEL={label}")], "Cmd": cmd, "WorkingDir": "/",
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000u64, "Retries": 3}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": []
    }))
    .unwrap()
}

/// An image built in memory: layer tars (uncompressed) and their compressions.
pub struct BuiltImage {
    pub layers: Vec<Vec<u8>>,
    pub comps: Vec<Comp>,
    pub config: Vec<u8>,
    pub id: String,
}

impl BuiltImage {
    pub fn new(layers: Vec<Vec<u8>>, comps: Vec<Comp>, label: &str) -> Self {
        Self::for_arch(layers, comps, label, arch())
    }
    pub fn for_arch(layers: Vec<Vec<u8>>, comps: Vec<Comp>, label: &str, arch: &str) -> Self {
        let diffs: Vec<String> = layers.iter().map(|l| sha(l)).collect();
        let config = config(&diffs, &["/bin/sh"], arch, label);
        let id = sha(&config);
        BuiltImage {
            layers,
            comps,
            config,
            id,
        }
    }

    fn put(dir: &Path, data: &[u8]) -> String {
        let d = sha(data);
        let p = dir.join("blobs/sha256").join(&d[7..]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
        d
    }

    /// Write the manifest (and blobs) into an OCI layout at `dir`; returns (digest, size).
    pub fn write_manifest(&self, dir: &Path) -> (String, u64) {
        let cfg = Self::put(dir, &self.config);
        let mut layers = Vec::new();
        for (l, c) in self.layers.iter().zip(&self.comps) {
            let (blob, mt) = compress(l, *c);
            let d = Self::put(dir, &blob);
            layers.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        }
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": self.config.len()},
            "layers": layers
        }))
        .unwrap();
        (Self::put(dir, &m), m.len() as u64)
    }

    /// A complete OCI layout directory with one manifest named `ref_name`.
    pub fn oci_layout(&self, dir: &Path, ref_name: &str) {
        let (d, size) = self.write_manifest(dir);
        write_index(
            dir,
            &[serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": size,
                "annotations": {"org.opencontainers.image.ref.name": ref_name}
            })],
        );
    }

    /// A `docker save` archive (legacy layout: <id>/layer.tar, <config>.json, manifest.json).
    pub fn docker_save(&self, path: &Path, tag: &str) {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, name, data).unwrap();
        };
        let mut layer_paths = Vec::new();
        for l in &self.layers {
            let d = sha(l);
            let p = format!("{}/layer.tar", &d[7..]);
            add(&p, l);
            layer_paths.push(p);
        }
        let cfg_name = format!("{}.json", &self.id[7..]);
        add(&cfg_name, &self.config);
        let m = serde_json::to_vec(
            &serde_json::json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": layer_paths}]),
        )
        .unwrap();
        add("manifest.json", &m);
        std::fs::write(path, b.into_inner().unwrap()).unwrap();
    }
}

impl BuiltImage {
    /// A `docker save` archive as Docker 25+ writes it: blobs under `blobs/sha256/`, and the
    /// legacy `<id>/layer.tar` paths as symlinks to them.
    pub fn docker_save_symlinked(&self, path: &Path, tag: &str) {
        let mut b = tar::Builder::new(Vec::new());
        let mut layer_paths = Vec::new();
        for l in &self.layers {
            let hex = &sha(l)[7..];
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(l.len() as u64);
            b.append_data(&mut h, format!("blobs/sha256/{hex}"), &l[..])
                .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(
                &mut h,
                format!("{hex}/layer.tar"),
                format!("../blobs/sha256/{hex}"),
            )
            .unwrap();
            layer_paths.push(format!("{hex}/layer.tar"));
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(self.config.len() as u64);
        b.append_data(
            &mut h,
            format!("blobs/sha256/{}", &self.id[7..]),
            &self.config[..],
        )
        .unwrap();
        let m = serde_json::to_vec(&serde_json::json!([{"Config": format!("blobs/sha256/{}", &self.id[7..]), "RepoTags": [tag], "Layers": layer_paths}])).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(m.len() as u64);
        b.append_data(&mut h, "manifest.json", &m[..]).unwrap();
        std::fs::write(path, b.into_inner().unwrap()).unwrap();
    }
}

pub fn write_index(dir: &Path, manifests: &[serde_json::Value]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// Tar up a directory (for OCI archives).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Mount points under `root` (for leak checks).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect()
}

/// Unmounts anything left under a test root, even when the test fails.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mut ms = mounts_under(&self.0);
        ms.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in ms {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

//! Registry pushes (OCI distribution API), the counterpart of [`super::pull`] with the same
//! client, auth and plain-HTTP rules.
//!
//! The store keeps layers unpacked, not their original blobs, so each layer is packed again
//! ([`super::pack`], layer mode: whiteouts back to `.wh.` entries) and pushed as an uncompressed
//! OCI layer. When a repacked layer's digest differs from the recorded diff_id (another tar
//! writer made the original), the pushed config carries the new diff_ids: the filesystem is the
//! same, the image id may differ. Blobs the registry already has are not sent again.
//! [`push_artifact`] pushes arbitrary blobs with a manifest (`publish`).

use std::fs::File;

use super::error::{ImageError, IoContext};
use super::pull::Client;
use super::reference::Reference;
use super::unpack::sha256_hex;
use super::{ImageStore, PullOptions};

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Progress of a push, per blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushProgress {
    Preparing { layer: String },
    Exists { layer: String },
    Pushed { layer: String, size: u64 },
    Manifest { digest: String },
}

/// A blob to push: in memory or a file.
pub enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}

impl Client {
    fn send(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Option<&Blob>,
    ) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        let mut tried_auth = false;
        loop {
            let mut b = ureq::http::Request::builder().method(method).uri(url);
            if let Some(h) = self.auth_header() {
                b = b.header("Authorization", h);
            }
            if let Some(c) = content_type {
                b = b.header("Content-Type", c);
            }
            let resp = match body {
                None => {
                    let req = b
                        .header("Content-Length", "0")
                        .body(())
                        .map_err(|e| self.registry_err(format!("{method} {url}: {e}")))?;
                    self.agent.run(req)
                }
                Some(Blob::Bytes(d)) => {
                    let req = b
                        .header("Content-Length", d.len().to_string())
                        .body(d.to_vec())
                        .map_err(|e| self.registry_err(format!("{method} {url}: {e}")))?;
                    self.agent.run(req)
                }
                Some(Blob::File(p)) => {
                    let f = File::open(p).ctx(|| format!("opening {}", p.display()))?;
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let req = b
                        .header("Content-Length", len.to_string())
                        .body(f)
                        .map_err(|e| self.registry_err(format!("{method} {url}: {e}")))?;
                    self.agent.run(req)
                }
            }
            .map_err(|e| self.registry_err(format!("{method} {url}: {e}")))?;
            let status = resp.status().as_u16();
            if status == 401 && !tried_auth {
                tried_auth = true;
                self.answer_401(&resp)?;
                continue;
            }
            return Ok(resp);
        }
    }

    fn fail(&self, what: &str, resp: ureq::http::Response<ureq::Body>) -> ImageError {
        self.refusal(what, &format!("{what}: "), resp)
    }

    /// Upload one blob unless the registry has it; true if it was sent.
    pub(super) fn put_blob(&self, digest: &str, blob: &Blob) -> Result<bool, ImageError> {
        let head = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let r = self.send("HEAD", &head, None, None)?;
        if r.status().is_success() {
            return Ok(false);
        }
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let r = self.send("POST", &start, None, None)?;
        if r.status().as_u16() != 202 {
            return Err(self.fail(&format!("POST {start}"), r));
        }
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.registry_err("upload without a Location".into()))?
            .to_string();
        let mut url = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", digest.replace(':', "%3A")));
        let r = self.send("PUT", &url, Some("application/octet-stream"), Some(blob))?;
        if r.status().as_u16() != 201 {
            return Err(self.fail(&format!("PUT blob {digest}"), r));
        }
        Ok(true)
    }

    pub(super) fn put_manifest(
        &self,
        tag: &str,
        media_type: &str,
        data: &[u8],
    ) -> Result<String, ImageError> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.repository);
        let r = self.send("PUT", &url, Some(media_type), Some(&Blob::Bytes(data)))?;
        if r.status().as_u16() != 201 {
            return Err(self.fail(&format!("PUT manifest {tag}"), r));
        }
        Ok(sha256_hex(data))
    }
}

fn target_of(target: &str) -> Result<(Reference, String), ImageError> {
    let r = Reference::parse(target)?;
    let tag = match (&r.digest, &r.tag) {
        (Some(_), _) => {
            return Err(ImageError::Unsupported {
                what: "push target with a digest",
                value: target.into(),
            })
        }
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    };
    Ok((r, tag))
}

/// Push the stored image `local` as `target` (`host/repo:tag`). Returns the manifest digest.
pub(super) fn push(
    store: &ImageStore,
    local: &str,
    target: &str,
    opts: &PullOptions,
    progress: &mut dyn FnMut(PushProgress),
) -> Result<String, ImageError> {
    let img = store
        .get(local)?
        .ok_or_else(|| ImageError::NotFound(format!("image {local}")))?;
    let (r, tag) = target_of(target)?;
    let client = Client::new(&r, opts)?;
    let mut config = store.config_value(&img.id)?;
    let _w = store.writer_lock()?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in &img.layers {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress(PushProgress::Preparing {
            layer: name.clone(),
        });
        let tmp = store.tmp_path("push");
        let r = (|| {
            let f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(f);
            super::pack::pack(dir, super::pack::Mode::Layer, &mut w)?;
            drop(w);
            let (digest, size) = super::pack::sha256_file(&tmp)?;
            let sent = client.put_blob(&digest, &Blob::File(&tmp))?;
            progress(if sent {
                PushProgress::Pushed {
                    layer: name.clone(),
                    size,
                }
            } else {
                PushProgress::Exists {
                    layer: name.clone(),
                }
            });
            Ok::<_, ImageError>((digest, size))
        })();
        let _ = std::fs::remove_file(&tmp);
        let (digest, size) = r?;
        layers.push(serde_json::json!({"mediaType": LAYER_TAR, "digest": digest, "size": size}));
        diff_ids.push(serde_json::Value::from(digest));
    }
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let cdata = serde_json::to_vec(&config).map_err(|source| ImageError::Json {
        what: "image config".into(),
        source,
    })?;
    let cdigest = sha256_hex(&cdata);
    client.put_blob(&cdigest, &Blob::Bytes(&cdata))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": cdigest, "size": cdata.len()},
        "layers": layers,
    });
    let mdata = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "manifest".into(),
        source,
    })?;
    let digest = client.put_manifest(&tag, MANIFEST, &mdata)?;
    progress(PushProgress::Manifest {
        digest: digest.clone(),
    });
    // As docker does after a push: the image now has a digest in that repository.
    let repo_digest = r.with_digest(&digest);
    store.update_db(|db| {
        if let Some(rec) = db.images.iter_mut().find(|x| x.id == img.id) {
            if !rec.repo_digests.contains(&repo_digest) {
                rec.repo_digests.push(repo_digest.clone());
            }
        }
        Ok(())
    })?;
    Ok(digest)
}

/// Push an OCI artifact: `config` (media type, bytes) and `layers` (media type, bytes,
/// annotations), under `target`'s tag, with `artifact_type` set (OCI 1.1) when given.
pub fn push_artifact(
    target: &str,
    opts: &PullOptions,
    artifact_type: Option<&str>,
    config: (&str, &[u8]),
    layers: &[(String, Vec<u8>, serde_json::Value)],
    annotations: serde_json::Value,
) -> Result<String, ImageError> {
    let (r, tag) = target_of(target)?;
    let client = Client::new(&r, opts)?;
    let cdigest = sha256_hex(config.1);
    client.put_blob(&cdigest, &Blob::Bytes(config.1))?;
    let mut descs = Vec::new();
    for (mt, data, ann) in layers {
        let d = sha256_hex(data);
        client.put_blob(&d, &Blob::Bytes(data))?;
        let mut desc = serde_json::json!({"mediaType": mt, "digest": d, "size": data.len()});
        if ann.as_object().is_some_and(|o| !o.is_empty()) {
            desc["annotations"] = ann.clone();
        }
        descs.push(desc);
    }
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": config.0, "digest": cdigest, "size": config.1.len()},
        "layers": descs,
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = t.into();
    }
    if annotations.as_object().is_some_and(|o| !o.is_empty()) {
        manifest["annotations"] = annotations;
    }
    let mdata = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "manifest".into(),
        source,
    })?;
    client.put_manifest(&tag, MANIFEST, &mdata)
}

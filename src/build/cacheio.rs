//! Build cache records in and out of one BERTH_ROOT: `cache_to: type=local,dest=DIR`,
//! `cache_from: type=local,src=DIR`, and `cache_from: IMAGE` (the records berth's built images
//! carry in their config).
//!
//! A record maps a step's cache key (see `exec.rs`: it chains the base image, instructions,
//! build args and file contents, never anything of this store) to the layer the step made, or
//! to none. Keys are the same on every machine for the same inputs, so records made on one
//! BERTH_ROOT give cache hits on another once their layers are there.
//!
//! The local layout is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`), as
//! BuildKit's local cache is: one manifest whose config is the record list
//! (`application/vnd.berth.buildcache.config.v1+json`) and whose layers are the records'
//! layers as uncompressed OCI layer tars. BuildKit's own cache config format is not written
//! (its keys are BuildKit's, not berth's), so only berth reads these records.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use berth_runtime::image::ImageStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The image config field berth's built images carry their records in (BuildKit's inline
/// cache does the same with `moby.buildkit.cache.v0`).
pub const IMAGE_FIELD: &str = "berth.build.cache.v1";

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.berth.buildcache.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One record: a step's key and the layer it made, as an index into a list of layers (the
/// image's diff_ids, or the manifest's layers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub created: String,
}

/// The config blob of a local cache export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheConfig {
    records: Vec<Record>,
    /// The diff_id of each manifest layer, in order (so a later export reuses blobs).
    diff_ids: Vec<String>,
}

/// A record taken from a cache source, ready to be a cache hit.
#[derive(Debug, Clone)]
pub struct Imported {
    pub created: String,
    pub layer: ImportedLayer,
}

#[derive(Debug, Clone)]
pub enum ImportedLayer {
    /// The step made no layer.
    None,
    /// A layer already in the store (a cache image's).
    InStore(String),
    /// A layer tar of a local export, imported into the store on the first hit.
    Blob(PathBuf),
}

fn blob_path(dir: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("bad digest {digest:?}"))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> anyhow::Result<T> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
}

/// The manifest of a local export and its records.
fn read_local(dir: &Path) -> anyhow::Result<(CacheConfig, Vec<String>)> {
    let index: serde_json::Value = read_json(&dir.join("index.json"))?;
    let m = index["manifests"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|m| {
                m["artifactType"] == CONFIG_MEDIA_TYPE
                    || m["annotations"]["dev.berth.buildcache"] == "v1"
            })
        })
        .ok_or_else(|| anyhow!("{}: no berth build cache in index.json", dir.display()))?;
    let digest = m["digest"].as_str().unwrap_or_default();
    let manifest: serde_json::Value = read_json(&blob_path(dir, digest)?)?;
    let cdigest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let config: CacheConfig = read_json(&blob_path(dir, cdigest)?)?;
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["digest"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok((config, layers))
}

/// The records of a local export (`cache_from: type=local,src=DIR`).
pub fn import_local(dir: &Path) -> anyhow::Result<BTreeMap<String, Imported>> {
    let (config, layers) = read_local(dir)?;
    let mut out = BTreeMap::new();
    for r in config.records {
        let layer = match r.layer {
            None => ImportedLayer::None,
            Some(i) => {
                let d = layers.get(i).ok_or_else(|| {
                    anyhow!(
                        "{}: record names layer {i} of {}",
                        dir.display(),
                        layers.len()
                    )
                })?;
                let p = blob_path(dir, d)?;
                if !p.is_file() {
                    bail!("{}: blob {d} is missing", dir.display());
                }
                ImportedLayer::Blob(p)
            }
        };
        out.insert(
            r.key,
            Imported {
                created: r.created,
                layer,
            },
        );
    }
    Ok(out)
}

/// The records an image's config carries (`cache_from: IMAGE`), with its layers.
pub fn import_image(
    config: &[u8],
    diff_ids: &[String],
) -> anyhow::Result<BTreeMap<String, Imported>> {
    let v: serde_json::Value = serde_json::from_slice(config).context("image config")?;
    let Some(recs) = v.get(IMAGE_FIELD) else {
        bail!("the image carries no berth build cache records (it was not built by berth)");
    };
    let recs: Vec<Record> =
        serde_json::from_value(recs.clone()).context("the image's build cache records")?;
    let mut out = BTreeMap::new();
    for r in recs {
        let layer = match r.layer {
            None => ImportedLayer::None,
            Some(i) => ImportedLayer::InStore(
                diff_ids
                    .get(i)
                    .cloned()
                    .ok_or_else(|| anyhow!("a record names layer {i} of {}", diff_ids.len()))?,
            ),
        };
        out.insert(
            r.key,
            Imported {
                created: r.created,
                layer,
            },
        );
    }
    Ok(out)
}

/// Make an imported record's layer present in the store; its diff_id (none: no layer).
pub fn materialize(store: &ImageStore, i: &Imported) -> anyhow::Result<Option<String>> {
    match &i.layer {
        ImportedLayer::None => Ok(None),
        ImportedLayer::InStore(d) => match store.layer_dir(d) {
            Some(_) => Ok(Some(d.clone())),
            None => bail!("layer {d} is not in the store"),
        },
        ImportedLayer::Blob(p) => {
            // An uncompressed layer's digest is its diff_id: a blob that does not hash to its
            // name is refused (and the layer it made is left to prune).
            let l = store.import_layer_tar(p)?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if Some(l.diff_id.trim_start_matches("sha256:")) != name.as_deref() {
                bail!("{}: the blob does not match its digest", p.display());
            }
            Ok(Some(l.diff_id))
        }
    }
}

/// Write a blob through a temp file, named by its sha256; returns `(digest, size)`.
fn put_blob(
    dir: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<(String, u64)> {
    struct Hashing<W> {
        inner: W,
        h: Sha256,
        n: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.h.update(&b[..n]);
            self.n += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let tmp = blobs.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        super::exec::rand_id()
    ));
    let r = (|| {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = Hashing {
            inner: std::io::BufWriter::new(f),
            h: Sha256::new(),
            n: 0,
        };
        write(&mut w)?;
        w.flush()?;
        let digest = format!("sha256:{}", hex::encode(w.h.finalize()));
        let dest = blob_path(dir, &digest)?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        Ok((digest, w.n))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn put_json(dir: &Path, v: &serde_json::Value) -> anyhow::Result<(String, u64)> {
    let b = serde_json::to_vec(v)?;
    put_blob(dir, |w| Ok(w.write_all(&b)?))
}

/// Export `records` (key → (diff_id or none, created)) to `dir` as an OCI layout. Layer blobs
/// an earlier export of the same diff_id left are reused, not written again.
pub fn export_local(
    store: &ImageStore,
    dir: &Path,
    records: &BTreeMap<String, (Option<String>, String)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Blobs of the previous export, by diff_id.
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    if let Ok((old, layers)) = read_local(dir) {
        for (d, digest) in old.diff_ids.iter().zip(layers) {
            if blob_path(dir, &digest)
                .map(|p| p.is_file())
                .unwrap_or(false)
            {
                known.insert(d.clone(), digest);
            }
        }
    }
    let mut config = CacheConfig::default();
    let mut layers: Vec<serde_json::Value> = Vec::new();
    for (key, (diff, created)) in records {
        let layer = match diff {
            None => None,
            Some(d) => match config.diff_ids.iter().position(|x| x == d) {
                Some(i) => Some(i),
                None => {
                    let (digest, size) = match known.get(d) {
                        Some(dg) => {
                            let size = std::fs::metadata(blob_path(dir, dg)?)?.len();
                            (dg.clone(), size)
                        }
                        None => {
                            let src = store.layer_dir(d).ok_or_else(|| {
                                anyhow!("layer {d} is missing from the image store")
                            })?;
                            put_blob(dir, |w| {
                                berth_runtime::image::diff::write_layer_tar(&src, w)?;
                                Ok(())
                            })?
                        }
                    };
                    layers.push(
                        json!({"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size}),
                    );
                    config.diff_ids.push(d.clone());
                    Some(config.diff_ids.len() - 1)
                }
            },
        };
        config.records.push(Record {
            key: key.clone(),
            layer,
            created: created.clone(),
        });
    }
    let (cdigest, csize) = put_json(dir, &serde_json::to_value(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cdigest, "size": csize},
        "layers": layers,
    });
    let (mdigest, msize) = put_json(dir, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": CONFIG_MEDIA_TYPE,
            "digest": mdigest,
            "size": msize,
            "annotations": {"dev.berth.buildcache": "v1"},
        }],
    });
    let write_atomic = |name: &str, data: &[u8]| -> anyhow::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, dir.join(name))
            .with_context(|| format!("writing {}", dir.join(name).display()))
    };
    write_atomic("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_atomic("index.json", &serde_json::to_vec(&index)?)?;
    // Blobs no longer named (an older export's) go.
    let mut named: Vec<String> = vec![cdigest, mdigest];
    named.extend(
        layers
            .iter()
            .filter_map(|l| l["digest"].as_str().map(String::from)),
    );
    if let Ok(rd) = std::fs::read_dir(dir.join("blobs/sha256")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') && !named.iter().any(|d| d.ends_with(&n)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_records_map_layers_by_index() {
        let cfg = json!({
            "rootfs": {"type": "layers", "diff_ids": []},
            IMAGE_FIELD: [
                {"key": "k1", "layer": 1, "created": "2026-01-01T00:00:00Z"},
                {"key": "k2", "created": "2026-01-02T00:00:00Z"}
            ]
        });
        let ids = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let m = import_image(&serde_json::to_vec(&cfg).unwrap(), &ids).unwrap();
        assert!(matches!(&m["k1"].layer, ImportedLayer::InStore(d) if d == "sha256:bb"));
        assert!(matches!(m["k2"].layer, ImportedLayer::None));
        assert_eq!(m["k2"].created, "2026-01-02T00:00:00Z");
        // A record naming a layer the image does not have is refused.
        let bad = json!({IMAGE_FIELD: [{"key": "k", "layer": 5, "created": "x"}]});
        assert!(import_image(&serde_json::to_vec(&bad).unwrap(), &ids).is_err());
        // An image not built by berth has no records.
        let e = import_image(b"{}", &ids).unwrap_err();
        assert!(e.to_string().contains("not built by berth"), "{e}");
    }

    #[test]
    fn local_layout_round_trip_without_layers() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&d.path().join("store")).unwrap();
        let out = d.path().join("cache");
        let mut recs = BTreeMap::new();
        recs.insert("k1".to_string(), (None, "2026-01-01T00:00:00Z".to_string()));
        export_local(&store, &out, &recs).unwrap();
        assert!(out.join("oci-layout").is_file());
        let index: serde_json::Value = read_json(&out.join("index.json")).unwrap();
        assert_eq!(index["manifests"][0]["artifactType"], CONFIG_MEDIA_TYPE);
        let m = import_local(&out).unwrap();
        assert_eq!(m.len(), 1);
        assert!(matches!(m["k1"].layer, ImportedLayer::None));
        // A layer the store does not have cannot be exported.
        recs.insert(
            "k2".into(),
            (Some(format!("sha256:{}", "0".repeat(64))), "x".into()),
        );
        assert!(export_local(&store, &out, &recs).is_err());
        // Not a cache layout: a clear error.
        let e = import_local(d.path()).unwrap_err();
        assert!(format!("{e:#}").contains("index.json"), "{e:#}");
    }
}

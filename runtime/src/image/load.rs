//! `berth load`: `docker save` archives (manifest.json) and OCI image layouts (index.json), as a
//! directory or a tar archive (plain, gzip or zstd).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ImageError, IoContext};
use super::manifest::{choose_platform, platforms, AnyManifest};
use super::reference::Reference;
use super::unpack::{sha256_hex, sniff, Compression};
use super::{host_platform, ImageRecord, ImageStore};

/// Read access to the files of an archive or a directory.
trait Source {
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ImageError>;
    fn exists(&self, path: &str) -> bool;
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let mut v = Vec::new();
        self.open(path)?
            .take(limit)
            .read_to_end(&mut v)
            .ctx(|| format!("reading {path}"))?;
        Ok(v)
    }
}

fn norm(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

struct TarSource {
    path: PathBuf,
    /// path → (offset, size) of regular files; symlinks are resolved at index time.
    files: HashMap<String, (u64, u64)>,
}

impl TarSource {
    fn index(path: &Path) -> Result<TarSource, ImageError> {
        let bad = |why: String| ImageError::Archive {
            path: path.display().to_string(),
            why,
        };
        let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut files = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        for e in ar.entries_with_seek().map_err(|e| bad(e.to_string()))? {
            let e = e.map_err(|e| bad(e.to_string()))?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Some(name) = norm(&name) else { continue };
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = e.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let target = if e.header().entry_type() == tar::EntryType::Link
                            || t.starts_with('/')
                        {
                            t
                        } else {
                            match name.rsplit_once('/') {
                                Some((dir, _)) => format!("{dir}/{t}"),
                                None => t,
                            }
                        };
                        if let Some(target) = norm(&target) {
                            links.push((name, target));
                        }
                    }
                }
                _ => {}
            }
        }
        // Links to links: a few rounds are plenty for docker save's layout.
        for _ in 0..4 {
            for (name, target) in &links {
                if let Some(v) = files.get(target).copied() {
                    files.entry(name.clone()).or_insert(v);
                }
            }
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            files,
        })
    }
}

impl Source for TarSource {
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ImageError> {
        let key = norm(path).unwrap_or_default();
        let (off, size) = *self.files.get(&key).ok_or_else(|| ImageError::Archive {
            path: self.path.display().to_string(),
            why: format!("missing {path}"),
        })?;
        let mut f = File::open(&self.path).ctx(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(off))
            .ctx(|| format!("seeking in {}", self.path.display()))?;
        Ok(Box::new(BufReader::with_capacity(256 * 1024, f.take(size))))
    }
    fn exists(&self, path: &str) -> bool {
        norm(path)
            .map(|k| self.files.contains_key(&k))
            .unwrap_or(false)
    }
}

struct DirSource(PathBuf);

impl DirSource {
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        if path.starts_with('/') {
            return None;
        }
        let n = norm(path)?;
        Some(self.0.join(n))
    }
}

impl Source for DirSource {
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, ImageError> {
        let p = self.resolve(path).ok_or_else(|| ImageError::Archive {
            path: self.0.display().to_string(),
            why: format!("bad path {path}"),
        })?;
        let f = File::open(&p).ctx(|| format!("opening {}", p.display()))?;
        Ok(Box::new(BufReader::with_capacity(256 * 1024, f)))
    }
    fn exists(&self, path: &str) -> bool {
        self.resolve(path).map(|p| p.is_file()).unwrap_or(false)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image found in the archive, ready to import.
struct Found {
    config_path: String,
    config_digest: Option<String>,
    manifest: Option<(String, Vec<u8>)>,
    /// (path, expected blob digest)
    layers: Vec<(String, Option<String>)>,
    tags: Vec<String>,
}

pub(super) fn load(store: &ImageStore, input: &Path) -> Result<Vec<String>, ImageError> {
    let _w = store.writer_lock()?;
    let meta = std::fs::metadata(input).ctx(|| format!("opening {}", input.display()))?;
    if meta.is_dir() {
        return import(store, &DirSource(input.to_path_buf()), input);
    }
    // Compressed archive: decompress into tmp/ first (tar needs to seek).
    let mut head = [0u8; 4];
    let n = File::open(input)
        .and_then(|mut f| f.read(&mut head))
        .ctx(|| format!("reading {}", input.display()))?;
    let kind = sniff(&head[..n]);
    if kind == Compression::None {
        let src = TarSource::index(input)?;
        return import(store, &src, input);
    }
    let tmp = store.tmp_path("load");
    let r = (|| {
        let f = BufReader::new(File::open(input).ctx(|| format!("opening {}", input.display()))?);
        let mut dec: Box<dyn Read> = match kind {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
            _ => Box::new(
                zstd::Decoder::with_buffer(f).ctx(|| format!("reading {}", input.display()))?,
            ),
        };
        let mut out = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        std::io::copy(&mut dec, &mut out).ctx(|| format!("decompressing {}", input.display()))?;
        let src = TarSource::index(&tmp)?;
        import(store, &src, input)
    })();
    let _ = std::fs::remove_file(&tmp);
    r
}

fn import(store: &ImageStore, src: &dyn Source, input: &Path) -> Result<Vec<String>, ImageError> {
    let bad = |why: String| ImageError::Archive {
        path: input.display().to_string(),
        why,
    };
    let mut found = Vec::new();
    if src.exists("manifest.json") {
        let raw = src.read("manifest.json", 64 << 20)?;
        let ms: Vec<SaveManifest> =
            serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
                what: format!("{}: manifest.json", input.display()),
                source,
            })?;
        for m in ms {
            let config_digest = m.config.rsplit('/').next().and_then(|f| {
                let hex = f.trim_end_matches(".json");
                (hex.len() == 64).then(|| format!("sha256:{hex}"))
            });
            found.push(Found {
                config_path: m.config,
                config_digest,
                manifest: None,
                layers: m.layers.into_iter().map(|l| (l, None)).collect(),
                tags: m.repo_tags.unwrap_or_default(),
            });
        }
    } else if src.exists("index.json") {
        let raw = src.read("index.json", 64 << 20)?;
        let index = AnyManifest::parse(&raw, &format!("{}: index.json", input.display()))?;
        for d in &index.manifests {
            let tag = d
                .annotations
                .get("io.containerd.image.name")
                .cloned()
                .or_else(|| {
                    d.annotations
                        .get("org.opencontainers.image.ref.name")
                        .map(|n| {
                            // A full reference, or a bare name/tag (skopeo's oci:dir:NAME): podman's
                            // convention puts bare names under localhost/.
                            if n.contains('/') || n.contains(':') {
                                n.clone()
                            } else {
                                format!("localhost/{n}")
                            }
                        })
                });
            let (mdigest, mraw) = resolve_oci(src, d, input, 0)?;
            let m = AnyManifest::parse(&mraw, &format!("manifest {mdigest}"))?;
            let cfg = m
                .config
                .ok_or_else(|| bad(format!("manifest {mdigest} has no config")))?;
            found.push(Found {
                config_path: blob_path(&cfg.digest)?,
                config_digest: Some(cfg.digest.clone()),
                manifest: Some((mdigest, mraw)),
                layers: m
                    .layers
                    .iter()
                    .map(|l| Ok((blob_path(&l.digest)?, Some(l.digest.clone()))))
                    .collect::<Result<_, ImageError>>()?,
                tags: tag.into_iter().collect(),
            });
        }
    } else {
        return Err(bad(
            "neither manifest.json (docker save) nor index.json (OCI layout) found".into(),
        ));
    }
    let mut loaded = Vec::new();
    for f in found {
        let cfg = src.read(&f.config_path, 64 << 20)?;
        let id = sha256_hex(&cfg);
        if let Some(want) = &f.config_digest {
            if want != &id {
                return Err(ImageError::DigestMismatch {
                    what: format!("config {}", f.config_path),
                    expected: want.clone(),
                    actual: id,
                });
            }
        }
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&cfg).map_err(|source| ImageError::Json {
                what: format!("image config {id}"),
                source,
            })?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        if diff_ids.len() != f.layers.len() {
            return Err(bad(format!(
                "config {id} lists {} layers, the manifest {}",
                diff_ids.len(),
                f.layers.len()
            )));
        }
        let mut sizes = Vec::new();
        for ((path, blob), diff) in f.layers.iter().zip(&diff_ids) {
            if store.has_layer(diff) {
                continue;
            }
            let u = store.unpack_layer(src.open(path)?, blob.as_deref(), diff)?;
            sizes.push((diff.clone(), u.size));
        }
        store.put_blob(&id, &cfg)?;
        let mut repo_digests = Vec::new();
        if let Some((d, raw)) = &f.manifest {
            store.put_blob(d, raw)?;
            for t in &f.tags {
                if let Ok(r) = Reference::parse(t) {
                    repo_digests.push(r.with_digest(d));
                }
            }
        }
        let mut tags = Vec::new();
        for t in &f.tags {
            let r = Reference::parse(t)?;
            match r.tagged() {
                Some(t) => tags.push(t),
                None => return Err(bad(format!("reference {t} has no tag"))),
            }
        }
        let rec = ImageRecord {
            id: id.clone(),
            manifest: f.manifest.as_ref().map(|m| m.0.clone()),
            index: None,
            repo_tags: tags.clone(),
            repo_digests,
            layers: diff_ids,
            size: 0,
            created: config.created().clone(),
            added: 0,
        };
        store.add_record(rec, &sizes)?;
        if tags.is_empty() {
            loaded.push(id);
        } else {
            loaded.extend(tags);
        }
    }
    Ok(loaded)
}

fn blob_path(digest: &str) -> Result<String, ImageError> {
    super::reference::validate_digest(digest)?;
    Ok(format!("blobs/{}", digest.replacen(':', "/", 1)))
}

/// Follow an OCI index entry down to an image manifest for the host platform.
fn resolve_oci(
    src: &dyn Source,
    d: &super::manifest::Descriptor,
    input: &Path,
    depth: u32,
) -> Result<(String, Vec<u8>), ImageError> {
    if depth > 4 {
        return Err(ImageError::Archive {
            path: input.display().to_string(),
            why: "nested indexes too deep".into(),
        });
    }
    let raw = src.read(&blob_path(&d.digest)?, 64 << 20)?;
    let got = sha256_hex(&raw);
    if got != d.digest {
        return Err(ImageError::DigestMismatch {
            what: "manifest".into(),
            expected: d.digest.clone(),
            actual: got,
        });
    }
    let m = AnyManifest::parse(&raw, &format!("manifest {}", d.digest))?;
    if m.is_index(&d.media_type) {
        let (os, arch, variant) = host_platform();
        let next = choose_platform(&m, &os, &arch, variant.as_deref()).ok_or_else(|| {
            ImageError::NoPlatform {
                reference: input.display().to_string(),
                platform: format!("{os}/{arch}"),
                available: platforms(&m),
            }
        })?;
        return resolve_oci(src, next, input, depth + 1);
    }
    Ok((d.digest.clone(), raw))
}

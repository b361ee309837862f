//! The image store: content-addressed blobs, image records, layers unpacked once by diff_id and
//! shared, overlay snapshots per container, `docker save`/OCI-layout loads and registry pulls.
//!
//! Layout under the root (berth passes `<state>/data/images`):
//! ```text
//! blobs/sha256/<hex>     manifests, indexes and configs, verified on write
//! layers/<diff_id hex>/  unpacked layer trees (overlay lowerdirs), shared by every image
//! images.json            image records (+ images.lock, flock)
//! gc.lock                shared by loads/pulls in progress, exclusive for prune
//! leases/<container>.json  layers held by a container's snapshot (mounted or not)
//! tmp/                   half-written entries; emptied by prune
//! holds/<holder>.json    layers a holder (a build cache) keeps from prune
//! ```
//! Every entry is written under a temporary name, synced, then renamed into place: a crash
//! leaves at most garbage in `tmp/`, never a half-written blob, layer or record.

pub mod diff;
pub mod error;
mod load;
pub mod manifest;
pub mod pack;
pub mod pull;
pub mod push;
pub mod reference;
pub mod snapshot;
pub mod staged;
pub mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use error::ImageError;
use error::IoContext;
pub use pull::{PullOptions, PullProgress};
pub use reference::Reference;

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<config digest>`.
    pub id: String,
    /// The reference it was found by, normalised (`docker.io/library/redis:7`), or the id.
    pub reference: String,
    pub config: oci_spec::image::ImageConfiguration,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// The Docker `HEALTHCHECK` of the image config (not part of the OCI config type).
    pub healthcheck: Option<ImageHealthcheck>,
}

/// Docker's image `config.Healthcheck`; durations in nanoseconds, as Docker stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageHealthcheck {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", "…"]`.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: Option<u64>,
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub start_period: Option<u64>,
    #[serde(default)]
    pub start_interval: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
}

fn image_healthcheck(raw: &[u8]) -> Option<ImageHealthcheck> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let h = v.get("config")?.get("Healthcheck")?;
    serde_json::from_value(h.clone()).ok()
}

/// One line of `berth images`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: String,
    /// Full references (`docker.io/library/redis:7`); `reference::familiar` shortens them.
    pub repo_tags: Vec<String>,
    /// `name@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    /// The config's `created` (RFC 3339), if any.
    pub created: Option<String>,
    /// Unpacked size in bytes (sum of the layers' tar sizes).
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    /// Untagged image records removed.
    pub images: Vec<String>,
    pub blobs: Vec<String>,
    /// diff_ids of the layers removed.
    pub layers: Vec<String>,
    pub reclaimed_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ImageRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The manifest list / OCI index it was chosen from (pulls of multi-platform images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// diff_ids, lowest first.
    pub layers: Vec<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub added: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Db {
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    /// diff_id → unpacked size, for `images` sizes.
    #[serde(default)]
    pub layer_sizes: BTreeMap<String, u64>,
}

/// `leases/<container>.json`: what a container's snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    image: String,
    layers: Vec<String>,
}

#[derive(Debug, Default)]
struct Leased {
    images: BTreeMap<String, String>,
    layers: BTreeSet<String>,
}

/// A held `flock`; released on drop.
pub(crate) struct Lock(#[allow(dead_code)] File);

/// Held while a writer adds layers no image record names yet (see [`ImageStore::write_guard`]).
pub struct WriteGuard(#[allow(dead_code)] Lock);

/// A layer added to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the tar in bytes.
    pub size: u64,
    /// Entries in the tar (0: the directory was empty).
    pub entries: u64,
}

pub struct ImageStore {
    root: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str, ImageError> {
    reference::validate_digest(digest)?;
    Ok(digest.split_once(':').map(|x| x.1).unwrap_or(digest))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ImageStore {
    /// Open (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        store.clean_tmp_if_idle();
        Ok(store)
    }

    /// Leftovers of a crashed load/pull live in `tmp/`: remove them when no writer is active
    /// (nobody holds `gc.lock`; never waits).
    fn clean_tmp_if_idle(&self) {
        let p = self.root.join("gc.lock");
        let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
        else {
            return;
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        // Record updates (rmi) write their temp file without gc.lock: they hold images.lock.
        let p = self.root.join("images.lock");
        let Ok(g) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
        else {
            return;
        };
        if rustix::fs::flock(&g, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let _ = remove_tree(&e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    // ---- locks ----------------------------------------------------------------------------

    fn lock(&self, name: &str, exclusive: bool) -> Result<Lock, ImageError> {
        let p = self.root.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening {}", p.display()))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        loop {
            match rustix::fs::flock(&f, op) {
                Err(rustix::io::Errno::INTR) => continue,
                r => {
                    r.ctx(|| format!("locking {}", p.display()))?;
                    break;
                }
            }
        }
        Ok(Lock(f))
    }

    /// Held (shared) while a load or pull writes blobs and layers that no record names yet.
    pub(crate) fn writer_lock(&self) -> Result<Lock, ImageError> {
        self.lock("gc.lock", false)
    }

    // ---- records --------------------------------------------------------------------------

    fn read_db(&self) -> Result<Db, ImageError> {
        let p = self.root.join("images.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
                what: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Db::default()),
            Err(e) => Err(e).ctx(|| format!("reading {}", p.display())),
        }
    }

    fn write_db(&self, db: &Db) -> Result<(), ImageError> {
        let data = serde_json::to_vec_pretty(db).map_err(|source| ImageError::Json {
            what: "image records".into(),
            source,
        })?;
        self.write_atomic(&self.root.join("images.json"), &data)
    }

    /// Read-modify-write the records under the exclusive lock.
    pub(crate) fn update_db<T>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _l = self.lock("images.lock", true)?;
        let mut db = self.read_db()?;
        let r = f(&mut db)?;
        self.write_db(&db)?;
        Ok(r)
    }

    fn snapshot_db(&self) -> Result<Db, ImageError> {
        let _l = self.lock("images.lock", false)?;
        self.read_db()
    }

    // ---- files ----------------------------------------------------------------------------

    /// A fresh path under `tmp/` (unique across processes and threads).
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}-{}", std::process::id(), now()))
    }

    fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<(), ImageError> {
        let tmp = self.tmp_path("write");
        let r = (|| {
            let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
            f.write_all(data)
                .ctx(|| format!("writing {}", tmp.display()))?;
            f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
            std::fs::rename(&tmp, dest).ctx(|| format!("renaming into {}", dest.display()))?;
            sync_parent(dest)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        let data = std::fs::read(&p).ctx(|| format!("reading blob {digest}"))?;
        Ok(data)
    }

    /// Store a blob after checking its digest (a mismatch keeps nothing).
    pub(crate) fn put_blob(&self, expected: &str, data: &[u8]) -> Result<(), ImageError> {
        let actual = unpack::sha256_hex(data);
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                what: "blob".into(),
                expected: expected.into(),
                actual,
            });
        }
        let p = self.blob_path(expected)?;
        if p.is_file() {
            return Ok(());
        }
        self.write_atomic(&p, data)
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(hex_of(diff_id)?))
    }

    pub(crate) fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id)
            .map(|p| p.is_dir())
            .unwrap_or(false)
    }

    /// Unpack one layer blob from `src` into `layers/<diff_id>`, checking the digests given.
    /// Concurrent unpacks of the same layer are fine: the loser's copy is discarded.
    pub(crate) fn unpack_layer(
        &self,
        src: impl Read,
        expected_blob: Option<&str>,
        expected_diff_id: &str,
    ) -> Result<unpack::Unpacked, ImageError> {
        let dest = self.layer_path(expected_diff_id)?;
        let tmp = self.tmp_path("layer");
        std::fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let r = (|| {
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .ctx(|| format!("chmod {}", tmp.display()))?;
            let u = unpack::unpack_blob(src, &tmp)?;
            if let Some(b) = expected_blob {
                if u.blob_digest != b {
                    return Err(ImageError::DigestMismatch {
                        what: "layer blob".into(),
                        expected: b.into(),
                        actual: u.blob_digest,
                    });
                }
            }
            if u.diff_id != expected_diff_id {
                return Err(ImageError::DigestMismatch {
                    what: "layer diff_id".into(),
                    expected: expected_diff_id.into(),
                    actual: u.diff_id,
                });
            }
            let d = File::open(&tmp).ctx(|| format!("opening {}", tmp.display()))?;
            rustix::fs::syncfs(d.as_fd()).ctx(|| format!("syncfs {}", tmp.display()))?;
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => sync_parent(&dest)?,
                Err(_) if dest.is_dir() => remove_tree(&tmp)?,
                Err(e) => return Err(e).ctx(|| format!("renaming into {}", dest.display())),
            }
            Ok(u)
        })();
        if r.is_err() {
            let _ = remove_tree(&tmp);
        }
        r
    }

    /// Record an image: tags move to it from any other record (they become `<none>`).
    pub(crate) fn add_record(
        &self,
        mut rec: ImageRecord,
        sizes: &[(String, u64)],
    ) -> Result<(), ImageError> {
        self.update_db(|db| {
            for (d, s) in sizes {
                db.layer_sizes.insert(d.clone(), *s);
            }
            rec.size = rec
                .layers
                .iter()
                .filter_map(|d| db.layer_sizes.get(d))
                .sum();
            for other in db.images.iter_mut() {
                if other.id != rec.id {
                    other.repo_tags.retain(|t| !rec.repo_tags.contains(t));
                }
            }
            if let Some(existing) = db.images.iter_mut().find(|r| r.id == rec.id) {
                for t in rec.repo_tags.drain(..) {
                    if !existing.repo_tags.contains(&t) {
                        existing.repo_tags.push(t);
                    }
                }
                for t in rec.repo_digests.drain(..) {
                    if !existing.repo_digests.contains(&t) {
                        existing.repo_digests.push(t);
                    }
                }
                if rec.manifest.is_some() {
                    existing.manifest = rec.manifest.take();
                }
                if rec.index.is_some() {
                    existing.index = rec.index.take();
                }
                existing.size = rec.size;
            } else {
                rec.added = now();
                db.images.push(rec);
            }
            Ok(())
        })
    }

    fn to_image(&self, rec: &ImageRecord, reference: String) -> Result<Image, ImageError> {
        let raw = self.read_blob(&rec.id)?;
        let config = serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
            what: format!("image config {}", rec.id),
            source,
        })?;
        let layers = rec
            .layers
            .iter()
            .map(|d| self.layer_path(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Image {
            id: rec.id.clone(),
            reference,
            config,
            layers,
            healthcheck: image_healthcheck(&raw),
        })
    }

    /// Find a record by full id, reference (`redis:7`, `docker.io/library/redis:7`,
    /// `name@digest`) or id prefix (at least 4 hex digits, unambiguous).
    fn find<'a>(db: &'a Db, s: &str) -> Result<Option<(&'a ImageRecord, String)>, ImageError> {
        let s = s.trim();
        let id_like = s.strip_prefix("sha256:").unwrap_or(s);
        let is_hex = !id_like.is_empty()
            && id_like
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if is_hex && id_like.len() == 64 {
            if let Some(r) = db
                .images
                .iter()
                .find(|r| r.id == format!("sha256:{id_like}"))
            {
                return Ok(Some((r, r.id.clone())));
            }
        }
        let parsed = Reference::parse(s);
        if let Ok(rf) = &parsed {
            if let Some(d) = &rf.digest {
                let want = rf.with_digest(d);
                if let Some(r) = db.images.iter().find(|r| {
                    let named = r.repo_digests.iter().chain(r.repo_tags.iter()).any(|x| {
                        Reference::parse(x)
                            .map(|x| x.name() == rf.name())
                            .unwrap_or(false)
                    });
                    r.repo_digests.contains(&want)
                        || (named
                            && (r.manifest.as_deref() == Some(d.as_str())
                                || r.index.as_deref() == Some(d.as_str())))
                }) {
                    return Ok(Some((r, rf.to_string())));
                }
                return Ok(None);
            }
            if let Some(t) = rf.tagged() {
                if let Some(r) = db.images.iter().find(|r| r.repo_tags.contains(&t)) {
                    return Ok(Some((r, t)));
                }
            }
        }
        if is_hex && id_like.len() >= 4 && (s.starts_with("sha256:") || !s.contains(':')) {
            let mut hits = db
                .images
                .iter()
                .filter(|r| r.id["sha256:".len()..].starts_with(id_like));
            if let Some(r) = hits.next() {
                if hits.next().is_some() {
                    return Err(ImageError::Archive {
                        path: s.into(),
                        why: "ambiguous image id prefix".into(),
                    });
                }
                return Ok(Some((r, r.id.clone())));
            }
        }
        match parsed {
            Err(e) if !is_hex => Err(e.into()),
            _ => Ok(None),
        }
    }

    // ---- building images ------------------------------------------------------------------

    /// Keep prune away while layers are added that no record names yet: a prune waits until
    /// the guard is dropped. Hold it from the first [`ImageStore::commit_dir`] to
    /// [`ImageStore::add_image`] (or [`ImageStore::hold_layers`]).
    pub fn write_guard(&self) -> Result<WriteGuard, ImageError> {
        Ok(WriteGuard(self.writer_lock()?))
    }

    /// The unpacked directory of a layer in the store, if present.
    pub fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        let p = self.layer_path(diff_id).ok()?;
        p.is_dir().then_some(p)
    }

    /// The raw config JSON of an image (Docker's fields included: Healthcheck, Shell, OnBuild).
    pub fn config_json(&self, image: &Image) -> Result<Vec<u8>, ImageError> {
        self.read_blob(&image.id)
    }

    /// Turn a directory of changes (an overlay upper dir with its whiteouts, or a tree of new
    /// files) into a layer of the store, via a tar in `tmp/` (see [`diff`]). An existing layer
    /// with the same diff_id is reused.
    pub fn commit_dir(&self, dir: &Path) -> Result<LayerInfo, ImageError> {
        // The tar streams through a pipe into the unpacker, which hashes it (the diff_id) as it
        // writes the layer under tmp/: no tar file, one pass over the data.
        let tmp = self.tmp_path("layer");
        std::fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        if let Err(e) =
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        {
            let _ = remove_tree(&tmp);
            return Err(e).ctx(|| format!("chmod {}", tmp.display()));
        }
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => {
                let _ = remove_tree(&tmp);
                return Err(e).ctx(|| "creating a pipe".into());
            }
        };
        let r = std::thread::scope(|sc| {
            let producer = sc.spawn(move || diff::write_layer_tar(dir, writer));
            let mut reader = reader;
            let unpacked = unpack::unpack_blob(&mut reader, &tmp);
            // Drain what is left so the writer never writes into a closed pipe (SIGPIPE).
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            drop(reader);
            let entries = producer.join().unwrap_or_else(|_| {
                Err(ImageError::Archive {
                    path: dir.display().to_string(),
                    why: "the layer writer panicked".into(),
                })
            });
            let u = unpacked?;
            let entries = entries?;
            let dest = self.layer_path(&u.diff_id)?;
            if !dest.is_dir() {
                let d = File::open(&tmp).ctx(|| format!("opening {}", tmp.display()))?;
                rustix::fs::syncfs(d.as_fd()).ctx(|| format!("syncfs {}", tmp.display()))?;
                match std::fs::rename(&tmp, &dest) {
                    Ok(()) => sync_parent(&dest)?,
                    Err(_) if dest.is_dir() => {}
                    Err(e) => return Err(e).ctx(|| format!("renaming into {}", dest.display())),
                }
                self.update_db(|db| {
                    db.layer_sizes.insert(u.diff_id.clone(), u.size);
                    Ok(())
                })?;
            }
            Ok(LayerInfo {
                diff_id: u.diff_id,
                size: u.size,
                entries,
            })
        });
        let _ = remove_tree(&tmp);
        r
    }

    /// Add an uncompressed layer tar to the store (unpacked once; reused if present).
    pub fn import_layer_tar(&self, tar: &Path) -> Result<LayerInfo, ImageError> {
        let f = File::open(tar).ctx(|| format!("opening {}", tar.display()))?;
        let (diff_id, size) = unpack::HashReader::new(std::io::BufReader::new(f))
            .finish()
            .ctx(|| format!("reading {}", tar.display()))?;
        if !self.has_layer(&diff_id) {
            let f = File::open(tar).ctx(|| format!("opening {}", tar.display()))?;
            let u = self.unpack_layer(f, None, &diff_id)?;
            self.update_db(|db| {
                db.layer_sizes.insert(diff_id.clone(), u.size);
                Ok(())
            })?;
        }
        Ok(LayerInfo {
            diff_id,
            size,
            entries: 0,
        })
    }

    /// Record an image made from `config` (an OCI/Docker image config JSON whose
    /// `rootfs.diff_ids` are all in the store) under `tags`; returns its id.
    pub fn add_image(&self, config: &[u8], tags: &[String]) -> Result<String, ImageError> {
        self.add_image_sized(config, tags, &[])
    }

    /// [`ImageStore::add_image`], recording the sizes of layers just placed in the same update.
    pub(crate) fn add_image_sized(
        &self,
        config: &[u8],
        tags: &[String],
        sizes: &[(String, u64)],
    ) -> Result<String, ImageError> {
        let id = unpack::sha256_hex(config);
        let parsed: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(config).map_err(|source| ImageError::Json {
                what: "image config".into(),
                source,
            })?;
        let layers: Vec<String> = parsed.rootfs().diff_ids().to_vec();
        for l in &layers {
            if !self.has_layer(l) {
                return Err(ImageError::NotFound(format!("layer {l}")));
            }
        }
        let mut repo_tags = Vec::new();
        for t in tags {
            let r = Reference::parse(t)?;
            match r.tagged() {
                Some(t) => repo_tags.push(t),
                None => {
                    return Err(ImageError::Unsupported {
                        what: "image name (a tag is needed)",
                        value: t.clone(),
                    })
                }
            }
        }
        // The same image under the same tags (a rebuild that changed nothing): no write at all.
        if let Some(r) = self.snapshot_db()?.images.iter().find(|r| r.id == id) {
            if sizes.is_empty()
                && repo_tags.iter().all(|t| r.repo_tags.contains(t))
                && self.has_blob(&id)
            {
                return Ok(id);
            }
        }
        self.put_blob(&id, config)?;
        let rec = ImageRecord {
            id: id.clone(),
            manifest: None,
            index: None,
            repo_tags,
            repo_digests: Vec::new(),
            layers,
            size: 0,
            created: parsed.created().clone(),
            added: now(),
        };
        self.add_record(rec, sizes)?;
        Ok(id)
    }

    /// Keep `diff_ids` from prune under the name `holder` (replacing what it held before).
    pub fn hold_layers(&self, holder: &str, diff_ids: &[String]) -> Result<(), ImageError> {
        let p = self.hold_path(holder)?;
        let data = serde_json::to_vec(diff_ids).map_err(|source| ImageError::Json {
            what: "layer hold".into(),
            source,
        })?;
        if std::fs::read(&p).is_ok_and(|old| old == data) {
            return Ok(());
        }
        self.write_atomic(&p, &data)
    }

    /// Drop a holder's layers (prune may then remove them).
    pub fn release_hold(&self, holder: &str) -> Result<(), ImageError> {
        let p = self.hold_path(holder)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        }
    }

    fn hold_path(&self, holder: &str) -> Result<PathBuf, ImageError> {
        let ok = !holder.is_empty()
            && holder.len() <= 128
            && holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !ok {
            return Err(ImageError::Unsupported {
                what: "layer holder name",
                value: holder.to_string(),
            });
        }
        let dir = self.root.join("holds");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(format!("{holder}.json")))
    }

    fn held(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("holds")) {
            for e in rd.flatten() {
                if let Ok(v) = std::fs::read(e.path())
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).map_err(|_| ()))
                {
                    out.extend(
                        v.into_iter()
                            .map(|d| d.trim_start_matches("sha256:").to_string()),
                    );
                }
            }
        }
        out
    }

    // ---- the public API -------------------------------------------------------------------

    /// Load a `docker save` archive, an OCI image-layout archive or an OCI layout directory
    /// (optionally gzip/zstd-compressed archives). Returns the references loaded (full form), or
    /// the image ids of untagged images.
    pub fn load(&self, archive_or_dir: &Path) -> Result<Vec<String>, ImageError> {
        load::load(self, archive_or_dir)
    }

    /// The image for a reference, short reference or id; `None` if not in the store.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let db = self.snapshot_db()?;
        match Self::find(&db, reference)? {
            Some((rec, r)) => Ok(Some(self.to_image(rec, r)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let db = self.snapshot_db()?;
        let mut out: Vec<(u64, ImageSummary)> = db
            .images
            .iter()
            .map(|r| {
                (
                    r.added,
                    ImageSummary {
                        id: r.id.clone(),
                        repo_tags: r.repo_tags.clone(),
                        repo_digests: r.repo_digests.clone(),
                        created: r.created.clone(),
                        size: r.size,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| b.1.created.cmp(&a.1.created).then(b.0.cmp(&a.0)));
        Ok(out.into_iter().map(|x| x.1).collect())
    }

    /// `rmi`: by tag, untag it (the image goes once no tag and no digest names it); by id or
    /// digest, remove the record. Blobs and layers go with the next `prune`, unless a mounted
    /// snapshot still uses them.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_with(reference, false)
    }

    /// `rmi [-f]`. An image a container snapshot holds (see [`ImageStore::snapshot`]) is not
    /// removed: without `force` that is an [`ImageError::InUse`] error (as Docker's conflict),
    /// with `force` it is untagged and kept until the container is gone.
    pub fn remove_with(&self, reference: &str, force: bool) -> Result<(), ImageError> {
        let leased = self.leased()?;
        self.update_db(|db| {
            let (id, how) = match Self::find(db, reference)? {
                Some((rec, r)) => (rec.id.clone(), r),
                None => return Err(ImageError::NotFound(reference.to_string())),
            };
            let rec = db
                .images
                .iter_mut()
                .find(|r| r.id == id)
                .expect("found above");
            let by_tag = rec.repo_tags.contains(&how);
            if by_tag {
                rec.repo_tags.retain(|t| t != &how);
                if let Ok(rf) = Reference::parse(&how) {
                    let name = rf.name();
                    rec.repo_digests.retain(|d| {
                        !d.starts_with(&format!("{name}@"))
                            || rec
                                .repo_tags
                                .iter()
                                .any(|t| t.starts_with(&format!("{name}:")))
                    });
                }
            }
            if !by_tag || (rec.repo_tags.is_empty() && rec.repo_digests.is_empty()) {
                if let Some(c) = leased.images.get(&id) {
                    if !force {
                        return Err(ImageError::InUse {
                            reference: reference.to_string(),
                            container: c.clone(),
                        });
                    }
                    rec.repo_tags.clear();
                    rec.repo_digests.clear();
                    return Ok(());
                }
                db.images.retain(|r| r.id != id);
            }
            Ok(())
        })?;
        // Free the space now, as `docker rmi` does.
        self.gc(false).map(|_| ())
    }

    /// Remove every blob and layer no image (or hold, or snapshot) refers to; images stay.
    pub fn prune_layers(&self) -> Result<PruneReport, ImageError> {
        self.gc(false)
    }

    /// Remove untagged images and every blob and layer no image refers to.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        self.gc(true)
    }

    fn gc(&self, dangling: bool) -> Result<PruneReport, ImageError> {
        let _gc = self.lock("gc.lock", true)?;
        let mut report = PruneReport::default();
        let mut in_use = snapshot_layers_in_use(&self.root.join("layers"));
        let leased = self.leased()?;
        in_use.extend(leased.layers.iter().cloned());
        // Held layers are kept, but do not keep an untagged image alive as a mounted one does.
        let held = self.held();
        let db = self.update_db(|db| {
            if dangling {
                let mut keep = Vec::new();
                for r in db.images.drain(..) {
                    let used = r
                        .layers
                        .iter()
                        .any(|l| in_use.contains(hex_of(l).unwrap_or("")));
                    let used = used || leased.images.contains_key(&r.id);
                    if r.repo_tags.is_empty() && r.repo_digests.is_empty() && !used {
                        report.images.push(r.id.clone());
                    } else {
                        keep.push(r);
                    }
                }
                db.images = keep;
            }
            Ok(db.clone())
        })?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for r in &db.images {
            blobs.insert(hex_of(&r.id)?.to_string());
            for m in r.manifest.iter().chain(r.index.iter()) {
                blobs.insert(hex_of(m)?.to_string());
            }
            for l in &r.layers {
                layers.insert(hex_of(l)?.to_string());
            }
        }
        let bdir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).ctx(|| format!("reading {}", bdir.display()))? {
            let e = e.ctx(|| format!("reading {}", bdir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                report.reclaimed_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path())
                    .ctx(|| format!("removing {}", e.path().display()))?;
                report.blobs.push(format!("sha256:{name}"));
            }
        }
        let ldir = self.root.join("layers");
        for e in std::fs::read_dir(&ldir).ctx(|| format!("reading {}", ldir.display()))? {
            let e = e.ctx(|| format!("reading {}", ldir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) && !in_use.contains(&name) && !held.contains(&name) {
                report.reclaimed_bytes += db
                    .layer_sizes
                    .get(&format!("sha256:{name}"))
                    .copied()
                    .unwrap_or(0);
                remove_tree(&e.path())?;
                report.layers.push(format!("sha256:{name}"));
            }
        }
        let tdir = self.root.join("tmp");
        self.update_db(|db| {
            db.layer_sizes.retain(|k, _| {
                let h = k.trim_start_matches("sha256:");
                layers.contains(h) || held.contains(h) || in_use.contains(h)
            });
            // No load or pull is running (gc.lock is ours) and no record update either
            // (images.lock is held here, before this update writes its own temp file): tmp/
            // holds only crash leftovers.
            if let Ok(rd) = std::fs::read_dir(&tdir) {
                for e in rd.flatten() {
                    let _ = remove_tree(&e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// A new image from `base` plus one layer (an uncompressed tar at `layer_tar`, e.g. made by
    /// [`pack::pack`] from a container's upper dir), with `edit` applied to the config JSON
    /// (author, history, CMD/ENV changes); tagged `reference` if given. Returns the image id.
    pub fn commit(
        &self,
        base: &str,
        layer_tar: &Path,
        reference: Option<&str>,
        edit: &dyn Fn(&mut serde_json::Value),
    ) -> Result<String, ImageError> {
        let _w = self.writer_lock()?;
        let db = self.snapshot_db()?;
        let (rec, _) =
            Self::find(&db, base)?.ok_or_else(|| ImageError::NotFound(format!("image {base}")))?;
        let rec = rec.clone();
        let (diff_id, _) = pack::sha256_file(layer_tar)?;
        let f = File::open(layer_tar).ctx(|| format!("opening {}", layer_tar.display()))?;
        let u = self.unpack_layer(f, None, &diff_id)?;
        let mut config: serde_json::Value = serde_json::from_slice(&self.read_blob(&rec.id)?)
            .map_err(|source| ImageError::Json {
                what: format!("image config {}", rec.id),
                source,
            })?;
        if let Some(ids) = config
            .pointer_mut("/rootfs/diff_ids")
            .and_then(|v| v.as_array_mut())
        {
            ids.push(diff_id.clone().into());
        } else {
            config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": [diff_id.clone()]});
        }
        edit(&mut config);
        let data = serde_json::to_vec(&config).map_err(|source| ImageError::Json {
            what: "image config".into(),
            source,
        })?;
        let id = unpack::sha256_hex(&data);
        self.put_blob(&id, &data)?;
        let mut layers = rec.layers.clone();
        layers.push(diff_id.clone());
        let repo_tags = match reference {
            Some(r) => vec![Reference::parse(r)?
                .tagged()
                .unwrap_or_else(|| r.to_string())],
            None => vec![],
        };
        self.add_record(
            ImageRecord {
                id: id.clone(),
                manifest: None,
                index: None,
                repo_tags,
                repo_digests: vec![],
                layers,
                size: 0,
                created: config
                    .get("created")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                added: 0,
            },
            &[(diff_id, u.size)],
        )?;
        Ok(id)
    }

    /// The config JSON of a stored image, parsed ([`ImageStore::config_json`] gives the bytes).
    pub fn config_value(&self, reference: &str) -> Result<serde_json::Value, ImageError> {
        let img = self
            .get(reference)?
            .ok_or_else(|| ImageError::NotFound(format!("image {reference}")))?;
        serde_json::from_slice(&self.read_blob(&img.id)?).map_err(|source| ImageError::Json {
            what: format!("image config {}", img.id),
            source,
        })
    }

    /// Push a stored image to a registry (see [`push`]).
    pub fn push(
        &self,
        local: &str,
        target: &str,
        opts: &PullOptions,
        progress: &mut dyn FnMut(push::PushProgress),
    ) -> Result<String, ImageError> {
        push::push(self, local, target, opts, progress)
    }

    /// Pull from a registry (see [`pull`]).
    pub fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<Image, ImageError> {
        pull::pull(self, reference, opts, progress)
    }

    /// Mount a container's snapshot of `image` under `dir` (returns `dir/rootfs`) and record a
    /// lease: while it exists, `rmi` refuses the image (unless forced) and `prune` keeps its
    /// layers, even when the snapshot is unmounted (a stopped container).
    pub fn snapshot(
        &self,
        container_id: &str,
        image: &Image,
        dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        let lease = self.lease_path(container_id)?;
        let diff_ids: Vec<String> = image
            .layers
            .iter()
            .filter_map(|l| {
                l.file_name()
                    .map(|n| format!("sha256:{}", n.to_string_lossy()))
            })
            .collect();
        let data = serde_json::to_vec(&Lease {
            image: image.id.clone(),
            layers: diff_ids,
        })
        .map_err(|source| ImageError::Json {
            what: "lease".into(),
            source,
        })?;
        // Written beside its final name (not in tmp/, which prune sweeps without this lock).
        let n = TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = lease.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let r = (|| {
            let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
            f.write_all(&data)
                .ctx(|| format!("writing {}", tmp.display()))?;
            f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
            std::fs::rename(&tmp, &lease).ctx(|| format!("renaming into {}", lease.display()))?;
            sync_parent(&lease)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        snapshot::mount(&image.layers, dir)
    }

    /// Unmount and delete the container's snapshot, then drop its lease.
    pub fn remove_snapshot(&self, container_id: &str, dir: &Path) -> Result<(), ImageError> {
        snapshot::remove(dir)?;
        let lease = self.lease_path(container_id)?;
        match std::fs::remove_file(&lease) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("removing {}", lease.display()))
            }
            _ => Ok(()),
        }
    }

    fn lease_path(&self, container_id: &str) -> Result<PathBuf, ImageError> {
        let ok = !container_id.is_empty()
            && container_id.len() <= 255
            && !container_id.starts_with('.')
            && container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(ImageError::Unsupported {
                what: "container id",
                value: container_id.to_string(),
            });
        }
        let dir = self.root.join("leases");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(format!("{container_id}.json")))
    }

    /// Image ids (→ a container holding it) and layer dir names held by leases.
    fn leased(&self) -> Result<Leased, ImageError> {
        let mut out = Leased::default();
        let dir = self.root.join("leases");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx(|| format!("reading {}", dir.display())),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(container) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(data) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(l) = serde_json::from_slice::<Lease>(&data) else {
                continue;
            };
            out.images.insert(l.image, container.to_string());
            for d in l.layers {
                out.layers
                    .insert(d.trim_start_matches("sha256:").to_string());
            }
        }
        Ok(out)
    }
}

/// Layer dir names (diff_id hex) used by mounted overlays: never collected.
fn snapshot_layers_in_use(layers_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return out;
    };
    let prefix = format!("{}/", layers_dir.display());
    for line in mi.lines() {
        let Some((_, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut f = post.split(' ');
        if f.next() != Some("overlay") {
            continue;
        }
        let opts = f.nth(1).unwrap_or("");
        for o in opts.split(',') {
            let v = o
                .strip_prefix("lowerdir=")
                .or_else(|| o.strip_prefix("lowerdir+="))
                .unwrap_or("");
            for p in v.split(':') {
                let p = p.replace("\\040", " ");
                if let Some(rest) = p.strip_prefix(&prefix) {
                    out.insert(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        }
    }
    out
}

pub(crate) fn sync_parent(p: &Path) -> Result<(), ImageError> {
    if let Some(parent) = p.parent() {
        let d = File::open(parent).ctx(|| format!("opening {}", parent.display()))?;
        d.sync_all()
            .ctx(|| format!("syncing {}", parent.display()))?;
    }
    Ok(())
}

pub(crate) fn remove_tree(p: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing {}", p.display())),
    }
}

/// The host platform in OCI terms (`linux/amd64`, `linux/arm64/v8`).
pub fn host_platform() -> (String, String, Option<String>) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let variant = match arch {
        "arm64" => Some("v8".to_string()),
        "arm" => Some("v7".to_string()),
        _ => None,
    };
    ("linux".into(), arch.into(), variant)
}

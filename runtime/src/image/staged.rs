//! Layers a builder makes step by step, synced once at the end of the build.
//!
//! [`ImageStore::commit_dir`] writes each layer through a tar round trip and syncs the whole file
//! system before the layer takes its place: right for one commit, costly for a build that makes
//! several layers in a row (every `syncfs` waits for all dirty data on the disk, other writers'
//! included). Here a snapshot's upper dir *becomes* the layer, as containerd's overlay snapshotter
//! commits a snapshot: its diff_id is the hash of the tar [`diff::write_layer_tar`] makes of it
//! (the same bytes `commit_dir` would unpack, so the same diff_id), the directory is moved under
//! `tmp/` and cleaned of what the tar would not carry (overlay's own attributes, sockets), and
//! later steps use it there as a lower layer. [`ImageStore::publish_staged`] then syncs once and
//! renames every staged layer into `layers/`: the store's rule (a layer in `layers/` is complete
//! on disk) holds, at one sync per build instead of one per layer.
//!
//! A staged layer not published is removed when dropped (a failed or interrupted build leaves
//! nothing under `tmp/`; a crash leaves what the store's sweep of `tmp/` removes).

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{ImageError, IoContext};
use super::{diff, remove_tree, sync_parent, ImageStore, LayerInfo};

/// A layer made by [`ImageStore::commit_dir_staged`]: complete, not yet synced nor in `layers/`
/// (unless the store had it already).
#[derive(Debug)]
pub struct StagedLayer {
    pub info: LayerInfo,
    /// Where it is while staged; `None` once published or when the store already had it.
    dir: Option<PathBuf>,
}

impl StagedLayer {
    /// The directory to use as a lower layer while staged (`None`: use the store's).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Start writing the staged layer out now, on a thread of its own (a `syncfs` that nobody
    /// waits for), so that the sync of [`ImageStore::publish_staged`] at the build's end finds
    /// little left to write while the build goes on with its next steps. Only an earlier start:
    /// the layer counts as on disk after `publish_staged` alone.
    pub fn start_writeback(&self) {
        let Some(d) = self.dir.clone() else { return };
        let _ = std::thread::Builder::new()
            .name("layer-writeback".into())
            .spawn(move || {
                if let Ok(f) = std::fs::File::open(&d) {
                    let _ = rustix::fs::syncfs(f.as_fd());
                }
            });
    }
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = remove_tree(&d);
        }
    }
}

/// sha256 and byte count of what is written.
struct HashWriter {
    h: Sha256,
    n: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.h.update(buf);
        self.n += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay."))
        && !name.ends_with(b".opaque")
}

/// Drop what a layer made through the tar would not have: overlay's bookkeeping attributes
/// (origin, impure, ...; `opaque` is the layer's own data and stays) and sockets.
fn clean_tree(dir: &Path) -> Result<(), ImageError> {
    let rd = std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        let p = e.path();
        let ft = e.file_type().ctx(|| format!("stat {}", p.display()))?;
        if ft.is_socket() {
            std::fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            continue;
        }
        if !ft.is_symlink() {
            strip_overlay_xattrs(&p)?;
        }
        if ft.is_dir() {
            clean_tree(&p)?;
        }
    }
    Ok(())
}

fn strip_overlay_xattrs(p: &Path) -> Result<(), ImageError> {
    if let Ok(names) = xattr::list(p) {
        for n in names {
            if is_overlay_xattr(n.as_bytes()) {
                xattr::remove(p, &n).ctx(|| format!("removing {n:?} of {}", p.display()))?;
            }
        }
    }
    Ok(())
}

impl ImageStore {
    /// Make the directory `dir` (a snapshot's unmounted upper dir, on the store's file system)
    /// a layer without copying it: hashed as the tar `commit_dir` would make, then moved under
    /// the store's `tmp/`. `dir` is gone afterwards, or, if the store already has that layer,
    /// left as it was. Falls back to [`ImageStore::commit_dir`] (a copy, synced and in place)
    /// when `dir` is on another file system.
    pub fn commit_dir_staged(&self, dir: &Path) -> Result<StagedLayer, ImageError> {
        let mut w = HashWriter {
            h: Sha256::new(),
            n: 0,
        };
        // The tar never carries overlay's attributes or sockets: clean first, so the directory
        // that becomes the layer is exactly what the tar describes.
        clean_tree(dir)?;
        let entries = diff::write_layer_tar(dir, &mut w)?;
        let info = LayerInfo {
            diff_id: format!("sha256:{}", hex::encode(w.h.finalize())),
            size: w.n,
            entries,
        };
        if self.has_layer(&info.diff_id) {
            return Ok(StagedLayer { info, dir: None });
        }
        let tmp = self.tmp_path("staged");
        match std::fs::rename(dir, &tmp) {
            Ok(()) => Ok(StagedLayer {
                info,
                dir: Some(tmp),
            }),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let l = self.commit_dir(dir)?;
                Ok(StagedLayer { info: l, dir: None })
            }
            Err(e) => Err(e).ctx(|| format!("moving {} into the store", dir.display())),
        }
    }

    /// Put staged layers in place: one `syncfs` for all, then each renamed into `layers/`
    /// (one that appeared there meanwhile is dropped), their sizes recorded in one update.
    pub fn publish_staged(&self, layers: &mut [StagedLayer]) -> Result<(), ImageError> {
        let placed = self.place_staged(layers)?;
        if !placed.is_empty() {
            self.update_db(|db| {
                for (d, s) in placed {
                    db.layer_sizes.insert(d, s);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// [`ImageStore::publish_staged`] and [`ImageStore::add_image`] of a build's image in one:
    /// the config blob is written before the `syncfs` that makes the layers durable (so it
    /// needs no sync of its own), and the layers' sizes go into the image's record update. Two
    /// `fsync`s per file written fewer than the two calls (a build's end waited on five more
    /// disk flushes, each slow on a disk busy with other writers).
    pub fn publish_staged_image(
        &self,
        layers: &mut [StagedLayer],
        config: &[u8],
        tags: &[String],
    ) -> Result<String, ImageError> {
        if layers.iter().all(|l| l.dir.is_none()) {
            return self.add_image(config, tags);
        }
        let id = super::unpack::sha256_hex(config);
        let blob = self.blob_path(&id)?;
        if !blob.is_file() {
            let tmp = self.tmp_path("blob");
            let r = std::fs::write(&tmp, config)
                .and_then(|()| std::fs::rename(&tmp, &blob))
                .ctx(|| format!("writing {}", blob.display()));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r?;
        }
        let placed = self.place_staged(layers)?;
        self.add_image_sized(config, tags, &placed)
    }

    /// Sync and rename the pending staged layers into `layers/`; the (diff_id, size) of each
    /// one placed.
    fn place_staged(&self, layers: &mut [StagedLayer]) -> Result<Vec<(String, u64)>, ImageError> {
        let pending: Vec<usize> = (0..layers.len())
            .filter(|&i| layers[i].dir.is_some())
            .collect();
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let tmp_root = self.root.join("tmp");
        let d = std::fs::File::open(&tmp_root).ctx(|| format!("opening {}", tmp_root.display()))?;
        rustix::fs::syncfs(d.as_fd()).ctx(|| format!("syncfs {}", tmp_root.display()))?;
        let mut placed = Vec::new();
        let mut last = None;
        for i in pending {
            let l = &mut layers[i];
            let src = l.dir.clone().expect("pending");
            let dest = self.layer_path(&l.info.diff_id)?;
            match std::fs::rename(&src, &dest) {
                Ok(()) => {
                    l.dir = None;
                    placed.push((l.info.diff_id.clone(), l.info.size));
                    last = Some(dest);
                }
                // Another build put the same layer there first (rename onto a non-empty dir).
                Err(_) if dest.is_dir() => {
                    l.dir = None;
                    remove_tree(&src)?;
                }
                Err(e) => return Err(e).ctx(|| format!("renaming into {}", dest.display())),
            }
        }
        if let Some(dest) = last {
            sync_parent(&dest)?;
        }
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree like a snapshot's upper dir: files, a hard link, a symlink, and (as root) a
    /// whiteout, an opaque dir and overlay's own bookkeeping attributes, plus a socket.
    fn make_tree(r: &Path, root: bool) {
        std::fs::create_dir_all(r.join("b/sub")).unwrap();
        std::fs::write(r.join("a"), b"alpha").unwrap();
        std::fs::hard_link(r.join("a"), r.join("b/sub/f")).unwrap();
        std::os::unix::fs::symlink("a", r.join("c-sym")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
        if root {
            nix::sys::stat::mknod(
                &r.join("gone"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
            xattr::set(r.join("b"), "trusted.overlay.opaque", b"y").unwrap();
            xattr::set(r.join("b"), "trusted.overlay.impure", b"y").unwrap();
            xattr::set(r.join("a"), "trusted.overlay.origin", b"\0\xfb").unwrap();
        }
    }

    #[test]
    fn staged_layer_is_the_layer_commit_dir_makes() {
        let root = nix::unistd::geteuid().is_root();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = ImageStore::open(a.path()).unwrap();
        let sb = ImageStore::open(b.path()).unwrap();
        let (ta, tb) = (a.path().join("tree"), b.path().join("tree"));
        make_tree(&ta, root);
        make_tree(&tb, root);
        let _g = sb.write_guard().unwrap();
        let copied = sa.commit_dir(&ta).unwrap();
        let mut staged = vec![sb.commit_dir_staged(&tb).unwrap()];
        assert_eq!(staged[0].info, copied, "same diff_id, size and entries");
        // Moved, not copied; usable while staged; in place and recorded once published.
        assert!(!tb.exists());
        let dir = staged[0].dir().unwrap().to_path_buf();
        assert_eq!(std::fs::read(dir.join("b/sub/f")).unwrap(), b"alpha");
        assert!(sb.layer_dir(&copied.diff_id).is_none());
        sb.publish_staged(&mut staged).unwrap();
        assert!(staged[0].dir().is_none() && !dir.exists());
        let la = sa.layer_dir(&copied.diff_id).unwrap();
        let lb = sb.layer_dir(&copied.diff_id).unwrap();
        // The two layer dirs describe the same tar, and hold the same attributes.
        let tar_of = |d: &Path| {
            let mut v = Vec::new();
            diff::write_layer_tar(d, &mut v).unwrap();
            v
        };
        assert_eq!(tar_of(&la), tar_of(&lb));
        assert!(!lb.join("sock").exists());
        if root {
            for (p, names) in [("b", vec!["trusted.overlay.opaque"]), ("a", vec![])] {
                let mut got: Vec<String> = xattr::list(lb.join(p))
                    .unwrap()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("trusted."))
                    .collect();
                got.sort();
                assert_eq!(got, names, "attributes of {p}");
            }
        }
        assert_eq!(
            sb.snapshot_db().unwrap().layer_sizes.get(&copied.diff_id),
            Some(&copied.size)
        );
    }

    #[test]
    fn a_staged_image_is_published_with_its_layers_in_one_record() {
        let s = tempfile::tempdir().unwrap();
        let store = ImageStore::open(s.path()).unwrap();
        let t = s.path().join("tree");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("x"), b"xyz").unwrap();
        let mut staged = vec![store.commit_dir_staged(&t).unwrap()];
        let info = staged[0].info.clone();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [info.diff_id]},
        }))
        .unwrap();
        let id = store
            .publish_staged_image(&mut staged, &config, &["staged/img:1".to_string()])
            .unwrap();
        assert!(staged[0].dir().is_none());
        assert_eq!(
            std::fs::read(store.layer_dir(&info.diff_id).unwrap().join("x")).unwrap(),
            b"xyz"
        );
        assert_eq!(store.read_blob(&id).unwrap(), config);
        let db = store.snapshot_db().unwrap();
        assert_eq!(db.layer_sizes.get(&info.diff_id), Some(&info.size));
        let rec = db.images.iter().find(|r| r.id == id).unwrap();
        assert_eq!(rec.repo_tags.len(), 1);
        assert_eq!(
            (rec.layers.clone(), rec.size),
            (vec![info.diff_id.clone()], info.size)
        );
        // Nothing staged: the same image again is a plain add (no write, same id).
        assert_eq!(
            store
                .publish_staged_image(&mut staged, &config, &["staged/img:1".to_string()])
                .unwrap(),
            id
        );
        assert!(s.path().join("tmp").read_dir().unwrap().next().is_none());
    }

    #[test]
    fn unpublished_staged_layers_are_removed_and_known_ones_not_moved() {
        let s = tempfile::tempdir().unwrap();
        let store = ImageStore::open(s.path()).unwrap();
        let t = s.path().join("tree");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("x"), b"x").unwrap();
        let l = store.commit_dir_staged(&t).unwrap();
        let dir = l.dir().unwrap().to_path_buf();
        assert!(dir.is_dir());
        drop(l);
        assert!(
            !dir.exists(),
            "a dropped staged layer leaves nothing in tmp/"
        );
        // A layer the store has already: the directory stays where it was, nothing staged.
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("x"), b"x").unwrap();
        let placed = store.commit_dir(&t).unwrap();
        let l = store.commit_dir_staged(&t).unwrap();
        assert_eq!(l.info.diff_id, placed.diff_id);
        assert!(l.dir().is_none() && t.join("x").exists());
    }
}

//! The build's store of context files: each file a COPY took from the context, kept once under
//! `build-cache/files/<key>` with the metadata COPY gives it, and hard-linked into the layers
//! that hold it. A COPY of a directory of which one file was edited then links the unchanged
//! files (one `link` each) and writes only the edited one, instead of creating, writing and
//! setting owner, mode and mtime of every file again.
//!
//! Safe because nothing writes a layer's files in place: a layer is a read-only lower of every
//! snapshot above it (overlayfs copies a file up before a write), and the step that links them
//! unmounts its snapshot before the upper dir becomes a layer. Context files themselves are
//! never linked (the user edits them in place): a store entry is a copy.
//!
//! An entry's key covers the content digest (from the context's stat cache, the digest the
//! step's cache key was made from), size, mode, owner and mtime (ns), everything the layer's tar
//! and a container's `stat` show of the file, so a linked file is the file a copy would have
//! made and the layer has the same diff_id. Within one layer an entry is linked once: the
//! layer's tar writes a second path to the same inode as a hard link entry, which a copy would
//! not. A new entry's content is hashed while it is copied and must match the digest; if the
//! file changed since it was hashed, it is copied as it is now, as before, and not stored.
//!
//! Entries go with the rest of the build cache (`builder prune`, `image prune`); an entry no
//! layer links (its link count back to 1, after a failed build) stays until then.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::cache::StatCache;

/// The file store of one COPY step: links into that step's layer.
pub struct FileStore<'a> {
    dir: PathBuf,
    stat: &'a mut StatCache,
    /// Entries linked into this step's layer (each only once).
    used: HashSet<String>,
    made_dir: bool,
    /// Files placed by a link to an entry that existed / to one this step stored.
    pub linked: usize,
    pub stored: usize,
}

/// What a placed file must look like.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl<'a> FileStore<'a> {
    /// The store kept in `dir`, with file digests from the context's `stat` cache.
    pub fn new(dir: PathBuf, stat: &'a mut StatCache) -> FileStore<'a> {
        FileStore {
            dir,
            stat,
            used: HashSet::new(),
            made_dir: false,
            linked: 0,
            stored: 0,
        }
    }

    /// Place the context file `src` (context path `rel`, `lstat` result `m`) at `dest` (which
    /// does not exist; its directory does) with `want`'s mode and owner and `src`'s mtime, as a
    /// link to a store entry. `Ok(false)`: not placed (an entry already linked in this layer,
    /// a file changed since it was hashed, a destination on another file system, too many
    /// links): the caller copies it.
    pub fn place(
        &mut self,
        src: &Path,
        rel: &str,
        m: &std::fs::Metadata,
        dest: &Path,
        want: Want,
    ) -> anyhow::Result<bool> {
        let digest = self
            .stat
            .digest(src, rel, m)
            .with_context(|| format!("reading {}", src.display()))?;
        let key = entry_key(&digest, m, want);
        if self.used.contains(&key) {
            return Ok(false);
        }
        let entry = self.dir.join(&key);
        // Linked first (an edit's files are mostly there already), stored when missing.
        let mut new = false;
        let mut r = std::fs::hard_link(&entry, dest);
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            if !self.store(src, m, &digest, &entry, want)? {
                return Ok(false);
            }
            new = true;
            r = std::fs::hard_link(&entry, dest);
        }
        match r {
            Ok(()) => {
                self.used.insert(key);
                if new {
                    self.stored += 1;
                } else {
                    self.linked += 1;
                }
                Ok(true)
            }
            // EXDEV (a destination through the overlay mount, a store on another file
            // system), EMLINK, EPERM (a file system without hard links): copy instead.
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("creating {}", dest.display())),
        }
    }

    /// Copy `src` into a new entry at `entry`, its content hashed on the way: `Ok(false)` if it
    /// is no longer the content `digest` names (nothing stored).
    fn store(
        &mut self,
        src: &Path,
        m: &std::fs::Metadata,
        digest: &[u8; 32],
        entry: &Path,
        want: Want,
    ) -> anyhow::Result<bool> {
        if !self.made_dir {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
            // Entries keep setuid bits and owners of the files they are: for root's eyes only.
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
            self.made_dir = true;
        }
        let tmp = self.dir.join(format!(".new.{}", super::exec::rand_id()));
        let r = (|| -> anyhow::Result<bool> {
            let mut from =
                std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let k = from
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", src.display()))?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                to.write_all(&buf[..k])
                    .with_context(|| format!("writing {}", tmp.display()))?;
                n += k as u64;
            }
            if n != m.len() || <[u8; 32]>::from(h.finalize()) != *digest {
                return Ok(false);
            }
            to.set_permissions(std::fs::Permissions::from_mode(want.mode))?;
            std::os::unix::fs::fchown(&to, Some(want.uid), Some(want.gid))?;
            to.set_modified(m.modified()?)?;
            // Parallel builds may store the same entry: the last rename wins, both are alike.
            std::fs::rename(&tmp, entry).with_context(|| format!("storing {}", entry.display()))?;
            Ok(true)
        })();
        if !matches!(r, Ok(true)) {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

/// An entry's name: the hash of everything a placed file shows.
fn entry_key(digest: &[u8; 32], m: &std::fs::Metadata, want: Want) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-build-file-v1\0");
    h.update(digest);
    h.update(m.len().to_le_bytes());
    h.update(want.mode.to_le_bytes());
    h.update(want.uid.to_le_bytes());
    h.update(want.gid.to_le_bytes());
    h.update(m.mtime().to_le_bytes());
    h.update(m.mtime_nsec().to_le_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(mode: u32) -> Want {
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        Want { mode, uid, gid }
    }

    #[test]
    fn links_one_entry_per_content_and_metadata_once_per_layer() {
        let ctx = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let files = root.path().join("files");
        let (l1, l2) = (root.path().join("l1"), root.path().join("l2"));
        std::fs::create_dir(&l1).unwrap();
        std::fs::create_dir(&l2).unwrap();
        let a = ctx.path().join("a");
        std::fs::write(&a, "alpha").unwrap();
        let ma = std::fs::symlink_metadata(&a).unwrap();
        let mut stat = StatCache::open(&root.path().join("stat"), ctx.path());

        // First layer: stored, linked; a second path to the same entry in that layer is not.
        let mut fs = FileStore::new(files.clone(), &mut stat);
        assert!(fs.place(&a, "a", &ma, &l1.join("a"), want(0o640)).unwrap());
        assert!(!fs.place(&a, "a", &ma, &l1.join("a2"), want(0o640)).unwrap());
        assert_eq!((fs.stored, fs.linked), (1, 0));
        let m1 = std::fs::symlink_metadata(l1.join("a")).unwrap();
        assert_eq!(std::fs::read(l1.join("a")).unwrap(), b"alpha");
        assert_eq!(m1.mode() & 0o7777, 0o640);
        assert_eq!((m1.mtime(), m1.mtime_nsec()), (ma.mtime(), ma.mtime_nsec()));
        assert_eq!(m1.nlink(), 2, "the entry and the layer's file");
        assert_eq!(std::fs::metadata(&files).unwrap().mode() & 0o777, 0o700);

        // Next layer: the same file is a link to the same entry; another mode is another one.
        let mut fs = FileStore::new(files.clone(), &mut stat);
        assert!(fs.place(&a, "a", &ma, &l2.join("a"), want(0o640)).unwrap());
        assert!(fs.place(&a, "a", &ma, &l2.join("b"), want(0o600)).unwrap());
        assert_eq!((fs.stored, fs.linked), (1, 1));
        let m2 = std::fs::symlink_metadata(l2.join("a")).unwrap();
        assert_eq!(m2.ino(), m1.ino());
        assert_ne!(
            std::fs::symlink_metadata(l2.join("b")).unwrap().ino(),
            m1.ino()
        );
        assert_eq!(std::fs::read_dir(&files).unwrap().count(), 2);

        // Editing the context file never reaches a layer's file (the entry is a copy).
        std::fs::write(&a, "ALPHA!").unwrap();
        assert_eq!(std::fs::read(l1.join("a")).unwrap(), b"alpha");
        let ma2 = std::fs::symlink_metadata(&a).unwrap();
        let l3 = root.path().join("l3");
        std::fs::create_dir(&l3).unwrap();
        let mut fs = FileStore::new(files.clone(), &mut stat);
        assert!(fs.place(&a, "a", &ma2, &l3.join("a"), want(0o640)).unwrap());
        assert_eq!(std::fs::read(l3.join("a")).unwrap(), b"ALPHA!");
        assert_eq!(std::fs::read(l2.join("a")).unwrap(), b"alpha");
    }

    /// A tree copied with links to the store is the tree a copy makes: the same layer tar
    /// (the same diff_id), whether its entries were stored by this copy or linked from earlier.
    #[test]
    fn a_linked_layer_is_the_layer_a_copy_makes() {
        use super::super::fsutil::{copy_entry, copy_entry_with, CopyMeta};
        use std::os::unix::fs::symlink;
        let ctx = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let c = ctx.path();
        std::fs::create_dir_all(c.join("src/sub")).unwrap();
        for (f, body, mode) in [
            ("src/a", "alpha", 0o644),
            ("src/run.sh", "#!/bin/sh", 0o755),
            ("src/same1", "twin", 0o644),
            ("src/same2", "twin", 0o644),
            ("src/sub/c", "", 0o600),
        ] {
            std::fs::write(c.join(f), body).unwrap();
            std::fs::set_permissions(c.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // Twins alike in content and mtime share one entry, and a context hard link is two
        // files: neither may become a hard link inside the layer.
        let t = std::fs::symlink_metadata(c.join("src/same1"))
            .unwrap()
            .modified()
            .unwrap();
        for f in ["src/same1", "src/same2"] {
            std::fs::File::options()
                .write(true)
                .open(c.join(f))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::hard_link(c.join("src/a"), c.join("src/a-link")).unwrap();
        symlink("a", c.join("src/sym")).unwrap();
        let me = want(0);
        let meta = CopyMeta {
            owner: Some((me.uid, me.gid)),
            chmod: None,
            keep_owner: false,
        };
        let all = |_: &str| true;
        let mut stat = StatCache::open(&root.path().join("stat"), c);
        let files = root.path().join("files");
        let layer = |n: &str, stat: Option<&mut StatCache>| -> PathBuf {
            let d = root.path().join(n);
            std::fs::create_dir(&d).unwrap();
            match stat {
                None => copy_entry(&c.join("src"), &d.join("src"), meta, "src", &all).unwrap(),
                Some(s) => {
                    let mut fs = FileStore::new(files.clone(), s);
                    copy_entry_with(
                        &c.join("src"),
                        &d.join("src"),
                        meta,
                        "src",
                        &all,
                        Some(&mut fs),
                    )
                    .unwrap();
                    assert!(fs.stored + fs.linked >= 4, "{} {}", fs.stored, fs.linked);
                }
            }
            d
        };
        let copied = layer("copied", None);
        let stored = layer("stored", Some(&mut stat));
        let linked = layer("linked", Some(&mut stat));
        assert_eq!(
            std::fs::symlink_metadata(stored.join("src/a"))
                .unwrap()
                .ino(),
            std::fs::symlink_metadata(linked.join("src/a"))
                .unwrap()
                .ino()
        );
        // Directories get the time of the copy; the layers are compared with theirs alike.
        let tar_of = |d: &Path| {
            for sub in ["", "src", "src/sub"] {
                let f = std::fs::File::open(d.join(sub)).unwrap();
                f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1e9 as u64))
                    .unwrap();
            }
            let mut v = Vec::new();
            berth_runtime::image::diff::write_layer_tar(d, &mut v).unwrap();
            v
        };
        let want_tar = tar_of(&copied);
        assert!(
            want_tar == tar_of(&stored),
            "a layer stored while copied differs"
        );
        assert!(want_tar == tar_of(&linked), "a layer of links differs");
    }

    #[test]
    fn a_file_changed_since_its_digest_is_not_stored() {
        let ctx = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let files = root.path().join("files");
        let a = ctx.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let ma = std::fs::symlink_metadata(&a).unwrap();
        let mut stat = StatCache::open(&root.path().join("stat"), ctx.path());
        stat.digest(&a, "a", &ma).unwrap();
        // Rewritten behind the stat's back (same metadata given): the digest is stale.
        std::fs::write(&a, "two").unwrap();
        let mut fs = FileStore::new(files.clone(), &mut stat);
        let dest = root.path().join("dest");
        assert!(!fs.place(&a, "a", &ma, &dest, want(0o644)).unwrap());
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(&files).unwrap().count(),
            0,
            "no entry, no temp"
        );
    }
}

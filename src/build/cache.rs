//! The build context's stat cache (git's "index" idea): the SHA-256 of each context file's
//! content, kept between builds and keyed by what `lstat` says of the file (size, mtime, ctime,
//! inode, device). A rebuild whose files did not change stats them and reads none; a changed
//! stat means the file is read and hashed again.
//!
//! Correctness, as git's racy-clean rule: a file written in the same second as (or after) the
//! moment its digest was taken could change again without its stat changing (timestamps are
//! coarse), so such an entry is never trusted: the next build hashes that file again, and only a
//! digest taken well after the file's last write is reused. The digest covers content only;
//! names, modes and owners are hashed by the caller from `lstat` on every build.
//!
//! One file per context under the build cache (`stat/<hash of the context path>`), written
//! atomically at the end of a build; parallel builds of one context each write their own view
//! and the last one wins (every view is correct). A missing, foreign or damaged file is an
//! empty cache.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"BSTAT01\n";
/// Slack for coarse kernel timestamps (they lag the clock by up to a tick): a digest counts as
/// taken this much earlier than it was.
const SLACK_NS: i64 = 100_000_000;
/// An old entry not seen by this build is kept (another COPY reads it) unless the file has more
/// entries than this: then only what this build saw is kept.
const MAX_ENTRIES: usize = 500_000;

/// What `lstat` says of a file that its content depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl Stat {
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    stat: Stat,
    /// Wall-clock ns at which hashing began (before the file was read).
    hashed_at_ns: i64,
    digest: [u8; 32],
}

/// Racily clean: the file was last written (or its inode changed) in the same second as the
/// digest was taken, or later, so a later write might not show in its stat.
pub fn racy(stat: &Stat, hashed_at_ns: i64) -> bool {
    let limit = (hashed_at_ns - SLACK_NS).div_euclid(1_000_000_000) * 1_000_000_000;
    stat.mtime_ns >= limit || stat.ctime_ns >= limit
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The digests of one context's files, as loaded at the start of a build and updated by it.
#[derive(Debug, Default)]
pub struct StatCache {
    file: Option<PathBuf>,
    entries: HashMap<String, Entry>,
    seen: std::collections::HashSet<String>,
    /// Files this build read and hashed itself: their digests are reused within the build even
    /// when racy (the COPY that hashed a file for its key also reads it for its layer).
    fresh: std::collections::HashSet<String>,
    /// When this build began hashing (every digest it takes is at or after this).
    started_ns: i64,
    dirty: bool,
    /// Files read and hashed by this build (for tests and traces).
    pub hashed: usize,
    /// Files whose digest came from the cache.
    pub reused: usize,
}

impl StatCache {
    /// The cache of `context`, kept in `dir` (missing or unreadable: empty).
    pub fn open(dir: &Path, context: &Path) -> StatCache {
        let canon = context
            .canonicalize()
            .unwrap_or_else(|_| context.to_path_buf());
        let name = hex::encode(&Sha256::digest(canon.as_os_str().as_encoded_bytes())[..16]);
        let file = dir.join(name);
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| decode(&b))
            .unwrap_or_default();
        StatCache {
            file: Some(file),
            entries,
            started_ns: now_ns(),
            ..StatCache::default()
        }
    }

    /// A cache that keeps nothing (`--no-cache`): every file is hashed.
    pub fn disabled() -> StatCache {
        StatCache {
            started_ns: now_ns(),
            ..StatCache::default()
        }
    }

    /// The SHA-256 of the regular file `path` (context path `rel`, `lstat` result `m`): from the
    /// cache when its stat is unchanged and the entry is not racy, else read and hashed.
    pub fn digest(
        &mut self,
        path: &Path,
        rel: &str,
        m: &std::fs::Metadata,
    ) -> std::io::Result<[u8; 32]> {
        let stat = Stat::of(m);
        if self.file.is_some() {
            self.seen.insert(rel.to_string());
            if let Some(e) = self.entries.get(rel) {
                if e.stat == stat && (!racy(&e.stat, e.hashed_at_ns) || self.fresh.contains(rel)) {
                    self.reused += 1;
                    return Ok(e.digest);
                }
            }
        }
        let digest = hash_file(path)?;
        self.hashed += 1;
        if self.file.is_some() {
            // Stat again after reading: a write during the read must not be cached as clean.
            let after = std::fs::symlink_metadata(path).map(|m| Stat::of(&m)).ok();
            if after == Some(stat) {
                let e = Entry {
                    stat,
                    hashed_at_ns: self.started_ns,
                    digest,
                };
                if self.entries.insert(rel.to_string(), e) != Some(e) {
                    self.dirty = true;
                }
                self.fresh.insert(rel.to_string());
            } else {
                self.fresh.remove(rel);
                if self.entries.remove(rel).is_some() {
                    self.dirty = true;
                }
            }
        }
        Ok(digest)
    }

    /// Write the cache back if this build changed it (best effort: a cache that cannot be
    /// written only costs the next build a rehash).
    pub fn save(&mut self) {
        let Some(file) = &self.file else { return };
        if !self.dirty {
            return;
        }
        if self.entries.len() > MAX_ENTRIES {
            let seen = &self.seen;
            self.entries.retain(|k, _| seen.contains(k));
        }
        let Some(dir) = file.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(
            ".{}.{}-{}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            self.started_ns
        ));
        if std::fs::write(&tmp, encode(&self.entries)).is_ok()
            && std::fs::rename(&tmp, file).is_ok()
        {
            self.dirty = false;
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn encode(entries: &HashMap<String, Entry>) -> Vec<u8> {
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    let mut out = Vec::with_capacity(8 + entries.len() * 120);
    out.extend_from_slice(MAGIC);
    for k in keys {
        let e = &entries[k];
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&e.stat.size.to_le_bytes());
        out.extend_from_slice(&e.stat.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.stat.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.stat.ino.to_le_bytes());
        out.extend_from_slice(&e.stat.dev.to_le_bytes());
        out.extend_from_slice(&e.hashed_at_ns.to_le_bytes());
        out.extend_from_slice(&e.digest);
    }
    out
}

fn decode(b: &[u8]) -> Option<HashMap<String, Entry>> {
    let mut r = b.strip_prefix(MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, rest) = r.split_at(n);
        r = rest;
        Some(a)
    };
    let mut out = HashMap::new();
    while let Some(len) = take(4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let k = String::from_utf8(take(len)?.to_vec()).ok()?;
        let mut u = || -> Option<u64> { Some(u64::from_le_bytes(take(8)?.try_into().ok()?)) };
        let size = u()?;
        let mtime_ns = u()? as i64;
        let ctime_ns = u()? as i64;
        let ino = u()?;
        let dev = u()?;
        let hashed_at_ns = u()? as i64;
        let digest: [u8; 32] = take(32)?.try_into().ok()?;
        out.insert(
            k,
            Entry {
                stat: Stat {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino,
                    dev,
                },
                hashed_at_ns,
                digest,
            },
        );
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn stat(mtime_ns: i64) -> Stat {
        Stat {
            size: 1,
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 1,
            dev: 1,
        }
    }

    #[test]
    fn racy_rule() {
        let t = 1_700_000_000 * S + 500_000_000; // hashed at x.5 s
                                                 // Written in an earlier second: clean.
        assert!(!racy(&stat(1_699_999_999 * S + 900_000_000), t));
        // Same second as the hash, before or after it: racy.
        assert!(racy(&stat(1_700_000_000 * S), t));
        assert!(racy(&stat(1_700_000_000 * S + 400_000_000), t));
        assert!(racy(&stat(1_700_000_000 * S + 700_000_000), t));
        // Later: racy.
        assert!(racy(&stat(1_700_000_005 * S), t));
        // Hashed just after a second began: the slack reaches back into the previous second.
        let t2 = 1_700_000_000 * S + 20_000_000;
        assert!(racy(&stat(1_699_999_999 * S + 990_000_000), t2));
        assert!(!racy(&stat(1_699_999_998 * S + 990_000_000), t2));
        // A ctime change alone (chmod, rename over) in the racy window counts too.
        let mut s = stat(1_600_000_000 * S);
        s.ctime_ns = t;
        assert!(racy(&s, t));
    }

    #[test]
    fn encode_decode_roundtrip() {
        let mut m = HashMap::new();
        for (i, k) in ["a", "src/b.txt", "ünï/c"].iter().enumerate() {
            m.insert(
                k.to_string(),
                Entry {
                    stat: Stat {
                        size: i as u64,
                        mtime_ns: -5 + i as i64,
                        ctime_ns: 7,
                        ino: 99,
                        dev: u64::MAX,
                    },
                    hashed_at_ns: 123,
                    digest: [i as u8; 32],
                },
            );
        }
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        // Damaged or foreign: no cache, not garbage.
        let mut b = encode(&m);
        b.truncate(b.len() - 3);
        assert!(decode(&b).is_none());
        assert!(decode(b"something else").is_none());
    }

    /// Set a file's mtime (and so its ctime, to now) to `secs_ago` seconds in the past.
    fn age(p: &Path, secs_ago: u64) {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn reuses_clean_entries_and_rehashes_changed_and_racy_ones() {
        let ctx = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        let b = ctx.path().join("b");
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let digest_of = |c: &mut StatCache, p: &Path, rel: &str| {
            let m = std::fs::symlink_metadata(p).unwrap();
            c.digest(p, rel, &m).unwrap()
        };
        // First build: both hashed; just written, so racy (not trusted next time).
        let mut c = StatCache::open(store.path(), ctx.path());
        assert_eq!(
            digest_of(&mut c, &a, "a"),
            <[u8; 32]>::from(Sha256::digest(b"one"))
        );
        digest_of(&mut c, &b, "b");
        assert_eq!((c.hashed, c.reused), (2, 0));
        // Within the build that hashed them, racy or not, the digests are reused (a COPY
        // reads a file for its key, then again for its layer); a write shows in the stat.
        digest_of(&mut c, &a, "a");
        assert_eq!((c.hashed, c.reused), (2, 1));
        std::fs::write(&b, "TWO!").unwrap();
        assert_eq!(
            digest_of(&mut c, &b, "b"),
            <[u8; 32]>::from(Sha256::digest(b"TWO!"))
        );
        assert_eq!((c.hashed, c.reused), (3, 1));
        std::fs::write(&b, "two").unwrap();
        c.save();
        let mut c = StatCache::open(store.path(), ctx.path());
        digest_of(&mut c, &a, "a");
        digest_of(&mut c, &b, "b");
        assert_eq!(
            (c.hashed, c.reused),
            (2, 0),
            "racy entries are hashed again"
        );
        c.save();

        // Entries whose files' ctime is well before the digest: reused without reading.
        // (ctime cannot be set back, so the hash time is moved forward instead.)
        let mut c = StatCache::open(store.path(), ctx.path());
        for e in c.entries.values_mut() {
            e.hashed_at_ns += 5 * S;
        }
        c.dirty = true;
        c.save();
        let mut c = StatCache::open(store.path(), ctx.path());
        assert_eq!(
            digest_of(&mut c, &a, "a"),
            <[u8; 32]>::from(Sha256::digest(b"one"))
        );
        digest_of(&mut c, &b, "b");
        assert_eq!((c.hashed, c.reused), (0, 2));

        // Same size and an mtime set back to the old value: ctime still changed, so rehashed.
        let old = std::fs::symlink_metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, "ONE").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            digest_of(&mut c, &a, "a"),
            <[u8; 32]>::from(Sha256::digest(b"ONE"))
        );
        assert_eq!((c.hashed, c.reused), (1, 2));

        // A file replaced by another (new inode), content and stat otherwise alike: rehashed.
        let tmp = ctx.path().join(".b.new");
        std::fs::write(&tmp, "TWO").unwrap();
        age(&tmp, 100);
        std::fs::rename(&tmp, &b).unwrap();
        assert_eq!(
            digest_of(&mut c, &b, "b"),
            <[u8; 32]>::from(Sha256::digest(b"TWO"))
        );
        assert_eq!((c.hashed, c.reused), (2, 2));
    }

    #[test]
    fn a_racy_same_size_same_mtime_change_is_detected() {
        // Hashed, then rewritten within the same second with the same size and the mtime put
        // back: size, mtime and inode match; the ctime and the racy rule each catch it.
        let ctx = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        std::fs::write(&a, "aaaa").unwrap();
        let m = std::fs::symlink_metadata(&a).unwrap();
        let mut c = StatCache::open(store.path(), ctx.path());
        c.digest(&a, "a", &m).unwrap();
        c.save();
        std::fs::write(&a, "bbbb").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(m.modified().unwrap())
            .unwrap();
        let m2 = std::fs::symlink_metadata(&a).unwrap();
        assert_eq!(m2.len(), m.len());
        assert_eq!(m2.mtime_nsec(), m.mtime_nsec());
        let mut c = StatCache::open(store.path(), ctx.path());
        assert_eq!(
            c.digest(&a, "a", &m2).unwrap(),
            <[u8; 32]>::from(Sha256::digest(b"bbbb"))
        );
    }

    #[test]
    fn disabled_cache_always_hashes_and_keeps_nothing() {
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        std::fs::write(&a, "x").unwrap();
        let m = std::fs::symlink_metadata(&a).unwrap();
        let mut c = StatCache::disabled();
        c.digest(&a, "a", &m).unwrap();
        c.digest(&a, "a", &m).unwrap();
        assert_eq!((c.hashed, c.reused), (2, 0));
        c.save();
    }
}

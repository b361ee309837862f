//! A directory of changes (an overlayfs upper dir, or a plain tree of new files) → an OCI layer
//! tar: overlay whiteouts (0:0 character devices) become `.wh.<name>` entries, opaque directories
//! (`trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry, hard links stay links, modes, owners,
//! mtimes, devices and extended attributes (PAX `SCHILY.xattr.*`) are kept; overlay's own
//! attributes are not. Entries are written in name order, so the same tree gives the same tar
//! (and the same diff_id).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::error::{ImageError, IoContext};

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Write the tar of `dir` to `out`; returns the number of entries.
pub fn write_layer_tar(dir: &Path, out: impl Write) -> Result<u64, ImageError> {
    let mut b = tar::Builder::new(BufWriter::with_capacity(256 * 1024, out));
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut n = 0;
    walk(dir, "", &mut b, &mut links, &mut n)?;
    let w = b
        .into_inner()
        .ctx(|| format!("writing the layer of {}", dir.display()))?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .ctx(|| format!("writing the layer of {}", dir.display()))?;
    Ok(n)
}

fn header_for(m: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(names) = xattr::list(p) {
        for n in names {
            if is_overlay_xattr(n.as_bytes()) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(p, &n) {
                out.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
            }
        }
    }
    out.sort();
    out
}

fn walk<W: Write>(
    root: &Path,
    rel: &str,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), String>,
    n: &mut u64,
) -> Result<(), ImageError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .ctx(|| format!("reading {}", dir.display()))?;
    names.sort();
    let werr = |p: &str| format!("adding {p} to a layer");
    for name in names {
        let name_s = name.to_string_lossy().into_owned();
        let path_rel = if rel.is_empty() {
            name_s.clone()
        } else {
            format!("{rel}/{name_s}")
        };
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p).ctx(|| format!("stat {}", p.display()))?;
        let ft = m.file_type();
        let pax = xattrs_of(&p);
        if !pax.is_empty() && !ft.is_symlink() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .ctx(|| werr(&path_rel))?;
        }
        *n += 1;
        if ft.is_char_device() && m.rdev() == 0 {
            // An overlay whiteout: the lower file was deleted.
            let wh = match path_rel.rsplit_once('/') {
                Some((d, f)) => format!("{d}/.wh.{f}"),
                None => format!(".wh.{path_rel}"),
            };
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(m.mtime().max(0) as u64);
            b.append_data(&mut h, &wh, std::io::empty())
                .ctx(|| werr(&path_rel))?;
        } else if ft.is_dir() {
            let mut h = header_for(&m, tar::EntryType::Directory);
            b.append_data(&mut h, format!("{path_rel}/"), std::io::empty())
                .ctx(|| werr(&path_rel))?;
            let opaque = OPAQUE_XATTRS
                .iter()
                .any(|x| matches!(xattr::get(&p, x), Ok(Some(v)) if v == b"y"));
            if opaque {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_mtime(m.mtime().max(0) as u64);
                b.append_data(&mut h, format!("{path_rel}/.wh..wh..opq"), std::io::empty())
                    .ctx(|| werr(&path_rel))?;
            }
            walk(root, &path_rel, b, links, n)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p).ctx(|| format!("readlink {}", p.display()))?;
            let mut h = header_for(&m, tar::EntryType::Symlink);
            b.append_link(&mut h, &path_rel, &target)
                .ctx(|| werr(&path_rel))?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = links.get(&key) {
                    let mut h = header_for(&m, tar::EntryType::Link);
                    b.append_link(&mut h, &path_rel, first)
                        .ctx(|| werr(&path_rel))?;
                    continue;
                }
                links.insert(key, path_rel.clone());
            }
            let mut h = header_for(&m, tar::EntryType::Regular);
            h.set_size(m.len());
            let f = File::open(&p).ctx(|| format!("opening {}", p.display()))?;
            b.append_data(&mut h, &path_rel, f.take_exact(m.len()))
                .ctx(|| werr(&path_rel))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut h = header_for(&m, kind);
            let (maj, min) = (libc::major(m.rdev()), libc::minor(m.rdev()));
            h.set_device_major(maj).ctx(|| werr(&path_rel))?;
            h.set_device_minor(min).ctx(|| werr(&path_rel))?;
            b.append_data(&mut h, &path_rel, std::io::empty())
                .ctx(|| werr(&path_rel))?;
        } else if ft.is_fifo() {
            let mut h = header_for(&m, tar::EntryType::Fifo);
            b.append_data(&mut h, &path_rel, std::io::empty())
                .ctx(|| werr(&path_rel))?;
        } else {
            // Sockets do not go into layers (as Docker).
            *n -= 1;
        }
    }
    Ok(())
}

/// A reader of exactly `len` bytes: a file that changed size while being read fails the layer
/// instead of writing a tar whose header lies.
trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, len: u64) -> Exact<Self> {
        Exact { r: self, left: len }
    }
}
impl<R: std::io::Read> TakeExact for R {}

struct Exact<R> {
    r: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let got = self.r.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while it was added to a layer",
            ));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_links_and_order() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("b/sub")).unwrap();
        std::fs::write(r.join("b/sub/f"), b"hello").unwrap();
        std::fs::hard_link(r.join("b/sub/f"), r.join("a-link")).unwrap();
        std::os::unix::fs::symlink("b/sub/f", r.join("c-sym")).unwrap();
        let root = rustix::process::geteuid().is_root();
        if root {
            // An overlay whiteout (needs CAP_MKNOD).
            nix::sys::stat::mknod(
                &r.join("gone"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
            xattr::set(r.join("b"), "trusted.overlay.opaque", b"y").unwrap();
        }
        let mut out = Vec::new();
        write_layer_tar(r, &mut out).unwrap();
        let mut again = Vec::new();
        write_layer_tar(r, &mut again).unwrap();
        assert_eq!(out, again, "the same tree gives the same tar");
        let mut ar = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            seen.push((p, e.header().entry_type()));
        }
        let names: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        if root {
            assert_eq!(
                names,
                vec![
                    "a-link",
                    "b/",
                    "b/.wh..wh..opq",
                    "b/sub/",
                    "b/sub/f",
                    "c-sym",
                    ".wh.gone"
                ]
            );
        } else {
            assert_eq!(names, vec!["a-link", "b/", "b/sub/", "b/sub/f", "c-sym"]);
        }
        assert_eq!(seen[0].1, tar::EntryType::Regular);
        let f = seen.iter().find(|(p, _)| p == "b/sub/f").unwrap();
        assert_eq!(f.1, tar::EntryType::Link);
        let s = seen.iter().find(|(p, _)| p == "c-sym").unwrap();
        assert_eq!(s.1, tar::EntryType::Symlink);
    }

    #[test]
    fn commit_add_image_hold_and_prune() {
        use crate::image::ImageStore;
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let changes = tempfile::tempdir().unwrap();
        std::fs::write(changes.path().join("a.txt"), b"layer one").unwrap();
        let guard = store.write_guard().unwrap();
        let l1 = store.commit_dir(changes.path()).unwrap();
        assert_eq!(l1.entries, 1);
        // The same tree again is the same layer.
        assert_eq!(
            store.commit_dir(changes.path()).unwrap().diff_id,
            l1.diff_id
        );
        let dir = store.layer_dir(&l1.diff_id).unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"layer one");
        std::fs::write(changes.path().join("a.txt"), b"layer two").unwrap();
        let l2 = store.commit_dir(changes.path()).unwrap();
        assert_ne!(l1.diff_id, l2.diff_id);
        let cfg = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/a.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [l1.diff_id]}
        });
        let id = store
            .add_image(
                &serde_json::to_vec(&cfg).unwrap(),
                &["example/built:1".into()],
            )
            .unwrap();
        drop(guard);
        let img = store.get("example/built:1").unwrap().unwrap();
        assert_eq!(img.id, id);
        assert_eq!(img.layers, vec![dir.clone()]);
        // l2 is held: prune keeps it; released, it goes; l1 stays with its image.
        store
            .hold_layers("test-cache", std::slice::from_ref(&l2.diff_id))
            .unwrap();
        store.prune().unwrap();
        assert!(store.layer_dir(&l2.diff_id).is_some());
        store.release_hold("test-cache").unwrap();
        let rep = store.prune().unwrap();
        assert_eq!(rep.layers, vec![l2.diff_id.clone()]);
        assert!(store.layer_dir(&l1.diff_id).is_some());
        // A config naming a missing layer is refused.
        let bad = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [l2.diff_id]}});
        assert!(store
            .add_image(&serde_json::to_vec(&bad).unwrap(), &[])
            .is_err());
    }
}

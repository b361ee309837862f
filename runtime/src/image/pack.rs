//! Directory trees back to tar streams: a container's merged root filesystem (`export`) or an
//! overlay upper/layer directory as an OCI layer (`commit`, `push`), where overlayfs whiteouts
//! (0/0 character devices) become `.wh.<name>` entries and opaque directories
//! (`trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry.
//!
//! Entries are written in sorted order with their mode, owner, times and symlink targets;
//! hard links inside the tree become tar links, so the same tree always gives the same tar.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::error::{ImageError, IoContext};

/// How to write the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A plain filesystem (a merged rootfs): devices are devices.
    Filesystem,
    /// An overlay layer: whiteouts and opaque directories in OCI form.
    Layer,
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|k| matches!(xattr::get(p, k), Ok(Some(v)) if v == b"y"))
}

fn header_for(md: &fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    h.set_mtime(md.mtime().max(0) as u64);
    h
}

/// `(sha256:<hex>, size)` of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
}

/// Write `root` as a tar stream to `out`; returns the number of entries.
pub fn pack<W: Write>(root: &Path, mode: Mode, out: W) -> Result<u64, ImageError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut n = 0u64;
    walk(root, root, mode, &mut b, &mut links, &mut n)?;
    b.into_inner()
        .ctx(|| format!("finishing the tar of {}", root.display()))?
        .flush()
        .ctx(|| "flushing tar".to_string())?;
    Ok(n)
}

fn walk<W: Write>(
    root: &Path,
    dir: &Path,
    mode: Mode,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), String>,
    n: &mut u64,
) -> Result<(), ImageError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let rel_dir = dir.strip_prefix(root).unwrap_or(Path::new(""));
    if mode == Mode::Layer && dir != root && is_opaque(dir) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        let p = rel_dir.join(".wh..wh..opq");
        b.append_data(&mut h, &p, std::io::empty())
            .ctx(|| format!("tar {}", p.display()))?;
        *n += 1;
    }
    for name in names {
        let path = dir.join(&name);
        let rel = rel_dir.join(&name);
        let md = fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
        let ft = md.file_type();
        let mut h = header_for(&md);
        if mode == Mode::Layer && is_whiteout(&md) {
            let wh = rel_dir.join(format!(".wh.{}", name.to_string_lossy()));
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            b.append_data(&mut h, &wh, std::io::empty())
                .ctx(|| format!("tar {}", wh.display()))?;
            *n += 1;
            continue;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())
                .ctx(|| format!("tar {}", rel.display()))?;
            *n += 1;
            walk(root, &path, mode, b, links, n)?;
            continue;
        }
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, &rel, first)
                    .ctx(|| format!("tar {}", rel.display()))?;
                *n += 1;
                continue;
            }
            links.insert(key, rel.to_string_lossy().into_owned());
        }
        if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
            b.append_data(&mut h, &rel, f)
                .ctx(|| format!("tar {}", rel.display()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).ctx(|| format!("readlink {}", path.display()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel, &target)
                .ctx(|| format!("tar {}", rel.display()))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            h.set_size(0);
            let dev = md.rdev();
            h.set_device_major(rustix::fs::major(dev)).ok();
            h.set_device_minor(rustix::fs::minor(dev)).ok();
            b.append_data(&mut h, &rel, std::io::empty())
                .ctx(|| format!("tar {}", rel.display()))?;
        } else if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())
                .ctx(|| format!("tar {}", rel.display()))?;
        } else {
            // Sockets are not archived (as docker export).
            continue;
        }
        *n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(data: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut a = tar::Archive::new(data);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn files_links_and_order() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        fs::write(d.path().join("b/f"), b"hello").unwrap();
        fs::hard_link(d.path().join("b/f"), d.path().join("a")).unwrap();
        std::os::unix::fs::symlink("b/f", d.path().join("c")).unwrap();
        let mut out = Vec::new();
        assert_eq!(pack(d.path(), Mode::Filesystem, &mut out).unwrap(), 4);
        let e = entries(&out);
        assert_eq!(
            e,
            vec![
                ("a".to_string(), tar::EntryType::Regular),
                ("b".to_string(), tar::EntryType::Directory),
                ("b/f".to_string(), tar::EntryType::Link),
                ("c".to_string(), tar::EntryType::Symlink),
            ]
        );
        let mut again = Vec::new();
        pack(d.path(), Mode::Filesystem, &mut again).unwrap();
        assert_eq!(out, again, "the same tree gives the same tar");
    }

    #[test]
    fn whiteouts_become_wh_entries() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mknod of a whiteout needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        let mut out = Vec::new();
        pack(d.path(), Mode::Layer, &mut out).unwrap();
        assert_eq!(
            entries(&out),
            vec![
                ("etc".to_string(), tar::EntryType::Directory),
                ("etc/.wh.gone".to_string(), tar::EntryType::Regular),
            ]
        );
    }
}

//! Resolve `user[:group]` names against a rootfs's /etc/passwd and /etc/group (Docker rules:
//! numeric ids need not exist; a named user brings its primary group and every group that lists
//! it as a member).
use std::path::Path;

use crate::error::{Result, RuntimeError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
    pub name: Option<String>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_passwd(rootfs: &Path) -> Vec<Passwd> {
    // Read through the rootfs without following an absolute symlink out of it.
    let text = read_in_root(rootfs, "etc/passwd").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn read_group(rootfs: &Path) -> Vec<Group> {
    let text = read_in_root(rootfs, "etc/group").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    use std::io::Read;
    let fd = crate::rootfs::open_in_root(rootfs, Path::new(rel), libc::O_RDONLY).ok()?;
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

/// Resolve `spec` ("user", "uid", "user:group", "uid:gid", …) in `rootfs`, adding `extra_groups`
/// (names or numbers, Compose `group_add`).
pub fn resolve(rootfs: &Path, spec: &str, extra_groups: &[String]) -> Result<ResolvedUser> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_passwd(rootfs);
    let groups = read_group(rootfs);
    let u = if u.is_empty() { "0" } else { u };
    let entry = if let Ok(n) = u.parse::<u32>() {
        passwd.iter().find(|p| p.uid == n)
    } else {
        Some(
            passwd
                .iter()
                .find(|p| p.name == u)
                .ok_or_else(|| RuntimeError::UnknownUser(u.to_string()))?,
        )
    };
    let uid = u.parse::<u32>().ok().or(entry.map(|e| e.uid)).unwrap_or(0);
    let find_group = |g: &str| -> Result<u32> {
        if let Ok(n) = g.parse::<u32>() {
            return Ok(n);
        }
        groups
            .iter()
            .find(|x| x.name == g)
            .map(|x| x.gid)
            .ok_or_else(|| RuntimeError::UnknownGroup(g.to_string()))
    };
    let gid = match g {
        Some(g) if !g.is_empty() => find_group(g)?,
        _ => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional = Vec::new();
    // Supplementary groups from /etc/group only when no explicit group was given (Docker).
    if g.is_none() {
        if let Some(e) = entry {
            for gr in &groups {
                if gr.members.contains(&e.name) && gr.gid != gid && !additional.contains(&gr.gid) {
                    additional.push(gr.gid);
                }
            }
        }
    }
    for eg in extra_groups {
        let n = find_group(eg)?;
        if !additional.contains(&n) {
            additional.push(n);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home: entry.map(|e| e.home.clone()).unwrap_or_else(|| "/".into()),
        name: entry.map(|e| e.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nstaff:x:50:alice,bob\naudio:x:29:bob\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn by_name() {
        let r = rootfs();
        let u = resolve(r.path(), "alice", &[]).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![50])
        );
        assert_eq!(u.home, "/home/alice");
        let u = resolve(r.path(), "alice:audio", &["staff".into()]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 29, vec![50]));
    }

    #[test]
    fn numeric_and_unknown() {
        let r = rootfs();
        let u = resolve(r.path(), "4242:4343", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        let u = resolve(r.path(), "1000", &[]).unwrap();
        assert_eq!(u.gid, 1000);
        assert!(matches!(
            resolve(r.path(), "mallory", &[]),
            Err(RuntimeError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve(r.path(), "alice:nogroup", &[]),
            Err(RuntimeError::UnknownGroup(_))
        ));
    }
}

//! `include` and `extends`, applied per file after interpolation (compose-go's order), and the
//! rebasing of relative paths for content that comes from another directory.

use std::path::{Path, PathBuf};

use super::convert::{self, R};
use super::error::LoadError;
use super::load::Reader;
use super::yaml::{Entry, Node, V};

fn abs(dir: &Path, p: &str) -> String {
    if p.starts_with('~') || p.contains("://") || p.starts_with("git@") {
        return p.to_string();
    }
    let pb = Path::new(p);
    if pb.is_absolute() {
        return p.to_string();
    }
    convert::clean(&dir.join(pb)).display().to_string()
}

fn rebase_scalar(n: &mut Node, dir: &Path) {
    if let V::Scalar(s, _) = &mut n.v {
        *s = abs(dir, s);
    }
}

fn rebase_list_or_scalar(n: &mut Node, dir: &Path, key: Option<&str>) {
    match &mut n.v {
        V::Scalar(..) => rebase_scalar(n, dir),
        V::Seq(items) => {
            for it in items {
                match (&mut it.v, key) {
                    (V::Scalar(..), _) => rebase_scalar(it, dir),
                    (V::Map(_), Some(k)) => {
                        if let Some(p) = it.get_mut(k) {
                            rebase_scalar(p, dir);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn rebase_service(svc: &mut Node, dir: &Path) {
    if let Some(b) = svc.get_mut("build") {
        match &b.v {
            V::Scalar(..) => rebase_scalar(b, dir),
            V::Map(_) => {
                if let Some(c) = b.get_mut("context") {
                    rebase_scalar(c, dir);
                }
                if b.get("context").is_none() {
                    let m = b.mark.clone();
                    b.set("context", Node::str(dir.display().to_string(), m));
                }
            }
            _ => {}
        }
    }
    if let Some(e) = svc.get_mut("env_file") {
        rebase_list_or_scalar(e, dir, Some("path"));
    }
    if let Some(e) = svc.get_mut("label_file") {
        rebase_list_or_scalar(e, dir, None);
    }
    if let Some(ext) = svc.get_mut("extends") {
        if let Some(f) = ext.get_mut("file") {
            rebase_scalar(f, dir);
        }
    }
    if let Some(V::Seq(vols)) = svc.get_mut("volumes").map(|v| &mut v.v) {
        for v in vols {
            match &mut v.v {
                V::Scalar(s, _) => {
                    let mut parts: Vec<String> = s.split(':').map(String::from).collect();
                    if parts.len() >= 2 && parts[0].starts_with('.') {
                        parts[0] = abs(dir, &parts[0]);
                        *s = parts.join(":");
                    }
                }
                V::Map(_) => {
                    let is_bind = v.get("type").and_then(|t| t.scalar()) == Some("bind");
                    if is_bind {
                        if let Some(src) = v.get_mut("source") {
                            rebase_scalar(src, dir);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Make the relative paths of a tree absolute against `dir` (content read from another
/// directory than the project's).
pub fn absolutize(root: &mut Node, dir: &Path, _home: Option<&str>) {
    if let Some(V::Map(svcs)) = root.get_mut("services").map(|s| &mut s.v) {
        for e in svcs {
            rebase_service(&mut e.val, dir);
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(V::Map(objs)) = root.get_mut(section).map(|s| &mut s.v) {
            for e in objs {
                if let Some(f) = e.val.get_mut("file") {
                    rebase_scalar(f, dir);
                }
            }
        }
    }
}

/// Merge two service definitions with the project merge rules (`over` wins).
fn merge_service(name: &str, base: Node, over: Node) -> R<Node> {
    let wrap = |n: Node| {
        let m = n.mark.clone();
        Node::map(
            vec![Entry {
                key: "services".into(),
                kmark: m.clone(),
                val: Node::map(
                    vec![Entry {
                        key: name.to_string(),
                        kmark: m.clone(),
                        val: n,
                    }],
                    m.clone(),
                ),
            }],
            m,
        )
    };
    let mut merged = super::merge::merge(wrap(base), wrap(over))?;
    Ok(merged
        .get_mut("services")
        .and_then(|s| s.remove(name))
        .unwrap_or_else(|| Node::map(vec![], super::yaml::Mark::default())))
}

/// Resolve `extends` for every service of `root` (read from `file` in `dir`).
pub fn apply_extends(reader: &mut Reader, root: &mut Node, file: &Path, dir: &Path) -> R<()> {
    let Some(services) = root.get("services").cloned() else {
        return Ok(());
    };
    let Some(entries) = services.as_map() else {
        return Ok(());
    };
    if !entries.iter().any(|e| e.val.get("extends").is_some()) {
        return Ok(());
    }
    let mut resolved = Vec::new();
    for e in entries {
        if e.val.get("extends").is_some() {
            let mut stack = Vec::new();
            let n = resolve(reader, &services, &e.key, file, dir, &mut stack)?;
            resolved.push((e.key.clone(), n));
        }
    }
    let svcs = root.get_mut("services").expect("checked above");
    for (k, n) in resolved {
        svcs.set(&k, n);
    }
    Ok(())
}

fn resolve(
    reader: &mut Reader,
    services: &Node,
    name: &str,
    file: &Path,
    dir: &Path,
    stack: &mut Vec<(PathBuf, String)>,
) -> R<Node> {
    let key = (file.to_path_buf(), name.to_string());
    if stack.contains(&key) {
        let chain: Vec<String> = stack.iter().map(|(_, s)| s.clone()).collect();
        return Err(LoadError::Project(format!(
            "circular reference with extends: {} -> {name}",
            chain.join(" -> ")
        )));
    }
    let Some(svc) = services.get(name) else {
        return Err(LoadError::Project(format!(
            "cannot extend service {name:?} in {}: service not found",
            file.display()
        )));
    };
    let mut svc = if svc.is_null() {
        Node::map(vec![], svc.mark.clone())
    } else {
        svc.clone()
    };
    let Some(ext) = svc.remove("extends") else {
        return Ok(svc);
    };
    let path = format!("services.{name}.extends");
    let (base_file, base_name) = match &ext.v {
        V::Scalar(s, _) => (None, s.clone()),
        V::Map(_) => {
            convert::check_keys(&ext, &path, &["file", "service"])?;
            let f = match ext.get("file") {
                Some(f) => Some(convert::string(f, &format!("{path}.file"))?),
                None => None,
            };
            let s = match ext.get("service") {
                Some(s) => convert::string(s, &format!("{path}.service"))?,
                None => {
                    return Err(LoadError::at(
                        &ext.mark,
                        path,
                        "extends requires \"service\"",
                    ))
                }
            };
            (f, s)
        }
        _ => {
            return Err(LoadError::at(
                &ext.mark,
                path,
                "must be a string or a mapping",
            ))
        }
    };
    stack.push(key);
    let base = match base_file {
        None => resolve(reader, services, &base_name, file, dir, stack)?,
        Some(f) => {
            if f.contains("://") {
                return Err(LoadError::at(
                    &ext.mark,
                    path,
                    format!("remote extends file {f:?} is not supported"),
                ));
            }
            let bpath = PathBuf::from(abs(dir, &f));
            let bdir = bpath.parent().map(Path::to_path_buf).unwrap_or_default();
            let other = reader.read(&bpath)?;
            let other_services = other
                .get("services")
                .cloned()
                .unwrap_or_else(|| Node::map(vec![], other.mark.clone()));
            let mut b = resolve(reader, &other_services, &base_name, &bpath, &bdir, stack)?;
            if bdir != dir {
                rebase_service(&mut b, &bdir);
            }
            b
        }
    };
    stack.pop();
    merge_service(name, base, svc)
}

/// Apply `include:` entries: each included project is loaded on its own (with its own
/// project directory and env files) and its resources are added to `root`.
pub fn apply_includes(
    reader: &mut Reader,
    root: &mut Node,
    file: &Path,
    dir: &Path,
    stack: &mut Vec<PathBuf>,
) -> R<()> {
    let Some(inc) = root.remove("include") else {
        return Ok(());
    };
    let items: Vec<Node> = match inc.v {
        V::Seq(items) => items,
        V::Null => vec![],
        _ => return Err(LoadError::at(&inc.mark, "include", "must be a list")),
    };
    for (i, it) in items.into_iter().enumerate() {
        let path = format!("include[{i}]");
        let (paths, project_dir, env_files): (Vec<String>, Option<String>, Vec<String>) =
            match &it.v {
                V::Scalar(s, _) => (vec![s.clone()], None, vec![]),
                V::Map(_) => {
                    convert::check_keys(&it, &path, &["path", "project_directory", "env_file"])?;
                    let list = |k: &str| -> R<Vec<String>> {
                        match it.get(k) {
                            None => Ok(vec![]),
                            Some(n) => match &n.v {
                                V::Scalar(s, _) => Ok(vec![s.clone()]),
                                V::Seq(xs) => xs
                                    .iter()
                                    .enumerate()
                                    .map(|(j, x)| convert::string(x, &format!("{path}.{k}[{j}]")))
                                    .collect(),
                                _ => Err(LoadError::at(
                                    &n.mark,
                                    format!("{path}.{k}"),
                                    "must be a string or a list",
                                )),
                            },
                        }
                    };
                    let pd = match it.get("project_directory") {
                        Some(n) => Some(convert::string(n, &format!("{path}.project_directory"))?),
                        None => None,
                    };
                    (list("path")?, pd, list("env_file")?)
                }
                _ => {
                    return Err(LoadError::at(
                        &it.mark,
                        path,
                        "must be a string or a mapping",
                    ))
                }
            };
        if paths.is_empty() {
            return Err(LoadError::at(&it.mark, path, "include requires \"path\""));
        }
        for p in &paths {
            if p.contains("://") || p.starts_with("git@") || p.starts_with("oci:") {
                return Err(LoadError::at(
                    &it.mark,
                    &path,
                    format!("remote include {p:?} is not supported"),
                ));
            }
        }
        let abs_paths: Vec<PathBuf> = paths.iter().map(|p| PathBuf::from(abs(dir, p))).collect();
        let inc_dir = match &project_dir {
            Some(d) => PathBuf::from(abs(dir, d)),
            None => abs_paths[0]
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or(dir.to_path_buf()),
        };
        // The included project's env: ours, plus its env files for what is unset.
        let saved = reader.env.clone();
        let env_paths: Vec<PathBuf> = if env_files.is_empty() {
            vec![inc_dir.join(".env")]
        } else {
            env_files
                .iter()
                .map(|f| PathBuf::from(abs(dir, f)))
                .collect()
        };
        for f in &env_paths {
            match std::fs::read_to_string(f) {
                Ok(src) => {
                    let env = reader.env.clone();
                    let lookup = |k: &str| env.get(k).cloned();
                    let parsed = super::dotenv::parse(&src, &lookup)
                        .map_err(|e| LoadError::Project(format!("{}: {e}", f.display())))?;
                    for (k, v) in parsed {
                        if let Some(v) = v {
                            reader.env.entry(k).or_insert(v);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && env_files.is_empty() => {}
                Err(e) => {
                    reader.env = saved;
                    return Err(LoadError::io(f, &e));
                }
            }
        }
        let result = (|| -> R<Node> {
            let mut merged: Option<Node> = None;
            for p in &abs_paths {
                let pdir = p.parent().map(Path::to_path_buf).unwrap_or(inc_dir.clone());
                let n = reader.read_full(p, &pdir, stack)?;
                merged = Some(match merged {
                    None => n,
                    Some(b) => super::merge::merge(b, n)?,
                });
            }
            Ok(merged.expect("at least one path"))
        })();
        reader.env = saved;
        let mut inc_root = result?;
        absolutize(&mut inc_root, &inc_dir, None);
        import(root, inc_root, file)?;
    }
    Ok(())
}

/// Add an included project's resources; a name defined on both sides differently is an error.
fn import(root: &mut Node, inc: Node, file: &Path) -> R<()> {
    let V::Map(sections) = inc.v else {
        return Ok(());
    };
    for sec in sections {
        if !matches!(
            sec.key.as_str(),
            "services" | "networks" | "volumes" | "secrets" | "configs" | "models"
        ) {
            continue;
        }
        let V::Map(items) = sec.val.v else { continue };
        if root.get(&sec.key).is_none_or(|n| n.is_null()) {
            root.set(&sec.key, Node::map(vec![], sec.kmark.clone()));
        }
        let target = root.get_mut(&sec.key).expect("just set");
        for it in items {
            if let Some(existing) = target.get(&it.key) {
                if strip_marks(existing) != strip_marks(&it.val) {
                    return Err(LoadError::at(
                        &existing.mark,
                        format!("{}.{}", sec.key, it.key),
                        format!(
                            "{} {:?} conflicts with the one imported by {}",
                            sec.key.trim_end_matches('s'),
                            it.key,
                            file.display()
                        ),
                    ));
                }
                continue;
            }
            target.set(&it.key, it.val);
        }
    }
    Ok(())
}

fn strip_marks(n: &Node) -> String {
    super::yaml::emit(n)
}

//! The loading pipeline: discovery → .env → parse → interpolate → include/extends → merge →
//! convert → profiles → env_file resolution → references and defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use super::convert::{self, Cx, Ref, RefKind, R};
use super::error::LoadError;
use super::model::*;
use super::yaml::{self, Mark, Node, V};

pub const DISCOVERY_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Find the compose file (and its override) from `dir` upwards.
pub fn discover(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut d = Some(dir);
    while let Some(cur) = d {
        for name in DISCOVERY_NAMES {
            let p = cur.join(name);
            if p.is_file() {
                let mut v = vec![p.clone()];
                let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "yaml"));
                let ov = cur.join(format!("{stem}.override.{ext}"));
                if ov.is_file() {
                    v.push(ov);
                }
                return Some(v);
            }
        }
        d = cur.parent();
    }
    None
}

/// compose's project name normalisation: lower-case, keep `[a-z0-9_-]`, trim leading `_`/`-`.
pub fn normalize_project_name(s: &str) -> String {
    let lower = s.to_lowercase();
    let kept: String = lower
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

pub fn valid_project_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(crate) fn read_file(path: &Path, opts: &LoadOptions) -> R<String> {
    if path == Path::new("-") {
        if let Some(s) = &opts.stdin {
            return Ok(s.clone());
        }
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| LoadError::io(path, &e))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| LoadError::io(path, &e))
}

/// Parse a compose file into its tree; an empty file is an error.
pub(crate) fn parse_file(path: &Path, src: &str) -> R<Node> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    match yaml::parse(src, &name)? {
        None => Err(LoadError::Project(format!(
            "{}: empty compose file",
            path.display()
        ))),
        Some(n) if n.is_null() => Err(LoadError::Project(format!(
            "{}: empty compose file",
            path.display()
        ))),
        Some(n) => {
            if !matches!(n.v, V::Map(_)) {
                return Err(LoadError::at(
                    &n.mark,
                    "",
                    "top-level object must be a mapping",
                ));
            }
            Ok(n)
        }
    }
}

/// Read `.env`-style files into `into` (later files win; values already in `into` stay only
/// when `keep_existing`).
fn read_env_files(
    files: &[PathBuf],
    process: &HashMap<String, String>,
    into: &mut IndexMap<String, String>,
    keep_existing: bool,
    required: bool,
) -> R<()> {
    for f in files {
        let src = match std::fs::read_to_string(f) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(LoadError::io(f, &e)),
        };
        let snapshot = into.clone();
        let lookup = |k: &str| process.get(k).cloned().or_else(|| snapshot.get(k).cloned());
        let parsed = super::dotenv::parse(&src, &lookup)
            .map_err(|e| LoadError::Project(format!("{}: {e}", f.display())))?;
        for (k, v) in parsed {
            let Some(v) = v else { continue };
            if keep_existing && into.contains_key(&k) {
                continue;
            }
            into.insert(k, v);
        }
    }
    Ok(())
}

fn abs_from(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        convert::clean(p)
    } else {
        convert::clean(&base.join(p))
    }
}

/// Everything needed while reading files: the interpolation environment and options.
pub(crate) struct Reader<'a> {
    pub opts: &'a LoadOptions,
    pub env: IndexMap<String, String>,
    pub unset: Vec<String>,
    pub warnings: Vec<String>,
}

impl Reader<'_> {
    /// Parse and interpolate one file.
    pub fn read(&mut self, path: &Path) -> R<Node> {
        let src = read_file(path, self.opts)?;
        let mut n = parse_file(path, &src)?;
        if self.opts.interpolate {
            let env = &self.env;
            let lookup = |k: &str| env.get(k).cloned();
            super::interp::interpolate_tree(&mut n, "", &lookup, &mut self.unset)?;
        }
        Ok(n)
    }

    /// Read a file with its `include`s and `extends` applied; relative paths stay relative
    /// to `dir` unless the content came from elsewhere (then they are made absolute).
    pub fn read_full(&mut self, path: &Path, dir: &Path, stack: &mut Vec<PathBuf>) -> R<Node> {
        if stack.iter().any(|p| p == path) {
            let mut chain: Vec<String> = stack.iter().map(|p| p.display().to_string()).collect();
            chain.push(path.display().to_string());
            return Err(LoadError::Project(format!(
                "include cycle detected: {}",
                chain.join(" -> ")
            )));
        }
        stack.push(path.to_path_buf());
        let mut n = self.read(path)?;
        super::extends::apply_includes(self, &mut n, path, dir, stack)?;
        super::extends::apply_extends(self, &mut n, path, dir)?;
        stack.pop();
        Ok(n)
    }
}

pub fn load(opts: &LoadOptions) -> Result<Project, LoadError> {
    load_impl(opts, true)
}

/// `load` without the consistency checks (compose-go's `SkipConsistencyCheck`): no
/// reference, conflict or image/build checks. For fragments meant to be extended.
pub fn load_unchecked(opts: &LoadOptions) -> Result<Project, LoadError> {
    load_impl(opts, false)
}

fn load_impl(opts: &LoadOptions, consistency: bool) -> Result<Project, LoadError> {
    let cwd = convert::clean(&opts.working_dir);
    let pre_dir = opts
        .project_directory
        .as_ref()
        .map(|d| abs_from(&cwd, d))
        .unwrap_or_else(|| cwd.clone());
    // .env of the working (or given project) directory, or --env-file: read first, since it
    // may set COMPOSE_FILE, COMPOSE_PROJECT_NAME, COMPOSE_PROFILES.
    let mut dot: IndexMap<String, String> = IndexMap::new();
    let explicit_env = !opts.env_files.is_empty();
    if explicit_env {
        let files: Vec<PathBuf> = opts.env_files.iter().map(|f| abs_from(&cwd, f)).collect();
        read_env_files(&files, &opts.environment, &mut dot, false, true)?;
    } else {
        read_env_files(
            &[pre_dir.join(".env")],
            &opts.environment,
            &mut dot,
            false,
            false,
        )?;
    }
    let get = |k: &str| {
        opts.environment
            .get(k)
            .cloned()
            .or_else(|| dot.get(k).cloned())
            .filter(|v| !v.is_empty())
    };
    let files: Vec<PathBuf> = if !opts.files.is_empty() {
        opts.files
            .iter()
            .map(|f| {
                if f == Path::new("-") {
                    f.clone()
                } else {
                    abs_from(&cwd, f)
                }
            })
            .collect()
    } else if let Some(cf) = get("COMPOSE_FILE") {
        let sep = get("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|| ":".into());
        cf.split(sep.as_str())
            .filter(|s| !s.is_empty())
            .map(|f| abs_from(&pre_dir, Path::new(f)))
            .collect()
    } else {
        discover(&pre_dir).ok_or_else(|| {
            LoadError::Project(
                "no configuration file provided: not found (looked for compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml)".into(),
            )
        })?
    };
    let project_dir = match &opts.project_directory {
        Some(_) => pre_dir.clone(),
        None => {
            let first = &files[0];
            if first == Path::new("-") {
                cwd.clone()
            } else {
                first.parent().map(Path::to_path_buf).unwrap_or(cwd.clone())
            }
        }
    };
    // The project directory's own .env fills what is still unset.
    if !explicit_env && project_dir != pre_dir {
        read_env_files(
            &[project_dir.join(".env")],
            &opts.environment,
            &mut dot,
            true,
            false,
        )?;
    }
    let mut env = dot;
    for (k, v) in &opts.environment {
        env.insert(k.clone(), v.clone());
    }
    // As compose: ${COMPOSE_PROJECT_NAME} is the project's name while interpolating. `-p`
    // wins over the environment and .env; without either, the file's literal top-level
    // `name:` or the directory's name. That default is only seen by interpolation: it is
    // taken out again so that the name itself is still decided by `project_name`.
    const CPN: &str = "COMPOSE_PROJECT_NAME";
    let mut derived_name = false;
    if let Some(n) = &opts.project_name {
        env.insert(CPN.into(), n.clone());
    } else if env.get(CPN).is_none_or(|v| v.is_empty()) {
        let from_file = files
            .first()
            .filter(|f| *f != Path::new("-"))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|src| {
                super::yaml::parse(&src, &std::sync::Arc::from(""))
                    .ok()
                    .flatten()
            })
            .and_then(|root| {
                root.get("name")
                    .and_then(|n| n.scalar().map(str::to_string))
            })
            .filter(|n| !n.contains('$'))
            .map(|n| normalize_project_name(&n));
        let name = from_file.filter(|n| !n.is_empty()).unwrap_or_else(|| {
            normalize_project_name(
                &project_dir
                    .file_name()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default(),
            )
        });
        if !name.is_empty() {
            env.insert(CPN.into(), name);
            derived_name = true;
        }
    }
    let mut reader = Reader {
        opts,
        env,
        unset: Vec::new(),
        warnings: Vec::new(),
    };
    let mut merged: Option<Node> = None;
    for f in &files {
        let dir = if f == Path::new("-") {
            project_dir.clone()
        } else {
            f.parent()
                .map(Path::to_path_buf)
                .unwrap_or(project_dir.clone())
        };
        let mut n = reader.read_full(f, &dir, &mut Vec::new())?;
        if dir != project_dir {
            super::extends::absolutize(&mut n, &dir, reader.env.get("HOME").map(String::as_str));
        }
        merged = Some(match merged {
            None => n,
            Some(base) => super::merge::merge(base, n)?,
        });
    }
    let mut root = merged.expect("at least one file");
    super::merge::strip_reset(&mut root);
    super::merge::enforce_unicity(&mut root);
    if derived_name {
        reader.env.shift_remove(CPN);
    }
    let mut warnings = std::mem::take(&mut reader.warnings);
    let mut seen = Vec::new();
    for u in &reader.unset {
        if !seen.contains(u) {
            warnings.push(format!(
                "The {u:?} variable is not set. Defaulting to a blank string."
            ));
            seen.push(u.clone());
        }
    }
    build_project(
        opts,
        root,
        &project_dir,
        files,
        reader.env,
        warnings,
        consistency,
    )
}

/// Project name: `-p`, `COMPOSE_PROJECT_NAME`, top-level `name:`, the project dir's basename.
fn project_name(
    opts: &LoadOptions,
    root: &Node,
    project_dir: &Path,
    env: &IndexMap<String, String>,
) -> R<String> {
    let check = |n: &str| -> R<String> {
        if valid_project_name(n) {
            Ok(n.to_string())
        } else {
            Err(LoadError::Project(format!(
                "invalid project name {n:?}: must consist only of lowercase alphanumeric characters, hyphens, and underscores as well as start with a letter or number"
            )))
        }
    };
    if let Some(n) = &opts.project_name {
        return check(n);
    }
    if let Some(n) = env.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()) {
        return check(n);
    }
    if let Some(n) = root.get("name") {
        if let Some(s) = n.scalar() {
            let norm = normalize_project_name(s);
            if !norm.is_empty() {
                return Ok(norm);
            }
        }
    }
    let base = project_dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let norm = normalize_project_name(&base);
    if norm.is_empty() {
        return Err(LoadError::Project("project name must not be empty".into()));
    }
    Ok(norm)
}

/// Merged tree → model, with profiles, env_file resolution, defaults and reference checks.
pub(crate) fn build_project(
    opts: &LoadOptions,
    root: Node,
    project_dir: &Path,
    files: Vec<PathBuf>,
    env: IndexMap<String, String>,
    mut warnings: Vec<String>,
    consistency: bool,
) -> R<Project> {
    convert::check_keys(&root, "", convert::TOP_KEYS)?;
    if root.get("version").is_some() {
        warnings.push(
            "the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion".into(),
        );
    }
    let name = project_name(opts, &root, project_dir, &env)?;
    let mut cx = Cx {
        working_dir: project_dir,
        home: env
            .get("HOME")
            .cloned()
            .or_else(|| std::env::var("HOME").ok()),
        refs: Vec::new(),
        warnings: Vec::new(),
        port_marks: IndexMap::new(),
        service_marks: IndexMap::new(),
    };
    let mut p = Project {
        name: name.clone(),
        working_dir: project_dir.to_path_buf(),
        config_files: files,
        environment: env,
        ..Default::default()
    };
    let section = |key: &str| -> R<Vec<super::yaml::Entry>> {
        match root.get(key) {
            None => Ok(vec![]),
            Some(n) => match &n.v {
                V::Null => Ok(vec![]),
                V::Map(m) => Ok(m.clone()),
                _ => Err(LoadError::at(&n.mark, key, "must be a mapping")),
            },
        }
    };
    let mut all_services = IndexMap::new();
    for e in section("services")? {
        let svc = convert::service(&mut cx, &e.key, &e.val)?;
        all_services.insert(e.key.clone(), svc);
    }
    for e in section("networks")? {
        let path = format!("networks.{}", e.key);
        p.networks.insert(
            e.key.clone(),
            convert::network(&e.val, &path, &e.key, &name)?,
        );
    }
    for e in section("volumes")? {
        let path = format!("volumes.{}", e.key);
        p.volumes.insert(
            e.key.clone(),
            convert::volume(&cx, &e.val, &path, &e.key, &name)?,
        );
    }
    for e in section("secrets")? {
        let path = format!("secrets.{}", e.key);
        p.secrets.insert(
            e.key.clone(),
            convert::file_object(&cx, &e.val, &path, &e.key, &name, true)?,
        );
    }
    for e in section("configs")? {
        let path = format!("configs.{}", e.key);
        p.configs.insert(
            e.key.clone(),
            convert::file_object(&cx, &e.val, &path, &e.key, &name, false)?,
        );
    }

    // Profiles: a service is enabled when it has no profiles, one of them is active, or it is
    // named on the command line; dependencies of enabled services named explicitly follow.
    let mut active: Vec<String> = opts.profiles.clone();
    if active.is_empty() {
        if let Some(pv) = p.environment.get("COMPOSE_PROFILES") {
            active = pv
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    for s in &opts.services {
        if !all_services.contains_key(s) {
            return Err(LoadError::Project(format!("no such service: {s}")));
        }
    }
    let mut enabled: Vec<String> = all_services
        .iter()
        .filter(|(k, s)| {
            s.profiles.is_empty()
                || active.iter().any(|a| a == "*" || s.profiles.contains(a))
                || opts.services.contains(k)
        })
        .map(|(k, _)| k.clone())
        .collect();
    // Services named explicitly pull in their dependencies (compose's ForServices).
    let mut queue: Vec<String> = opts.services.clone();
    while let Some(s) = queue.pop() {
        if let Some(svc) = all_services.get(&s) {
            for dep in svc.depends_on.keys() {
                if all_services.contains_key(dep) && !enabled.contains(dep) {
                    enabled.push(dep.clone());
                    queue.push(dep.clone());
                }
            }
        }
    }
    for (k, s) in all_services {
        if enabled.contains(&k) {
            p.services.insert(k, s);
        } else {
            p.disabled_services.insert(k, s);
        }
    }
    p.profiles = active;

    if consistency {
        for (k, s) in &p.services {
            if s.image.is_none() && s.build.is_none() {
                let mark = cx.service_mark(k);
                return Err(LoadError::at(
                    &mark,
                    format!("services.{k}"),
                    format!("service {k:?} has neither an image nor a build context specified"),
                ));
            }
        }
        check_refs(&p, &cx.refs)?;
        check_conflicts(&p, &cx)?;
    }

    // Like docker compose, keep only the resources the enabled services use.
    if consistency && !opts.all_resources {
        drop_unused_resources(&mut p);
    }

    // The default network: services with neither networks nor network_mode join it.
    let mut need_default = false;
    for s in p.services.values_mut() {
        if s.networks.is_empty() && s.network_mode.is_none() {
            s.networks.insert("default".into(), None);
            need_default = true;
        } else if s.networks.contains_key("default") {
            need_default = true;
        }
    }
    if need_default && !p.networks.contains_key("default") {
        p.networks.insert(
            "default".into(),
            Network {
                name: format!("{name}_default"),
                ..Default::default()
            },
        );
    }

    // label_file contents under labels (labels win).
    for s in p.services.values_mut() {
        if s.label_file.is_empty() {
            continue;
        }
        let mut merged: IndexMap<String, String> = IndexMap::new();
        for f in &s.label_file {
            let src = std::fs::read_to_string(f).map_err(|e| LoadError::io(f, &e))?;
            let none = |_: &str| None;
            let parsed = super::dotenv::parse(&src, &none)
                .map_err(|e| LoadError::Project(format!("{}: {e}", f.display())))?;
            for (k, v) in parsed {
                merged.insert(k, v.unwrap_or_default());
            }
        }
        for (k, v) in std::mem::take(&mut s.labels) {
            merged.insert(k, v);
        }
        s.labels = merged;
    }

    // env_file contents into environment, for the selected services only (lazy, like compose).
    if opts.resolve_env_files {
        let selected: Vec<String> = if opts.services.is_empty() {
            p.services.keys().cloned().collect()
        } else {
            opts.services.clone()
        };
        for k in selected {
            if let Some(s) = p.services.get_mut(&k) {
                resolve_env_files(s, &p.environment)?;
                // Resolved into `environment`: compose drops the list then.
                s.env_file.clear();
            }
        }
    }

    sort_project(&mut p);
    warnings.extend(cx.warnings);
    p.warnings = warnings;
    Ok(p)
}

fn drop_unused_resources(p: &mut Project) {
    let mut nets = Vec::new();
    let mut vols = Vec::new();
    let mut secrets = Vec::new();
    let mut configs = Vec::new();
    for s in p.services.values() {
        nets.extend(s.networks.keys().cloned());
        if s.networks.is_empty() && s.network_mode.is_none() {
            nets.push("default".into());
        }
        for v in &s.volumes {
            if v.kind == "volume" {
                vols.extend(v.source.clone());
            }
        }
        secrets.extend(s.secrets.iter().map(|r| r.source.clone()));
        configs.extend(s.configs.iter().map(|r| r.source.clone()));
        if let Some(b) = &s.build {
            secrets.extend(b.secrets.iter().map(|r| r.source.clone()));
        }
    }
    p.networks.retain(|k, _| nets.contains(k));
    p.volumes.retain(|k, _| vols.contains(k));
    p.secrets.retain(|k, _| secrets.contains(k));
    p.configs.retain(|k, _| configs.contains(k));
}

/// Merge the service's env files under its `environment:` (which wins).
/// Then, like compose's environment resolution, a variable without a value takes the
/// project environment's value when there is one.
pub fn resolve_env_files(s: &mut Service, env: &IndexMap<String, String>) -> R<()> {
    read_service_env_files(s, env)?;
    for (k, v) in s.environment.iter_mut() {
        if v.is_none() {
            *v = env.get(k).cloned();
        }
    }
    if let Some(b) = s.build.as_mut() {
        for (k, v) in b.args.iter_mut() {
            if v.is_none() {
                *v = env.get(k).cloned();
            }
        }
    }
    Ok(())
}

fn read_service_env_files(s: &mut Service, env: &IndexMap<String, String>) -> R<()> {
    if s.env_file.is_empty() {
        return Ok(());
    }
    let mut merged: IndexMap<String, Option<String>> = IndexMap::new();
    for f in &s.env_file {
        let content = match std::fs::read_to_string(&f.path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !f.required => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Project(format!(
                    "env file {} not found: {}",
                    f.path.display(),
                    LoadError::io(&f.path, &e)
                )))
            }
            Err(e) => return Err(LoadError::io(&f.path, &e)),
        };
        let lookup = |k: &str| -> Option<String> {
            merged
                .get(k)
                .cloned()
                .flatten()
                .or_else(|| env.get(k).cloned())
        };
        let parsed = super::dotenv::parse(&content, &lookup)
            .map_err(|e| LoadError::Project(format!("{}: {e}", f.path.display())))?;
        for (k, v) in parsed {
            merged.insert(k, v);
        }
    }
    for (k, v) in std::mem::take(&mut s.environment) {
        merged.insert(k, v);
    }
    s.environment = merged;
    Ok(())
}

fn check_refs(p: &Project, refs: &[Ref]) -> R<()> {
    for r in refs {
        if !p.services.contains_key(&r.service) {
            continue;
        }
        let (ok, what) = match r.kind {
            // `required: false` only tolerates a dependency disabled by profiles (compose-go).
            RefKind::Service => (
                p.services.contains_key(&r.name)
                    || (!r.required && p.disabled_services.contains_key(&r.name)),
                "service",
            ),
            RefKind::Network => (
                r.name == "default" || p.networks.contains_key(&r.name),
                "network",
            ),
            RefKind::Volume => (p.volumes.contains_key(&r.name), "volume"),
            RefKind::Secret => (p.secrets.contains_key(&r.name), "secret"),
            RefKind::Config => (p.configs.contains_key(&r.name), "config"),
        };
        if ok {
            continue;
        }
        let msg = match r.kind {
            RefKind::Service if p.disabled_services.contains_key(&r.name) => format!(
                "service {:?} depends on undefined service {:?} (disabled by its profiles)",
                r.service, r.name
            ),
            RefKind::Service => format!(
                "service {:?} depends on undefined service {:?}",
                r.service, r.name
            ),
            _ => format!(
                "service {:?} refers to undefined {what} {:?}",
                r.service, r.name
            ),
        };
        return Err(LoadError::at(&r.mark, &r.path, msg));
    }
    Ok(())
}

/// Duplicate container names, published-port collisions inside the project.
fn check_conflicts(p: &Project, cx: &Cx) -> R<()> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    for (k, s) in &p.services {
        if let Some(cn) = &s.container_name {
            if let Some(other) = names.insert(cn, k) {
                let mark = cx.service_mark(k);
                return Err(LoadError::at(
                    &mark,
                    format!("services.{k}.container_name"),
                    format!("container name {cn:?} is already used by service {other:?}"),
                ));
            }
            if s.replicas() > 1 {
                let mark = cx.service_mark(k);
                return Err(LoadError::at(
                    &mark,
                    format!("services.{k}.container_name"),
                    format!("service {k:?} has container_name {cn:?} and more than one replica"),
                ));
            }
        }
    }
    // (host_ip, port, protocol) → service
    let mut used: HashMap<(String, u32, String), String> = HashMap::new();
    for (k, s) in &p.services {
        let marks = cx.port_marks.get(k);
        for (i, port) in s.ports.iter().enumerate() {
            let Some(pubs) = &port.published else {
                continue;
            };
            let (a, b) = match pubs.split_once('-') {
                Some((x, y)) => (x.parse::<u32>().ok(), y.parse::<u32>().ok()),
                None => (pubs.parse::<u32>().ok(), pubs.parse::<u32>().ok()),
            };
            let (Some(a), Some(b)) = (a, b) else {
                continue;
            };
            if a != b || port.mode == "host" && s.replicas() > 1 {
                // A range lets the engine pick one port per replica: no static collision.
                continue;
            }
            let ip = port.host_ip.clone().unwrap_or_default();
            let wildcard = ip.is_empty() || ip == "0.0.0.0" || ip == "::";
            let clash = used.iter().find(|((uip, up, uproto), _)| {
                *up == a
                    && *uproto == port.protocol
                    && (wildcard || uip.is_empty() || uip == "0.0.0.0" || uip == "::" || *uip == ip)
            });
            if let Some(((_, _, _), other)) = clash {
                let mark = marks
                    .and_then(|m| m.get(i))
                    .cloned()
                    .unwrap_or_else(|| Mark::synthetic(&Arc::from("")));
                let other = if other == k {
                    "the same service".to_string()
                } else {
                    format!("service {other:?}")
                };
                return Err(LoadError::at(
                    &mark,
                    format!("services.{k}.ports[{i}]"),
                    format!(
                        "published port {}{a}/{} is already used by {other}",
                        if ip.is_empty() {
                            String::new()
                        } else {
                            format!("{ip}:")
                        },
                        port.protocol
                    ),
                ));
            }
            used.insert((ip, a, port.protocol.clone()), k.clone());
        }
    }
    Ok(())
}

/// compose prints maps sorted by key (Go maps); lists keep their order.
fn sort_project(p: &mut Project) {
    p.services.sort_keys();
    p.networks.sort_keys();
    p.volumes.sort_keys();
    p.secrets.sort_keys();
    p.configs.sort_keys();
    for s in p.services.values_mut() {
        s.annotations.sort_keys();
        s.depends_on.sort_keys();
        s.environment.sort_keys();
        s.labels.sort_keys();
        s.networks.sort_keys();
        s.storage_opt.sort_keys();
        s.sysctls.sort_keys();
        s.ulimits.sort_keys();
        if let Some(b) = s.build.as_mut() {
            b.args.sort_keys();
            b.labels.sort_keys();
            b.additional_contexts.sort_keys();
        }
        if let Some(d) = s.deploy.as_mut() {
            d.labels.sort_keys();
        }
        if let Some(l) = s.logging.as_mut() {
            l.options.sort_keys();
        }
        for n in s.networks.values_mut().flatten() {
            n.driver_opts.sort_keys();
        }
    }
    for n in p.networks.values_mut() {
        n.driver_opts.sort_keys();
        n.labels.sort_keys();
        n.ipam.options.sort_keys();
        for c in &mut n.ipam.config {
            c.aux_addresses.sort_keys();
        }
    }
    for v in p.volumes.values_mut() {
        v.driver_opts.sort_keys();
        v.labels.sort_keys();
    }
    for o in p.secrets.values_mut().chain(p.configs.values_mut()) {
        o.labels.sort_keys();
    }
}

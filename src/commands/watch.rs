//! `berth watch [SERVICE...]`: the Compose Specification's `develop.watch`, as a foreground
//! client like `docker compose watch` (and `berth up --watch`, which runs the same loop next to
//! its attached logs). It brings the services up (unless `--no-up`), then follows the rules'
//! paths with inotify (the `notify` crate); a burst of edits becomes one action per service:
//! `sync` copies changed files into every running container of the service and removes deleted
//! ones (through the container's root, as `berth cp`), `sync+restart` then restarts the service
//! through its supervisor, `sync+exec` then runs the rule's command in each container, `restart`
//! only restarts, `rebuild` builds the service's image again (`commands/build.rs`, the code
//! `berth build` runs) and has the supervisor converge the service as `up` does after an image
//! change: a rolling, health-gated replacement with `deploy.update_config`, compose's recreate
//! without. A failed build is reported and leaves the running containers alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use notify::{RecursiveMode, Watcher};

use crate::cli::{ProjectOpts, RestartArgs, UpArgs, WatchArgs};
use crate::compose::model::{Project, WatchRule};
use crate::paths::Paths;
use crate::state::{ProjectSource, ProjectState, Status};
use crate::supervisor::client::Client;
use crate::supervisor::proto::{Request, UpOpts};

/// Quiet time that ends a burst of edits, and the longest a burst may hold an action back.
const QUIET: Duration = Duration::from_millis(100);
const MAX_HOLD: Duration = Duration::from_millis(600);

/// Editor droppings and VCS state compose never syncs.
const DEFAULT_IGNORES: &[&str] = &[".git/", "*~", "*.swp", "*.swx", ".#*", "#*#", "4913"];

pub struct ServiceRules {
    service: String,
    rules: Vec<WatchRule>,
    /// .dockerignore patterns of the service's build context, with that context.
    dockerignore: Option<(PathBuf, Vec<String>)>,
}

/// Actions under way (a restart or a rebuild replaces containers): attached `up --watch` does not
/// take a moment with no running container for the end of the stack.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Whether a watch action is replacing or restarting containers now.
pub fn busy() -> bool {
    BUSY.load(Ordering::SeqCst) > 0
}

/// Marks an action under way for as long as it lives.
struct Busy;

impl Busy {
    fn new() -> Busy {
        BUSY.fetch_add(1, Ordering::SeqCst);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the watch loop needs besides the rules.
pub struct Session {
    pub paths: Paths,
    pub project: String,
    /// How the project was given, for the `up` a rebuild sends to the supervisor.
    pub source: ProjectSource,
    /// Hide the sync lines.
    pub quiet: bool,
    /// Remove the image a rebuild replaced once nothing uses it (`--prune`).
    pub prune: bool,
}

/// The watch rules of `services` (all when empty). Errors for a named service that does not
/// exist and a `rebuild` rule on a service without `build:` (compose's checks).
pub fn select(project: &Project, services: &[String]) -> anyhow::Result<Vec<ServiceRules>> {
    for s in services {
        if !project.services.contains_key(s) {
            bail!("no such service: {s}");
        }
    }
    let mut watched = Vec::new();
    for (name, s) in &project.services {
        if !services.is_empty() && !services.contains(name) {
            continue;
        }
        let rules = s
            .develop
            .as_ref()
            .map(|d| d.watch.clone())
            .unwrap_or_default();
        if rules.is_empty() {
            continue;
        }
        if s.build.is_none() {
            if let Some(r) = rules.iter().find(|r| r.action == "rebuild") {
                bail!(
                    "service {name:?}: develop.watch action \"rebuild\" (path {}) needs a build section: there is no image to rebuild",
                    r.path
                );
            }
        }
        let dockerignore = s
            .build
            .as_ref()
            .and_then(|b| b.context.clone())
            .map(PathBuf::from)
            .and_then(|cx| {
                let text = std::fs::read_to_string(cx.join(".dockerignore")).ok()?;
                Some((cx, parse_ignore_file(&text)))
            });
        watched.push(ServiceRules {
            service: name.clone(),
            rules,
            dockerignore,
        });
    }
    Ok(watched)
}

/// The services these rules are for.
pub fn services(watched: &[ServiceRules]) -> Vec<String> {
    watched.iter().map(|w| w.service.clone()).collect()
}

pub fn run(p: &ProjectOpts, args: &WatchArgs) -> anyhow::Result<u8> {
    let source = crate::commands::up::source_from(p)?;
    let project = crate::engine::plan::load_model(&source, &[])?;
    let watched = select(&project, &args.services)?;
    if watched.is_empty() {
        bail!("none of the selected services is configured for watch, consider setting a 'develop' section");
    }
    if !args.no_up {
        let up = UpArgs {
            detach: true,
            services: services(&watched),
            ..Default::default()
        };
        let code = crate::commands::up::run(p, &up)?;
        if code != 0 {
            return Ok(code);
        }
    }
    let session = Session {
        paths: Paths::from_env(),
        project: project.name.clone(),
        source,
        quiet: args.quiet,
        prune: args.prune,
    };
    follow(&session, &watched)
}

/// Follow the rules' paths until the watcher fails: the initial syncs, "Watch enabled", then
/// one round of actions per burst of edits. A failed action is reported and watching goes on.
pub fn follow(s: &Session, watched: &[ServiceRules]) -> anyhow::Result<u8> {
    let (paths, name) = (&s.paths, &s.project);
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).context("starting the file watcher")?;
    let mut roots: Vec<PathBuf> = Vec::new();
    for w in watched {
        for r in &w.rules {
            let path = PathBuf::from(&r.path);
            if roots.contains(&path) {
                continue;
            }
            let mode = if path.is_dir() {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            // A file (or a path not made yet) is followed through its directory.
            let target = if path.is_dir() {
                path.clone()
            } else {
                path.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            watcher
                .watch(&target, mode)
                .with_context(|| format!("watching {}", target.display()))?;
            roots.push(path);
        }
    }

    // initial_sync: everything under the rule's path, once, before following edits.
    for w in watched {
        for r in w.rules.iter().filter(|r| r.wants_initial_sync()) {
            let files = walk(Path::new(&r.path));
            let batch: Vec<PathBuf> = files.into_iter().filter(|f| !is_ignored(w, r, f)).collect();
            if !batch.is_empty() {
                apply(paths, name, w, r, &batch, s.quiet)?;
            }
        }
    }
    status("Watch enabled");

    loop {
        // One burst: the first event, then whatever follows within QUIET of the last one.
        let first = match rx.recv() {
            Ok(ev) => ev,
            Err(_) => bail!("the file watcher stopped"),
        };
        let mut changed: Vec<PathBuf> = Vec::new();
        let mut take = |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for p in ev.paths {
                    if !changed.contains(&p) {
                        changed.push(p);
                    }
                }
            }
        };
        take(first);
        let started = Instant::now();
        while started.elapsed() < MAX_HOLD {
            match rx.recv_timeout(QUIET) {
                Ok(ev) => take(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the file watcher stopped"),
            }
        }
        let _busy = Busy::new();
        // Services whose image is built again this round: one build, one converge for all.
        let mut rebuild: Vec<String> = Vec::new();
        for w in watched {
            // Each changed path goes to the first rule of the service that covers it.
            let mut per_rule: BTreeMap<usize, Vec<PathBuf>> = BTreeMap::new();
            for c in &changed {
                if let Some(i) = w
                    .rules
                    .iter()
                    .position(|r| covers(r, c) && !is_ignored(w, r, c))
                {
                    per_rule.entry(i).or_default().push(c.clone());
                }
            }
            for (i, batch) in per_rule {
                if w.rules[i].action == "rebuild" {
                    if !rebuild.contains(&w.service) {
                        rebuild.push(w.service.clone());
                    }
                    continue;
                }
                if let Err(e) = apply(paths, name, w, &w.rules[i], &batch, s.quiet) {
                    // A failed action is reported; watching goes on (as compose does).
                    eprintln!("{}", crate::commands::render_error(&e));
                }
            }
        }
        if !rebuild.is_empty() {
            if let Err(e) = rebuild_services(s, &rebuild) {
                eprintln!("{}", crate::commands::render_error(&e));
            }
            // Edits made while the build ran were read by it or come as events of their own.
        }
    }
}

/// `rebuild`: build the services' images again, then have the supervisor converge them as
/// `up` would after an image change (their dependencies are left alone). A failed build stops
/// here, before the supervisor is asked anything: the running replicas stay as they are.
fn rebuild_services(s: &Session, services: &[String]) -> anyhow::Result<()> {
    status(&format!(
        "Rebuilding service(s) {services:?} after changes were detected..."
    ));
    let model = crate::engine::plan::load_model(&s.source, services)?;
    let jobs = crate::commands::build::jobs(&model, services, &BTreeMap::new())?;
    let store = berth_runtime::image::ImageStore::open(&s.paths.images())?;
    let mut before: BTreeSet<String> = BTreeSet::new();
    for j in &jobs {
        if let Some(img) = store.get(&j.image)? {
            before.insert(img.id);
        }
    }
    let mode = crate::commands::build::ProgressMode::from_flag(None, false)?;
    let ids = build_keeping_sigint(&s.paths, &jobs, mode).map_err(|e| {
        anyhow!(
            "Build failed for service(s) {services:?}; the running containers are unchanged.\n{e:#}"
        )
    })?;
    status(&format!("service(s) {services:?} successfully built"));
    let client = Client::connect_or_start(&s.paths, &s.project)?;
    crate::commands::up::call(
        client,
        &Request::Up {
            source: s.source.clone(),
            opts: UpOpts {
                services: services.to_vec(),
                no_deps: true,
                ..Default::default()
            },
        },
        "Running",
        false,
    )?;
    if s.prune {
        prune_replaced(&store, &before, &ids);
    }
    Ok(())
}

/// `--prune`: the images a rebuild replaced, once untagged and used by no container (a replica
/// still being retired keeps its image; `berth image prune` takes it later).
fn prune_replaced(
    store: &berth_runtime::image::ImageStore,
    before: &BTreeSet<String>,
    now: &[String],
) {
    let Ok(list) = store.list() else { return };
    for old in before.iter().filter(|id| !now.contains(id)) {
        let dangling = list
            .iter()
            .any(|i| &i.id == old && i.repo_tags.is_empty() && i.repo_digests.is_empty());
        if dangling {
            let _ = store.remove(old);
        }
    }
}

/// The builder takes SIGINT while it runs (a RUN is stopped cleanly); the handler that was there
/// before (`up`'s, or the default) comes back afterwards and gets a Ctrl-C that stopped the build.
fn build_keeping_sigint(
    paths: &Paths,
    jobs: &[crate::commands::build::Job],
    mode: crate::commands::build::ProgressMode,
) -> anyhow::Result<Vec<String>> {
    // SAFETY: signal() swaps the process's handler; reading the previous one back at once.
    let prev = unsafe {
        let prev = libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGINT, prev);
        prev
    };
    let r = crate::commands::build::run_jobs(paths, jobs, mode);
    // SAFETY: restoring the handler read above; raise() delivers to this thread.
    unsafe {
        libc::signal(libc::SIGINT, prev);
        if crate::build::exec::INTERRUPTED.swap(false, Ordering::SeqCst) {
            libc::raise(libc::SIGINT);
        }
    }
    r
}

fn status(msg: &str) {
    eprintln!("\u{29bf} {msg}");
}

/// The rule's path is the changed path or one of its ancestors.
fn covers(r: &WatchRule, changed: &Path) -> bool {
    changed.starts_with(&r.path)
}

fn is_ignored(w: &ServiceRules, r: &WatchRule, changed: &Path) -> bool {
    let base = Path::new(&r.path);
    let rel = changed.strip_prefix(base).unwrap_or(changed);
    let rel_s = rel.to_string_lossy();
    if let Some(name) = changed.file_name().map(|n| n.to_string_lossy().to_string()) {
        if DEFAULT_IGNORES.iter().any(|p| glob_match(p, &name)) {
            return true;
        }
    }
    if changed.components().any(|c| c.as_os_str() == ".git") {
        return true;
    }
    if !r.include.is_empty() && !rel_s.is_empty() && !matches_list(&r.include, &rel_s) {
        return true;
    }
    if !rel_s.is_empty() && matches_list(&r.ignore, &rel_s) {
        return true;
    }
    if let Some((cx, pats)) = &w.dockerignore {
        if let Ok(rel) = changed.strip_prefix(cx) {
            let rel = rel.to_string_lossy();
            if !rel.is_empty() && matches_list(pats, &rel) {
                return true;
            }
        }
    }
    false
}

/// Act on one rule for a burst of changed paths.
fn apply(
    paths: &Paths,
    project: &str,
    w: &ServiceRules,
    r: &WatchRule,
    changed: &[PathBuf],
    quiet: bool,
) -> anyhow::Result<()> {
    let st = ProjectState::load(paths, project)?
        .ok_or_else(|| anyhow!("project {project} is not up"))?;
    let containers: Vec<_> = st
        .containers
        .iter()
        .filter(|c| c.service == w.service && !c.oneoff)
        .filter(|c| crate::commands::ps::live_status(c) == Status::Running)
        .collect();
    if r.action.starts_with("sync") {
        let target = r.target.as_deref().unwrap_or("/");
        if !quiet {
            status(&format!(
                "Syncing service {:?} after {} changes were detected",
                w.service,
                changed.len()
            ));
        }
        for c in &containers {
            let Some(pid) = c.pid else { continue };
            let root = berth_runtime::copy::container_root(pid)?;
            for f in changed {
                let rel = f.strip_prefix(&r.path).unwrap_or(Path::new(""));
                if rel.as_os_str().is_empty() && f.is_dir() {
                    continue; // the watched directory itself: its entries come one by one
                }
                let dest = if rel.as_os_str().is_empty() {
                    target.to_string()
                } else {
                    format!("{}/{}", target.trim_end_matches('/'), rel.display())
                };
                if std::fs::symlink_metadata(f).is_ok() {
                    berth_runtime::copy::sync_in(&root, f, &dest)
                        .with_context(|| format!("syncing {} to {}:{dest}", f.display(), c.name))?;
                } else {
                    berth_runtime::copy::remove_in(&root, &dest)
                        .with_context(|| format!("removing {}:{dest}", c.name))?;
                }
            }
        }
    }
    match r.action.as_str() {
        "sync+restart" | "restart" => {
            status(&format!(
                "Restarting service {:?} after changes were detected",
                w.service
            ));
            let po = ProjectOpts {
                project_name: Some(project.to_string()),
                ..Default::default()
            };
            crate::commands::lifecycle::restart(
                &po,
                &RestartArgs {
                    timeout: None,
                    // compose watch restarts the service alone, not what depends on it.
                    no_deps: true,
                    services: vec![w.service.clone()],
                },
            )?;
        }
        "sync+exec" => {
            let x = r
                .exec
                .as_ref()
                .ok_or_else(|| anyhow!("sync+exec without exec"))?;
            for c in &containers {
                let mut cmd = std::process::Command::new(crate::engine::runtime::self_exe());
                cmd.arg("__runtime")
                    .arg("--root")
                    .arg(paths.runtime_root())
                    .arg("exec");
                if let Some(u) = &x.user {
                    cmd.arg("--user").arg(u);
                }
                if let Some(wd) = &x.working_dir {
                    cmd.arg("--cwd").arg(wd);
                }
                for (k, v) in &x.environment {
                    cmd.arg("--env").arg(match v {
                        Some(v) => format!("{k}={v}"),
                        None => format!("{k}={}", std::env::var(k).unwrap_or_default()),
                    });
                }
                if x.privileged {
                    cmd.arg("--cap").arg("ALL");
                }
                cmd.arg(&c.name).args(&x.command);
                let st = cmd
                    .stdin(std::process::Stdio::null())
                    .status()
                    .context("running the watch exec command")?;
                if !st.success() {
                    eprintln!("{}: exec {:?} ended with {st}", c.name, x.command.join(" "));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every file and directory under `p` (p itself when it is a file).
fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    stack.push(e.path());
                }
            }
            if d != p {
                out.push(d);
            }
        } else {
            out.push(d);
        }
    }
    out.sort();
    out
}

/// `.dockerignore` lines: comments and blanks dropped.
fn parse_ignore_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// dockerignore semantics: patterns in order, `!` re-includes, the last match wins; a pattern
/// matches a path or any of its parent directories.
fn matches_list(patterns: &[String], rel: &str) -> bool {
    let mut hit = false;
    for p in patterns {
        let (neg, pat) = match p.strip_prefix('!') {
            Some(x) => (true, x),
            None => (false, p.as_str()),
        };
        let pat = pat.trim_start_matches("./").trim_start_matches('/');
        let pat = pat.trim_end_matches('/');
        if pat.is_empty() {
            continue;
        }
        if path_or_parent_matches(pat, rel) {
            hit = !neg;
        }
    }
    hit
}

fn path_or_parent_matches(pat: &str, rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    (1..=parts.len()).any(|n| glob_match(pat, &parts[..n].join("/")))
}

/// Glob over a relative path: `*` and `?` within a segment, `**` across segments.
fn glob_match(pat: &str, path: &str) -> bool {
    let ps: Vec<&str> = pat.split('/').collect();
    let xs: Vec<&str> = path.split('/').collect();
    segs_match(&ps, &xs)
}

fn segs_match(ps: &[&str], xs: &[&str]) -> bool {
    match ps.first() {
        None => xs.is_empty(),
        Some(&"**") => (0..=xs.len()).any(|i| segs_match(&ps[1..], &xs[i..])),
        Some(p) => {
            !xs.is_empty()
                && seg_match(p.as_bytes(), xs[0].as_bytes())
                && segs_match(&ps[1..], &xs[1..])
        }
    }
}

fn seg_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| seg_match(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && seg_match(&p[1..], &s[1..]),
        Some(b'\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && seg_match(&p[2..], &s[1..]),
        Some(c) => !s.is_empty() && s[0] == *c && seg_match(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_patterns_follow_dockerignore() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches_list(&p(&["node_modules/"]), "node_modules/a/b.js"));
        assert!(!matches_list(&p(&["node_modules/"]), "src/node_modules_x"));
        assert!(matches_list(&p(&["*.log"]), "x.log"));
        assert!(!matches_list(&p(&["*.log"]), "dir/x.log"));
        assert!(matches_list(&p(&["**/*.log"]), "dir/sub/x.log"));
        assert!(matches_list(&p(&["**/*.log"]), "x.log"));
        assert!(matches_list(&p(&["build", "!build/keep"]), "build/out"));
        assert!(!matches_list(&p(&["build", "!build/keep"]), "build/keep"));
        assert!(matches_list(&p(&["/tmp?"]), "tmp1/x"));
        assert!(!matches_list(&p(&["tmp?"]), "tmp12"));
        assert_eq!(
            parse_ignore_file("# c\n\nnode_modules\n *.tmp \n"),
            vec!["node_modules", "*.tmp"]
        );
    }

    fn project(yaml: &str) -> (tempfile::TempDir, Project) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("app")).unwrap();
        std::fs::write(d.path().join("app/.dockerignore"), "*.log\n").unwrap();
        std::fs::write(d.path().join("compose.yaml"), yaml).unwrap();
        let opts = crate::compose::LoadOptions {
            interpolate: true,
            working_dir: d.path().to_path_buf(),
            resolve_env_files: true,
            ..Default::default()
        };
        let p = crate::compose::load(&opts).unwrap_or_else(|e| panic!("{e}"));
        (d, p)
    }

    #[test]
    fn select_takes_services_with_rules_and_checks_rebuild() {
        let (d, p) = project(
            "name: w\nservices:\n  web:\n    build: ./app\n    develop:\n      watch:\n        - {action: rebuild, path: ./app}\n  db:\n    image: x\n  side:\n    image: x\n    develop:\n      watch:\n        - {action: sync, path: ./s, target: /s}\n",
        );
        let all = select(&p, &[]).unwrap();
        assert_eq!(services(&all), vec!["side", "web"]);
        // The rebuild rule's path is absolute, and the build context's .dockerignore applies.
        let web = &all[1];
        assert_eq!(web.rules[0].path, d.path().join("app").to_string_lossy());
        assert!(is_ignored(web, &web.rules[0], &d.path().join("app/x.log")));
        assert!(!is_ignored(
            web,
            &web.rules[0],
            &d.path().join("app/index.html")
        ));
        assert_eq!(
            services(&select(&p, &["side".into()]).unwrap()),
            vec!["side"]
        );
        assert!(select(&p, &["db".into()]).unwrap().is_empty());
        let e = select(&p, &["nope".into()]).err().unwrap().to_string();
        assert!(e.contains("no such service: nope"), "{e}");
        // rebuild needs something to build.
        let (_d, p) = project(
            "name: w\nservices:\n  web:\n    image: x\n    develop:\n      watch:\n        - {action: rebuild, path: ./app}\n",
        );
        let e = select(&p, &[]).err().unwrap().to_string();
        assert!(
            e.contains("\"web\"") && e.contains("needs a build section"),
            "{e}"
        );
    }

    #[test]
    fn rules_cover_their_path_and_skip_editor_files() {
        let r = WatchRule {
            action: "sync".into(),
            path: "/p/src".into(),
            target: Some("/app".into()),
            ignore: vec!["gen/".into()],
            ..Default::default()
        };
        let w = ServiceRules {
            service: "web".into(),
            rules: vec![r.clone()],
            dockerignore: Some((PathBuf::from("/p"), vec!["src/secret.txt".into()])),
        };
        assert!(covers(&r, Path::new("/p/src/a.js")));
        assert!(!covers(&r, Path::new("/p/srcx/a.js")));
        assert!(!is_ignored(&w, &r, Path::new("/p/src/a.js")));
        assert!(is_ignored(&w, &r, Path::new("/p/src/gen/x.js")));
        assert!(is_ignored(&w, &r, Path::new("/p/src/.a.js.swp")));
        assert!(is_ignored(&w, &r, Path::new("/p/src/a.js~")));
        assert!(is_ignored(&w, &r, Path::new("/p/src/.git/HEAD")));
        assert!(is_ignored(&w, &r, Path::new("/p/src/secret.txt")));
        let mut inc = r.clone();
        inc.include = vec!["*.js".into()];
        assert!(!is_ignored(&w, &inc, Path::new("/p/src/a.js")));
        assert!(is_ignored(&w, &inc, Path::new("/p/src/a.css")));
    }
}

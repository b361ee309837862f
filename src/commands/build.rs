//! `berth build`, the builds `up` does first (`--build`, `pull_policy: build`, missing images),
//! and `builder prune`. Services sharing an image build once; independent builds run in
//! parallel threads (each RUN is a re-exec of this binary, so no process forks while threads
//! run Rust code).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};

use crate::build::exec::{
    self, BuildOptions, CacheSource, Event, NamedContext, Network, SecretSource, SshSource,
};
use crate::cli::{BuildArgs, ProjectOpts};
use crate::compose::model::{Project, Service};
use crate::paths::Paths;

/// How build progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line per finished step (BuildKit's terminal look, without redrawing).
    Tty,
    /// Every step's start, RUN output and end, `#N`-prefixed (BuildKit's plain output).
    Plain,
    Quiet,
}

impl ProgressMode {
    pub fn from_flag(flag: Option<&str>, quiet: bool) -> anyhow::Result<ProgressMode> {
        if quiet {
            return Ok(ProgressMode::Quiet);
        }
        Ok(match flag.unwrap_or("auto") {
            "auto" | "tty" => {
                if flag == Some("tty") || console::Term::stderr().is_term() {
                    ProgressMode::Tty
                } else {
                    ProgressMode::Plain
                }
            }
            "plain" => ProgressMode::Plain,
            "quiet" => ProgressMode::Quiet,
            o => bail!("invalid --progress {o:?}: use auto, tty, plain or quiet"),
        })
    }
}

/// One image to build, and the services that use it.
#[derive(Debug, Clone)]
pub struct Job {
    pub image: String,
    pub services: Vec<String>,
    pub opts: BuildOptions,
}

/// The image name a service with `build:` gets: `image:` or `<project>-<service>`.
pub fn image_name(project: &Project, s: &Service) -> String {
    s.image
        .clone()
        .unwrap_or_else(|| format!("{}-{}", project.name, s.name))
}

fn options_for(
    project: &Project,
    s: &Service,
    cli_args: &BTreeMap<String, String>,
) -> anyhow::Result<BuildOptions> {
    let b = s.build.as_ref().expect("a build section");
    // `file:line:col: services.NAME.build.KEY` where the key was written.
    let prefix = format!("services.{}.build.", s.name);
    let what = |k: &str| b.at.key(&prefix, k);
    let context = b.context.clone().unwrap_or_else(|| ".".into());
    if context.contains("://") || context.starts_with("git@") || context.ends_with(".git") {
        bail!(
            "{}: {context} is a remote context; berth builds from a local directory only",
            what("context")
        );
    }
    if context.starts_with("service:") {
        bail!(
            "{}: {context}: service contexts are not supported",
            what("context")
        );
    }
    let context = PathBuf::from(&context);
    if !context.is_dir() {
        bail!(
            "{}: {} is not a directory",
            what("context"),
            context.display()
        );
    }
    let mut args = BTreeMap::new();
    for (k, v) in &b.args {
        match v {
            Some(v) => {
                args.insert(k.clone(), v.clone());
            }
            // A bare key takes its value from the environment, or is left unset.
            None => {
                if let Some(v) = project.environment.get(k) {
                    args.insert(k.clone(), v.clone());
                }
            }
        }
    }
    for (k, v) in cli_args {
        args.insert(k.clone(), v.clone());
    }
    let network = match b.network.as_deref() {
        None | Some("default") | Some("none") => Network::Isolated,
        Some("host") => Network::Host,
        Some(o) => bail!(
            "{}: {o:?}: berth builds with network none (the default, offline) or host",
            what("network")
        ),
    };
    let mut secrets = BTreeMap::new();
    for r in &b.secrets {
        let def = project
            .secrets
            .get(&r.source)
            .ok_or_else(|| anyhow!("{}: secret {:?} is not defined", what("secrets"), r.source))?;
        let src = match (&def.file, &def.environment, &def.content) {
            (Some(f), _, _) => SecretSource::File(f.clone()),
            (None, Some(e), _) => SecretSource::Content(
                project
                    .environment
                    .get(e)
                    .cloned()
                    .or_else(|| std::env::var(e).ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: secret {:?}: ${e} is not set",
                            what("secrets"),
                            r.source
                        )
                    })?
                    .into_bytes(),
            ),
            (None, None, Some(c)) => SecretSource::Content(c.clone().into_bytes()),
            _ => bail!("{}: secret {:?} has no source", what("secrets"), r.source),
        };
        // `target` names the secret's id in the Dockerfile (the loader may have filled in a
        // service-style default path, which is not an id).
        let id = r
            .target
            .clone()
            .filter(|t| !t.starts_with('/'))
            .unwrap_or_else(|| r.source.clone());
        secrets.insert(id, src);
    }
    let mut extra_hosts = Vec::new();
    for (name, ip) in &b.extra_hosts.0 {
        extra_hosts.push((name.clone(), ip.clone()));
    }
    let mut tags = vec![image_name(project, s)];
    for t in &b.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    Ok(BuildOptions {
        context,
        dockerfile: b.dockerfile.clone().map(PathBuf::from),
        inline: b.dockerfile_inline.clone(),
        target: b.target.clone(),
        args,
        labels: b
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tags,
        no_cache: b.no_cache,
        pull: b.pull,
        network,
        secrets,
        extra_hosts,
        shm_size: b.shm_size,
        contexts: named_contexts(project, s, &what)?,
        cache_from: cache_from(project, s, &what)?,
        cache_to: cache_to(project, s, &what)?,
        ssh: ssh_sources(project, &b.ssh, &what("ssh"))?,
    })
}

/// `additional_contexts`: a directory, `docker-image://REF` or `service:NAME` (the image that
/// service builds, built first). Remote (git/URL) and `oci-layout://` contexts are refused.
fn named_contexts(
    project: &Project,
    s: &Service,
    what: &dyn Fn(&str) -> String,
) -> anyhow::Result<BTreeMap<String, NamedContext>> {
    let b = s.build.as_ref().expect("a build section");
    let mut out = BTreeMap::new();
    for (name, v) in &b.additional_contexts {
        let c = if let Some(r) = v.strip_prefix("docker-image://") {
            NamedContext::Image(r.to_string())
        } else if let Some(svc) = v.strip_prefix("service:") {
            let other = project.services.get(svc).ok_or_else(|| {
                anyhow!(
                    "{}: {name}: service {svc:?} does not exist",
                    what("additional_contexts")
                )
            })?;
            if other.build.is_none() {
                bail!(
                    "{}: {name}: service {svc:?} has no build section",
                    what("additional_contexts")
                );
            }
            NamedContext::Image(image_name(project, other))
        } else if v.contains("://") || v.starts_with("git@") || v.ends_with(".git") {
            bail!(
                "{}: {name}: {v} is a remote context; berth builds from local directories and \
                 images only (docker-image://, service:)",
                what("additional_contexts")
            );
        } else {
            let p = PathBuf::from(v);
            if !p.is_dir() {
                bail!(
                    "{}: {name}: {} is not a directory",
                    what("additional_contexts"),
                    p.display()
                );
            }
            NamedContext::Dir(p)
        };
        out.insert(name.clone(), c);
    }
    Ok(out)
}

/// `type=..,k=v` options of a cache entry; `None` for a bare image reference.
fn cache_opts(entry: &str) -> Option<BTreeMap<String, String>> {
    if !entry.contains('=') {
        return None;
    }
    Some(
        entry
            .split(',')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => (kv.trim().to_string(), String::new()),
            })
            .collect(),
    )
}

fn project_path(project: &Project, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        project.working_dir.join(p)
    }
}

/// `cache_from`: `type=local,src=DIR` and image references (bare, or `type=registry,ref=R`,
/// read as the image: berth's images carry their cache records). Other types (gha, s3, azblob)
/// are warned about and ignored: a cache source only saves work, the build is the same
/// without it (BuildKit, too, goes on when a cache source cannot be imported).
fn cache_from(
    project: &Project,
    s: &Service,
    what: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<CacheSource>> {
    let b = s.build.as_ref().expect("a build section");
    let mut out = Vec::new();
    for e in &b.cache_from {
        let Some(o) = cache_opts(e) else {
            out.push(CacheSource::Image(e.clone()));
            continue;
        };
        match o.get("type").map(String::as_str).unwrap_or("registry") {
            "local" => {
                let src = o.get("src").ok_or_else(|| {
                    anyhow!("{}: {e}: type=local needs src=DIR", what("cache_from"))
                })?;
                out.push(CacheSource::Local(project_path(project, src)));
            }
            "registry" => match o.get("ref") {
                Some(r) => out.push(CacheSource::Image(r.clone())),
                None => bail!("{}: {e}: type=registry needs ref=IMAGE", what("cache_from")),
            },
            t => eprintln!(
                "warning: {}: {e}: cache type {t} is not supported by berth's builder; \
                 ignored (the build runs without this cache source)",
                what("cache_from")
            ),
        }
    }
    Ok(out)
}

/// `cache_to`: `type=local,dest=DIR` exports; `type=inline` is what berth's images always
/// carry. Any other type is an error: the user asked for a cache to be written where berth
/// cannot write it, and finding it missing later is worse (BuildKit's docker driver refuses
/// cache export the same way).
fn cache_to(
    project: &Project,
    s: &Service,
    what: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<PathBuf>> {
    let b = s.build.as_ref().expect("a build section");
    let mut out = Vec::new();
    for e in &b.cache_to {
        let o = cache_opts(e).unwrap_or_default();
        match o.get("type").map(String::as_str) {
            Some("local") => {
                let dest = o.get("dest").ok_or_else(|| {
                    anyhow!("{}: {e}: type=local needs dest=DIR", what("cache_to"))
                })?;
                if let Some(m) = o.get("mode") {
                    if m != "min" && m != "max" {
                        bail!("{}: {e}: mode={m}: use min or max", what("cache_to"));
                    }
                }
                out.push(project_path(project, dest));
            }
            Some("inline") => {}
            t => bail!(
                "{}: {e}: cache export type {} is not supported by berth's builder (use \
                 type=local,dest=DIR, or type=inline: berth's images carry their cache records)",
                what("cache_to"),
                t.unwrap_or("(none)")
            ),
        }
    }
    Ok(out)
}

/// `ssh`: `default` (`$SSH_AUTH_SOCK`), `ID` alone (the same), or `ID=PATH[,PATH]` where each
/// path is an agent socket or a private key file (the build then runs its own `ssh-agent`).
fn ssh_sources(
    project: &Project,
    list: &[String],
    what: &str,
) -> anyhow::Result<BTreeMap<String, SshSource>> {
    let mut out = BTreeMap::new();
    for e in list {
        let (id, paths) = match e.split_once('=') {
            Some((id, p)) if !p.is_empty() => (id.to_string(), Some(p.to_string())),
            Some((id, _)) => (id.to_string(), None),
            None => (e.clone(), None),
        };
        let src = match paths {
            None => {
                let sock = std::env::var("SSH_AUTH_SOCK")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        anyhow!(
                            "{what}: {e}: forwarding the ssh agent needs $SSH_AUTH_SOCK, which \
                             is not set (start ssh-agent, or give id=/path/to/key)"
                        )
                    })?;
                SshSource::Socket(PathBuf::from(sock))
            }
            Some(p) => {
                let paths: Vec<PathBuf> = p.split(',').map(|x| project_path(project, x)).collect();
                use std::os::unix::fs::FileTypeExt;
                let mut keys = Vec::new();
                let mut socket = None;
                for x in &paths {
                    let m = std::fs::metadata(x)
                        .with_context(|| format!("{what}: {e}: {}", x.display()))?;
                    if m.file_type().is_socket() {
                        socket = Some(x.clone());
                    } else {
                        keys.push(x.clone());
                    }
                }
                match (socket, keys.is_empty()) {
                    (Some(s), true) if paths.len() == 1 => SshSource::Socket(s),
                    (None, false) => SshSource::Keys(keys),
                    _ => bail!("{what}: {e}: give one agent socket or key files, not both"),
                }
            }
        };
        out.insert(id, src);
    }
    Ok(out)
}

/// The builds for `services` (all with `build:` if empty), one per image.
pub fn jobs(
    project: &Project,
    services: &[String],
    cli_args: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Job>> {
    for s in services {
        if !project.services.contains_key(s) {
            bail!("no such service: {s}");
        }
    }
    // `additional_contexts: {x: service:NAME}` needs NAME's image: build it too.
    let mut services = services.to_vec();
    if !services.is_empty() {
        let mut i = 0;
        while i < services.len() {
            if let Some(b) = project
                .services
                .get(&services[i])
                .and_then(|s| s.build.as_ref())
            {
                for v in b.additional_contexts.values() {
                    if let Some(d) = v.strip_prefix("service:") {
                        if project.services.contains_key(d) && !services.iter().any(|x| x == d) {
                            services.push(d.to_string());
                        }
                    }
                }
            }
            i += 1;
        }
    }
    let services = &services;
    let mut out: Vec<Job> = Vec::new();
    for (name, s) in &project.services {
        if (!services.is_empty() && !services.contains(name)) || s.build.is_none() {
            continue;
        }
        let image = image_name(project, s);
        if let Some(j) = out.iter_mut().find(|j| j.image == image) {
            j.services.push(name.clone());
            continue;
        }
        out.push(Job {
            image,
            services: vec![name.clone()],
            opts: options_for(project, s, cli_args)?,
        });
    }
    Ok(out)
}

extern "C" fn on_sigint(_: libc::c_int) {
    exec::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Ctrl-C stops the build cleanly (snapshots unmounted, namespaces removed) instead of killing
/// berth in the middle of a step. A caught signal is reset by exec, so the runtime child still
/// receives and forwards it to the RUN.
fn install_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// Run the builds, independent ones in parallel; returns the image ids (in job order).
pub fn run_jobs(paths: &Paths, jobs: &[Job], mode: ProgressMode) -> anyhow::Result<Vec<String>> {
    if jobs.is_empty() {
        return Ok(vec![]);
    }
    install_sigint();
    let out = Mutex::new(());
    // A job whose `additional_contexts` name another job's image (`service:`) waits for it:
    // the jobs run in waves, each wave's builds in parallel.
    let deps: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| {
            j.opts
                .contexts
                .values()
                .filter_map(|c| match c {
                    NamedContext::Image(r) => jobs.iter().position(|o| &o.image == r),
                    NamedContext::Dir(_) => None,
                })
                .collect()
        })
        .collect();
    let mut slots: Vec<Option<anyhow::Result<exec::Outcome>>> = jobs.iter().map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        let wave: Vec<usize> = (0..jobs.len())
            .filter(|&i| slots[i].is_none())
            .filter(|&i| deps[i].iter().all(|&d| d != i && slots[d].is_some()))
            .collect();
        if wave.is_empty() {
            for s in slots.iter_mut().filter(|s| s.is_none()) {
                *s = Some(Err(anyhow!(
                    "additional_contexts: service images depend on each other in a cycle"
                )));
            }
            break;
        }
        let results: Vec<anyhow::Result<exec::Outcome>> = std::thread::scope(|sc| {
            let handles: Vec<_> = wave
                .iter()
                .map(|&i| {
                    let j = &jobs[i];
                    let out = &out;
                    let failed_dep = deps[i]
                        .iter()
                        .find(|&&d| matches!(slots[d], Some(Err(_))))
                        .map(|&d| jobs[d].image.clone());
                    sc.spawn(move || {
                        if let Some(d) = failed_dep {
                            bail!("its context image {d} failed to build");
                        }
                        let label = j.services.join(",");
                        let mut show = |e: Event| print_event(out, mode, &label, e);
                        exec::build(paths, &j.opts, &mut show)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a build thread panicked")))
                })
                .collect()
        });
        for (i, r) in wave.into_iter().zip(results) {
            slots[i] = Some(r);
        }
    }
    let results: Vec<anyhow::Result<exec::Outcome>> = slots
        .into_iter()
        .map(|s| s.expect("every job ran"))
        .collect();
    // Layers only the cache names are kept from prune until `builder prune`.
    if let Ok(store) = berth_runtime::image::ImageStore::open(&paths.images()) {
        let _ = store.hold_layers("build-cache", &exec::cached_layers(paths));
    }
    let mut ids = Vec::new();
    let mut errs = Vec::new();
    for (j, r) in jobs.iter().zip(results) {
        match r {
            Ok(o) => {
                if mode != ProgressMode::Quiet {
                    eprintln!(
                        " ✔ Image {} Built ({}, {} RUN executed, {} step(s) cached)",
                        j.image,
                        &o.id.trim_start_matches("sha256:")[..12],
                        o.runs,
                        o.cached
                    );
                }
                ids.push(o.id);
            }
            Err(e) => errs.push(format!(
                "building {} (service {}): {e:#}",
                j.image,
                j.services.join(", ")
            )),
        }
    }
    if !errs.is_empty() {
        bail!("{}", errs.join("\n"));
    }
    Ok(ids)
}

fn print_event(lock: &Mutex<()>, mode: ProgressMode, label: &str, e: Event) {
    let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut err = std::io::stderr().lock();
    thread_local! {
        static STEPS: std::cell::RefCell<BTreeMap<usize, (String, bool)>> = Default::default();
    }
    match (mode, e) {
        (ProgressMode::Quiet, _) => {}
        (
            ProgressMode::Plain,
            Event::Step {
                id,
                stage,
                n,
                total,
                text,
            },
        ) => {
            let _ = writeln!(err, "#{id} [{label} {stage} {n}/{total}] {text}");
        }
        (ProgressMode::Plain, Event::Cached { id }) => {
            let _ = writeln!(err, "#{id} CACHED");
        }
        (ProgressMode::Plain, Event::Output { id, text }) => {
            for l in text.lines() {
                let _ = writeln!(err, "#{id} {l}");
            }
        }
        (ProgressMode::Plain, Event::Done { id, elapsed }) => {
            let _ = writeln!(err, "#{id} DONE {:.1}s", elapsed.as_secs_f64());
        }
        (
            ProgressMode::Tty,
            Event::Step {
                id,
                stage,
                n,
                total,
                text,
            },
        ) => {
            STEPS.with(|s| {
                s.borrow_mut()
                    .insert(id, (format!("[{label} {stage} {n}/{total}] {text}"), false))
            });
        }
        (ProgressMode::Tty, Event::Cached { id }) => {
            STEPS.with(|s| {
                if let Some(x) = s.borrow_mut().get_mut(&id) {
                    x.1 = true;
                }
            });
        }
        (ProgressMode::Tty, Event::Output { .. }) => {}
        (ProgressMode::Tty, Event::Done { id, elapsed }) => {
            if let Some((text, cached)) = STEPS.with(|s| s.borrow_mut().remove(&id)) {
                let mut text = text;
                if text.chars().count() > 100 {
                    text = text.chars().take(97).collect::<String>() + "...";
                }
                if cached {
                    let _ = writeln!(err, " => CACHED {text}");
                } else {
                    let _ = writeln!(err, " => {text}  {:.1}s", elapsed.as_secs_f64());
                }
            }
        }
    }
}

fn parse_build_args(list: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for a in list {
        match a.split_once('=') {
            Some((k, v)) => {
                m.insert(k.to_string(), v.to_string());
            }
            None => {
                // `--build-arg KEY`: the value comes from the environment (skipped if unset).
                if let Ok(v) = std::env::var(a) {
                    m.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(m)
}

/// `berth build [SERVICE...]`.
pub fn build(p: &ProjectOpts, args: &BuildArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let project = crate::compose::load(&crate::compose::LoadOptions::from_cli(p))?;
    crate::trace::step(|| "cli: model loaded".into());
    let cli_args = parse_build_args(&args.build_arg)?;
    let mut services = args.services.clone();
    if args.with_dependencies && !services.is_empty() {
        // The named services and everything they depend on, transitively.
        let mut i = 0;
        while i < services.len() {
            if let Some(s) = project.services.get(&services[i]) {
                for d in s.depends_on.keys() {
                    if !services.contains(d) {
                        services.push(d.clone());
                    }
                }
            }
            i += 1;
        }
    }
    let mut jobs = jobs(&project, &services, &cli_args)?;
    // `--ssh default|ID=PATH[,PATH]` (as compose's): added to every build's ssh sources.
    let cli_ssh = match &args.ssh {
        Some(v) => ssh_sources(&project, std::slice::from_ref(v), "--ssh")?,
        None => BTreeMap::new(),
    };
    for j in &mut jobs {
        j.opts.no_cache |= args.no_cache;
        j.opts.pull |= args.pull;
        j.opts
            .ssh
            .extend(cli_ssh.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if jobs.is_empty() {
        eprintln!("no service to build (none has a build section)");
        return Ok(0);
    }
    if args.check {
        // Parse every Dockerfile and check its context, build nothing.
        for j in &jobs {
            exec::check(&j.opts)
                .with_context(|| format!("checking the build of {}", j.services.join(", ")))?;
        }
        println!("Check complete, no warnings found.");
        return Ok(0);
    }
    let flag = p.progress.map(|m| match m {
        crate::cli::ProgressMode::Auto => "auto",
        crate::cli::ProgressMode::Tty => "tty",
        crate::cli::ProgressMode::Plain | crate::cli::ProgressMode::Json => "plain",
        crate::cli::ProgressMode::Quiet => "quiet",
    });
    let mode = ProgressMode::from_flag(flag, args.quiet)?;
    run_jobs(&paths, &jobs, mode)?;
    if args.push {
        let push = crate::cli::PushArgs {
            services: args.services.clone(),
            ..Default::default()
        };
        return crate::commands::push::push(p, &push);
    }
    Ok(0)
}

/// Before `up`: build what `--build`, `pull_policy: build` or a missing image asks for
/// (`--no-build`: nothing). Runs in the CLI, before the supervisor is asked to converge.
pub fn for_up(
    paths: &Paths,
    source: &crate::state::ProjectSource,
    plan: &crate::engine::plan::ProjectPlan,
    services: &[String],
    force: bool,
    never: bool,
) -> anyhow::Result<()> {
    // Most stacks build nothing: the plan already says so, without loading the model again.
    if never || !plan.services.iter().any(|s| s.build) {
        return Ok(());
    }
    let project = crate::engine::plan::load_model(source, services)?;
    let store = berth_runtime::image::ImageStore::open(&paths.images())?;
    let mut selected = Vec::new();
    for (name, s) in &project.services {
        if s.build.is_none() || (!services.is_empty() && !services.contains(name)) {
            continue;
        }
        let policy = s.pull_policy.as_deref().unwrap_or("missing");
        let missing = store.get(&image_name(&project, s))?.is_none();
        if force || policy == "build" || missing {
            selected.push(name.clone());
        }
    }
    if selected.is_empty() {
        return Ok(());
    }
    let jobs = jobs(&project, &selected, &BTreeMap::new())?;
    let mode = ProgressMode::from_flag(None, false)?;
    run_jobs(paths, &jobs, mode).context("building images for up")?;
    Ok(())
}

/// `berth builder prune`: drop the build cache and the layers only it kept.
pub fn builder_prune() -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let store = berth_runtime::image::ImageStore::open(&paths.images())?;
    let n = exec::prune_cache(&paths)?;
    store.release_hold("build-cache")?;
    let rep = store.prune_layers()?;
    println!(
        "Deleted build cache objects: {n}\nTotal reclaimed space: {}",
        crate::commands::image::human_size(rep.reclaimed_bytes)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_yaml(yaml: &str) -> (tempfile::TempDir, Project) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("app")).unwrap();
        std::fs::create_dir_all(d.path().join("extra")).unwrap();
        let f = d.path().join("compose.yaml");
        std::fs::write(&f, yaml).unwrap();
        let opts = crate::compose::LoadOptions {
            files: vec![f],
            interpolate: true,
            working_dir: d.path().to_path_buf(),
            resolve_env_files: false,
            ..Default::default()
        };
        let p = crate::compose::load(&opts).unwrap();
        (d, p)
    }

    #[test]
    fn cache_contexts_and_ssh_fields() {
        let (d, p) = load_yaml(
            "name: t
services:
  app:
    build:
      context: ./app
      \
             cache_from:
        - type=local,src=./c
        - example/app:cache
        \
             - type=registry,ref=example/app:reg
        - type=gha
      \
             cache_to: [\"type=local,dest=/abs/c,mode=max\", type=inline]
      \
             additional_contexts:
        extra: ./extra
        img: docker-image://busybox:1
        \
             sib: service:sib
      ssh: [\"deploy=./key\"]
  sib:
    build: ./app
",
        );
        std::fs::write(d.path().join("key"), "not a socket").unwrap();
        let j = jobs(&p, &["app".to_string()], &BTreeMap::new()).unwrap();
        // service:sib pulls the sibling's build in.
        assert_eq!(j.len(), 2);
        let o = &j.iter().find(|j| j.image == "t-app").unwrap().opts;
        assert_eq!(
            o.cache_from,
            vec![
                CacheSource::Local(d.path().join("c")),
                CacheSource::Image("example/app:cache".into()),
                CacheSource::Image("example/app:reg".into()),
            ]
        );
        assert_eq!(o.cache_to, vec![PathBuf::from("/abs/c")]);
        assert_eq!(
            o.contexts["extra"],
            NamedContext::Dir(d.path().join("extra"))
        );
        assert_eq!(o.contexts["img"], NamedContext::Image("busybox:1".into()));
        assert_eq!(o.contexts["sib"], NamedContext::Image("t-sib".into()));
        assert_eq!(o.ssh["deploy"], SshSource::Keys(vec![d.path().join("key")]));
        // Errors name the file, line, column and key.
        let (_d, p) = load_yaml(
            "name: t
services:
  app:
    build:
      context: ./app
      cache_to: [type=s3]
",
        );
        let e = format!("{:#}", jobs(&p, &[], &BTreeMap::new()).unwrap_err());
        assert!(
            e.contains("compose.yaml:6:17: services.app.build.cache_to: type=s3: cache export type s3 is not supported"),
            "{e}"
        );
        let (_d, p) = load_yaml(
            "name: t
services:
  app:
    build:
      context: ./app
      additional_contexts:
        x: service:nope
",
        );
        let e = format!("{:#}", jobs(&p, &[], &BTreeMap::new()).unwrap_err());
        assert!(
            e.contains("compose.yaml:7:9: services.app.build.additional_contexts: x: service \"nope\" does not exist"),
            "{e}"
        );
    }

    /// The corpus stacks with `build:` load, plan, and either give a build job per image or a
    /// clear error naming the service and `build.context` (the corpus ships no app sources).
    #[test]
    fn corpus_stacks_with_build_load_and_plan() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/compose-corpus/awesome-compose");
        let mut stacks = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let f = ["compose.yaml", "compose.yml"]
                .iter()
                .map(|n| e.path().join(n))
                .find(|p| p.is_file());
            let Some(f) = f else { continue };
            let opts = crate::compose::LoadOptions {
                files: vec![f.clone()],
                interpolate: true,
                working_dir: e.path(),
                environment: [("HOME".to_string(), "/home/tester".to_string())]
                    .into_iter()
                    .collect(),
                resolve_env_files: false,
                ..Default::default()
            };
            let Ok(project) = crate::compose::load(&opts) else {
                continue;
            };
            if !project.services.values().any(|s| s.build.is_some()) {
                continue;
            }
            stacks += 1;
            let plan = crate::engine::plan::from_model(&project, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
            for (name, s) in &project.services {
                if s.build.is_none() {
                    continue;
                }
                let want = image_name(&project, s);
                let planned = plan.services.iter().find(|p| &p.name == name).unwrap();
                assert_eq!(planned.image, want, "{}", f.display());
                if s.image.is_none() {
                    assert_eq!(want, format!("{}-{name}", project.name));
                }
                match jobs(&project, std::slice::from_ref(name), &BTreeMap::new()) {
                    Ok(j) => assert_eq!(j[0].image, want),
                    Err(e) => {
                        let e = format!("{e:#}");
                        // file:line:col: services.NAME.build.context: ...
                        let key = format!(": services.{name}.build.context: ");
                        let at = e.split(&key).next().unwrap_or("");
                        let mut pos = at.rsplitn(3, ':');
                        let (col, line, file) = (pos.next(), pos.next(), pos.next());
                        assert!(
                            e.contains(&key)
                                && file
                                    .is_some_and(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
                                && [line, col]
                                    .iter()
                                    .all(|n| n.is_some_and(|n| n.parse::<usize>().is_ok())),
                            "{}: {e}",
                            f.display()
                        );
                    }
                }
            }
        }
        assert!(
            stacks >= 20,
            "only {stacks} corpus stacks with build: loaded"
        );
    }
}

//! `berth up`: validate and resolve everything first (the file, the images), then hand the
//! project to its supervisor, which converges it; attached, stream the logs until the stack
//! exits or Ctrl-C stops it (a second Ctrl-C kills).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{ProjectOpts, UpArgs};
use crate::engine::plan::{load_plan, ProjectPlan};
use crate::paths::Paths;
use crate::state::{ProjectSource, ProjectState, Status};
use crate::supervisor::client::Client;
use crate::supervisor::proto::{Reply, Request, UpOpts};
use crate::ui::Progress;

static SIGINTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, Ordering::SeqCst);
}

pub fn install_sigint() {
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

pub fn source_from(p: &ProjectOpts) -> anyhow::Result<ProjectSource> {
    Ok(ProjectSource {
        files: p.files.clone(),
        project_name: p.project_name.clone(),
        project_directory: p.project_directory.clone(),
        env_files: p.env_files.clone(),
        profiles: p.profiles.clone(),
        working_dir: std::env::current_dir()?,
        environment: {
            let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
            if p.compatibility {
                env.insert("COMPOSE_COMPATIBILITY".into(), "true".into());
            }
            if p.parallel > 0 {
                env.insert("COMPOSE_PARALLEL_LIMIT".into(), p.parallel.to_string());
            }
            env
        },
    })
}

pub fn is_tty() -> bool {
    console::Term::stderr().is_term()
}

/// Make sure every image the plan needs is in the store (loaded or pulled).
pub fn ensure_images(paths: &Paths, plan: &ProjectPlan, pull: Option<&str>) -> anyhow::Result<()> {
    ensure_images_with(paths, plan, pull, crate::ui::progress_quiet())
}

/// [`ensure_images`], pulling without progress lines when `quiet` (`--quiet-pull`).
pub fn ensure_images_with(
    paths: &Paths,
    plan: &ProjectPlan,
    pull: Option<&str>,
    quiet: bool,
) -> anyhow::Result<()> {
    let pull_one = |store: &berth_runtime::image::ImageStore, image: &str| {
        if quiet {
            store
                .pull(image, &crate::commands::image::pull_options(), &mut |_| {})
                .map(|_| ())
                .with_context(|| format!("pulling {image}"))
        } else {
            crate::commands::image::pull_one(store, image).map(|_| ())
        }
    };
    let store = berth_runtime::image::ImageStore::open(&paths.images())?;
    for s in &plan.services {
        if s.image.is_empty() {
            bail!(
                "service {:?} has neither an image nor a build section berth can use",
                s.name
            );
        }
        let policy = pull.unwrap_or("missing");
        let have = store.get(&s.image)?.is_some();
        match policy {
            "never" if !have => bail!(
                "image {} not found locally and pull policy is never",
                s.image
            ),
            "always" => pull_one(&store, &s.image)?,
            _ if !have => pull_one(&store, &s.image)?,
            _ => {}
        }
    }
    Ok(())
}

/// Send a request and show its progress; returns the supervisor's exit code.
/// Connect to the project's supervisor (starting it if need be) and have it bring `opts` up
/// from `source`, with the progress shown as `up` shows it.
pub fn send_up(
    paths: &Paths,
    project: &str,
    source: &ProjectSource,
    opts: UpOpts,
) -> anyhow::Result<i32> {
    let client = Client::connect_or_start(paths, project)?;
    call(
        client,
        &Request::Up {
            source: source.clone(),
            opts,
        },
        "Running",
        false,
    )
}

pub fn call(client: Client, req: &Request, title: &str, quiet: bool) -> anyhow::Result<i32> {
    let mut ui = Progress::new(title, is_tty()).quiet(quiet);
    let (ok, err, code) = client.call(req, &mut |r| match r {
        Reply::Progress {
            kind, name, state, ..
        } => ui.update(kind, name, state),
        Reply::Message { text } => ui.message(text),
        Reply::Done { .. } => {}
    })?;
    ui.finish();
    if !ok {
        let e = err.unwrap_or_else(|| "failed".into());
        bail!("{}", e.strip_prefix("error: ").unwrap_or(&e));
    }
    Ok(code)
}

pub fn run(p: &ProjectOpts, args: &UpArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let source = source_from(p)?;
    let plan = load_plan(&source, &args.services)?;
    for w in &plan.warnings {
        eprintln!("WARN[0000] {w}");
    }
    crate::rootless::warn_limits(plan.services.iter().map(|s| {
        let limited = s.mem_limit.is_some()
            || s.mem_reservation.is_some()
            || s.cpus.is_some()
            || s.cpu_shares.is_some()
            || s.cpuset.is_some()
            || s.pids_limit.is_some();
        (s.name.as_str(), limited)
    }));
    crate::trace::step(|| format!("cli: plan loaded ({} services)", plan.services.len()));
    let mut scale = Vec::new();
    for s in &args.scale {
        let (svc, n) = s
            .split_once('=')
            .with_context(|| format!("invalid --scale {s:?}: want SERVICE=NUM"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("invalid --scale {s:?}"))?;
        if plan.service(svc).is_none() {
            bail!("no such service: {svc}");
        }
        scale.push((svc.to_string(), n));
    }
    // `up --watch` is compose's (develop.watch rules followed in the foreground, next to the
    // attached logs) on top of berth's (the supervisor reloads on compose-file edits). The rules
    // are checked before anything starts.
    let dev_watch = if args.watch {
        let model = crate::engine::plan::load_model(&source, &[])?;
        crate::commands::watch::select(&model, &args.services)?
    } else {
        vec![]
    };
    crate::commands::build::for_up(
        &paths,
        &source,
        &plan,
        &args.services,
        args.build,
        args.no_build,
    )?;
    ensure_images_with(
        &paths,
        &plan,
        args.pull.as_deref(),
        args.quiet_pull || crate::ui::progress_quiet(),
    )?;
    crate::trace::step(|| "cli: images present".into());
    let opts = UpOpts {
        services: args.services.clone(),
        scale,
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        no_deps: args.no_deps,
        no_start: args.no_start,
        remove_orphans: args.remove_orphans,
        wait: args.wait,
        wait_timeout: args.wait_timeout,
        timeout: args.timeout,
        watch: args.watch,
        renew_anon_volumes: args.renew_anon_volumes,
    };
    let deps = if args.always_recreate_deps {
        dependencies_of(&plan, &args.services)
    } else {
        vec![]
    };
    if !deps.is_empty() {
        // --always-recreate-deps: the dependencies first, recreated whatever their config.
        let dep_opts = UpOpts {
            services: deps,
            no_deps: true,
            force_recreate: true,
            no_start: args.no_start,
            timeout: args.timeout,
            ..Default::default()
        };
        send_up(&paths, &plan.name, &source, dep_opts)?;
    }
    let client = Client::connect_or_start(&paths, &plan.name)?;
    crate::trace::step(|| "cli: supervisor connected, up sent".into());
    call(
        client,
        &Request::Up {
            source: source.clone(),
            opts,
        },
        "Running",
        false,
    )?;
    crate::trace::step(|| "cli: up done".into());
    if args.wait {
        wait_healthy(
            &paths,
            &plan.name,
            args.wait_timeout.map(Duration::from_secs),
        )?;
    }
    if args.detach || args.wait {
        if !dev_watch.is_empty() {
            eprintln!(
                "develop.watch rules of {:?} are followed in the foreground only: run `berth watch` (or `berth up --watch` without -d/--wait); the supervisor still reloads on compose-file edits",
                crate::commands::watch::services(&dev_watch)
            );
        }
        return Ok(0);
    }
    if !dev_watch.is_empty() {
        let session = crate::commands::watch::Session {
            paths: paths.clone(),
            project: plan.name.clone(),
            source: source.clone(),
            quiet: false,
            prune: true,
        };
        // The watch loop on its own thread; the attached logs below stay on this one and end
        // `up` (and with it the watch) as they do without --watch.
        std::thread::spawn(move || {
            if let Err(e) = crate::commands::watch::follow(&session, &dev_watch) {
                eprintln!("watch: {}", crate::commands::render_error(&e));
            }
        });
    }
    attach(p, &paths, &plan, args)
}

/// `--wait`: until every container is running (and healthy where it has a healthcheck).
fn wait_healthy(paths: &Paths, project: &str, timeout: Option<Duration>) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let st = ProjectState::load(paths, project)?.unwrap_or_default();
        let mut ready = true;
        for c in st.containers.iter().filter(|c| !c.oneoff) {
            match c.health.as_deref() {
                Some("unhealthy") => bail!("container {} is unhealthy", c.name),
                Some("starting") => ready = false,
                _ => {}
            }
            if c.status == Status::Exited && c.exit_code != Some(0) {
                bail!(
                    "container {} exited ({})",
                    c.name,
                    c.exit_code.unwrap_or(-1)
                );
            }
            if c.status == Status::Created || c.status == Status::Restarting {
                ready = false;
            }
        }
        if ready {
            return Ok(());
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            bail!("timed out waiting for the project to be healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The services that `services` (all when empty) depend on, transitively: those
/// `--always-recreate-deps` recreates.
pub fn dependencies_of(plan: &ProjectPlan, services: &[String]) -> Vec<String> {
    let roots: Vec<&str> = if services.is_empty() {
        plan.services.iter().map(|s| s.name.as_str()).collect()
    } else {
        services.iter().map(String::as_str).collect()
    };
    let mut out: Vec<String> = Vec::new();
    let mut todo: Vec<String> = roots
        .iter()
        .filter_map(|r| plan.service(r))
        .flat_map(|s| s.depends_on.iter().map(|d| d.0.clone()))
        .collect();
    while let Some(d) = todo.pop() {
        if out.contains(&d) {
            continue;
        }
        if let Some(s) = plan.service(&d) {
            todo.extend(s.depends_on.iter().map(|x| x.0.clone()));
        }
        out.push(d);
    }
    // Start order, as the plan's levels give it.
    plan.services
        .iter()
        .filter(|s| out.contains(&s.name))
        .map(|s| s.name.clone())
        .collect()
}

/// The services whose output attached `up` prints, as compose chooses them: `--attach` if
/// given, else the services named (with their dependencies under `--attach-dependencies`), else
/// all; minus `--no-attach`.
pub fn attached_services(plan: &ProjectPlan, args: &UpArgs) -> Vec<String> {
    let mut sel: Vec<String> = if !args.attach.is_empty() {
        args.attach.clone()
    } else if args.services.is_empty() || args.attach_dependencies {
        // `plan` holds the named services and their dependencies.
        plan.services.iter().map(|s| s.name.clone()).collect()
    } else {
        args.services.clone()
    };
    sel.retain(|s| !args.no_attach.contains(s));
    sel
}

/// Attached mode: print every container's output with compose's prefixes until all containers
/// have exited; Ctrl-C stops the stack gracefully, a second Ctrl-C kills it.
fn attach(p: &ProjectOpts, paths: &Paths, plan: &ProjectPlan, args: &UpArgs) -> anyhow::Result<u8> {
    install_sigint();
    let project = plan.name.clone();
    let color =
        !args.no_color && console::Term::stdout().is_term() && p.ansi != crate::cli::Ansi::Never;
    let selected = attached_services(plan, args);
    let names: Vec<String> = ProjectState::load(paths, &project)?
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let mut printer =
        crate::commands::logs::Printer::new(color, !args.no_log_prefix, args.timestamps, &names);
    let project_dir = paths.project(&project);
    let mut tail = crate::commands::logs::Tailer::new(&project_dir);
    let mut reported: Vec<String> = Vec::new();
    let mut exit_code: u8 = 0;
    let mut stopping = false;
    loop {
        let st = ProjectState::load(paths, &project)?.unwrap_or_default();
        let sel = |svc: &str| selected.iter().any(|s| s == svc);
        tail.pump(&st, &sel, &mut printer)?;
        // Report exits like compose: "name exited with code N".
        for c in st
            .containers
            .iter()
            .filter(|c| sel(&c.service) && c.status == Status::Exited)
        {
            let key = format!("{}:{}", c.name, c.finished_at.clone().unwrap_or_default());
            if !reported.contains(&key) {
                reported.push(key);
                eprintln!("{} exited with code {}", c.name, c.exit_code.unwrap_or(0));
                let code = c.exit_code.unwrap_or(0);
                if args.exit_code_from.as_deref() == Some(c.service.as_str()) {
                    exit_code = code.clamp(0, 255) as u8;
                }
                let abort =
                    args.abort_on_container_exit || (args.abort_on_container_failure && code != 0);
                if abort && !stopping {
                    stopping = true;
                    if args.abort_on_container_failure && code != 0 && args.exit_code_from.is_none()
                    {
                        exit_code = code.clamp(0, 255) as u8;
                    }
                    eprintln!("Aborting on container exit...");
                    stop(paths, &project, args.timeout, false)?;
                }
            }
        }
        let sigints = SIGINTS.load(Ordering::SeqCst);
        if sigints >= 1 && !stopping {
            stopping = true;
            eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
            let (paths2, project2, timeout) = (paths.clone(), project.clone(), args.timeout);
            std::thread::spawn(move || {
                let _ = stop(&paths2, &project2, timeout, false);
            });
            exit_code = 130;
        } else if sigints >= 2 {
            let _ = stop(paths, &project, None, true);
            tail.pump(&st, &sel, &mut printer)?;
            return Ok(130);
        }
        let active = st
            .containers
            .iter()
            .filter(|c| sel(&c.service) && !c.oneoff)
            .any(|c| {
                matches!(
                    c.status,
                    Status::Running | Status::Restarting | Status::Paused | Status::Created
                ) && c
                    .pid
                    .is_none_or(|pid| crate::state::pid_matches(pid, c.pid_start))
            });
        // (A watch action replacing containers leaves none running for a moment.)
        if !active && !st.containers.is_empty() && !crate::commands::watch::busy() {
            std::thread::sleep(Duration::from_millis(50));
            let st = ProjectState::load(paths, &project)?.unwrap_or_default();
            tail.pump(&st, &sel, &mut printer)?;
            return Ok(exit_code);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(paths: &Paths, project: &str, timeout: Option<u64>, kill: bool) -> anyhow::Result<()> {
    let Some(client) = Client::connect(paths, project) else {
        return Ok(());
    };
    let req = if kill {
        Request::Kill {
            services: vec![],
            signal: "SIGKILL".into(),
        }
    } else {
        Request::Stop {
            services: vec![],
            timeout,
        }
    };
    call(client, &req, "Stopping", false).map(|_| ())
}

/// `berth scale SERVICE=N…` on a running project.
pub fn scale(p: &ProjectOpts, args: &crate::cli::ScaleArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let source = source_from(p)?;
    let plan = load_plan(&source, &[])?;
    let mut scale = Vec::new();
    for s in &args.scale {
        let (svc, n) = s
            .split_once('=')
            .with_context(|| format!("invalid {s:?}: want SERVICE=NUM"))?;
        let n: u64 = n.parse().with_context(|| format!("invalid {s:?}"))?;
        if plan.service(svc).is_none() {
            bail!("no such service: {svc}");
        }
        scale.push((svc.to_string(), n));
    }
    crate::commands::build::for_up(&paths, &source, &plan, &[], false, false)?;
    ensure_images(&paths, &plan, None)?;
    let client = Client::connect_or_start(&paths, &plan.name)?;
    call(client, &Request::Scale { source, scale }, "Running", false)?;
    Ok(0)
}

/// `berth run`: a one-off container; attached, its output is streamed and berth exits with its
/// exit code (removing it first with --rm).
/// The compose override that `run -v/-p/-l/--cap-add/--cap-drop/-i` stand for: compose applies
/// them to the service's config for the one-off container, and so does this file, loaded after
/// the project's own files (`-p` replaces the ports, as compose).
pub fn run_override(args: &crate::cli::RunArgs) -> Option<String> {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let list = |v: &[String]| v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
    let mut body = String::new();
    if !args.volumes.is_empty() {
        body.push_str(&format!("    volumes: [{}]\n", list(&args.volumes)));
    }
    if !args.publish.is_empty() {
        body.push_str(&format!("    ports: !override [{}]\n", list(&args.publish)));
    }
    if !args.labels.is_empty() {
        let labels: Vec<String> = args
            .labels
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => format!("{}: {}", q(k), q(v)),
                None => format!("{}: \"\"", q(l)),
            })
            .collect();
        body.push_str(&format!("    labels: {{{}}}\n", labels.join(", ")));
    }
    if !args.cap_add.is_empty() {
        body.push_str(&format!("    cap_add: [{}]\n", list(&args.cap_add)));
    }
    if !args.cap_drop.is_empty() {
        body.push_str(&format!("    cap_drop: [{}]\n", list(&args.cap_drop)));
    }
    if args.interactive {
        body.push_str("    stdin_open: true\n");
    }
    if body.is_empty() {
        return None;
    }
    Some(format!("services:\n  {}:\n{body}", q(&args.service)))
}

/// Removes the temporary override file when `run` is done with it.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run_oneoff(p: &ProjectOpts, args: &crate::cli::RunArgs) -> anyhow::Result<u8> {
    // compose run: a tty (and the caller's terminal attached to it) unless -T or stdin is
    // not a terminal. The relay's signals are blocked before any thread exists.
    let tty = !args.no_tty
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mask = if tty && !args.detach {
        Some(crate::commands::tty::block_signals()?)
    } else {
        None
    };
    let paths = Paths::from_env();
    let mut source = source_from(p)?;
    let plan = load_plan(&source, &[])?;
    if plan.service(&args.service).is_none() {
        bail!("no such service: {}", args.service);
    }
    let _override = match run_override(args) {
        Some(yaml) => {
            // The project's files first (found as `up` finds them), then the override.
            if source.files.is_empty() {
                source.files = plan.config_files.clone();
            }
            let f = std::env::temp_dir().join(format!(
                "berth-run-{}-{}.yaml",
                plan.name,
                std::process::id()
            ));
            std::fs::write(&f, yaml).with_context(|| format!("writing {}", f.display()))?;
            source.files.push(f.clone());
            // Validate now: a bad -v or -p is the user's error, reported before anything runs.
            load_plan(&source, &[]).context("applying run's -v/-p/-l/--cap-add options")?;
            Some(TempFile(f))
        }
        None => None,
    };
    // --env-from-file first, so that -e wins over it.
    let mut env = Vec::new();
    for f in &args.env_from_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let vars = crate::compose::dotenv::parse(&text, &|k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for (k, v) in vars {
            env.push(format!("{k}={}", v.unwrap_or_default()));
        }
    }
    env.extend(args.env.iter().cloned());
    if let Some(pol) = &args.pull {
        if !matches!(pol.as_str(), "always" | "missing" | "never") {
            bail!("invalid --pull {pol:?}: want always, missing or never");
        }
    }
    let only = ProjectPlan {
        services: plan
            .services
            .iter()
            .filter(|s| s.name == args.service)
            .cloned()
            .collect(),
        ..Default::default()
    };
    crate::commands::build::for_up(&paths, &source, &plan, &[], args.build, false)?;
    let quiet = args.quiet_pull || args.quiet || crate::ui::progress_quiet();
    ensure_images_with(&paths, &only, args.pull.as_deref(), quiet)?;
    ensure_images_with(&paths, &plan, None, quiet)?;
    if args.remove_orphans {
        if let Some(st) = ProjectState::load(&paths, &plan.name)? {
            if Client::connect(&paths, &plan.name).is_some() {
                crate::commands::lifecycle::remove_orphans(p, &paths, &st.name)?;
            }
        }
    }
    let opts = crate::supervisor::proto::RunOpts {
        service: args.service.clone(),
        command: args.command.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| shell_words(e)),
        env,
        name: args.name.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        no_deps: args.no_deps,
        // `-p` ports are the one-off's ports: the override replaced the service's with them.
        service_ports: args.service_ports || !args.publish.is_empty(),
        no_tty: !tty,
        tty,
        attach: mask.is_some(),
        stdin: !tty && !args.detach,
        use_aliases: args.use_aliases,
    };
    let client = Client::connect_or_start(&paths, &plan.name)?;
    let mut name = None;
    let mut ui = Progress::new("Running", is_tty()).quiet(args.quiet);
    let (ok, err, _) = client.call(&Request::Run { source, opts }, &mut |r| match r {
        Reply::Progress { kind, name: n, .. } if kind == "oneoff" => name = Some(n.clone()),
        // The one-off's own lines stay quiet, as in compose; dependencies show progress.
        Reply::Progress {
            kind,
            name: n,
            state,
            ..
        } if !n.contains("-run-") && args.name.as_deref() != Some(n) => ui.update(kind, n, state),
        Reply::Message { text } => ui.message(text),
        _ => {}
    })?;
    ui.finish();
    if !ok {
        let e = err.unwrap_or_default();
        bail!("{}", e.strip_prefix("error: ").unwrap_or(&e));
    }
    let name = name.context("the supervisor did not name the container")?;
    if args.detach {
        if !args.quiet {
            println!("{name}");
        }
        return Ok(0);
    }
    if let Some(mask) = &mask {
        let keys =
            crate::commands::tty::parse_detach_keys(crate::commands::tty::DEFAULT_DETACH_KEYS)?;
        use crate::commands::tty::Outcome;
        let code = match crate::commands::attach::attach_terminal(
            &paths, &plan.name, &name, &keys, true, mask,
        )? {
            Outcome::Detached => {
                // The one-off runs on (docker run's detach); `--rm` is for when it exits.
                eprintln!("read escape sequence");
                return Ok(0);
            }
            Outcome::Signal(s) => (128 + s).clamp(0, 255) as u8,
            Outcome::Exited => {
                crate::commands::attach::wait_exit(&paths, &plan.name, &name).unwrap_or(255)
            }
        };
        if args.rm {
            remove_oneoff(&paths, &plan.name, &name)?;
        }
        return Ok(code);
    }
    if !tty {
        forward_stdin(&paths, &plan.name, &name)?;
    }
    install_sigint();
    let project_dir = paths.project(&plan.name);
    let mut printer = crate::commands::logs::Printer::new(false, false, false, &[]);
    let mut tail = crate::commands::logs::Tailer::new(&project_dir);
    let code = loop {
        let st = ProjectState::load(&paths, &plan.name)?.unwrap_or_default();
        let Some(c) = st.container(&name).cloned() else {
            break 255;
        };
        let only = ProjectState {
            containers: vec![c.clone()],
            ..Default::default()
        };
        tail.pump(&only, &|_| true, &mut printer)?;
        if c.status == Status::Exited {
            std::thread::sleep(Duration::from_millis(30));
            let st = ProjectState::load(&paths, &plan.name)?.unwrap_or_default();
            let only = ProjectState {
                containers: st.container(&name).into_iter().cloned().collect(),
                ..Default::default()
            };
            tail.pump(&only, &|_| true, &mut printer)?;
            break c.exit_code.unwrap_or(0);
        }
        if SIGINTS.load(Ordering::SeqCst) > 0 {
            if let Some(c) = Client::connect(&paths, &plan.name) {
                let _ = c.call(
                    &Request::Kill {
                        services: vec![],
                        signal: "SIGKILL".into(),
                    },
                    &mut |_| {},
                );
            }
            break 130;
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    if args.rm {
        remove_oneoff(&paths, &plan.name, &name)?;
    }
    Ok(code.clamp(0, 255) as u8)
}

/// `run --rm`: the one-off and its anonymous volumes go once it exited (as `docker run --rm`).
fn remove_oneoff(paths: &Paths, project: &str, name: &str) -> anyhow::Result<()> {
    if let Some(c) = Client::connect(paths, project) {
        call(
            c,
            &Request::Rm {
                name: name.to_string(),
                keep_volumes: false,
            },
            "Removing",
            true,
        )?;
    }
    Ok(())
}

/// `run` without a tty: copy our stdin to the one-off's stdin FIFO (made by the supervisor,
/// see `supervisor/attach.rs`) on a thread; its end is the container's EOF.
fn forward_stdin(paths: &Paths, project: &str, name: &str) -> anyhow::Result<()> {
    let path = crate::engine::io::io_dir(&paths.project_run(project)).join(format!("{name}.stdin"));
    // Non-blocking: a one-off already gone has no reader left (ENXIO), and a blocking open
    // would wait forever.
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => {
            // SAFETY: fcntl on an fd we own: our writes wait for the container's reads.
            unsafe {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                let fl = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            Some(f)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => None,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the one-off's stdin {}", path.display()))
        }
    };
    if let Some(c) = Client::connect(paths, project) {
        c.call(
            &Request::StdinOpened {
                name: name.to_string(),
            },
            &mut |_| {},
        )?;
    }
    let Some(fifo) = fifo else {
        return Ok(());
    };
    std::thread::spawn(move || {
        // A write after the container exits gets EPIPE, not a SIGPIPE that kills us: the
        // signal is this thread's own and stays blocked here.
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGPIPE);
        let _ = set.thread_block();
        let mut fifo = fifo;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut fifo);
    });
    Ok(())
}

/// `berth rollback SERVICE`.
pub fn rollback(p: &ProjectOpts, args: &crate::cli::RollbackArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let source = source_from(p)?;
    let name = crate::commands::project_name(p)?;
    let client = Client::connect(&paths, &name)
        .context("no supervisor runs for this project (berth up first)")?;
    call(
        client,
        &Request::Rollback {
            source,
            service: args.service.clone(),
        },
        "Rolling back",
        false,
    )?;
    Ok(0)
}

/// Split an `--entrypoint` string the way a shell would (quotes and backslashes).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                have = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    have = true;
                }
            }
            (_, c) => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn entrypoint_words() {
        assert_eq!(
            super::shell_words(r#"sh -c "echo 'a b'" x\ y"#),
            vec!["sh", "-c", "echo 'a b'", "x y"]
        );
        assert_eq!(super::shell_words("  "), Vec::<String>::new());
        assert_eq!(super::shell_words("''"), vec![""]);
    }
}

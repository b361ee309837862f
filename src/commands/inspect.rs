//! `exec`, `cp`, `top`, `port`, `ls`: read the project record, talk to the runtime directly.

use std::io::Write;
use std::os::unix::process::CommandExt;

use anyhow::{anyhow, bail, Context};

use crate::cli::{CpArgs, ExecArgs, LsArgs, PortArgs, ProjectOpts, ServicesArg, TableFormat};
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};

use super::project_name;

fn load(p: &ProjectOpts) -> anyhow::Result<(Paths, ProjectState)> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let st =
        ProjectState::load(&paths, &name)?.ok_or_else(|| anyhow!("no such project: {name}"))?;
    Ok((paths, st))
}

fn find<'a>(
    st: &'a ProjectState,
    service: &str,
    index: u32,
) -> anyhow::Result<&'a ContainerRecord> {
    replica(&st.containers, service, index)
}

/// `--index N` of `exec`, `cp`, `port`, `logs`: the N-th (1-based) current replica of
/// `service`, replicas ordered by their number. Compose numbers a service's replicas 1..N and
/// keeps the numbers when it recreates; a berth rolling update starts each new replica beside
/// the old one, so it takes the next free number (replicas 1, 2, 3 become 4, 5, 6), and
/// `--index 1` still reaches the first of the replicas there are now. One-off `run`
/// containers are not replicas.
pub fn replica<'a>(
    containers: &'a [ContainerRecord],
    service: &str,
    index: u32,
) -> anyhow::Result<&'a ContainerRecord> {
    let mut replicas: Vec<&ContainerRecord> = containers
        .iter()
        .filter(|c| c.service == service && !c.oneoff)
        .collect();
    if replicas.is_empty() {
        bail!("service {service:?} is not running");
    }
    replicas.sort_by_key(|c| c.number);
    let n = replicas.len();
    (index as usize)
        .checked_sub(1)
        .and_then(|i| replicas.get(i).copied())
        .ok_or_else(|| {
            anyhow!(
                "service {service:?} has {n} replica{}: --index must be 1..{n}, not {index}",
                if n == 1 { "" } else { "s" }
            )
        })
}

pub fn exec(p: &ProjectOpts, args: &ExecArgs) -> anyhow::Result<u8> {
    let (paths, st) = load(p)?;
    let c = find(&st, &args.service, args.index)?;
    if crate::commands::ps::live_status(c) != Status::Running {
        bail!("container {} is not running", c.name);
    }
    let mut cmd = std::process::Command::new(crate::engine::runtime::self_exe());
    cmd.arg("__runtime")
        .arg("--root")
        .arg(paths.runtime_root())
        .arg("exec");
    let tty = !args.no_tty
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
        && console::Term::stdout().is_term();
    if args.detach {
        cmd.arg("--detach");
    }
    if args.privileged {
        // docker exec --privileged: every capability berth itself may hold (its bounding set:
        // a host may withhold some even from root), for this process.
        let bounding = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        for (i, c) in ALL_CAPS.iter().enumerate() {
            if bounding & (1 << i) != 0 {
                cmd.arg("--cap").arg(format!("CAP_{c}"));
            }
        }
    }
    for e in &args.env {
        cmd.arg("--env").arg(e);
    }
    if let Some(u) = &args.user {
        cmd.arg("--user").arg(u);
    }
    if let Some(w) = &args.workdir {
        cmd.arg("--cwd").arg(w);
    }
    let detach_keys = crate::commands::tty::parse_detach_keys(
        args.detach_keys
            .as_deref()
            .unwrap_or(crate::commands::tty::DEFAULT_DETACH_KEYS),
    )?;
    if tty && !args.detach {
        // A real terminal both ways: the runtime sends us the pty master over a console
        // socket and waits for the process; we relay the caller's terminal to it.
        let console = paths
            .project_run(&st.name)
            .join("io")
            .join(format!("exec-{}.console", std::process::id()));
        cmd.arg("--tty").arg("--console-socket").arg(&console);
        cmd.arg(&c.name).args(&args.command);
        return crate::commands::tty::run_attached(cmd, &console, &detach_keys);
    }
    // A detached exec gets no terminal: nobody would hold its master.
    cmd.arg(&c.name).args(&args.command);
    // Replace this process: exit status, signals and the terminal pass straight through.
    let err = cmd.exec();
    Err(err).context("running exec")
}

/// Every Linux capability (up to CAP_CHECKPOINT_RESTORE, Linux 5.9).
const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// One side of `cp`: `SERVICE:PATH` in a container, or a local path. As docker's: a path
/// starting with `/` or `.` is local whatever it holds, and so is one whose part before the
/// first `:` is not a service of the project.
fn cp_side<'a>(st: &ProjectState, arg: &'a str) -> Option<(&'a str, &'a str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (svc, path) = arg.split_once(':')?;
    st.containers
        .iter()
        .any(|c| c.service == svc)
        .then_some((svc, path))
}

/// `cp`: between a service container and the host, in this process (no runtime re-exec:
/// nothing forks). A running container's files are reached through its pid 1's root; a
/// stopped one's through its snapshot (the image layers and its own upper dir), mounted in a
/// private mount namespace of this process when it is not mounted already. `-` on the host
/// side is a tar stream on stdin/stdout, as `docker compose cp`.
pub fn cp(p: &ProjectOpts, args: &CpArgs) -> anyhow::Result<u8> {
    let (paths, st) = load(p)?;
    let (from, to) = (cp_side(&st, &args.src), cp_side(&st, &args.dest));
    let opts = berth_runtime::copy::CopyOpts {
        archive: args.archive,
        follow_link: args.follow_link,
    };
    let (svc, inside) = match (from, to) {
        (Some(_), Some(_)) => bail!("copying between services is not supported"),
        (None, None) => bail!(
            "one of {:?} and {:?} must be SERVICE:PATH (a service of this project)",
            args.src,
            args.dest
        ),
        (Some(s), None) | (None, Some(s)) => s,
    };
    // `--index N` is the N-th current replica; with --all a one-off (`run`) container of the
    // service serves when the service has no such replica.
    let c = match find(&st, svc, args.index) {
        Ok(c) => c,
        Err(e) if args.all => st
            .containers
            .iter()
            .find(|c| c.service == svc && c.oneoff)
            .ok_or(e)?,
        Err(e) => return Err(e),
    };
    let live = crate::commands::ps::live_status(c);
    let running = matches!(live, Status::Running | Status::Paused) && c.pid.is_some();
    let root = match c.pid {
        Some(pid) if running => berth_runtime::copy::container_root(pid)?,
        _ => stopped_root(&paths, c)?,
    };
    let path = if inside.is_empty() { "/" } else { inside };
    let stream = if from.is_some() {
        args.dest == "-"
    } else {
        args.src == "-"
    };
    let n = match (from.is_some(), stream) {
        (true, true) => {
            let out = std::io::stdout();
            berth_runtime::copy::tar_out(&root, path, out.lock(), opts)
                .with_context(|| format!("copying {}:{path} to a tar stream", c.name))?
        }
        (true, false) => {
            berth_runtime::copy::copy_out(&root, path, std::path::Path::new(&args.dest), opts)
                .with_context(|| format!("copying {}:{path} to {}", c.name, args.dest))?
        }
        (false, _) if !running && read_only_root(c) => {
            bail!(
                "container {} has a read-only root filesystem (read_only: true)",
                c.name
            )
        }
        (false, true) => {
            let input = std::io::stdin();
            berth_runtime::copy::tar_in(&root, input.lock(), path)
                .with_context(|| format!("copying a tar stream to {}:{path}", c.name))?
        }
        (false, false) => {
            berth_runtime::copy::copy_in(&root, std::path::Path::new(&args.src), path, opts)
                .with_context(|| format!("copying {} to {}:{path}", args.src, c.name))?
        }
    };
    if n.skipped > 0 {
        eprintln!("skipped {} device or socket file(s)", n.skipped);
    }
    let what = if from.is_some() {
        format!("{}:{path} to {}", c.name, args.dest)
    } else {
        format!("{} to {}:{path}", args.src, c.name)
    };
    eprintln!("Copied {what} ({} bytes)", n.bytes);
    Ok(0)
}

/// The bundle says the root is read-only (a running container's kernel says it by itself).
fn read_only_root(c: &ContainerRecord) -> bool {
    std::fs::read(c.dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["root"]["readonly"].as_bool())
        .unwrap_or(false)
}

/// The root of a container that is not running: its snapshot (image layers + its upper dir).
/// Mounted in a mount namespace private to this process when it is not mounted on the host,
/// so nothing is left mounted when `cp` exits, whatever happens. Its volumes are not mounted
/// there (they are reachable on the host under the data root).
fn stopped_root(paths: &Paths, c: &ContainerRecord) -> anyhow::Result<std::os::fd::OwnedFd> {
    let rootfs = c.dir.join("rootfs");
    if berth_runtime::image::snapshot::is_mountpoint(&rootfs) {
        return Ok(berth_runtime::copy::open_root(&rootfs)?);
    }
    if !c.dir.join("upper").is_dir() {
        bail!(
            "container {} has no snapshot under {}",
            c.name,
            c.dir.display()
        );
    }
    let store = berth_runtime::image::ImageStore::open(&paths.images())?;
    let image = store
        .get(&c.image_id)?
        .or(store.get(&c.image)?)
        .ok_or_else(|| anyhow!("image {} of container {} is gone", c.image, c.name))?;
    // Single-threaded here (no tokio in cp), as unshare(CLONE_NEWNS) requires.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("a private mount namespace for the stopped container's snapshot")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the mounts private")?;
    let rootfs = berth_runtime::image::snapshot::mount(&image.layers, &c.dir)
        .with_context(|| format!("mounting the snapshot of {}", c.name))?;
    Ok(berth_runtime::copy::open_root(&rootfs)?)
}

/// `top`: compose's layout — the container name, then ps-style rows with host pids.
pub fn top(p: &ProjectOpts, args: &ServicesArg) -> anyhow::Result<u8> {
    let (paths, st) = load(p)?;
    crate::supervisor::respawn::check(&paths, &st.name, "top");
    let (paths, st) = load(p)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runtime = crate::engine::runtime::Runtime::new(&paths.runtime_root());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for c in st
        .containers
        .iter()
        .filter(|c| args.services.is_empty() || args.services.contains(&c.service))
    {
        if crate::commands::ps::live_status(c) != Status::Running {
            continue;
        }
        let mut pids = rt.block_on(runtime.ps(&c.name)).unwrap_or_default();
        // The container's pid 1 first.
        if let Some(init) = c.pid {
            pids.retain(|p| *p != init);
            pids.insert(0, init);
        }
        writeln!(out, "{}", c.name)?;
        let rows: Vec<[String; 8]> = pids.iter().filter_map(|pid| proc_row(*pid)).collect();
        let header = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"].map(String::from);
        let mut w = header.clone().map(|h| h.len());
        for r in &rows {
            for (i, x) in r.iter().enumerate() {
                w[i] = w[i].max(x.len());
            }
        }
        let fmt = |r: &[String; 8]| {
            r.iter()
                .enumerate()
                .map(|(i, x)| {
                    if i == 7 {
                        x.clone()
                    } else {
                        format!("{x:<w$}", w = w[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("   ")
        };
        writeln!(out, "{}", fmt(&header))?;
        for r in &rows {
            writeln!(out, "{}", fmt(r))?;
        }
        writeln!(out)?;
    }
    Ok(0)
}

fn proc_row(pid: i32) -> Option<[String; 8]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_string()
    };
    let uid = field("Uid:");
    let ppid = field("PPid:");
    let user = if uid == "0" { "root".to_string() } else { uid };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = cmdline
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100u64;
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let secs = cpu / ticks;
    let time = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    Some([
        user,
        pid.to_string(),
        ppid,
        "0".into(),
        "-".into(),
        "?".into(),
        time,
        cmd,
    ])
}

pub fn port(p: &ProjectOpts, args: &PortArgs) -> anyhow::Result<u8> {
    let (_, st) = load(p)?;
    let c = find(&st, &args.service, args.index)?;
    let rec = c
        .ports
        .iter()
        .find(|r| r.target == args.private_port && r.protocol == args.protocol)
        .ok_or_else(|| {
            anyhow!(
                "no port {}/{} published for {}",
                args.private_port,
                args.protocol,
                args.service
            )
        })?;
    println!(
        "{}:{}",
        rec.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
        rec.host_port
    );
    Ok(0)
}

/// `ls --filter name=X` (compose's only filter): projects whose name contains X.
fn ls_filter_ok(filters: &[String], name: &str) -> anyhow::Result<bool> {
    for f in filters {
        match f.split_once('=') {
            Some(("name", v)) => {
                if !name.contains(v) {
                    return Ok(false);
                }
            }
            _ => bail!("invalid --filter {f:?}: the supported filter is name=VALUE"),
        }
    }
    Ok(true)
}

pub fn ls(args: &LsArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let mut rows = Vec::new();
    for st in ProjectState::list(&paths)? {
        let supervisor = crate::supervisor::respawn::check(&paths, &st.name, "ls");
        let st = ProjectState::load(&paths, &st.name)?.unwrap_or(st);
        let mut counts: Vec<(String, usize)> = Vec::new();
        for c in &st.containers {
            let s = crate::commands::ps::live_status(c).as_str().to_string();
            match counts.iter_mut().find(|(k, _)| *k == s) {
                Some(e) => e.1 += 1,
                None => counts.push((s, 1)),
            }
        }
        let running = counts.iter().any(|(k, _)| k == "running");
        if !args.all && !running {
            continue;
        }
        if !ls_filter_ok(&args.filter, &st.name)? {
            continue;
        }
        let status = counts
            .iter()
            .map(|(k, n)| format!("{k}({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let files = st
            .config_files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        rows.push((st.name.clone(), status, files, supervisor.as_str()));
    }
    if args.quiet {
        for r in rows {
            println!("{}", r.0);
        }
        return Ok(0);
    }
    match args.format {
        TableFormat::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(n, s, f, sup)| {
                    serde_json::json!({"Name": n, "Status": s, "ConfigFiles": f, "Supervisor": sup})
                })
                .collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        TableFormat::Table => {
            let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
            let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
            println!("{:<w0$}   {:<w1$}   CONFIG FILES", "NAME", "STATUS");
            for (n, s, f, _) in rows {
                println!("{n:<w0$}   {s:<w1$}   {f}");
            }
        }
    }
    Ok(0)
}

/// `events`: the project's container events and what the supervisor recorded (rollouts,
/// reloads, adoptions), streamed as compose streams them: from now on (or from `--since`)
/// until `--until` passes or the command is stopped (^C, a closed pipe).
pub fn events(p: &ProjectOpts, args: &crate::cli::EventsArgs) -> anyhow::Result<u8> {
    use std::io::Write;
    let paths = Paths::from_env();
    let name = project_name(p)?;
    crate::supervisor::respawn::check(&paths, &name, "events");
    let path = paths.project(&name).join("events.log");
    let now = std::time::SystemTime::now();
    let bound = |s: &Option<String>, what: &str| -> anyhow::Result<Option<std::time::SystemTime>> {
        s.as_deref()
            .map(|v| {
                crate::logs::parse_since(v, now).ok_or_else(|| anyhow!("invalid --{what} {v:?}"))
            })
            .transpose()
    };
    let (since, until) = (bound(&args.since, "since")?, bound(&args.until, "until")?);
    // Without --since, only what happens from now on (as `docker events`).
    let mut offset: u64 = match since {
        Some(_) => 0,
        None => std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
    };
    let mut st = ProjectState::load(&paths, &name)?.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let mut pending = String::new();
    loop {
        // Read what was appended since the last look (the file starts again after a `down`).
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
            pending.clear();
        }
        if len > offset {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(&path)?;
            f.seek(std::io::SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(len - offset).read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&buf));
            if let Some(fresh) = ProjectState::load(&paths, &name)? {
                st = fresh;
            }
        }
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            let line = line.trim_end();
            let (time, msg) = line.split_once(' ').unwrap_or((line, ""));
            let t = crate::logs::parse_since(time, now);
            if since.is_some_and(|s| t.is_some_and(|t| t < s)) {
                continue;
            }
            if until.is_some_and(|u| t.is_some_and(|t| t > u)) {
                return Ok(0);
            }
            let ev = event_fields(&st, &name, time, msg);
            if !args.services.is_empty() && !args.services.contains(&ev.service) {
                continue;
            }
            let r = if args.json {
                writeln!(out, "{}", serde_json::to_string(&ev)?)
            } else {
                writeln!(out, "{time} {msg}")
            };
            // The reader went away (a closed pipe): done.
            if r.and_then(|_| out.flush()).is_err() {
                return Ok(0);
            }
        }
        if until.is_some_and(|u| std::time::SystemTime::now() >= u) {
            return Ok(0);
        }
        std::thread::sleep(EVENTS_POLL);
    }
}

/// How often `events` looks for new lines: a stat of one file, cheap.
const EVENTS_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// One `events --json` object: compose's fields (`time`, `type`, `action`, `id`, `service`,
/// `attributes`), plus berth's `project` and the supervisor's `message`.
#[derive(Debug, serde::Serialize)]
pub struct EventJson {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub id: String,
    pub service: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub project: String,
    pub message: String,
}

/// Read an events.log line: `container NAME STATE` progress lines become container events
/// (action: the state in lower case); anything else (rollouts, reloads) a project event.
pub fn event_fields(st: &ProjectState, project: &str, time: &str, msg: &str) -> EventJson {
    let w: Vec<&str> = msg.splitn(3, ' ').collect();
    let (kind, id, action) = match w.as_slice() {
        [k @ ("container" | "network" | "volume"), n, s] if !s.contains(' ') => {
            (k.to_string(), n.to_string(), s.to_lowercase())
        }
        _ => (
            "project".to_string(),
            project.to_string(),
            "message".to_string(),
        ),
    };
    let service = if kind == "container" {
        st.container(&id)
            .map(|c| c.service.clone())
            .unwrap_or_else(|| {
                // A removed container: `<project>-<service>-<n>`.
                id.strip_prefix(&format!("{project}-"))
                    .and_then(|r| r.rsplit_once('-').map(|x| x.0.to_string()))
                    .unwrap_or_default()
            })
    } else {
        msg.strip_prefix("rollout of ")
            .or_else(|| msg.strip_prefix("rollback of "))
            .and_then(|r| r.split([':', ' ']).next())
            .unwrap_or("")
            .to_string()
    };
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("name".to_string(), id.clone());
    EventJson {
        time: time.to_string(),
        kind,
        action,
        id,
        service,
        attributes,
        project: project.to_string(),
        message: msg.to_string(),
    }
}

/// `wait SERVICE…`: block until the first container of each service stops; print exit codes.
pub fn wait(p: &ProjectOpts, args: &crate::cli::WaitArgs) -> anyhow::Result<u8> {
    let (paths, st) = load(p)?;
    let name = st.name.clone();
    let mut code = 0;
    for svc in &args.services {
        let first = find(
            &st,
            svc,
            st.containers
                .iter()
                .filter(|c| c.service == *svc)
                .map(|c| c.number)
                .min()
                .unwrap_or(1),
        )?
        .name
        .clone();
        loop {
            let now = ProjectState::load(&paths, &name)?
                .ok_or_else(|| anyhow!("project {name} is gone"))?;
            let Some(c) = now.container(&first) else {
                bail!("container {first} was removed")
            };
            // The supervisor records the exit code; without one, a vanished pid is all we know.
            let recorded = c.status == Status::Exited;
            let orphaned = !paths.supervisor_socket(&name).exists()
                && crate::commands::ps::live_status(c) == Status::Exited;
            if recorded || orphaned {
                code = c.exit_code.unwrap_or(0);
                println!("{code}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if args.down_project {
            let down = crate::cli::DownArgs::default();
            crate::commands::lifecycle::down(p, &down)?;
            break;
        }
    }
    Ok(code.clamp(0, 255) as u8)
}

/// `inspect [SERVICE…]`: the records of the project's containers, as JSON.
pub fn inspect(p: &ProjectOpts, args: &ServicesArg) -> anyhow::Result<u8> {
    let (_, st) = load(p)?;
    let list: Vec<&ContainerRecord> = st
        .containers
        .iter()
        .filter(|c| args.services.is_empty() || args.services.contains(&c.service))
        .collect();
    println!("{}", serde_json::to_string_pretty(&list)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(service: &str, number: u32, oneoff: bool) -> ContainerRecord {
        ContainerRecord {
            number,
            oneoff,
            ..ContainerRecord::sample(&format!("p-{service}-{number}"), service)
        }
    }

    #[test]
    fn index_is_the_nth_current_replica_by_number() {
        // After a rolling update of three replicas: numbers 4, 5, 6 (kept out of order in the
        // record), a one-off `run` container and another service.
        let cs = vec![
            rec("web", 6, false),
            rec("web", 4, false),
            rec("db", 1, false),
            rec("web", 7, true),
            rec("web", 5, false),
        ];
        let names: Vec<&str> = (1..=3)
            .map(|i| replica(&cs, "web", i).unwrap().name.as_str())
            .collect();
        assert_eq!(names, ["p-web-4", "p-web-5", "p-web-6"]);
        assert_eq!(replica(&cs, "db", 1).unwrap().name, "p-db-1");
        // Before any rollout the index is the number, as in compose.
        let fresh: Vec<_> = (1..=3).map(|n| rec("web", n, false)).collect();
        for i in 1..=3 {
            assert_eq!(replica(&fresh, "web", i).unwrap().number, i);
        }
        let e = replica(&cs, "web", 4).unwrap_err().to_string();
        assert!(e.contains("has 3 replicas") && e.contains("1..3"), "{e}");
        assert!(replica(&cs, "web", 0).is_err());
        let e = replica(&cs, "cache", 1).unwrap_err().to_string();
        assert!(e.contains("not running"), "{e}");
    }

    #[test]
    fn events_log_lines_become_compose_events() {
        let st = ProjectState::default();
        let e = event_fields(
            &st,
            "p",
            "2026-01-01T00:00:00Z",
            "container p-web-2 Started",
        );
        assert_eq!(
            (
                e.kind.as_str(),
                e.id.as_str(),
                e.action.as_str(),
                e.service.as_str()
            ),
            ("container", "p-web-2", "started", "web")
        );
        let e = event_fields(
            &st,
            "p",
            "t",
            "rollout of api: 3 replicas, parallelism 1, stop-first",
        );
        assert_eq!((e.kind.as_str(), e.service.as_str()), ("project", "api"));
        assert_eq!(e.action, "message");
        let v = serde_json::to_value(&e).unwrap();
        for k in ["time", "type", "action", "id", "service", "attributes"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(ls_filter_ok(&["name=ab".into()], "xaby").unwrap());
        assert!(!ls_filter_ok(&["name=zz".into()], "xaby").unwrap());
        assert!(ls_filter_ok(&["status=x".into()], "a").is_err());
    }
}

//! The per-project supervisor (the watcher): owns the project's containers (it is their child
//! subreaper), copies their output to logs, runs healthchecks, enforces restart policies,
//! serves DNS for the project's networks and converges the project on `up`.
//! CLI commands talk to it over a unix socket (see `proto`).

mod adopt;
pub mod client;
mod exits;
mod health;
mod lifecycle;
mod oneoff;
pub mod proto;
mod publish;
mod rollout;
mod spawn;
mod watcher;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Mutex};

use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::engine::proc::{self, Exit};
use crate::engine::restart::Backoff;
use crate::engine::Engine;
use crate::logs::LogWriter;
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectLock, ProjectSource, ProjectState, Status};
use proto::{Reply, Request, UpOpts};

/// Progress sink of one request.
type Out = mpsc::UnboundedSender<Reply>;

fn progress(out: &Out, kind: &str, name: &str, state: &str) {
    let _ = out.send(Reply::Progress {
        kind: kind.into(),
        name: name.into(),
        state: state.into(),
        detail: None,
    });
}

struct Live {
    pidfd: Arc<OwnedFd>,
    exit: watch::Receiver<Option<Exit>>,
}

struct Shared {
    /// Per container: its log writer (kept across restarts) and restart bookkeeping.
    logs: HashMap<String, Arc<StdMutex<LogWriter>>>,
    /// Containers leaving service during a rollout: out of DNS and port backends, still running.
    draining: std::collections::HashSet<String>,
    /// The file watcher runs (started by the first `up --watch`).
    watching: bool,
    /// The firewall rules last applied for the project.
    last_fw: Option<berth_network::firewall::ProjectFirewall>,
    /// The project's rules were removed (`down`, or nothing left): an apply still queued
    /// behind that removal (a container's exit seen during `down`) must not bring them back.
    /// Cleared when an `up` starts.
    fw_removed: bool,
    backoff: HashMap<String, Backoff>,
    live: HashMap<String, Live>,
}

pub struct Supervisor {
    engine: Engine,
    project: String,
    state: Mutex<ProjectState>,
    plan: Mutex<Option<ProjectPlan>>,
    /// The plan before the current `up`, for rollbacks.
    prev_plan: Mutex<Option<ProjectPlan>>,
    shared: StdMutex<Shared>,
    /// One state-changing operation at a time (up, down, stop…).
    op: Mutex<()>,
    /// One firewall transaction at a time, so `last_fw` always describes what is in force.
    fw: Mutex<()>,
    dns: berth_network::dns::DnsServer,
    /// Serves published ports to clients the host would route, while it drops routed traffic
    /// (`berth_network::relay`); empty otherwise.
    relay: StdMutex<berth_network::relay::Relay>,
    /// The last `firewall::routed_traffic_blocked`, refreshed by `watch_forward_policy`.
    routed_blocked: std::sync::atomic::AtomicBool,
    shutdown: tokio::sync::Notify,
}

/// Entry point of `berth __supervisor`.
pub fn main(project: &str) -> anyhow::Result<u8> {
    proc::set_child_subreaper().context("becoming a child subreaper")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(project.to_string()))?;
    Ok(0)
}

async fn serve(project: String) -> anyhow::Result<()> {
    let paths = Paths::from_env();
    let sock = paths.supervisor_socket(&project);
    std::fs::create_dir_all(sock.parent().unwrap())?;
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    let pid_file = paths.project_run(&project).join("supervisor.pid");
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let engine = Engine::open(&paths)?;
    let state = ProjectState::load(&paths, &project)?.unwrap_or_else(|| ProjectState {
        name: project.clone(),
        ..Default::default()
    });
    let sup = Arc::new(Supervisor {
        engine,
        project: project.clone(),
        state: Mutex::new(state),
        plan: Mutex::new(None),
        prev_plan: Mutex::new(None),
        shared: StdMutex::new(Shared {
            logs: HashMap::new(),
            backoff: HashMap::new(),
            live: HashMap::new(),
            draining: Default::default(),
            watching: false,
            last_fw: None,
            fw_removed: false,
        }),
        op: Mutex::new(()),
        fw: Mutex::new(()),
        dns: berth_network::dns::DnsServer::start(),
        relay: StdMutex::new(berth_network::relay::Relay::new()),
        routed_blocked: std::sync::atomic::AtomicBool::new(false),
        shutdown: tokio::sync::Notify::new(),
    });
    tokio::spawn(sup.clone().watch_forward_policy());
    sup.adopt().await;
    // No blanket reaper: container inits are reaped through their pidfds and tokio reaps the
    // runtime helpers it spawned; a `waitpid(-1)` here would steal their statuses.
    {
        let s = sup.clone();
        tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            if sig.recv().await.is_some() {
                // SIGTERM: stop the stack gracefully, keep it recorded, exit.
                let (tx, _rx) = mpsc::unbounded_channel();
                let _ = s.stop_all(None, &tx).await;
                s.shutdown.notify_one();
            }
        });
    }
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let s = sup.clone();
                tokio::spawn(async move { s.handle(stream).await });
            }
            _ = sup.shutdown.notified() => break,
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&sock);
    // Exit now: nothing is left to finish, and a runtime shutdown could wait on idle tasks.
    std::process::exit(0);
}

impl Supervisor {
    async fn service_plan(&self, service: &str) -> Option<ServicePlan> {
        self.plan
            .lock()
            .await
            .as_ref()
            .and_then(|p| p.service(service).cloned())
    }

    async fn handle(self: Arc<Self>, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let Ok(Some(line)) = lines.next_line().await else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
        let req: Result<Request, _> = serde_json::from_str(&line);
        let me = self.clone();
        let work = tokio::spawn(async move {
            let r = match req {
                Ok(r) => me.dispatch(r, &tx).await,
                Err(e) => Err(anyhow!("bad request: {e}")),
            };
            let done = match r {
                Ok(code) => Reply::Done {
                    ok: true,
                    error: None,
                    code,
                },
                Err(e) => Reply::Done {
                    ok: false,
                    error: Some(crate::errors::render_error(&e)),
                    code: 1,
                },
            };
            let _ = tx.send(done);
        });
        let mut exit_after = false;
        while let Some(reply) = rx.recv().await {
            let done = matches!(reply, Reply::Done { .. });
            if let Reply::Message { text } = &reply {
                if text == "\u{0}exit" {
                    exit_after = true;
                    continue;
                }
            }
            let mut b = serde_json::to_vec(&reply).unwrap_or_default();
            b.push(b'\n');
            if wr.write_all(&b).await.is_err() {
                // The CLI went away: the operation goes on.
            }
            if done {
                break;
            }
        }
        let _ = work.await;
        let _ = wr.shutdown().await;
        if exit_after {
            self.shutdown.notify_one();
        }
    }

    async fn dispatch(self: &Arc<Self>, req: Request, out: &Out) -> anyhow::Result<i32> {
        match req {
            Request::Ping => Ok(0),
            Request::Up { source, opts } => {
                let _op = self.op.lock().await;
                self.up(source, opts, out).await.map(|_| 0)
            }
            Request::Down {
                volumes,
                remove_orphans: _,
                timeout,
            } => {
                let _op = self.op.lock().await;
                self.down(volumes, timeout, out).await?;
                let _ = out.send(Reply::Message {
                    text: "\u{0}exit".into(),
                });
                Ok(0)
            }
            Request::Stop { services, timeout } => {
                let _op = self.op.lock().await;
                self.stop_services(&services, timeout, out).await.map(|_| 0)
            }
            Request::Start { services } => {
                let _op = self.op.lock().await;
                self.start_services(&services, out).await.map(|_| 0)
            }
            Request::Restart { services, timeout } => {
                let _op = self.op.lock().await;
                self.stop_services(&services, timeout, out).await?;
                self.start_services(&services, out).await.map(|_| 0)
            }
            Request::Kill { services, signal } => {
                let sig = proc::signal_number(&signal)
                    .ok_or_else(|| anyhow!("invalid signal {signal:?}"))?;
                let names = self.containers_of(&services).await;
                for n in names {
                    if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
                        self.mark_user_stop(&n, true).await;
                    }
                    self.signal(&n, sig);
                    progress(out, "container", &n, "Killed");
                }
                Ok(0)
            }
            Request::Pause { services } => {
                for n in self.containers_of(&services).await {
                    self.engine.runtime.pause(&n).await?;
                    self.set_status(&n, Status::Paused).await;
                    progress(out, "container", &n, "Paused");
                }
                Ok(0)
            }
            Request::Unpause { services } => {
                for n in self.containers_of(&services).await {
                    self.engine.runtime.resume(&n).await?;
                    self.set_status(&n, Status::Running).await;
                    progress(out, "container", &n, "Unpaused");
                }
                Ok(0)
            }
            Request::Scale { source, scale } => {
                let _op = self.op.lock().await;
                let opts = UpOpts {
                    scale,
                    no_recreate: true,
                    ..Default::default()
                };
                self.up(source, opts, out).await.map(|_| 0)
            }
            Request::Run { source, opts } => {
                let _op = self.op.lock().await;
                self.run_oneoff(source, opts, out).await.map(|_| 0)
            }
            Request::Rm { name } => {
                self.remove_one(&name, Some(Duration::from_secs(10)), out)
                    .await;
                Ok(0)
            }
            Request::Rollback { source, service } => {
                let _op = self.op.lock().await;
                self.rollback_by_hand(source, &service, out)
                    .await
                    .map(|_| 0)
            }
        }
    }

    async fn containers_of(&self, services: &[String]) -> Vec<String> {
        let st = self.state.lock().await;
        st.containers
            .iter()
            .filter(|c| !c.oneoff && (services.is_empty() || services.contains(&c.service)))
            .map(|c| c.name.clone())
            .collect()
    }

    async fn save(&self) {
        let st = self.state.lock().await;
        if st.containers.is_empty()
            && st.networks.is_empty()
            && !self.engine.paths.project(&self.project).exists()
        {
            // The record was removed on purpose (down, or a failed first up): keep it gone.
            return;
        }
        if let Err(e) = st.save(&self.engine.paths) {
            tracing::error!("saving state: {e:#}");
        }
    }

    async fn set_status(&self, name: &str, status: Status) {
        {
            let mut st = self.state.lock().await;
            if let Some(c) = st.container_mut(name) {
                c.status = status;
            }
        }
        self.save().await;
    }

    async fn mark_user_stop(&self, name: &str, v: bool) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.container_mut(name) {
            c.stopped_by_user = v;
        }
    }

    fn signal(&self, name: &str, sig: i32) {
        let sh = self.shared.lock().unwrap();
        if let Some(l) = sh.live.get(name) {
            let _ = proc::pidfd_send_signal(&l.pidfd, sig);
        }
    }

    /// Load the plan from the CLI's source, then converge.
    async fn up(
        self: &Arc<Self>,
        source: ProjectSource,
        opts: UpOpts,
        out: &Out,
    ) -> anyhow::Result<()> {
        // The whole project is what the supervisor keeps (restart policies, orphans); the
        // services named on the command line (and their dependencies) are what converges now.
        let mut full = crate::engine::plan::load_plan(&source, &[])?;
        self.inherit_image_healthchecks(&mut full).await;
        let plan = if opts.services.is_empty() {
            full.clone()
        } else {
            let mut p = crate::engine::plan::load_plan(&source, &opts.services)?;
            self.inherit_image_healthchecks(&mut p).await;
            p
        };
        {
            let mut st = self.state.lock().await;
            st.source = Some(source.clone());
            st.working_dir = plan.working_dir.clone();
            st.config_files = plan.config_files.clone();
        }
        let prev = self.plan.lock().await.replace(full.clone());
        if prev.is_some() {
            *self.prev_plan.lock().await = prev;
        }
        let made = self.converge(&plan, &full, &opts, out).await;
        match made {
            Ok(()) => {
                self.save().await;
                if opts.watch {
                    self.start_watch(&full);
                }
                Ok(())
            }
            Err(e) => {
                self.save().await;
                Err(e)
            }
        }
    }

    async fn converge(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        full: &ProjectPlan,
        opts: &UpOpts,
        out: &Out,
    ) -> anyhow::Result<()> {
        let _lock = ProjectLock::acquire(&self.engine.paths, &self.project)?;
        self.shared.lock().unwrap().fw_removed = false;
        let mut made_networks: Vec<String> = Vec::new();
        let mut made_containers: Vec<String> = Vec::new();
        let (before, before_services): (Vec<String>, Vec<String>) = {
            let st = self.state.lock().await;
            (
                st.containers.iter().map(|c| c.name.clone()).collect(),
                st.containers.iter().map(|c| c.service.clone()).collect(),
            )
        };
        let result = self
            .converge_inner(
                plan,
                full,
                opts,
                out,
                &mut made_networks,
                &mut made_containers,
            )
            .await;
        if result.is_err() {
            // Everything that exists now and did not before was made by this up, whether or not
            // the step that made it returned.
            let now: Vec<String> = self
                .state
                .lock()
                .await
                .containers
                .iter()
                .map(|c| c.name.clone())
                .collect();
            for n in now {
                if !before.contains(&n) && !made_containers.contains(&n) {
                    made_containers.push(n);
                }
            }
            // A service that was already running keeps what its rollout left (the rollout
            // itself removed the replicas that failed, or rolled back).
            let st = self.state.lock().await;
            made_containers.retain(|n| {
                st.container(n)
                    .map(|c| !before_services.contains(&c.service))
                    .unwrap_or(false)
            });
        }
        if let Err(e) = &result {
            // A failed `up` removes what it made.
            let _ = out.send(Reply::Message {
                text: format!("up failed: {e:#}; removing what it made"),
            });
            for name in made_containers.iter().rev() {
                self.remove_one(name, Some(Duration::from_secs(2)), out)
                    .await;
            }
            let nets: Vec<_> = {
                let st = self.state.lock().await;
                st.networks
                    .iter()
                    .filter(|n| made_networks.contains(&n.name))
                    .cloned()
                    .collect()
            };
            {
                let mut st = self.state.lock().await;
                st.networks
                    .retain(|x| !nets.iter().any(|n| n.name == x.name));
            }
            self.refresh_dns().await;
            for n in nets {
                for e in self.engine.remove_network(&n).await {
                    tracing::warn!("{e}");
                }
            }
            let empty = {
                let st = self.state.lock().await;
                st.containers.is_empty() && st.networks.is_empty()
            };
            if empty {
                // Nothing of the project is left: no firewall chains, no record, no supervisor.
                self.remove_firewall().await;
                let _ = remove_project_files(&self.engine.paths, &self.project, false);
                let _ = out.send(Reply::Message {
                    text: "\u{0}exit".into(),
                });
            } else {
                self.apply_firewall().await.ok();
            }
        }
        result
    }

    async fn converge_inner(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        full: &ProjectPlan,
        opts: &UpOpts,
        out: &Out,
        made_networks: &mut Vec<String>,
        made_containers: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let selected: Vec<&ServicePlan> = plan.services.iter().collect();
        // A published host port that something else holds is an error before anything starts.
        {
            let st = self.state.lock().await;
            for s in &selected {
                for p in &s.ports {
                    let Some(hp) = p.host_port else { continue };
                    let ours = st.containers.iter().any(|c| {
                        c.ports
                            .iter()
                            .any(|r| r.host_port == hp && r.protocol == p.protocol)
                    });
                    if !ours {
                        berth_network::firewall::check_port_free_for(
                            Some(&self.project),
                            &p.protocol,
                            p.host_ip.as_deref(),
                            hp,
                        )
                        .map_err(|e| anyhow!("service {}: {e}", s.name))?;
                    }
                }
            }
        }
        // Networks used by the selected services.
        let mut used: Vec<String> = Vec::new();
        for s in &selected {
            if s.network_mode.is_none() {
                for n in &s.networks {
                    if !used.contains(&n.key) {
                        used.push(n.key.clone());
                    }
                }
            }
        }
        for key in &used {
            let net = plan
                .network(key)
                .ok_or_else(|| anyhow!("service uses undefined network {key}"))?;
            let exists = self
                .state
                .lock()
                .await
                .networks
                .iter()
                .any(|n| n.name == net.name);
            if exists {
                continue;
            }
            progress(out, "network", &net.name, "Creating");
            let rec = self.engine.ensure_network(net).await?;
            if !net.external {
                made_networks.push(rec.name.clone());
            }
            self.state.lock().await.networks.push(rec);
            progress(out, "network", &net.name, "Created");
        }
        for v in &plan.volumes {
            if v.external {
                if !crate::engine::volumes::volume_data(&self.engine.paths, &v.name).exists() {
                    bail!("external volume {:?} not found", v.name);
                }
                continue;
            }
            let mut st = self.state.lock().await;
            if !st.volumes.iter().any(|x| x.name == v.name) {
                let path = crate::engine::volumes::ensure(&self.engine.paths, &v.name)?;
                st.volumes.push(crate::state::VolumeRecord {
                    key: v.key.clone(),
                    name: v.name.clone(),
                    path,
                    external: false,
                });
                progress(out, "volume", &v.name, "Created");
            }
        }
        self.save().await;

        // Orphans: containers of services no longer in the file.
        let orphans: Vec<String> = {
            let st = self.state.lock().await;
            st.containers
                .iter()
                .filter(|c| !c.oneoff && full.service(&c.service).is_none())
                .map(|c| c.name.clone())
                .collect()
        };
        if !orphans.is_empty() {
            if opts.remove_orphans {
                for o in &orphans {
                    self.remove_one(o, opts.timeout.map(Duration::from_secs), out)
                        .await;
                }
            } else {
                let _ = out.send(Reply::Message {
                    text: format!(
                        "Found orphan containers ({}) for this project. If you removed or renamed this service in your compose file, you can run this command with the --remove-orphans flag to clean it up.",
                        orphans.join(", ")
                    ),
                });
            }
        }

        // The networks exist: their rules (masquerade, isolation, ports of running replicas)
        // go in while the containers are made, instead of after (an nft run is a third of a
        // one-service `up`). The apply after the levels then only adds the new containers'
        // published ports, or finds nothing changed.
        let early_fw = {
            let me = self.clone();
            tokio::spawn(async move { me.apply_firewall().await })
        };
        let levels = self.converge_levels(plan, opts, out, made_containers).await;
        // Over before anything else touches the rules (a failed `up` removes them).
        let early = early_fw.await;
        levels?;
        early.map_err(|e| anyhow!("firewall task failed: {e}"))??;
        self.apply_firewall().await?;
        Ok(())
    }

    /// Start the plan's services level by level (independent services of a level at once).
    async fn converge_levels(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        opts: &UpOpts,
        out: &Out,
        made_containers: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        for level in &plan.levels {
            let mut tasks = Vec::new();
            for svc_name in level {
                let Some(svc) = plan.service(svc_name) else {
                    continue;
                };
                let me = self.clone();
                let svc = svc.clone();
                let plan = plan.clone();
                let opts = opts.clone();
                let out = out.clone();
                tasks.push(tokio::spawn(async move {
                    me.converge_service(&plan, &svc, &opts, &out).await
                }));
            }
            let mut first_err = None;
            for t in tasks {
                match t.await {
                    Ok(Ok(made)) => made_containers.extend(made),
                    Ok(Err(e)) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(anyhow!("task failed: {e}"));
                        }
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Bring one service to its desired replicas and config. Returns the containers it made.
    async fn converge_service(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        opts: &UpOpts,
        out: &Out,
    ) -> anyhow::Result<Vec<String>> {
        // Wait for dependencies' conditions.
        for (dep, condition, required, _restart) in &svc.depends_on {
            if plan.service(dep).is_none() {
                if *required {
                    bail!(
                        "service {:?} depends on undefined service {dep:?}",
                        svc.name
                    );
                }
                continue;
            }
            self.wait_condition(dep, condition, *required).await?;
        }
        let desired = opts
            .scale
            .iter()
            .find(|(s, _)| *s == svc.name)
            .map(|(_, n)| *n)
            .unwrap_or(svc.replicas) as usize;
        let mut existing: Vec<ContainerRecord> = self.service_containers(&svc.name).await;
        existing.sort_by_key(|c| c.number);
        let mut made = Vec::new();
        let timeout = opts.timeout.map(Duration::from_secs);
        // Scale down first, outdated replicas before current ones, highest numbers first.
        if existing.len() > desired {
            let mut order = existing.clone();
            order.sort_by_key(|c| {
                (
                    c.config_hash == svc.config_hash,
                    std::cmp::Reverse(c.number),
                )
            });
            for c in order.iter().take(existing.len() - desired) {
                self.remove_one(&c.name, timeout, out).await;
            }
            existing = self.service_containers(&svc.name).await;
        }
        let outdated: Vec<ContainerRecord> = existing
            .iter()
            .filter(|c| {
                opts.force_recreate || (!opts.no_recreate && c.config_hash != svc.config_hash)
            })
            .cloned()
            .collect();
        if !outdated.is_empty() {
            for c in &outdated {
                if c.config_hash != svc.config_hash {
                    let _ = out.send(Reply::Message {
                        text: format!("{}: configuration changed, recreating", c.name),
                    });
                }
            }
            // Several replicas, or an explicit start-first order: roll replica by replica,
            // gated on health. One replica with the default order: compose's stop-first.
            if !opts.no_start && (svc.update.order_start_first || existing.len() > 1) {
                self.roll(plan, svc, &outdated, opts, out, &mut made)
                    .await?;
            } else {
                for c in &outdated {
                    progress(out, "container", &c.name, "Recreate");
                    self.remove_one(&c.name, timeout, out).await;
                    let name = self.create_one(plan, svc, c.number, out).await?;
                    made.push(name.clone());
                    if !opts.no_start {
                        self.start_one(&name, out).await?;
                    }
                }
            }
        }
        if !opts.no_start {
            for c in self.service_containers(&svc.name).await {
                let running = matches!(
                    c.status,
                    Status::Running | Status::Paused | Status::Restarting
                ) && c
                    .pid
                    .is_some_and(|p| crate::state::pid_matches(p, c.pid_start));
                if !running && !made.contains(&c.name) {
                    self.start_one(&c.name, out).await?;
                } else if running {
                    progress(out, "container", &c.name, "Running");
                }
            }
        }
        let have = self.service_containers(&svc.name).await.len();
        for _ in have..desired {
            let n = self.next_number(&svc.name).await;
            let name = self.create_one(plan, svc, n, out).await?;
            made.push(name.clone());
            if !opts.no_start {
                self.start_one(&name, out).await?;
            }
        }
        self.refresh_dns().await;
        self.apply_firewall().await?;
        Ok(made)
    }

    /// Services without a healthcheck of their own take the image's HEALTHCHECK, as in Docker.
    async fn inherit_image_healthchecks(&self, plan: &mut ProjectPlan) {
        for s in plan
            .services
            .iter_mut()
            .filter(|s| s.healthcheck.is_none() && !s.healthcheck_disabled)
        {
            let store = self.engine.images.clone();
            let image = s.image.clone();
            let img = tokio::task::spawn_blocking(move || store.get(&image)).await;
            if let Ok(Ok(Some(img))) = img {
                s.healthcheck = img
                    .healthcheck
                    .as_ref()
                    .and_then(crate::engine::plan::image_health);
            }
        }
    }

    async fn service_containers(&self, service: &str) -> Vec<ContainerRecord> {
        let st = self.state.lock().await;
        st.containers
            .iter()
            .filter(|c| c.service == service && !c.oneoff)
            .cloned()
            .collect()
    }

    /// New replicas take the next free number, as in compose.
    async fn next_number(&self, service: &str) -> u32 {
        let st = self.state.lock().await;
        st.containers
            .iter()
            .filter(|c| c.service == service)
            .map(|c| c.number)
            .max()
            .unwrap_or(0)
            + 1
    }

    async fn wait_condition(
        &self,
        dep: &str,
        condition: &str,
        required: bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let recs: Vec<ContainerRecord> = {
                let st = self.state.lock().await;
                st.containers
                    .iter()
                    .filter(|c| c.service == dep && !c.oneoff)
                    .cloned()
                    .collect()
            };
            if recs.is_empty() {
                if !required {
                    return Ok(());
                }
            } else {
                match condition {
                    "service_healthy" => {
                        if let Some(c) = recs
                            .iter()
                            .find(|c| c.health.as_deref() == Some("unhealthy"))
                        {
                            bail!(
                                "dependency failed to start: container {} is unhealthy",
                                c.name
                            );
                        }
                        if let Some(c) = recs.iter().find(|c| c.status == Status::Exited) {
                            bail!(
                                "dependency failed to start: container {} exited ({})",
                                c.name,
                                c.exit_code.unwrap_or(-1)
                            );
                        }
                        if recs.iter().all(|c| c.health.as_deref() == Some("healthy")) {
                            return Ok(());
                        }
                        if recs
                            .iter()
                            .all(|c| c.health.is_none() && c.status == Status::Running)
                        {
                            bail!("dependency failed to start: container {} has no healthcheck configured", recs[0].name);
                        }
                    }
                    "service_completed_successfully" => {
                        if let Some(c) = recs
                            .iter()
                            .find(|c| c.status == Status::Exited && c.exit_code != Some(0))
                        {
                            bail!(
                                "service {:?} didn't complete successfully: exit {}",
                                dep,
                                c.exit_code.unwrap_or(-1)
                            );
                        }
                        if recs
                            .iter()
                            .all(|c| c.status == Status::Exited && c.exit_code == Some(0))
                        {
                            return Ok(());
                        }
                    }
                    _ => {
                        if recs.iter().all(|c| c.status != Status::Created) {
                            return Ok(());
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {dep} ({condition})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Remove the project's record and logs (and its run dir).
pub fn remove_project_files(paths: &Paths, project: &str, _volumes: bool) -> anyhow::Result<()> {
    let dir = paths.project(project);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let run: PathBuf = paths.project_run(project);
    if run.exists() {
        let _ = std::fs::remove_dir_all(&run);
    }
    Ok(())
}

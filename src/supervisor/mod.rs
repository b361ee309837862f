//! The per-project supervisor (the watcher): owns the project's containers (it is their child
//! subreaper), copies their output to logs, runs healthchecks, enforces restart policies,
//! serves DNS for the project's networks and converges the project on `up`.
//! CLI commands talk to it over a unix socket (see `proto`).
//!
//! This file owns the `Supervisor` struct and its shared state, the serve loop, request
//! dispatch and the small state helpers every room uses. The rooms, one concern each:
//! - `converge.rs`: `up`, the project converged level by level, a failed `up` undone;
//! - `service.rs`: one service to its desired replicas, `depends_on` conditions;
//! - `rollout.rs`: rolling updates, rollbacks, retiring replicas (decisions:
//!   `engine::rollout`);
//! - `lifecycle.rs`: create/start/stop/remove one container, services in order, `down`;
//! - `spawn.rs`: a container's process through the runtime, its output, its exit watch;
//! - `exits.rs`: exit records and the restart policy (decisions: `engine::restart`);
//! - `health.rs`: healthchecks and unhealthy replacement;
//! - `adopt.rs`: taking running containers back after a supervisor restart;
//! - `oneoff.rs`: `berth run`;
//! - `attach.rs`: attached terminals (`attach`, `run -it`), the pty holder, `run`'s stdin;
//! - `publish.rs`: DNS records, nftables rules, published ports, the forward-policy watch;
//! - `watcher.rs`: `up --watch`; `proto.rs`/`client.rs`: the socket protocol and its client;
//! - `batch.rs`: state writes and DNS swaps coalesced over bursts of events;
//! - `mem.rs`: letting go of the binary's text and read-only data once a burst is over.

mod adopt;
mod attach;
mod batch;
pub mod client;
mod converge;
mod exits;
mod health;
pub mod keeper;
mod lifecycle;
mod mem;
mod oneoff;
pub mod proto;
mod publish;
pub mod respawn;
mod rollout;
mod service;
mod spawn;
mod watcher;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Mutex};

use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::engine::proc::{self, Exit};
use crate::engine::restart::Backoff;
use crate::engine::Engine;
use crate::logs::LogWriter;
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState, Status};
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
    /// Containers being started right now (see `spawn`).
    starting: std::collections::HashSet<String>,
}

pub struct Supervisor {
    engine: Engine,
    project: String,
    state: Mutex<ProjectState>,
    /// Changed only through `replace_plan`, `init_plan` and `put_service_plan`, which count
    /// the changes in `plan_rev` (the DNS update looks at every service again only then).
    plan: Mutex<Option<ProjectPlan>>,
    plan_rev: std::sync::atomic::AtomicU64,
    /// The plan before the current `up`, for rollbacks.
    prev_plan: Mutex<Option<ProjectPlan>>,
    /// Per service, the image id its replicas ran before an `up` replaced them for an
    /// image-only change (rebuilt, pulled or loaded again under the same name): what
    /// `berth rollback SERVICE` goes back to then.
    prev_images: StdMutex<HashMap<String, String>>,
    shared: StdMutex<Shared>,
    /// One state-changing operation at a time (up, down, stop…).
    op: Mutex<()>,
    /// One firewall transaction at a time, so `last_fw` always describes what is in force.
    fw: Mutex<()>,
    /// Held for writing while an `up`'s early firewall apply runs beside the containers'
    /// creation; a container's `start` waits for it (`spawn`), so no container of a new
    /// network runs before the isolation rules that guard it are in.
    fw_gate: Arc<tokio::sync::RwLock<()>>,
    dns: berth_network::dns::DnsServer,
    /// Serves published ports to clients the host would route, while it drops routed traffic
    /// (`berth_network::relay`); empty otherwise.
    relay: StdMutex<berth_network::relay::Relay>,
    /// The last `firewall::routed_traffic_blocked`, refreshed by `watch_forward_policy`.
    routed_blocked: std::sync::atomic::AtomicBool,
    shutdown: tokio::sync::Notify,
    /// State writes and DNS snapshots, coalesced over bursts of events (`batch`).
    saves: batch::Coalesce,
    dns_runs: batch::Coalesce,
    /// The fsyncs of those writes, off the events' path (`batch::DeferredSync`).
    syncs: Arc<batch::DeferredSync>,
    /// The DNS records as last published, and what they were made from (`publish`).
    dns_state: StdMutex<publish::DnsState>,
    /// What the firewall's rules were made from (`publish`).
    fw_state: StdMutex<publish::FwState>,
}

/// Blocking threads of the supervisor: enough to keep the kernel busy on a small host (the
/// create path is mostly kernel work under global locks), few enough to stay small.
const MAX_BLOCKING_THREADS: usize = 8;

/// Give the heap's free pages back after a burst of work (`up`, `down` of containers):
/// glibc keeps them otherwise, and they count in the supervisor's PSS for its whole life.
/// The binary's text and read-only data that the burst ran are let go of too (`mem.rs`).
pub(super) fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    mem::release_text();
}

/// Entry point of `berth __supervisor`: the keeper (see `keeper.rs`), which starts the
/// supervisor proper as its child.
pub fn main(project: &str) -> anyhow::Result<u8> {
    if !keeper::is_supervisor() {
        return keeper::run(project);
    }
    // Before any thread (it edits the environment).
    client::hold_ready_fd(client::take_ready_fd());
    proc::set_child_subreaper().context("becoming a child subreaper")?;
    // Footprint of a mostly idle process: two malloc arenas instead of one per thread that
    // ever allocated (8 per core), and at most 8 blocking threads (the create path's kernel
    // work: snapshots, netns, veths) that leave 2 s after a burst instead of 10 s. An `up` of
    // 50 containers used to leave ~90 threads and their arenas behind it for a while.
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(2))
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
    // One supervisor per project: two CLI commands that both found none (a respawn and an
    // `up`) may each start one; the second leaves quietly and its CLI talks to the first.
    let Some(_one) = sole_supervisor(&paths.project_run(&project).join("supervisor.lock"))? else {
        tracing::info!("another supervisor serves project {project}");
        return Ok(());
    };
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    client::signal_ready();
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
        plan_rev: Default::default(),
        prev_plan: Mutex::new(None),
        prev_images: StdMutex::new(HashMap::new()),
        shared: StdMutex::new(Shared {
            logs: HashMap::new(),
            backoff: HashMap::new(),
            live: HashMap::new(),
            starting: Default::default(),
            draining: Default::default(),
            watching: false,
            last_fw: None,
            fw_removed: false,
        }),
        op: Mutex::new(()),
        fw: Mutex::new(()),
        fw_gate: Arc::new(tokio::sync::RwLock::new(())),
        dns: berth_network::dns::DnsServer::start(),
        relay: StdMutex::new(berth_network::relay::Relay::new()),
        // Rootless: published ports always go through the relay, bound in the host's
        // netns (src/rootless.rs).
        routed_blocked: std::sync::atomic::AtomicBool::new(crate::rootless::active()),
        shutdown: tokio::sync::Notify::new(),
        saves: Default::default(),
        dns_runs: Default::default(),
        syncs: Default::default(),
        dns_state: Default::default(),
        fw_state: Default::default(),
    });
    tokio::spawn(sup.clone().watch_forward_policy());
    sup.adopt().await;
    trim_heap();
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
    sup.engine.runtime.shutdown().await;
    // Exit now: nothing is left to finish, and a runtime shutdown could wait on idle tasks.
    std::process::exit(0);
}

impl Supervisor {
    /// `full` is the plan from now on (an `up`); returns the one before.
    async fn replace_plan(&self, full: ProjectPlan) -> Option<ProjectPlan> {
        let mut p = self.plan.lock().await;
        self.plan_rev
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.replace(full)
    }

    /// `full` is the plan if there is none yet (a `run` before any `up`).
    async fn init_plan(&self, full: &ProjectPlan) {
        let mut p = self.plan.lock().await;
        if p.is_none() {
            self.plan_rev
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *p = Some(full.clone());
        }
    }

    /// `svc` replaces the plan of its service (a rollout's new image, a rollback).
    async fn put_service_plan(&self, svc: &ServicePlan) {
        let mut p = self.plan.lock().await;
        if let Some(s) = p
            .as_mut()
            .and_then(|p| p.services.iter_mut().find(|s| s.name == svc.name))
        {
            *s = svc.clone();
            self.plan_rev
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn service_plan(&self, service: &str) -> Option<ServicePlan> {
        self.plan
            .lock()
            .await
            .as_ref()
            .and_then(|p| p.service(service).cloned())
    }

    async fn handle(self: Arc<Self>, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        // A request is one line, most far below 1 KiB (longer ones read in pieces): not the
        // default 8 KiB, zeroed on every connection.
        let mut lines = BufReader::with_capacity(1024, rd).lines();
        let Ok(Some(line)) = lines.next_line().await else {
            return;
        };
        let req: Result<Request, _> = serde_json::from_str(&line);
        if let Ok(Request::Attach { name }) = req {
            // The connection becomes the terminal's (see `attach.rs`).
            return self.attach(lines.into_inner().into_inner(), wr, name).await;
        }
        // What the request does to containers is recorded for `berth events`; not a `down`'s,
        // which removes the project's record, event log included, as it goes.
        let record_events = !matches!(req, Ok(Request::Down { .. }));
        let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
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
            if let Reply::Progress {
                kind, name, state, ..
            } = &reply
            {
                if record_events {
                    self.object_event(kind, name, state);
                }
            }
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
        mem::quiet_later();
        if exit_after {
            self.shutdown.notify_one();
        }
    }

    async fn dispatch(self: &Arc<Self>, req: Request, out: &Out) -> anyhow::Result<i32> {
        match req {
            Request::Ping => Ok(0),
            Request::Attach { .. } => Err(anyhow!("attach is served on its own connection")),
            Request::StdinOpened { name } => {
                attach::stdin_opened(&self.io_dir(), &name);
                Ok(0)
            }
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
            Request::Rm { name, keep_volumes } => {
                self.remove_one_with(&name, Some(Duration::from_secs(10)), out, !keep_volumes)
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
        st.of_services(services)
            .into_iter()
            .filter(|c| !c.oneoff)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Write what changed in the state: the changed containers' files (and the project's
    /// record if it changed; see `state.rs`). Concurrent saves (a burst of container events)
    /// share one run that starts after each of them asked (`batch::Coalesce`).
    async fn save(&self) {
        self.saves
            .run(|| async {
                let mut st = self.state.lock().await;
                if st.containers.is_empty()
                    && st.networks.is_empty()
                    && !self.engine.paths.project(&self.project).exists()
                {
                    // The record was removed on purpose (down, or a failed first up): keep it
                    // gone.
                    return;
                }
                // Encoded under the lock (only what changed), then written and fsynced on a
                // blocking thread with the lock released: the other containers' work goes on
                // meanwhile. Runs never overlap (`Coalesce`), so writes land in order. The
                // directories are made under the lock, and the write does not make them
                // again: a `down` that removed the record meanwhile makes the write fail
                // instead of bringing it back.
                let batch = match st.save_batch(&self.engine.paths) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("saving state: {e:#}");
                        return;
                    }
                };
                drop(st);
                if batch.is_empty() {
                    return;
                }
                let (names, project) = (batch.names(), batch.has_project());
                // Written without the fsyncs, which follow off this path (see `DeferredSync`
                // for what a crash at each point leaves).
                // On a thread of its own, not the blocking pool: during a burst the pool is
                // full of snapshot, netns and veth work, and a write queued behind it held
                // every container's create and start (86 ms per save at flat-50).
                let (tx, rx) = tokio::sync::oneshot::channel();
                let spawned =
                    std::thread::Builder::new()
                        .name("berth-save".into())
                        .spawn(move || {
                            let _ = tx.send(batch.write_unsynced());
                        });
                let written = match spawned {
                    Ok(_) => rx
                        .await
                        .unwrap_or_else(|_| Err(anyhow!("state writer ended"))),
                    Err(e) => Err(anyhow!("starting the state writer: {e}")),
                };
                match written {
                    Ok(w) => self.syncs.later(w),
                    Err(e) => {
                        tracing::error!("saving state: {e:#}");
                        // Written again by the next save.
                        self.state.lock().await.unsaved(names, project);
                    }
                }
            })
            .await
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

    async fn service_containers(&self, service: &str) -> Vec<ContainerRecord> {
        let st = self.state.lock().await;
        st.of_service(service)
            .into_iter()
            .filter(|c| !c.oneoff)
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
}

/// An exclusive lock on `path` held for the life of the returned file; None if another process
/// holds it.
fn sole_supervisor(path: &std::path::Path) -> anyhow::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(f))
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

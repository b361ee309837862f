//! Running one container's process: the runtime's `create` (re-exec of `berth __runtime`)
//! with its output wired to stream FIFOs or a pty, the in-process `start`, the log writer
//! kept across runs, and the pidfd wait that hands the exit to `exits.rs`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::sync::watch;

use super::attach::{self, PtyHub};
use super::{health, keeper, Live, Supervisor};
use crate::engine::io;
use crate::engine::proc::{self, Exit};
use crate::engine::runtime::CreateIo;
use crate::logs::LogWriter;
use crate::state::{now_rfc3339, Status};

/// How many containers are made at once, in each of the two heavy steps (preparing the
/// rootfs, netns and veth; the runtime's `create`): 8 per core. Both are mostly kernel work
/// under global locks (rtnl, the mount namespace lock, cgroup locks) with fsyncs between;
/// hundreds at once (an `up` of 500 services) only queue on those locks and interleave every
/// container's steps, so that the first one starts when the last is prepared. Bounded, the
/// containers flow through the steps in order. Not fewer: each step also waits on the disk
/// (a flat-50 `up` on 2 cores was slower with 4 at once than with 16, debug build, same run).
pub(super) fn create_bound() -> &'static tokio::sync::Semaphore {
    static BOUND: std::sync::LazyLock<tokio::sync::Semaphore> =
        std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(bound_width()));
    &BOUND
}

/// `BERTH_CREATE_PARALLEL=N` in the supervisor's environment overrides the width (benches
/// compare widths with it; a large N is the unbounded behaviour).
fn bound_width() -> usize {
    if let Some(n) = std::env::var("BERTH_CREATE_PARALLEL")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n.min(tokio::sync::Semaphore::MAX_PERMITS);
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (8 * cores).clamp(8, 64)
}

/// The second bound (the runtime's `create`), apart from the first so that a container
/// waiting for one never holds the other.
fn runtime_bound() -> &'static tokio::sync::Semaphore {
    static BOUND: std::sync::LazyLock<tokio::sync::Semaphore> =
        std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(bound_width()));
    &BOUND
}

impl Supervisor {
    pub(super) async fn spawn(self: &Arc<Self>, name: &str) -> anyhow::Result<()> {
        // One start of a container at a time: a restart by the policy and a start asked for
        // (`up` right after an adoption, `start`) may meet; the second finds it starting.
        let Some(_starting) = Starting::claim(self, name) else {
            return Ok(());
        };
        // A container starts: the project has rules again (see `fw_removed`).
        self.shared.lock().unwrap().fw_removed = false;
        // Lock order: never hold `state` and `plan` together.
        let rec = self
            .state
            .lock()
            .await
            .container(name)
            .cloned()
            .ok_or_else(|| anyhow!("no such container {name}"))?;
        let svc = self.service_plan(&rec.service).await;
        // A previous run's runtime state (after an exit) goes first; the bundle stays.
        let _ = self.engine.runtime.delete(name, true).await;
        // After a reboot the same container starts again: its kernel side first (adopt.rs).
        if crate::engine::container::kernel_side_gone(&self.engine.paths, &rec) {
            let nets = self.state.lock().await.networks.clone();
            self.engine
                .restore_kernel_side(&rec, &nets, svc.as_ref())
                .await?;
        }
        let (max_size, max_file) = svc
            .as_ref()
            .map(|s| (s.log_max_size, s.log_max_file))
            // No plan yet (an adopting supervisor): what the container was made with.
            .unwrap_or((rec.log_max_size, rec.log_max_file.unwrap_or(1)));
        let log = self.log_writer(name, max_size, max_file)?;
        let io_dir = self.io_dir();
        // What the runtime will do: the bundle's own `process.terminal` (a one-off may differ
        // from its service).
        let (pid, drains) = if crate::engine::container::bundle_terminal(&rec.dir) {
            // tty: true. The runtime makes a pty in the container and sends its master over a
            // console socket; stdin, stdout and stderr are all the pty's slave. Its output
            // goes to the log as "stdout". The supervisor holds the master for the container's
            // life (reading; `attach` writes the caller's input to it; without an attach,
            // nothing is ever written, as Docker leaves a tty's input alone). A holder process
            // keeps a dup so a supervisor crash does not hang the terminal up and an adopting
            // supervisor takes the master back (see `attach.rs`).
            let console = io::ConsoleSocket::bind(&io::console_path(&io_dir, name))?;
            let cio = CreateIo::default();
            let pid = {
                let _bound = runtime_bound().acquire().await?;
                self.engine
                    .runtime
                    .create(name, &rec.dir, cio, Some(console.path()))
                    .await?
            };
            let master = match console.receive(Duration::from_secs(5)).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = self.engine.runtime.delete(name, true).await;
                    return Err(e).context("receiving the container's pty master");
                }
            };
            if let Err(e) = attach::keep_master(&io_dir, name, &master) {
                tracing::warn!("{name}: its pty will not outlive this supervisor: {e:#}");
            }
            // Shared with attached terminals (`attach.rs`); a one-off (`run -it`) keeps its
            // first output until its CLI attaches.
            let tap = PtyHub::register(name, master.try_clone()?, attach::take_hold(name));
            let hub = name.to_string();
            let copy = async move {
                io::copy_pty_to_log(master, log, None, Some(tap)).await;
                PtyHub::close(&hub);
            };
            (pid, vec![tokio::spawn(copy)])
        } else {
            // stdout/stderr: named FIFOs the container holds read-write, so its output
            // outlives a supervisor crash (see engine::io); only the read sides stay here.
            let (out_r, out_w) = io::fifo_pair(&io::fifo_path(&io_dir, name, "stdout"))?;
            let (err_r, err_w) = io::fifo_pair(&io::fifo_path(&io_dir, name, "stderr"))?;
            // stdin_open: the container's stdin stays open (a FIFO `attach` writes to, see
            // `attach::stdin_fifo`) instead of /dev/null, so programs that read stdin wait as
            // they would under Docker.
            let stdin = if let Some(fd) = attach::take_stdin(&io_dir, name)? {
                // `run` without a tty: what its CLI reads (see `attach.rs`).
                Some(fd)
            } else if svc.as_ref().is_some_and(|s| s.stdin_open) {
                Some(attach::stdin_fifo(&io_dir, name)?)
            } else {
                None
            };
            let cio = CreateIo {
                stdin,
                stdout: Some(out_w),
                stderr: Some(err_w),
            };
            // `create` hands the write sides to the container and drops ours with its
            // command: the copies see EOF when the container's last process is gone.
            let pid = {
                let _bound = runtime_bound().acquire().await?;
                self.engine
                    .runtime
                    .create(name, &rec.dir, cio, None)
                    .await?
            };
            (
                pid,
                vec![
                    tokio::spawn(io::copy_to_log(out_r, "stdout", log.clone(), None)),
                    tokio::spawn(io::copy_to_log(err_r, "stderr", log, None)),
                ],
            )
        };
        let pidfd = Arc::new(proc::pidfd_open(pid).context("opening the container's pidfd")?);
        // Record the run before starting it, so an instant exit is recorded after it, never
        // overwritten by it.
        {
            let mut st = self.state.lock().await;
            if let Some(c) = st.container_mut(name) {
                c.status = Status::Running;
                c.pid = Some(pid);
                c.pid_start = crate::state::pid_start_time(pid);
                c.started_at = Some(now_rfc3339());
                c.finished_at = None;
                c.exit_code = None;
                c.health = svc
                    .as_ref()
                    .and_then(|s| s.healthcheck.as_ref())
                    .filter(|h| h.enabled())
                    .map(|_| "starting".to_string());
            }
        }
        self.save().await;
        let start = Instant::now();
        self.watch_exit(name, pidfd.clone(), start, pid, drains);
        // An `up`'s rules for its networks first (see `fw_gate`); free otherwise.
        drop(self.fw_gate.read().await);
        if let Err(e) = self.engine.runtime.start(name).await {
            // A process that already ran and exited is not a failed start.
            let exited = self
                .state
                .lock()
                .await
                .container(name)
                .map(|c| c.status == Status::Exited)
                .unwrap_or(false);
            if !exited {
                let _ = proc::pidfd_send_signal(&pidfd, libc::SIGKILL);
                return Err(e);
            }
        }
        // Stopped by the user while this run was being set up: end it now.
        let stopped = self
            .state
            .lock()
            .await
            .container(name)
            .map(|c| c.stopped_by_user)
            .unwrap_or(false);
        if stopped {
            let _ = proc::pidfd_send_signal(&pidfd, libc::SIGKILL);
        }
        self.refresh_dns().await;
        if let Some(h) = svc
            .as_ref()
            .and_then(|s| s.healthcheck.clone())
            .filter(|h| h.enabled())
        {
            health::spawn(self.clone(), name.to_string(), h, pid);
        }
        Ok(())
    }

    /// The container's log writer, one per container across its runs.
    pub(super) fn log_writer(
        &self,
        name: &str,
        max_size: Option<u64>,
        max_file: u32,
    ) -> anyhow::Result<Arc<StdMutex<LogWriter>>> {
        let mut sh = self.shared.lock().unwrap();
        if let Some(l) = sh.logs.get(name) {
            return Ok(l.clone());
        }
        let project_dir = self.engine.paths.project(&self.project);
        let w = LogWriter::open(
            &crate::logs::log_path(&project_dir, name),
            max_size,
            max_file,
        )?;
        let l = Arc::new(StdMutex::new(w));
        sh.logs.insert(name.to_string(), l.clone());
        Ok(l)
    }

    /// Where the project's containers' stream FIFOs are.
    pub(super) fn io_dir(&self) -> PathBuf {
        io::io_dir(&self.engine.paths.project_run(&self.project))
    }

    /// Wait for the container's exit; `drains` are its output copies, which finish once its
    /// last process is gone: the exit is recorded after its output is in the log (bounded, in
    /// case a process outside its pid namespace keeps the stream open).
    pub(super) fn watch_exit(
        self: &Arc<Self>,
        name: &str,
        pidfd: Arc<OwnedFd>,
        started: Instant,
        pid: i32,
        drains: Vec<tokio::task::JoinHandle<()>>,
    ) {
        let (tx, rx) = watch::channel(None);
        {
            let mut sh = self.shared.lock().unwrap();
            sh.live.insert(
                name.to_string(),
                Live {
                    pidfd: pidfd.clone(),
                    exit: rx,
                },
            );
        }
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            // The wait needs its own fd: the pidfd is shared for signals.
            let dup = match pidfd.try_clone() {
                Ok(d) => d,
                Err(_) => return,
            };
            let mut exit = proc::wait_pidfd(dup).await.unwrap_or(Exit::Unknown);
            if exit == Exit::Unknown {
                // Adopted, and reaped by the keeper before the kernel told us: its record.
                let start = me
                    .state
                    .lock()
                    .await
                    .container(&name)
                    .and_then(|c| c.pid_start);
                if let Some(e) = keeper::recorded_exit(&me.engine.paths, &me.project, pid, start) {
                    exit = e;
                }
            }
            let _ = tx.send(Some(exit));
            let all = futures_util::future::join_all(drains);
            let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
            me.on_exit(&name, exit, started.elapsed(), pid).await;
        });
    }
}

/// A container being started (see `spawn`); released when dropped.
struct Starting<'a> {
    sup: &'a Supervisor,
    name: String,
}

impl<'a> Starting<'a> {
    fn claim(sup: &'a Supervisor, name: &str) -> Option<Starting<'a>> {
        let mut sh = sup.shared.lock().unwrap();
        if !sh.starting.insert(name.to_string()) {
            return None;
        }
        Some(Starting {
            sup,
            name: name.to_string(),
        })
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.sup.shared.lock().unwrap().starting.remove(&self.name);
    }
}

//! Adoption: a supervisor that starts while the project's containers run (after a crash or
//! a kill of the previous one) takes them back: pidfds, exit watching, their output FIFOs;
//! and those that exited meanwhile get their real exit code and their restart policy; those
//! whose kernel state went with a reboot are left exited for `berth resume`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{keeper, respawn, Supervisor};
use crate::engine::io;
use crate::engine::proc::{self, Exit};
use crate::state::{ContainerRecord, Status};

impl Supervisor {
    /// After a supervisor restart: watch the containers that still run (same pid and start
    /// time) and copy their output again from their stream FIFOs, starting with what they
    /// wrote while no supervisor read (it waited in the pipes). Not our children: the exit
    /// status comes from the pidfd (see `proc::wait_pidfd`). Containers that exited while no
    /// supervisor ran get their real exit code (from the keeper's record, see `keeper.rs`) and
    /// then their restart policy, with Docker's backoff from now; one that was waiting for
    /// its restart delay gets its policy again.
    pub(super) async fn adopt(self: &Arc<Self>) {
        let recs: Vec<ContainerRecord> = self.state.lock().await.containers.clone();
        let mut adopted = Vec::new();
        let mut gone: Vec<(String, Exit)> = Vec::new();
        // Lost with their kernel state (the host rebooted): `berth resume` (or `start`) brings
        // them back through an `up`, which makes the networks and firewall first; the same
        // containers then start again over their kept bundle (`spawn.rs`).
        let mut rebooted: Vec<String> = Vec::new();
        for c in recs {
            match (c.pid, c.status) {
                (Some(pid), Status::Running | Status::Paused) => {
                    // The pidfd first, then the check: it then surely names the recorded process.
                    let fd = proc::pidfd_open(pid);
                    if !crate::state::pid_matches(pid, c.pid_start) {
                        let exit = keeper::recorded_exit(
                            &self.engine.paths,
                            &self.project,
                            pid,
                            c.pid_start,
                        )
                        .unwrap_or(Exit::Unknown);
                        self.record_exit(&c.name, exit, None).await;
                        if crate::engine::container::kernel_side_gone(&self.engine.paths, &c) {
                            rebooted.push(c.name.clone());
                        } else {
                            gone.push((c.name.clone(), exit));
                        }
                        continue;
                    }
                    let Ok(fd) = fd else {
                        continue;
                    };
                    self.adopt_running(&c, fd, pid);
                    adopted.push(c.name.clone());
                }
                (None, Status::Restarting) => {
                    // The previous supervisor died during its restart delay.
                    let exit = Exit::Code(c.exit_code.unwrap_or(255));
                    self.set_status(&c.name, Status::Exited).await;
                    if crate::engine::container::kernel_side_gone(&self.engine.paths, &c) {
                        rebooted.push(c.name.clone());
                    } else {
                        gone.push((c.name.clone(), exit));
                    }
                }
                _ => {}
            }
        }
        self.refresh_dns().await;
        if let Ok(by) = std::env::var(respawn::RESPAWNED_BY_ENV) {
            self.event(&format!(
                "supervisor started again by `berth {by}` (the previous one was gone); adopted {} running container(s){}",
                adopted.len(),
                if adopted.is_empty() { String::new() } else { format!(": {}", adopted.join(", ")) }
            ));
        } else if !adopted.is_empty() || !gone.is_empty() {
            self.event(&format!(
                "supervisor started; adopted {} running container(s)",
                adopted.len()
            ));
        }
        if !rebooted.is_empty() {
            self.event(&format!(
                "the kernel state of {} is gone (the host rebooted): `berth resume` brings back what the restart policies say",
                rebooted.join(", ")
            ));
        }
        for (name, exit) in gone {
            let me = self.clone();
            tokio::spawn(async move {
                me.apply_restart_policy(&name, exit, Duration::ZERO, true)
                    .await
            });
        }
    }

    fn adopt_running(self: &Arc<Self>, c: &ContainerRecord, fd: std::os::fd::OwnedFd, pid: i32) {
        let mut drains = Vec::new();
        match self.log_writer(&c.name, c.log_max_size, c.log_max_file.unwrap_or(1)) {
            Ok(log) => {
                // A `tty: true` container: its pty master, kept by the previous supervisor's
                // holder (see `attach.rs`), logged and served to `attach` again.
                if crate::engine::container::bundle_terminal(&c.dir) {
                    let master = super::attach::take_back(&self.io_dir(), &c.name);
                    let dup = master.as_ref().and_then(|m| m.try_clone().ok());
                    if let (Some(master), Some(dup)) = (master, dup) {
                        let tap = super::attach::PtyHub::register(&c.name, dup, false);
                        let name = c.name.clone();
                        let log = log.clone();
                        drains.push(tokio::spawn(async move {
                            io::copy_pty_to_log(master, log, None, Some(tap)).await;
                            super::attach::PtyHub::close(&name);
                        }));
                    }
                }
                for stream in ["stdout", "stderr"] {
                    // Absent for containers started before stream FIFOs existed.
                    let path = io::fifo_path(&self.io_dir(), &c.name, stream);
                    if let Ok(rd) = io::open_fifo_reader(&path) {
                        drains.push(tokio::spawn(io::copy_to_log(rd, stream, log.clone(), None)));
                    }
                }
            }
            Err(e) => tracing::warn!("{}: opening its log: {e:#}", c.name),
        }
        self.watch_exit(&c.name, Arc::new(fd), Instant::now(), pid, drains);
    }
}

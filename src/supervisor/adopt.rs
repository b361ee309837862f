//! Adoption: a supervisor that starts while the project's containers run (after a crash or
//! a kill of the previous one) takes them back: pidfds, exit watching, their output FIFOs.

use std::sync::Arc;
use std::time::Instant;

use super::Supervisor;
use crate::engine::io;
use crate::engine::proc::{self, Exit};
use crate::state::{ContainerRecord, Status};

impl Supervisor {
    /// After a supervisor restart: watch the containers that still run (same pid and start
    /// time) and copy their output again from their stream FIFOs, starting with what they
    /// wrote while no supervisor read (it waited in the pipes). Not our children: the exit
    /// status comes from the pidfd (see `proc::wait_pidfd`).
    pub(super) async fn adopt(self: &Arc<Self>) {
        let recs: Vec<ContainerRecord> = self.state.lock().await.containers.clone();
        for c in recs {
            let (Some(pid), Status::Running | Status::Paused) = (c.pid, c.status) else {
                continue;
            };
            // The pidfd first, then the check: it then surely names the recorded process.
            let fd = proc::pidfd_open(pid);
            if !crate::state::pid_matches(pid, c.pid_start) {
                self.record_exit(&c.name, Exit::Unknown, None).await;
                continue;
            }
            let Ok(fd) = fd else {
                continue;
            };
            let mut drains = Vec::new();
            match self.log_writer(&c.name, c.log_max_size, c.log_max_file.unwrap_or(1)) {
                Ok(log) => {
                    for stream in ["stdout", "stderr"] {
                        // Absent for containers started before stream FIFOs existed.
                        let path = io::fifo_path(&self.io_dir(), &c.name, stream);
                        if let Ok(rd) = io::open_fifo_reader(&path) {
                            drains.push(tokio::spawn(io::copy_to_log(
                                rd,
                                stream,
                                log.clone(),
                                None,
                            )));
                        }
                    }
                }
                Err(e) => tracing::warn!("{}: opening its log: {e:#}", c.name),
            }
            self.watch_exit(&c.name, Arc::new(fd), Instant::now(), pid, drains);
        }
        self.refresh_dns().await;
    }
}

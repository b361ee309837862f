//! What happens when a container's process ends: the exit is recorded (code, time, a newer
//! run left alone), and the restart policy decides (`engine::restart`: Docker's backoff,
//! `deploy.restart_policy`'s delay, window and max_attempts) whether and when it runs again.
//! The decision is `Backoff::on_exit`; this file carries it out. Unhealthy replacement is in
//! `health.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Supervisor;
use crate::engine::proc::Exit;
use crate::state::{now_rfc3339, Status};

impl Supervisor {
    /// Record the end of the run of `pid` (a later run of the same container is left alone).
    pub(super) async fn record_exit(&self, name: &str, exit: Exit, pid: Option<i32>) {
        let mut died = false;
        {
            let mut st = self.state.lock().await;
            if let Some(c) = st
                .container_mut(name)
                .filter(|c| pid.is_none() || c.pid == pid)
            {
                died = true;
                c.status = Status::Exited;
                c.exit_code = Some(exit.code());
                c.finished_at = Some(now_rfc3339());
                c.pid = None;
                c.pid_start = None;
                if c.health.is_some() {
                    c.health = None;
                }
            }
        }
        self.save().await;
        if died {
            self.object_event("container", name, "Died");
        }
    }

    pub(super) async fn on_exit(
        self: &Arc<Self>,
        name: &str,
        exit: Exit,
        ran_for: Duration,
        pid: i32,
    ) {
        self.record_exit(name, exit, Some(pid)).await;
        let newer_run = self
            .state
            .lock()
            .await
            .container(name)
            .map(|c| c.pid.is_some())
            .unwrap_or(true);
        if newer_run {
            return;
        }
        self.refresh_dns().await;
        let _ = self.apply_firewall().await;
        self.apply_restart_policy(name, exit, ran_for, false).await;
    }

    /// The restart policy after an exit (recorded already): restart after the backoff's
    /// delay, or leave it exited. `unsupervised`: it exited while no supervisor ran (found on
    /// adoption); the decision is logged in `events`.
    pub(super) async fn apply_restart_policy(
        self: &Arc<Self>,
        name: &str,
        exit: Exit,
        ran_for: Duration,
        unsupervised: bool,
    ) {
        let (user_stop, service, recorded) = {
            let st = self.state.lock().await;
            match st.container(name) {
                Some(c) => (c.stopped_by_user, c.service.clone(), c.restart.clone()),
                None => return,
            }
        };
        // The policy the container was made with (a one-off has none; an adopting supervisor
        // has no plan yet); the service's for records older than that field.
        let policy = match recorded {
            Some(p) => p,
            None => self
                .service_plan(&service)
                .await
                .map(|s| s.restart)
                .unwrap_or_default(),
        };
        let delay = {
            let mut sh = self.shared.lock().unwrap();
            sh.live.remove(name);
            let b = sh.backoff.entry(name.to_string()).or_default();
            b.on_exit(&policy, exit.code(), ran_for, user_stop, Instant::now())
        };
        if unsupervised {
            self.event(&format!(
                "{name} exited with {} while no supervisor ran; {}",
                exit.code(),
                match delay {
                    Some(d) => format!("restart policy: restarting in {d:?}"),
                    None => "restart policy: it stays exited".to_string(),
                }
            ));
        }
        let Some(delay) = delay else { return };
        tracing::info!(
            "{name} exited with {}; restarting in {delay:?}",
            exit.code()
        );
        self.set_status(name, Status::Restarting).await;
        tokio::time::sleep(delay).await;
        // Stopped by the user while we waited?
        let still = {
            let st = self.state.lock().await;
            st.container(name)
                .map(|c| !c.stopped_by_user && c.status == Status::Restarting)
                .unwrap_or(false)
        };
        if !still {
            // Stopped by the user during the delay: it stays exited.
            let mut st = self.state.lock().await;
            if let Some(c) = st
                .container_mut(name)
                .filter(|c| c.status == Status::Restarting)
            {
                c.status = Status::Exited;
            }
            drop(st);
            self.save().await;
            return;
        }
        {
            let mut st = self.state.lock().await;
            if let Some(c) = st.container_mut(name) {
                c.restart_count += 1;
            }
        }
        match self.spawn(name).await {
            Ok(()) => self.object_event("container", name, "Started"),
            Err(e) => {
                tracing::error!("restarting {name}: {e:#}");
                self.set_status(name, Status::Exited).await;
            }
        }
    }
}

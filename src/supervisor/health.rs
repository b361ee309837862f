//! Healthchecks (Docker's semantics): run the test through the runtime's exec every
//! `interval` (`start_interval` during `start_period`), fail a probe after `timeout`, become
//! unhealthy after `retries` consecutive failures; failures during the start period do not
//! count. The last outputs are kept for `inspect`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::plan::HealthPlan;
use crate::engine::runtime::ExecOpts;
use crate::state::Status;

use super::Supervisor;

pub fn probe_args(test: &[String]) -> Option<Vec<String>> {
    match test.first().map(String::as_str) {
        Some("CMD") => Some(test[1..].to_vec()),
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]),
        Some("NONE") | None => None,
        // A bare list is taken as CMD (what the loader should already have normalised).
        Some(_) => Some(test.to_vec()),
    }
}

pub fn spawn(sup: Arc<Supervisor>, name: String, h: HealthPlan, pid: i32) {
    tokio::spawn(async move {
        let Some(args) = probe_args(&h.test) else {
            return;
        };
        let interval = if h.interval.is_zero() {
            Duration::from_secs(30)
        } else {
            h.interval
        };
        let timeout = if h.timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            h.timeout
        };
        let retries = if h.retries == 0 { 3 } else { h.retries };
        let start_interval = if h.start_interval.is_zero() {
            Duration::from_secs(5)
        } else {
            h.start_interval
        };
        let started = Instant::now();
        let mut failures = 0u32;
        let mut healthy_once = false;
        loop {
            let in_start = started.elapsed() < h.start_period && !healthy_once;
            tokio::time::sleep(if in_start {
                start_interval.min(interval)
            } else {
                interval
            })
            .await;
            // Still the same run of the same container?
            let alive = {
                let st = sup.state.lock().await;
                st.container(&name)
                    .map(|c| c.pid == Some(pid) && c.status == Status::Running)
                    .unwrap_or(false)
            };
            if !alive {
                return;
            }
            let ok = run_probe(&sup, &name, &args, timeout).await;
            let new_health = if ok {
                failures = 0;
                healthy_once = true;
                Some("healthy")
            } else if started.elapsed() < h.start_period && !healthy_once {
                None
            } else {
                failures += 1;
                if failures >= retries {
                    Some("unhealthy")
                } else {
                    None
                }
            };
            if let Some(hs) = new_health {
                let changed = {
                    let mut st = sup.state.lock().await;
                    match st.container_mut(&name) {
                        Some(c) if c.pid == Some(pid) && c.health.as_deref() != Some(hs) => {
                            c.health = Some(hs.to_string());
                            true
                        }
                        _ => false,
                    }
                };
                if changed {
                    sup.save().await;
                    // Who takes traffic depends on health: DNS and port backends follow.
                    sup.refresh_dns().await;
                    let _ = sup.apply_firewall().await;
                    if hs == "unhealthy" {
                        sup.on_unhealthy(&name).await;
                    }
                }
            }
        }
    });
}

async fn run_probe(sup: &Supervisor, name: &str, args: &[String], timeout: Duration) -> bool {
    let opts = ExecOpts {
        args: args.to_vec(),
        capture: true,
        ..Default::default()
    };
    let Ok(child) = sup.engine.runtime.exec(name, &opts) else {
        return false;
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out.status.success(),
        _ => false,
    }
}

impl Supervisor {
    /// Swarm semantics for services with `deploy.restart_policy`: an unhealthy replica is
    /// replaced. Plain `restart:` keeps compose's behaviour (reported, not restarted).
    async fn on_unhealthy(&self, name: &str) {
        let service = self
            .state
            .lock()
            .await
            .container(name)
            .map(|c| c.service.clone());
        let replace = match service {
            Some(s) => self
                .service_plan(&s)
                .await
                .map(|p| p.restart.replace_unhealthy)
                .unwrap_or(false),
            None => false,
        };
        if replace {
            tracing::info!("{name} is unhealthy: replacing it");
            self.signal(name, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_forms() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(probe_args(&s(&["CMD", "true"])), Some(s(&["true"])));
        assert_eq!(
            probe_args(&s(&["CMD-SHELL", "wget -q -O- localhost"])),
            Some(s(&["/bin/sh", "-c", "wget -q -O- localhost"]))
        );
        assert_eq!(probe_args(&s(&["NONE"])), None);
        assert_eq!(probe_args(&[]), None);
    }
}

//! Rolling updates (Swarm's `update_config` on one host) and rollbacks (`rollback_config`,
//! automatic on `failure_action: rollback`, or `berth rollback SERVICE` by hand): batches,
//! start-first or stop-first, each new replica gated on health or `monitor`, the failure
//! ratio, retiring replicas (out of DNS and port backends, drain, stop). The decisions are
//! `engine::rollout`'s pure functions; this file carries them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::proto::{Reply, UpOpts};
use super::{progress, Out, Supervisor};
use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::engine::rollout::{self, Readiness, Rollout, Verdict};
use crate::state::{ContainerRecord, ProjectSource};

/// How long a replica leaving service keeps serving in-flight requests before its stop signal.
const DRAIN: Duration = Duration::from_secs(1);

impl Supervisor {
    /// `berth rollback SERVICE`: roll the service back to the configuration it ran before the
    /// last `up` that changed it.
    pub(super) async fn rollback_by_hand(
        self: &Arc<Self>,
        source: ProjectSource,
        service: &str,
        out: &Out,
    ) -> anyhow::Result<()> {
        // The last change was the image's alone: back to the image the replaced replicas ran,
        // by id, with the configuration they run now.
        let prev_image = self.prev_images.lock().unwrap().get(service).cloned();
        if let Some(id) = prev_image {
            let current = self.service_containers(service).await;
            let plan = self.plan.lock().await.clone();
            if let Some((plan, mut svc)) = plan.and_then(|p| {
                let s = p.service(service).cloned()?;
                Some((p, s))
            }) {
                if current.iter().all(|c| c.config_hash == svc.config_hash)
                    && current.iter().any(|c| c.image_id != id)
                {
                    svc.image = id.clone();
                    self.put_service_plan(&svc).await;
                    self.prev_images.lock().unwrap().remove(service);
                    let outdated: Vec<ContainerRecord> =
                        current.into_iter().filter(|c| c.image_id != id).collect();
                    self.event(&format!(
                        "rollback of {service} to image {id} requested by hand"
                    ));
                    let mut made = Vec::new();
                    return self
                        .roll(&plan, &svc, &outdated, &UpOpts::default(), out, &mut made)
                        .await;
                }
            }
        }
        let prev = self
            .prev_plan
            .lock()
            .await
            .clone()
            .ok_or_else(|| anyhow!("no previous configuration recorded for this project"))?;
        let prev_svc = prev
            .service(service)
            .cloned()
            .ok_or_else(|| anyhow!("{service} did not exist in the previous configuration"))?;
        let current = self.service_containers(service).await;
        if current
            .iter()
            .all(|c| c.config_hash == prev_svc.config_hash)
        {
            bail!("{service} already runs its previous configuration");
        }
        let _ = source;
        self.put_service_plan(&prev_svc).await;
        let plan = self.plan.lock().await.clone().unwrap_or(prev.clone());
        let outdated: Vec<ContainerRecord> = current
            .into_iter()
            .filter(|c| c.config_hash != prev_svc.config_hash)
            .collect();
        let mut made = Vec::new();
        let opts = UpOpts::default();
        self.event(&format!("rollback of {service} requested by hand"));
        self.roll(&plan, &prev_svc, &outdated, &opts, out, &mut made)
            .await
    }

    /// Wait until a new replica counts as up: healthy (with a healthcheck) or still running after
    /// `monitor`. False if it exits, becomes unhealthy or times out.
    pub(super) async fn wait_ready(&self, name: &str, svc: &ServicePlan) -> bool {
        let health = svc.healthcheck.as_ref().filter(|h| h.enabled());
        let deadline = Instant::now() + rollout::ready_limit(health, svc.update.monitor);
        loop {
            let c = self.state.lock().await.container(name).cloned();
            let Some(c) = c else { return false };
            match rollout::readiness(
                health.is_some(),
                c.status,
                c.health.as_deref(),
                Instant::now() >= deadline,
            ) {
                Readiness::Ready => return true,
                Readiness::Failed => return false,
                Readiness::Waiting => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Take a replica out of service (DNS, port backends), let in-flight requests finish, then
    /// stop and remove it.
    pub(super) async fn retire(&self, name: &str, timeout: Option<Duration>, out: &Out) {
        self.retire_all(&[name.to_string()], timeout, out).await
    }

    /// Retire several replicas together: one DNS/port switch, one drain, parallel stops.
    pub(super) async fn retire_all(&self, names: &[String], timeout: Option<Duration>, out: &Out) {
        if names.is_empty() {
            return;
        }
        self.shared
            .lock()
            .unwrap()
            .draining
            .extend(names.iter().cloned());
        self.refresh_dns().await;
        let _ = self.apply_firewall().await;
        tokio::time::sleep(DRAIN).await;
        futures_util::future::join_all(names.iter().map(|n| self.remove_one(n, timeout, out)))
            .await;
        let mut sh = self.shared.lock().unwrap();
        for n in names {
            sh.draining.remove(n);
        }
    }

    /// A rolling update of `outdated` (Swarm's update_config on one host): batches of
    /// `parallelism`, start-first or stop-first, each new replica gated on health, a failure
    /// ratio, and pause / continue / rollback on failure.
    pub(super) async fn roll(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        outdated: &[ContainerRecord],
        opts: &UpOpts,
        out: &Out,
        made: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let u = &svc.update;
        let timeout = opts.timeout.map(Duration::from_secs);
        let mut rollout = Rollout::new(u, outdated.len());
        let total = rollout.total();
        // (new container, the old one it replaced) for the replicas already switched.
        let mut switched: Vec<(String, ContainerRecord)> = Vec::new();
        self.event(&format!(
            "rollout of {}: {total} replicas, parallelism {}, {}",
            svc.name,
            rollout.batch_size(),
            if u.order_start_first {
                "start-first"
            } else {
                "stop-first"
            }
        ));
        while let Some(batch) = rollout.next_batch() {
            if !batch.delay.is_zero() {
                tokio::time::sleep(batch.delay).await;
            }
            let chunk = &outdated[batch.replicas];
            let mut fresh: Vec<(String, ContainerRecord)> = Vec::new();
            if batch.stop_first {
                // stop-first: the batch leaves first; the other replicas keep serving meanwhile.
                let names: Vec<String> = chunk.iter().map(|c| c.name.clone()).collect();
                self.retire_all(&names, timeout, out).await;
            }
            for old in chunk {
                let n = self.next_number(&svc.name).await;
                let name = self.create_one(plan, svc, n, out).await?;
                made.push(name.clone());
                self.start_one(&name, out).await?;
                fresh.push((name, old.clone()));
            }
            // The batch's new replicas come up together; the old ones they replace leave together.
            let ready =
                futures_util::future::join_all(fresh.iter().map(|(n, _)| self.wait_ready(n, svc)))
                    .await;
            let mut leaving = Vec::new();
            for ((name, old), ok) in fresh.into_iter().zip(ready) {
                if ok {
                    progress(out, "container", &name, "Healthy");
                    if !batch.stop_first {
                        leaving.push(old.name.clone());
                    }
                    switched.push((name, old));
                } else {
                    rollout.failed();
                    let _ = out.send(Reply::Message {
                        text: format!("{name}: new replica did not become ready"),
                    });
                    self.remove_one(&name, timeout, out).await;
                    made.retain(|m| *m != name);
                    if batch.stop_first {
                        // Its predecessor is gone: put one back on the old config when rolling back.
                        switched.push((String::new(), old));
                    }
                }
            }
            if !leaving.is_empty() {
                self.refresh_dns().await;
                self.apply_firewall().await?;
                self.retire_all(&leaving, timeout, out).await;
            }
            let failures = rollout.failures();
            match rollout.verdict() {
                Verdict::Go => {}
                Verdict::Rollback => {
                    self.rollback(plan, svc, &switched, out).await?;
                    bail!("update of {} failed ({failures} of {total} replicas); rolled back to the previous configuration", svc.name);
                }
                Verdict::Pause => bail!(
                    "update of {} paused: {failures} of {total} new replicas failed",
                    svc.name
                ),
            }
        }
        Ok(())
    }

    /// Put the replicas switched so far back on the previous configuration, start-first.
    pub(super) async fn rollback(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        switched: &[(String, ContainerRecord)],
        out: &Out,
    ) -> anyhow::Result<()> {
        let prev = self.prev_plan.lock().await.clone();
        let Some(mut prev_svc) = prev.as_ref().and_then(|p| p.service(&svc.name).cloned()) else {
            bail!("no previous configuration of {} to roll back to", svc.name);
        };
        // Only the image changed (rebuilt, pulled again): its name now gives the new image, so
        // the way back is the image the replaced replicas ran, by id.
        if prev_svc.config_hash == svc.config_hash && prev_svc.image == svc.image {
            if let Some((_, old)) = switched.iter().find(|(_, o)| !o.image_id.is_empty()) {
                prev_svc.image = old.image_id.clone();
            }
        }
        // The service runs its previous configuration again from now on.
        self.put_service_plan(&prev_svc).await;
        for (i, (new, _old)) in switched.iter().enumerate() {
            let delay = rollout::rollback_delay(&svc.rollback, i);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let n = self.next_number(&svc.name).await;
            let name = self.create_one(plan, &prev_svc, n, out).await?;
            self.start_one(&name, out).await?;
            if !self.wait_ready(&name, &prev_svc).await {
                let _ = out.send(Reply::Message {
                    text: format!("{name}: the previous configuration did not come back up either"),
                });
            }
            if !new.is_empty() {
                self.retire(new, None, out).await;
            }
        }
        Ok(())
    }
}

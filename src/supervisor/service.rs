//! One service brought to its desired state: its dependencies' conditions awaited
//! (`depends_on`: started, healthy, completed), scale down, outdated replicas recreated in
//! place or rolled (`rollout.rs`), stopped ones started, missing ones made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::proto::{Reply, UpOpts};
use super::{progress, Out, Supervisor};
use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::engine::rollout::{self, Replace};
use crate::state::{ContainerRecord, Status};

impl Supervisor {
    /// Bring one service to its desired replicas and config. Returns the containers it made.
    pub(super) async fn converge_service(
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
            let have: Vec<(String, u32, String)> = existing
                .iter()
                .map(|c| (c.name.clone(), c.number, c.config_hash.clone()))
                .collect();
            for name in rollout::scale_down(&have, desired, &svc.config_hash) {
                self.remove_one(&name, timeout, out).await;
            }
            existing = self.service_containers(&svc.name).await;
        }
        // The image the service's name resolves to now: a replica made from another image
        // (rebuilt by `build`/`watch`, pulled or loaded again under the same name) is outdated,
        // as compose recreates on a changed image digest. Compared by id, never by name.
        let image_id = self.current_image_id(&svc.image).await;
        let image_changed = |c: &ContainerRecord| {
            image_id
                .as_deref()
                .is_some_and(|id| !c.image_id.is_empty() && c.image_id != id)
        };
        let outdated: Vec<ContainerRecord> = existing
            .iter()
            .filter(|c| {
                opts.force_recreate
                    || (!opts.no_recreate && (c.config_hash != svc.config_hash || image_changed(c)))
            })
            .cloned()
            .collect();
        if !outdated.is_empty() {
            // What `berth rollback` goes back to: after an image-only change, the image the
            // replaced replicas ran; after a configuration change, the previous plan.
            {
                let mut prev = self.prev_images.lock().unwrap();
                match outdated
                    .iter()
                    .find(|c| c.config_hash == svc.config_hash && image_changed(c))
                {
                    Some(c) if outdated.iter().all(|o| o.config_hash == svc.config_hash) => {
                        prev.insert(svc.name.clone(), c.image_id.clone());
                    }
                    _ => {
                        prev.remove(&svc.name);
                    }
                }
            }
            for c in &outdated {
                if c.config_hash != svc.config_hash {
                    let _ = out.send(Reply::Message {
                        text: format!("{}: configuration changed, recreating", c.name),
                    });
                } else if image_changed(c) {
                    let _ = out.send(Reply::Message {
                        text: format!("{}: image {} changed, recreating", c.name, svc.image),
                    });
                }
            }
            // Several replicas, or an explicit start-first order: roll replica by replica,
            // gated on health. One replica with the default order: compose's stop-first.
            let how = rollout::replace_strategy(&svc.update, existing.len(), opts.no_start);
            if how == Replace::Rolling {
                self.roll(plan, svc, &outdated, opts, out, &mut made)
                    .await?;
            } else {
                for c in &outdated {
                    progress(out, "container", &c.name, "Recreate");
                    // compose: the new container takes over the anonymous volumes (-V: not).
                    if !opts.renew_anon_volumes {
                        self.engine.inherit_anon_volumes(c);
                    }
                    self.remove_one_with(&c.name, timeout, out, opts.renew_anon_volumes)
                        .await;
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

    /// The id of the image `reference` names in the store now (None if absent or unreadable:
    /// creating the replica then gives the error).
    async fn current_image_id(&self, reference: &str) -> Option<String> {
        let store = self.engine.images.clone();
        let r = reference.to_string();
        tokio::task::spawn_blocking(move || store.get(&r))
            .await
            .ok()?
            .ok()?
            .map(|i| i.id)
    }

    pub(super) async fn wait_condition(
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

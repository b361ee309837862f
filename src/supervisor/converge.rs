//! `up`: load the plan from the CLI's source, then converge the project: published ports
//! checked free, networks and volumes, orphans, the services level by level of the
//! dependency graph (independent ones at once), the firewall; and a failed `up` removes
//! what it made. One service's own convergence is in `service.rs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::proto::{Reply, UpOpts};
use super::{progress, remove_project_files, Out, Supervisor};
use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::state::{ProjectLock, ProjectSource};

impl Supervisor {
    /// Load the plan from the CLI's source, then converge.
    pub(super) async fn up(
        self: &Arc<Self>,
        mut source: ProjectSource,
        opts: UpOpts,
        out: &Out,
    ) -> anyhow::Result<()> {
        // BERTH_TRACE=1 on the CLI: this request's steps go back to it as messages. The start
        // time belongs to this request only: taken out of the environment the project keeps,
        // so a later reload (the watcher) does not trace into a closed request.
        let t0 = source.environment.remove(crate::trace::T0_VAR);
        let _trace = {
            let out = out.clone();
            crate::trace::session(t0.as_deref(), move |text| {
                let _ = out.send(Reply::Message { text });
            })
        };
        crate::trace::step(|| "supervisor: up received".into());
        let _warm = self.engine.runtime.warm_for_up();
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
        let prev = self.replace_plan(full.clone()).await;
        if prev.is_some() {
            *self.prev_plan.lock().await = prev;
        }
        crate::trace::step(|| "supervisor: plan loaded".into());
        let made = self.converge(&plan, &full, &opts, out).await;
        crate::trace::step(|| "supervisor: converged".into());
        match made {
            Ok(()) => {
                self.save().await;
                crate::trace::step(|| "supervisor: state saved, up done".into());
                // The burst's buffers are free now, and again once its blocking threads left.
                super::trim_heap();
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    super::trim_heap();
                });
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

    pub(super) async fn converge(
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

    pub(super) async fn converge_inner(
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
                        // Rootless: the port must also be free on the host (src/rootless.rs).
                        crate::rootless::check_host_port(&p.protocol, p.host_ip.as_deref(), hp)
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
        crate::trace::step(|| "supervisor: networks and volumes ready".into());

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
        // Containers are made meanwhile, but none starts before these rules are in (the
        // gate, see `spawn`): a new network's isolation from other networks and the outside
        // is in force before anything runs on it.
        let early_fw = {
            let me = self.clone();
            let gate = self.fw_gate.clone().write_owned().await;
            tokio::spawn(async move {
                let r = me.apply_firewall().await;
                crate::trace::step(|| "supervisor: early firewall applied".into());
                drop(gate);
                r
            })
        };
        let levels = self.converge_levels(plan, opts, out, made_containers).await;
        // Over before anything else touches the rules (a failed `up` removes them).
        let early = early_fw.await;
        levels?;
        early.map_err(|e| anyhow!("firewall task failed: {e}"))??;
        crate::trace::step(|| "supervisor: containers up, early firewall done".into());
        self.apply_firewall().await?;
        crate::trace::step(|| "supervisor: firewall applied".into());
        Ok(())
    }

    /// Start the plan's services level by level (independent services of a level at once).
    pub(super) async fn converge_levels(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        opts: &UpOpts,
        out: &Out,
        made_containers: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        // One copy of the plan shared by every service's task (a copy per task was O(n^2)
        // for an `up` of n services).
        let shared_plan = Arc::new(plan.clone());
        for (i, level) in plan.levels.iter().enumerate() {
            crate::trace::step(|| format!("supervisor: level {i}, {} services", level.len()));
            let mut tasks = Vec::new();
            for svc_name in level {
                let Some(svc) = plan.service(svc_name) else {
                    continue;
                };
                let me = self.clone();
                let svc = svc.clone();
                let plan = shared_plan.clone();
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

    /// Services without a healthcheck of their own take the image's HEALTHCHECK, as in Docker.
    pub(super) async fn inherit_image_healthchecks(&self, plan: &mut ProjectPlan) {
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
}

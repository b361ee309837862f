//! The life of containers as the user asks for it: create one (record, ports), start one,
//! stop one (stop signal, grace period, SIGKILL), remove one; the same for a set of services
//! in dependency order (`stop`, `start`, `restart`), and `down` (containers, rules, DNS,
//! networks, volumes, the project's record).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::proto::Reply;
use super::{progress, remove_project_files, Out, Supervisor};
use crate::engine::io;
use crate::engine::plan::{ProjectPlan, ServicePlan};
use crate::engine::proc;
use crate::state::{ProjectLock, Status};

impl Supervisor {
    pub(super) async fn create_one(
        self: &Arc<Self>,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        number: u32,
        out: &Out,
    ) -> anyhow::Result<String> {
        let name = crate::engine::container::container_name(&plan.name, svc, number);
        progress(out, "container", &name, "Creating");
        crate::trace::step(|| format!("{name}: create"));
        // The runtime's fork server starts while this container is prepared (its first
        // `create` then finds it ready).
        self.engine.runtime.warm();
        // What creating it reads of the project: the networks, and the containers it refers
        // to (its siblings for ports, a `network_mode`/`volumes_from` target), not a copy of
        // every record (that was O(containers) per create, O(n^2) per `up`).
        let (networks, snapshot) = {
            let st = self.state.lock().await;
            let mut refs: Vec<&str> = vec![svc.name.as_str()];
            if let Some(m) = svc.network_mode.as_deref() {
                refs.extend(m.split_once(':').map(|x| x.1));
            }
            for vf in &svc.volumes_from {
                let t = vf
                    .strip_suffix(":ro")
                    .or_else(|| vf.strip_suffix(":rw"))
                    .unwrap_or(vf);
                refs.push(t.strip_prefix("container:").unwrap_or(t));
            }
            let snapshot = crate::state::ProjectState {
                name: st.name.clone(),
                networks: st.networks.clone(),
                volumes: st.volumes.clone(),
                containers: st
                    .containers
                    .iter()
                    .filter(|c| {
                        refs.contains(&c.service.as_str()) || refs.contains(&c.name.as_str())
                    })
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            (st.networks.clone(), snapshot)
        };
        let mut rec = {
            // Bounded (see `spawn::create_bound`).
            let _bound = super::spawn::create_bound().acquire().await?;
            self.engine
                .prepare_container(plan, svc, number, &networks, &snapshot)
                .await?
        };
        crate::trace::step(|| format!("{name}: bundle written"));
        // The spec was written without its fsync: it goes with the record's next pass.
        self.syncs.later(crate::state::Written {
            files: vec![rec.dir.join("config.json")],
        });
        // Replicas share their service's host ports (one port spread over them all): reuse the
        // port a sibling already has before picking a free one.
        let siblings: Vec<crate::state::PortRecord> = snapshot
            .containers
            .iter()
            .filter(|c| c.service == svc.name && !c.oneoff)
            .flat_map(|c| c.ports.clone())
            .collect();
        rec.ports = self.engine.assign_ports(svc, &siblings)?;
        {
            let mut st = self.state.lock().await;
            rec.generation = st.generation(&svc.name, &svc.config_hash);
            st.put_container(rec);
        }
        self.save().await;
        crate::trace::step(|| format!("{name}: created (record saved)"));
        progress(out, "container", &name, "Created");
        Ok(name)
    }

    /// Create the runtime container from its bundle and start it.
    pub(super) async fn start_one(self: &Arc<Self>, name: &str, out: &Out) -> anyhow::Result<()> {
        progress(out, "container", name, "Starting");
        // A start asked for (up, start, restart) lifts an earlier user stop; restarts by the
        // policy go through `spawn` and keep it.
        self.mark_user_stop(name, false).await;
        self.spawn(name)
            .await
            .with_context(|| format!("starting {name}"))?;
        crate::trace::step(|| format!("{name}: started (DNS updated)"));
        progress(out, "container", name, "Started");
        Ok(())
    }

    /// Stop one container: its stop signal, the grace period, then SIGKILL.
    pub(super) async fn stop_one(&self, name: &str, timeout: Option<Duration>, out: &Out) {
        self.mark_user_stop(name, true).await;
        {
            // Waiting to be restarted: nothing runs, the stop just cancels the restart.
            let mut st = self.state.lock().await;
            if let Some(c) = st
                .container_mut(name)
                .filter(|c| c.status == Status::Restarting)
            {
                c.status = Status::Exited;
            }
        }
        let service = self
            .state
            .lock()
            .await
            .container(name)
            .map(|c| c.service.clone());
        let svc = match service {
            Some(s) => self.service_plan(&s).await,
            None => None,
        };
        let (live, signal, grace) = {
            let sig = svc
                .as_ref()
                .and_then(|s| s.stop_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into());
            let grace = timeout
                .or(svc.as_ref().and_then(|s| s.stop_grace_period))
                .unwrap_or(Duration::from_secs(10));
            let sh = self.shared.lock().unwrap();
            (
                sh.live.get(name).map(|l| (l.pidfd.clone(), l.exit.clone())),
                sig,
                grace,
            )
        };
        let Some((pidfd, mut exit)) = live else {
            return;
        };
        progress(out, "container", name, "Stopping");
        let sig = proc::signal_number(&signal).unwrap_or(libc::SIGTERM);
        let _ = proc::pidfd_send_signal(&pidfd, sig);
        let waited = tokio::time::timeout(grace, exit.wait_for(|e| e.is_some()))
            .await
            .is_ok();
        if !waited {
            let _ = out.send(Reply::Message {
                text: format!(
                    "{name} did not stop within {}s after {signal}; killed. If its main process ignores signals, try `init: true`.",
                    grace.as_secs()
                ),
            });
            let _ = proc::pidfd_send_signal(&pidfd, libc::SIGKILL);
            let _ =
                tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some())).await;
        }
        // Let on_exit record the status before we go on.
        for _ in 0..100 {
            let done = self
                .state
                .lock()
                .await
                .container(name)
                .map(|c| c.status == Status::Exited)
                .unwrap_or(true);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ... and have it on disk before the caller is told: a supervisor killed right after a
        // `stop` must not leave the record saying "running" (coalesced with on_exit's save).
        self.save().await;
        progress(out, "container", name, "Stopped");
    }

    pub(super) async fn remove_one(&self, name: &str, timeout: Option<Duration>, out: &Out) {
        self.remove_one_with(name, timeout, out, true).await
    }

    /// [`Self::remove_one`], keeping its anonymous volumes unless `anon_volumes` (`rm`, `down`
    /// and `--remove-orphans` without `-v`, as compose).
    pub(super) async fn remove_one_with(
        &self,
        name: &str,
        timeout: Option<Duration>,
        out: &Out,
        anon_volumes: bool,
    ) {
        self.stop_one(name, timeout, out).await;
        progress(out, "container", name, "Removing");
        let rec = self.state.lock().await.container(name).cloned();
        if let Some(rec) = rec {
            for e in self.engine.remove_container_with(&rec, anon_volumes).await {
                let _ = out.send(Reply::Message {
                    text: format!("{name}: {e}"),
                });
            }
        }
        {
            let mut st = self.state.lock().await;
            st.remove_container(name);
        }
        {
            let mut sh = self.shared.lock().unwrap();
            sh.logs.remove(name);
            sh.backoff.remove(name);
        }
        io::remove_fifos(&self.io_dir(), name);
        let _ = std::fs::remove_file(crate::logs::log_path(
            &self.engine.paths.project(&self.project),
            name,
        ));
        self.save().await;
        self.refresh_dns().await;
        progress(out, "container", name, "Removed");
    }

    pub(super) async fn stop_all(&self, timeout: Option<u64>, out: &Out) -> anyhow::Result<()> {
        let levels = self.stop_levels().await;
        for level in levels {
            let futs: Vec<_> = level
                .iter()
                .map(|n| self.stop_one(n, timeout.map(Duration::from_secs), out))
                .collect();
            futures_util::future::join_all(futs).await;
        }
        Ok(())
    }

    /// Containers grouped in reverse start order. Linear in the containers.
    pub(super) async fn stop_levels(&self) -> Vec<Vec<String>> {
        let all: Vec<(String, String)> = {
            let st = self.state.lock().await;
            st.containers
                .iter()
                .map(|c| (c.name.clone(), c.service.clone()))
                .collect()
        };
        self.levels_of(all).await
    }

    /// `wanted` (container, its service) grouped in reverse start order: the containers of
    /// services no level places first, then the plan's levels from the last. Costs what
    /// `wanted` has (a `stop` of one service in a project of n services looks at one
    /// service's place, not at n), plus a map of the levels when `wanted` is large. Takes the
    /// plan's lock (never held with `state`'s).
    async fn levels_of(&self, wanted: Vec<(String, String)>) -> Vec<Vec<String>> {
        use std::collections::HashMap;
        let plan = self.plan.lock().await;
        let plan_levels: &[Vec<String>] = plan.as_ref().map_or(&[], |p| p.levels.as_slice());
        let n_levels = plan_levels.len();
        let index: Option<HashMap<&str, usize>> = (wanted.len() > 8).then(|| {
            let mut m = HashMap::new();
            for (i, lvl) in plan_levels.iter().enumerate() {
                for svc in lvl {
                    m.entry(svc.as_str()).or_insert(i);
                }
            }
            m
        });
        let level_of = |svc: &str| match &index {
            Some(m) => m.get(svc).copied(),
            None => plan_levels.iter().position(|l| l.iter().any(|s| s == svc)),
        };
        // levels[0] holds what no level places; levels[1 + k] the k-th level from the end.
        let mut levels: Vec<Vec<String>> = vec![Vec::new(); n_levels + 1];
        for (name, svc) in wanted {
            match level_of(&svc) {
                Some(i) => levels[n_levels - i].push(name),
                None => levels[0].push(name),
            }
        }
        levels.retain(|l| !l.is_empty());
        levels
    }

    pub(super) async fn stop_services(
        &self,
        services: &[String],
        timeout: Option<u64>,
        out: &Out,
    ) -> anyhow::Result<()> {
        let wanted: Vec<(String, String)> = {
            let st = self.state.lock().await;
            st.of_services(services)
                .into_iter()
                .filter(|c| !c.oneoff)
                .map(|c| (c.name.clone(), c.service.clone()))
                .collect()
        };
        for level in self.levels_of(wanted).await {
            let futs: Vec<_> = level
                .iter()
                .map(|n| self.stop_one(n, timeout.map(Duration::from_secs), out))
                .collect();
            futures_util::future::join_all(futs).await;
        }
        Ok(())
    }

    pub(super) async fn start_services(
        self: &Arc<Self>,
        services: &[String],
        out: &Out,
    ) -> anyhow::Result<()> {
        let names = self.containers_of(services).await;
        for n in names {
            let running = {
                let mut sh = self.shared.lock().unwrap();
                // A start by hand forgets the restart history (Docker does the same).
                if let Some(b) = sh.backoff.get_mut(&n) {
                    b.reset();
                }
                sh.live.contains_key(&n)
            };
            if !running {
                self.start_one(&n, out).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn down(
        &self,
        volumes: bool,
        timeout: Option<u64>,
        out: &Out,
    ) -> anyhow::Result<()> {
        let _lock = ProjectLock::acquire(&self.engine.paths, &self.project)?;
        for level in self.stop_levels().await {
            let futs: Vec<_> = level
                .iter()
                .map(|n| self.remove_one_with(n, timeout.map(Duration::from_secs), out, volumes))
                .collect();
            futures_util::future::join_all(futs).await;
        }
        let (nets, vols) = {
            let st = self.state.lock().await;
            (st.networks.clone(), st.volumes.clone())
        };
        self.remove_firewall().await;
        // Stop answering DNS on the gateways before the networks go.
        self.state.lock().await.networks.clear();
        self.refresh_dns().await;
        for n in nets {
            progress(out, "network", &n.name, "Removing");
            for e in self.engine.remove_network(&n).await {
                let _ = out.send(Reply::Message { text: e });
            }
            progress(out, "network", &n.name, "Removed");
        }
        if volumes {
            for v in vols.iter().filter(|v| !v.external) {
                crate::engine::volumes::remove(&self.engine.paths, &v.name)?;
                progress(out, "volume", &v.name, "Removed");
            }
        }
        remove_project_files(&self.engine.paths, &self.project, volumes)?;
        Ok(())
    }
}

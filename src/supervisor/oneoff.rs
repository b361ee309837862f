//! `berth run`: a one-off container of a service with the command line's overrides, its
//! dependencies (or at least its networks) brought up first.

use std::sync::Arc;

use anyhow::anyhow;

use super::proto::{self, Reply, UpOpts};
use super::{Out, Supervisor};
use crate::engine::plan::ProjectPlan;
use crate::state::ProjectSource;

impl Supervisor {
    /// `berth run`: dependencies up (unless --no-deps), then a one-off container of the service
    /// with the command line's overrides; its name goes back as a `oneoff` progress line.
    pub(super) async fn run_oneoff(
        self: &Arc<Self>,
        source: ProjectSource,
        o: proto::RunOpts,
        out: &Out,
    ) -> anyhow::Result<()> {
        let full = crate::engine::plan::load_plan(&source, &[])?;
        let base = full
            .service(&o.service)
            .cloned()
            .ok_or_else(|| anyhow!("no such service: {}", o.service))?;
        {
            let mut st = self.state.lock().await;
            if st.source.is_none() {
                st.source = Some(source.clone());
                st.working_dir = full.working_dir.clone();
                st.config_files = full.config_files.clone();
            }
        }
        self.init_plan(&full).await;
        if !o.no_deps && !base.depends_on.is_empty() {
            let deps: Vec<String> = base.depends_on.iter().map(|d| d.0.clone()).collect();
            let plan = crate::engine::plan::load_plan(&source, &deps)?;
            self.converge(
                &plan,
                &full,
                &UpOpts {
                    services: deps,
                    no_recreate: true,
                    ..Default::default()
                },
                out,
            )
            .await?;
        } else {
            // The networks still have to exist.
            let plan = ProjectPlan {
                services: vec![],
                levels: vec![],
                ..full.clone()
            };
            self.converge(&plan, &full, &UpOpts::default(), out).await?;
            for key in base.networks.iter().map(|n| n.key.clone()) {
                let have = self
                    .state
                    .lock()
                    .await
                    .networks
                    .iter()
                    .any(|n| n.key == key);
                if !have {
                    let net = full
                        .network(&key)
                        .ok_or_else(|| anyhow!("undefined network {key}"))?;
                    let rec = self.engine.ensure_network(net).await?;
                    self.state.lock().await.networks.push(rec);
                }
            }
        }
        let mut svc = base.clone();
        if !o.command.is_empty() {
            svc.command = Some(o.command.clone());
        }
        if let Some(ep) = &o.entrypoint {
            svc.entrypoint = Some(ep.clone());
        }
        for e in &o.env {
            let (k, v) = e
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap_or_else(|| {
                    (
                        e.clone(),
                        source.environment.get(e).cloned().unwrap_or_default(),
                    )
                });
            svc.environment.retain(|(kk, _)| *kk != k);
            svc.environment.push((k, v));
        }
        if o.user.is_some() {
            svc.user = o.user.clone();
        }
        if o.workdir.is_some() {
            svc.working_dir = o.workdir.clone();
        }
        if !o.service_ports {
            svc.ports.clear();
        }
        if o.no_tty {
            svc.tty = false;
        } else if o.tty {
            svc.tty = true;
            svc.stdin_open = true;
        }
        // DNS names: a one-off answers under its container name; its service's name and
        // network aliases only with --use-aliases (kept as its endpoints' aliases, see
        // `publish.rs`), as compose.
        for n in &mut svc.networks {
            if o.use_aliases {
                n.aliases.insert(0, svc.name.clone());
            } else {
                n.aliases.clear();
            }
        }
        svc.restart = crate::engine::restart::Policy::default();
        svc.healthcheck = None;
        let slug: String = {
            use sha2::Digest;
            let seed = format!(
                "{}{:?}{}",
                o.service,
                std::time::SystemTime::now(),
                std::process::id()
            );
            hex::encode(sha2::Sha256::digest(seed))[..12].to_string()
        };
        svc.container_name = Some(
            o.name
                .clone()
                .unwrap_or_else(|| format!("{}-{}-run-{slug}", full.name, o.service)),
        );
        let name = self.create_one(&full, &svc, 1, out).await?;
        {
            let mut st = self.state.lock().await;
            if let Some(c) = st.container_mut(&name) {
                c.oneoff = true;
            }
        }
        self.save().await;
        if o.attach && svc.tty {
            super::attach::hold_next_start(&name);
        }
        if o.stdin && !svc.tty {
            super::attach::stdin_next_start(&name);
        }
        self.start_one(&name, out).await?;
        let _ = out.send(Reply::Progress {
            kind: "oneoff".into(),
            name,
            state: "Started".into(),
            detail: None,
        });
        Ok(())
    }
}

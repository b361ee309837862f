//! The file watcher: with `up --watch`, the supervisor watches the compose files, the project's
//! `.env` and env files, and the files of configs and secrets; on a change (debounced) it
//! reloads and validates the project (an invalid file is reported and nothing running is
//! touched), then converges: new services start, removed ones stop, changed ones roll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use tokio::sync::mpsc;

use super::proto::{Reply, UpOpts};
use super::Supervisor;
use crate::engine::plan::ProjectPlan;

/// The files whose change triggers a reload.
pub fn watched_files(plan: &ProjectPlan) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = plan.config_files.clone();
    files.push(plan.working_dir.join(".env"));
    for s in &plan.services {
        for f in s.secrets.iter().chain(s.configs.iter()) {
            if let Some(p) = &f.file {
                files.push(p.clone());
            }
        }
        files.extend(s.env_files.iter().cloned());
    }
    files.sort();
    files.dedup();
    files
}

impl Supervisor {
    /// Start watching (once per supervisor). Events are logged to the supervisor's log and to
    /// the project's events file.
    pub(super) fn start_watch(self: &Arc<Self>, plan: &ProjectPlan) {
        {
            let mut sh = self.shared.lock().unwrap();
            if sh.watching {
                return;
            }
            sh.watching = true;
        }
        let files = watched_files(plan);
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let watched = files.clone();
        let handler = move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res {
                let hit = events
                    .iter()
                    .any(|e| e.paths.iter().any(|p| watched.iter().any(|w| w == p)));
                if hit {
                    let _ = tx.send(());
                }
            }
        };
        let mut debouncer =
            match notify_debouncer_full::new_debouncer(Duration::from_millis(200), None, handler) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("watch: {e}");
                    return;
                }
            };
        // Editors save by rename: watch the directories, filter by path.
        let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Err(e) = debouncer.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!("watch {}: {e}", d.display());
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _keep = debouncer;
            while rx.recv().await.is_some() {
                // Collapse a burst of saves into one reload.
                while rx.try_recv().is_ok() {}
                me.reload().await;
            }
        });
    }

    async fn reload(self: &Arc<Self>) {
        let source = self.state.lock().await.source.clone();
        let Some(source) = source else { return };
        let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
        let me = self.clone();
        let log = tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let line = match &r {
                    Reply::Progress {
                        kind, name, state, ..
                    } => format!("{kind} {name} {state}"),
                    Reply::Message { text } => text.clone(),
                    Reply::Done { .. } => continue,
                };
                me.event(&line);
            }
        });
        let _op = self.op.lock().await;
        // Validate first: an invalid file is reported and nothing running is touched.
        match crate::engine::plan::load_plan(&source, &[]) {
            Err(e) => self.event(&format!(
                "watch: the project is invalid, nothing changed: {e:#}"
            )),
            Ok(_) => {
                self.event("watch: change detected, converging");
                // A service removed from the file is stopped and removed (not left as an orphan).
                let opts = UpOpts {
                    watch: true,
                    remove_orphans: true,
                    ..Default::default()
                };
                match self.up(source, opts, &tx).await {
                    Ok(()) => self.event("watch: converged"),
                    Err(e) => self.event(&format!("watch: {e:#}")),
                }
            }
        }
        drop(tx);
        let _ = log.await;
    }

    /// A container, network or volume reached `state` (a progress state, "Stopped"): recorded
    /// for `berth events` with Docker's action name (`container NAME stop`); the steps between
    /// (Stopping…) are not events.
    pub(super) fn object_event(&self, kind: &str, name: &str, state: &str) {
        let action = match state {
            "Created" => "create",
            "Started" => "start",
            "Stopped" => "stop",
            "Killed" => "kill",
            "Removed" => "destroy",
            "Paused" => "pause",
            "Unpaused" => "unpause",
            "Died" => "die",
            _ => return,
        };
        if matches!(kind, "container" | "network" | "volume") {
            self.append_event(&format!("{kind} {name} {action}"));
        }
    }

    /// Append a line to the project's event log (`berth events` reads it) and the supervisor log.
    pub(super) fn event(&self, text: &str) {
        tracing::info!("{text}");
        self.append_event(text);
    }

    fn append_event(&self, text: &str) {
        let path = self.engine.paths.project(&self.project).join("events.log");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = writeln!(f, "{} {text}", crate::state::now_rfc3339());
        }
    }
}

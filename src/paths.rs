//! Where berth keeps its state. One root for everything: `BERTH_ROOT` moves it all
//! (tests use a temporary root); by default persistent data lives under /var/lib/berth
//! and runtime state (pids, sockets, netns mounts) under /run/berth.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent data: images, volumes, project records, logs.
    pub data: PathBuf,
    /// Runtime state that must not survive a reboot: runtime state dirs, sockets, netns.
    pub run: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        match std::env::var_os("BERTH_ROOT") {
            Some(root) if !root.is_empty() => {
                let root = PathBuf::from(root);
                Paths {
                    data: root.join("data"),
                    run: root.join("run"),
                }
            }
            // A non-root user's berth (src/rootless.rs): under ~/.local/share and
            // $XDG_RUNTIME_DIR.
            _ if crate::rootless::dirs().is_some() => {
                let (data, run) = crate::rootless::dirs().unwrap_or_default();
                Paths { data, run }
            }
            _ => Paths {
                data: PathBuf::from("/var/lib/berth"),
                run: PathBuf::from("/run/berth"),
            },
        }
    }

    /// The image store (blobs, unpacked layers, image records).
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }
    /// Named volumes: `volumes/<name>/_data`.
    pub fn volumes(&self) -> PathBuf {
        self.data.join("volumes")
    }
    /// Per-project records: desired model, container records, logs.
    pub fn project(&self, project: &str) -> PathBuf {
        self.data.join("projects").join(project)
    }
    pub fn projects(&self) -> PathBuf {
        self.data.join("projects")
    }
    /// Per-container files: bundle (config.json), overlay upper/work, hosts, resolv.conf.
    pub fn container(&self, id: &str) -> PathBuf {
        self.data.join("containers").join(id)
    }
    /// The runtime's `--root` (OCI state of each container).
    pub fn runtime_root(&self) -> PathBuf {
        self.run.join("runtime")
    }
    /// Network state (IPAM allocations, firewall record).
    pub fn network(&self) -> PathBuf {
        self.data.join("network")
    }
    /// Persistent network namespaces, one bind mount per container.
    pub fn netns(&self, id: &str) -> PathBuf {
        self.run.join("netns").join(id)
    }
    /// The supervisor's control socket for a project.
    pub fn supervisor_socket(&self, project: &str) -> PathBuf {
        self.run
            .join("projects")
            .join(project)
            .join("supervisor.sock")
    }
    pub fn project_run(&self, project: &str) -> PathBuf {
        self.run.join("projects").join(project)
    }
}

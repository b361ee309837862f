//! The orchestration engine: turns the project model into containers, networks and volumes,
//! and removes them again. Used by the supervisor (async) and by commands that must work
//! without one (`down` after a supervisor crash).

use std::sync::Arc;

use crate::paths::Paths;

pub mod container;
pub mod io;
pub mod network;
pub mod plan;
pub mod proc;
pub mod restart;
pub mod rollout;
pub mod runtime;
pub mod volumes;

pub struct Engine {
    pub paths: Paths,
    pub runtime: runtime::Runtime,
    pub images: Arc<berth_runtime::image::ImageStore>,
    pub ipam: Arc<berth_network::ipam::Ipam>,
    /// Per container name: the anonymous volumes (target, volume) the next container made
    /// under that name mounts again, compose's recreate (see `inherit_anon_volumes`).
    pub inherit_anon: std::sync::Mutex<std::collections::HashMap<String, Vec<(String, String)>>>,
}

impl Engine {
    pub fn open(paths: &Paths) -> anyhow::Result<Engine> {
        Ok(Engine {
            paths: paths.clone(),
            runtime: runtime::Runtime::new(&paths.runtime_root())
                .with_mount_template(vec![paths.data.join("containers"), paths.run.join("netns")]),
            images: Arc::new(berth_runtime::image::ImageStore::open(&paths.images())?),
            ipam: Arc::new(berth_network::ipam::Ipam::open(&paths.network())?),
            inherit_anon: Default::default(),
        })
    }
}

//! The on-disk record of a project: what berth made, so that `ps`, `logs` and `down` work with
//! or without a supervisor, and a new supervisor can adopt containers after a crash.
//!
//! On disk (`<data>/projects/<name>/`): `project.json` (networks, volumes, generations, how the
//! project was loaded) and one `containers/<container>.json` per container, each written
//! atomically (temp file, rename; fsynced before the rename, or later in a batch by the
//! supervisor's saves: `SaveBatch::write_unsynced`). A container event rewrites its container's file
//! alone (and `project.json` only if that changed), so an event costs the same at 500
//! containers as at 5. Loading reads the directory. The single `state.json` of older berth
//! versions is still read, and replaced by the directory on the first save.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::paths::Paths;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectState {
    pub name: String,
    /// How the project was loaded (files, directory, env), so commands without `-f` and the
    /// supervisor can load it again.
    #[serde(default)]
    pub source: Option<ProjectSource>,
    #[serde(default)]
    pub working_dir: PathBuf,
    #[serde(default)]
    pub config_files: Vec<PathBuf>,
    #[serde(default)]
    pub networks: Vec<NetworkRecord>,
    #[serde(default)]
    pub volumes: Vec<VolumeRecord>,
    #[serde(default)]
    pub containers: Vec<ContainerRecord>,
    /// Per service: the config hash of its latest generation and that generation's number
    /// (1 for the first config, +1 on every change rolled out). Changed only through
    /// `generation`, which marks it for the next save (so a save need not compare it: it has
    /// an entry per service).
    #[serde(default)]
    pub generations: Generations,
    /// What changed since it was last written, published in DNS or in the firewall (the
    /// supervisor's own bookkeeping; never on disk).
    #[serde(skip)]
    pub(crate) changes: Changes,
}

/// `ProjectState::generations`: read anywhere (it derefs to the map), changed only by
/// `ProjectState::generation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generations(BTreeMap<String, (String, u64)>);

impl std::ops::Deref for Generations {
    type Target = BTreeMap<String, (String, u64)>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Change tracking of a `ProjectState`: filled by `container_mut`, `put_container` and
/// `remove_container`, taken by the save and by the DNS and firewall updates, so each of them
/// works on what changed, not on every container. A clone (a read-only snapshot) starts clean.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Containers whose record changed (or went) since the last save.
    records: HashSet<String>,
    /// Services with a container changed since the DNS, resp. the firewall, last looked.
    dns: HashSet<String>,
    firewall: HashSet<String>,
    /// Each container's place in the order of creation (`seq` in its file), and the next one.
    seqs: HashMap<String, u64>,
    next_seq: u64,
    /// The project-level fields as last written (`project.json` is rewritten only when they
    /// differ); None: never written in this format.
    written: Option<Box<ProjectFields>>,
    /// `generations` changed since the last save.
    generations: bool,
    /// Where each container is in `containers`, by name and by service (see `Index`).
    index: Index,
    /// Loaded from the old single `state.json` (removed on the first save).
    legacy: bool,
}

/// Positions in `ProjectState::containers` by name and by service, so that one container's
/// event finds its record and its service's others without a walk over every container.
/// Kept by `put_container`, `remove_container` and `load`; checked on every use: a state whose
/// `containers` a caller filtered, extended or reordered by hand (a filtered copy) makes it
/// fall back to a scan, never answer wrong. (Overwriting a record in place with one of another
/// name or service is not seen: nothing does that; `container_mut` is not for renaming.)
#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<String, usize>,
    by_service: HashMap<String, Vec<usize>>,
    /// `containers.len()` it was made for.
    len: usize,
}

impl Index {
    fn build(containers: &[ContainerRecord]) -> Index {
        let mut ix = Index {
            len: containers.len(),
            ..Default::default()
        };
        for (i, c) in containers.iter().enumerate() {
            ix.by_name.insert(c.name.clone(), i);
            ix.by_service.entry(c.service.clone()).or_default().push(i);
        }
        ix
    }

    fn push(&mut self, c: &ContainerRecord, i: usize) {
        self.by_name.insert(c.name.clone(), i);
        self.by_service
            .entry(c.service.clone())
            .or_default()
            .push(i);
        self.len = i + 1;
    }

    /// Position of `name`, if the index holds it and is right about it; None: not there, or
    /// the index does not know (`Err` then asks for a scan).
    fn find(&self, containers: &[ContainerRecord], name: &str) -> Result<Option<usize>, ()> {
        if self.len != containers.len() {
            return Err(());
        }
        match self.by_name.get(name) {
            Some(&i) if containers.get(i).is_some_and(|c| c.name == name) => Ok(Some(i)),
            Some(_) => Err(()),
            None if self.by_name.len() == containers.len() => Ok(None),
            None => Err(()),
        }
    }

    /// Positions of `service`'s containers, in order; Err: ask a scan.
    fn of_service(&self, containers: &[ContainerRecord], service: &str) -> Result<&[usize], ()> {
        if self.len != containers.len() || self.by_name.len() != containers.len() {
            return Err(());
        }
        let v = self
            .by_service
            .get(service)
            .map_or(&[][..], |v| v.as_slice());
        if v.iter()
            .all(|&i| containers.get(i).is_some_and(|c| c.service == service))
        {
            Ok(v)
        } else {
            Err(())
        }
    }
}

impl Clone for Changes {
    fn clone(&self) -> Changes {
        Changes::default()
    }
}

/// `ProjectState` without its containers: what `project.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProjectFields {
    name: String,
    #[serde(default)]
    source: Option<ProjectSource>,
    #[serde(default)]
    working_dir: PathBuf,
    #[serde(default)]
    config_files: Vec<PathBuf>,
    #[serde(default)]
    networks: Vec<NetworkRecord>,
    #[serde(default)]
    volumes: Vec<VolumeRecord>,
    #[serde(default)]
    generations: BTreeMap<String, (String, u64)>,
}

/// `ProjectFields` borrowed from a state, to compare and encode without cloning.
#[derive(Serialize)]
struct ProjectFieldsRef<'a> {
    name: &'a String,
    source: &'a Option<ProjectSource>,
    working_dir: &'a PathBuf,
    config_files: &'a Vec<PathBuf>,
    networks: &'a Vec<NetworkRecord>,
    volumes: &'a Vec<VolumeRecord>,
    generations: &'a BTreeMap<String, (String, u64)>,
}

impl ProjectFieldsRef<'_> {
    /// Whether the fields equal `f`, generations aside (`Changes::generations` says whether
    /// those changed, without a walk over every service's entry).
    fn same_as(&self, f: &ProjectFields) -> bool {
        *self.name == f.name
            && *self.source == f.source
            && *self.working_dir == f.working_dir
            && *self.config_files == f.config_files
            && *self.networks == f.networks
            && *self.volumes == f.volumes
    }

    fn to_owned(&self) -> ProjectFields {
        ProjectFields {
            name: self.name.clone(),
            source: self.source.clone(),
            working_dir: self.working_dir.clone(),
            config_files: self.config_files.clone(),
            networks: self.networks.clone(),
            volumes: self.volumes.clone(),
            generations: self.generations.clone(),
        }
    }
}

/// A container's file: its record and its place in the order of creation.
#[derive(Serialize)]
struct ContainerFileRef<'a> {
    seq: u64,
    container: &'a ContainerRecord,
}

#[derive(Deserialize)]
struct ContainerFile {
    seq: u64,
    container: ContainerRecord,
}

/// The files one save writes and removes, encoded under the state's lock and written after it
/// is released (`SaveBatch::write`, on a blocking thread).
#[derive(Debug, Default)]
pub struct SaveBatch {
    dir: PathBuf,
    project: Option<Vec<u8>>,
    containers: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
    remove_legacy: bool,
    /// The containers it covers, to be marked changed again if the write fails.
    names: Vec<String>,
}

impl ProjectState {
    /// The generation number of `hash` for `service`, starting a new one if the hash changed.
    pub fn generation(&mut self, service: &str, hash: &str) -> u64 {
        match self.generations.0.get_mut(service) {
            Some(e) if e.0 == hash => return e.1,
            // Rolling back to the previous config still counts as a new generation.
            Some(e) => *e = (hash.to_string(), e.1 + 1),
            None => {
                self.generations
                    .0
                    .insert(service.to_string(), (hash.to_string(), 1));
            }
        }
        self.changes.generations = true;
        self.generations[service].1
    }
}

/// Everything needed to load the project again, exactly as the CLI did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectSource {
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    pub project_directory: Option<PathBuf>,
    pub env_files: Vec<PathBuf>,
    pub profiles: Vec<String>,
    pub working_dir: PathBuf,
    pub environment: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The key in the compose file (`default`, `front`…).
    pub key: String,
    /// The real name (`<project>_<key>`).
    pub name: String,
    pub bridge: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// External networks are used, never created or removed.
    pub external: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub key: String,
    pub name: String,
    pub path: PathBuf,
    pub external: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The network's key in the compose file.
    pub network: String,
    /// Its real name, which is also its IPAM key.
    pub network_name: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortRecord {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub target: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Paused => "paused",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `<project>-<service>-<n>` or `container_name`; also the runtime id.
    pub name: String,
    pub service: String,
    pub number: u32,
    pub config_hash: String,
    /// Rollout generation of the service config this container runs.
    #[serde(default)]
    pub generation: u64,
    pub image: String,
    pub image_id: String,
    pub dir: PathBuf,
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    pub status: Status,
    pub pid: Option<i32>,
    /// Start time of `pid` (field 22 of /proc/PID/stat) to detect pid reuse on adoption.
    pub pid_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub health: Option<String>,
    /// Stopped by the user (`stop`, `down`): restart policies do not apply.
    #[serde(default)]
    pub stopped_by_user: bool,
    #[serde(default)]
    pub oneoff: bool,
    /// Anonymous volumes made for this container (removed with it).
    #[serde(default)]
    pub anon_volumes: Vec<String>,
    /// `logging.options` max-size and max-file, so that a supervisor adopting the running
    /// container (before any `up` loads the plan) rotates its log as configured.
    #[serde(default)]
    pub log_max_size: Option<u64>,
    #[serde(default)]
    pub log_max_file: Option<u32>,
    /// The restart policy it was made with, for a supervisor that adopts it before any `up`
    /// loads the plan (after the previous supervisor died).
    #[serde(default)]
    pub restart: Option<crate::engine::restart::Policy>,
}

impl ProjectState {
    /// The project's record directory.
    pub fn dir(paths: &Paths, project: &str) -> PathBuf {
        paths.project(project)
    }

    /// The single-file record of berth versions before the per-container files.
    fn legacy_path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(paths: &Paths, project: &str) -> anyhow::Result<Option<ProjectState>> {
        let dir = Self::dir(paths, project);
        let pj = dir.join(PROJECT_FILE);
        let fields: ProjectFields = match fs::read(&pj) {
            Ok(bytes) if bytes.is_empty() => {
                // Written without an fsync and the machine went down before the deferred one
                // (supervisor/batch.rs, `DeferredSync`; ext4 then keeps the rename, not the
                // data): the networks and containers it names died with the machine. Its
                // previous version (`.project.json.prev`, see `swap_in_file`) is read if there
                // is one, so `down` still finds the networks it names; else the project reads
                // as one without networks. The container files are read either way, so `down`
                // removes what is left on disk.
                match fs::read(prev_path(&pj))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ProjectFields>(&b).ok())
                    .filter(|f| f.name == project)
                {
                    Some(f) => {
                        tracing::warn!(
                            "{}: empty, its previous version read instead",
                            pj.display()
                        );
                        f
                    }
                    None => {
                        tracing::warn!(
                            "{}: empty, read as a project without networks",
                            pj.display()
                        );
                        serde_json::from_value(serde_json::json!({ "name": project }))?
                    }
                }
            }
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", pj.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::load_legacy(&dir),
            Err(e) => return Err(e).with_context(|| format!("reading {}", pj.display())),
        };
        // project.json is written after the container files it goes with, so every container
        // of this record is in the directory by now.
        let cdir = dir.join(CONTAINERS_DIR);
        let mut recs: Vec<(u64, ContainerRecord)> = Vec::new();
        match fs::read_dir(&cdir) {
            Ok(rd) => {
                for entry in rd {
                    let entry = entry.with_context(|| format!("reading {}", cdir.display()))?;
                    let fname = entry.file_name();
                    let fname = fname.to_string_lossy();
                    if fname.starts_with('.') || !fname.ends_with(".json") {
                        continue; // a temp file of a write in progress
                    }
                    let path = entry.path();
                    let bytes = match fs::read(&path) {
                        Ok(b) => b,
                        // Removed meanwhile (the container went).
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(e).with_context(|| format!("reading {}", path.display()))
                        }
                    };
                    if bytes.is_empty() {
                        // Written without an fsync and the machine went down before the
                        // deferred one (ext4 then keeps the rename, not the data). The version
                        // before it, if any (`swap_in_file`'s `.prev`, synced by an earlier
                        // pass), still names the container: its processes died with the
                        // machine, but its record keeps `down` able to remove what it left.
                        // Without one, the container was being made and is gone with the
                        // machine.
                        let prev = fs::read(prev_path(&path)).ok().and_then(|b| {
                            serde_json::from_slice::<ContainerFile>(&b)
                                .ok()
                                .filter(|f| {
                                    f.container.name.as_str() == fname.trim_end_matches(".json")
                                })
                        });
                        match prev {
                            Some(f) => {
                                tracing::warn!(
                                    "{}: empty, its previous version read instead",
                                    path.display()
                                );
                                recs.push((f.seq, f.container));
                            }
                            None => tracing::warn!("{}: empty, ignored", path.display()),
                        }
                        continue;
                    }
                    let f: ContainerFile = serde_json::from_slice(&bytes)
                        .with_context(|| format!("reading {}", path.display()))?;
                    recs.push((f.seq, f.container));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", cdir.display())),
        }
        recs.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        let changes = Changes {
            next_seq: recs.last().map_or(0, |r| r.0 + 1),
            seqs: recs.iter().map(|(s, c)| (c.name.clone(), *s)).collect(),
            ..Default::default()
        };
        let mut st = ProjectState {
            name: fields.name.clone(),
            source: fields.source.clone(),
            working_dir: fields.working_dir.clone(),
            config_files: fields.config_files.clone(),
            networks: fields.networks.clone(),
            volumes: fields.volumes.clone(),
            generations: Generations(fields.generations.clone()),
            containers: recs.into_iter().map(|r| r.1).collect(),
            changes,
        };
        st.changes.written = Some(Box::new(fields));
        st.changes.index = Index::build(&st.containers);
        Ok(Some(st))
    }

    /// The old single `state.json`; its first save writes the directory and removes it.
    fn load_legacy(dir: &Path) -> anyhow::Result<Option<ProjectState>> {
        let p = Self::legacy_path(dir);
        let mut st: ProjectState = match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", p.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        st.changes.legacy = true;
        st.changes.index = Index::build(&st.containers);
        st.changes.next_seq = st.containers.len() as u64;
        for (i, c) in st.containers.iter().enumerate() {
            st.changes.seqs.insert(c.name.clone(), i as u64);
            st.changes.records.insert(c.name.clone());
        }
        Ok(Some(st))
    }

    /// The whole record written in one go, in the current format (tests).
    #[cfg(test)]
    pub fn save(&self, paths: &Paths) -> anyhow::Result<()> {
        let mut all = self.clone();
        all.changes.legacy = Self::legacy_path(&Self::dir(paths, &self.name)).exists();
        for (i, c) in self.containers.iter().enumerate() {
            all.changes.seqs.insert(c.name.clone(), i as u64);
            all.changes.records.insert(c.name.clone());
        }
        all.changes.next_seq = self.containers.len() as u64;
        all.save_batch(paths)?.write()
    }

    /// What changed since the last call, encoded, ready to be written (`SaveBatch::write`) once
    /// the caller's lock on the state is released: the changed containers' files, the ones of
    /// containers that went, and `project.json` if its fields changed. Makes the directories
    /// (so a write after a `down` removed them fails instead of bringing the record back).
    pub fn save_batch(&mut self, paths: &Paths) -> anyhow::Result<SaveBatch> {
        let dir = Self::dir(paths, &self.name);
        let mut b = SaveBatch {
            dir: dir.clone(),
            ..Default::default()
        };
        let fields = self.fields_ref();
        let project_changed = self.changes.generations
            || self
                .changes
                .written
                .as_ref()
                .is_none_or(|w| !fields.same_as(w));
        if !project_changed && self.changes.records.is_empty() && !self.changes.legacy {
            return Ok(b);
        }
        // Before anything is taken: a failure here leaves every change for the next save.
        fs::create_dir_all(dir.join(CONTAINERS_DIR))
            .with_context(|| format!("creating {}", dir.display()))?;
        if project_changed {
            b.project = Some(serde_json::to_vec(&fields)?);
            let owned = Box::new(fields.to_owned());
            self.changes.written = Some(owned);
            self.changes.generations = false;
        }
        let names: Vec<String> = self.changes.records.drain().collect();
        // One pass to find them when there are many (a burst at `up`), a scan for a few.
        let index: Option<HashMap<&str, &ContainerRecord>> = (names.len() > 4).then(|| {
            self.containers
                .iter()
                .map(|c| (c.name.as_str(), c))
                .collect()
        });
        for name in &names {
            let rec = match &index {
                Some(ix) => ix.get(name.as_str()).copied(),
                None => {
                    let cs = &self.containers;
                    match self.changes.index.find(cs, name) {
                        Ok(at) => at.map(|i| &cs[i]),
                        Err(()) => cs.iter().find(|c| c.name == *name),
                    }
                }
            };
            match rec {
                Some(c) => {
                    let seq = match self.changes.seqs.get(name) {
                        Some(s) => *s,
                        None => {
                            let s = self.changes.next_seq;
                            self.changes.next_seq += 1;
                            self.changes.seqs.insert(name.clone(), s);
                            s
                        }
                    };
                    let bytes = serde_json::to_vec(&ContainerFileRef { seq, container: c })?;
                    b.containers.push((name.clone(), bytes));
                }
                None => {
                    self.changes.seqs.remove(name);
                    b.removed.push(name.clone());
                }
            }
        }
        b.remove_legacy = std::mem::take(&mut self.changes.legacy);
        b.names = names;
        Ok(b)
    }

    /// After a failed write: what that batch covered is written again by the next save.
    pub fn unsaved(&mut self, batch_names: Vec<String>, project: bool) {
        self.changes.records.extend(batch_names);
        if project {
            self.changes.written = None;
        }
    }

    fn fields_ref(&self) -> ProjectFieldsRef<'_> {
        ProjectFieldsRef {
            name: &self.name,
            source: &self.source,
            working_dir: &self.working_dir,
            config_files: &self.config_files,
            networks: &self.networks,
            volumes: &self.volumes,
            generations: &self.generations,
        }
    }

    fn touch(&mut self, name: &str, service: &str) {
        let ch = &mut self.changes;
        if !ch.records.contains(name) {
            ch.records.insert(name.to_string());
        }
        for set in [&mut ch.dns, &mut ch.firewall] {
            if !set.contains(service) {
                set.insert(service.to_string());
            }
        }
    }

    /// Add `rec`, or replace the container of that name (it then counts as the newest).
    pub fn put_container(&mut self, rec: ContainerRecord) {
        let seq = self.changes.next_seq;
        self.changes.next_seq += 1;
        self.changes.seqs.insert(rec.name.clone(), seq);
        self.touch(&rec.name.clone(), &rec.service.clone());
        match self.position(&rec.name) {
            None if self.changes.index.len == self.containers.len() => {
                self.changes.index.push(&rec, self.containers.len());
                self.containers.push(rec);
            }
            at => {
                if let Some(i) = at {
                    self.containers.remove(i);
                }
                self.containers.push(rec);
                self.changes.index = Index::build(&self.containers);
            }
        }
    }

    /// Forget the container `name` (its file goes with the next save).
    pub fn remove_container(&mut self, name: &str) {
        if let Some(i) = self.position(name) {
            let c = self.containers.remove(i);
            self.touch(&c.name, &c.service);
            self.changes.index = Index::build(&self.containers);
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.changes
            .index
            .find(&self.containers, name)
            .unwrap_or_else(|()| self.containers.iter().position(|c| c.name == name))
    }

    /// The containers of `service`, in order of creation.
    pub fn of_service<'a>(&'a self, service: &str) -> Vec<&'a ContainerRecord> {
        match self.changes.index.of_service(&self.containers, service) {
            Ok(ix) => ix.iter().map(|&i| &self.containers[i]).collect(),
            Err(()) => self
                .containers
                .iter()
                .filter(|c| c.service == service)
                .collect(),
        }
    }

    /// The containers of `services` (all when empty), in order of creation.
    pub fn of_services<'a>(&'a self, services: &[String]) -> Vec<&'a ContainerRecord> {
        if services.is_empty() {
            return self.containers.iter().collect();
        }
        let mut at: Vec<usize> = Vec::new();
        for (k, s) in services.iter().enumerate() {
            if services[..k].contains(s) {
                continue;
            }
            match self.changes.index.of_service(&self.containers, s) {
                Ok(ix) => at.extend_from_slice(ix),
                Err(()) => {
                    return self
                        .containers
                        .iter()
                        .filter(|c| services.contains(&c.service))
                        .collect()
                }
            }
        }
        at.sort_unstable();
        at.into_iter().map(|i| &self.containers[i]).collect()
    }

    /// Services with a container changed since the last call (for the DNS records).
    pub(crate) fn take_dns_changes(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changes.dns)
    }

    /// Services with a container changed since the last call (for the published ports).
    pub(crate) fn take_firewall_changes(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changes.firewall)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.position(name).map(|i| &self.containers[i])
    }

    /// The container `name`, to change: it is written by the next save and looked at again by
    /// the next DNS and firewall update.
    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        let i = self.position(name)?;
        let service = self.containers[i].service.clone();
        self.touch(name, &service);
        Some(&mut self.containers[i])
    }

    /// Every project with a record under the state root.
    pub fn list(paths: &Paths) -> anyhow::Result<Vec<ProjectState>> {
        let mut out = Vec::new();
        let dir = paths.projects();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Ok(Some(s)) = ProjectState::load(paths, &name) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

const PROJECT_FILE: &str = "project.json";
const CONTAINERS_DIR: &str = "containers";

impl SaveBatch {
    pub fn is_empty(&self) -> bool {
        self.project.is_none()
            && self.containers.is_empty()
            && self.removed.is_empty()
            && !self.remove_legacy
    }

    /// Whether it rewrites `project.json`.
    pub fn has_project(&self) -> bool {
        self.project.is_some()
    }

    /// The containers it covers (to mark them changed again after a failed write).
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Write it: the container files (in parallel when there are several: the filesystem's
    /// journal then commits their fsyncs together), the removals, then `project.json`, then
    /// the old `state.json` goes. Never makes the project's directory (see `save_batch`).
    #[cfg(test)]
    pub fn write(self) -> anyhow::Result<()> {
        self.write_with(true).map(|_| ())
    }

    /// Write it as `write` does, but without an fsync per file: each file is still replaced
    /// atomically (temp file, rename), so a crash of the writing process leaves the old or the
    /// new content (the page cache outlives the process). Returns what to `sync_written` later
    /// for the content to outlive a crash of the machine too.
    pub fn write_unsynced(self) -> anyhow::Result<Written> {
        self.write_with(false)
    }

    fn write_with(self, sync: bool) -> anyhow::Result<Written> {
        let cdir = self.dir.join(CONTAINERS_DIR);
        let file = |name: &str| cdir.join(format!("{name}.json"));
        const WRITERS: usize = 8;
        if self.containers.len() > 1 {
            let per = self.containers.len().div_ceil(WRITERS);
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .containers
                    .chunks(per)
                    .map(|chunk| {
                        s.spawn(|| {
                            chunk
                                .iter()
                                .try_for_each(|(n, b)| write_record(&file(n), b, sync))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("writer panicked")))
                    })
                    .collect::<anyhow::Result<Vec<()>>>()
            })?;
        } else {
            for (n, b) in &self.containers {
                write_record(&file(n), b, sync)?;
            }
        }
        for n in &self.removed {
            let _ = fs::remove_file(prev_path(&file(n)));
            match fs::remove_file(file(n)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", file(n).display())),
            }
        }
        if let Some(p) = &self.project {
            write_record(&self.dir.join(PROJECT_FILE), p, sync)?;
        }
        if self.remove_legacy {
            let _ = fs::remove_file(ProjectState::legacy_path(&self.dir));
        }
        let mut w = Written::default();
        if !sync {
            w.files = self.containers.iter().map(|(n, _)| file(n)).collect();
            if self.project.is_some() {
                w.files.push(self.dir.join(PROJECT_FILE));
            }
        }
        Ok(w)
    }
}

/// What a `SaveBatch::write_unsynced` wrote: its files. Their directories are not fsynced,
/// as `write_atomic` never did: on ext4 a file's fsync commits the journal transaction that
/// holds its rename (and a directory fsync per pass cost a journal commit of its own).
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

impl Written {
    pub fn merge(&mut self, other: Written) {
        self.files.extend(other.files);
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// fsync the files. One gone meanwhile (replaced again, the container or the project
    /// removed) is skipped: what replaced it is synced by its own write, and a removal needs
    /// no content on disk.
    pub fn sync(mut self) -> anyhow::Result<()> {
        self.files.sort();
        self.files.dedup();
        for p in &self.files {
            match File::open(p) {
                Ok(f) => f
                    .sync_all()
                    .with_context(|| format!("syncing {}", p.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("syncing {}", p.display())),
            }
        }
        Ok(())
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path without parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic_in_place(path, bytes)
}

/// `write_atomic_in_place` without the fsync: the caller has it synced later (the supervisor's
/// deferred passes), off its path.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_file(path, bytes, false)
}

/// `write_atomic` into a directory that must exist already (it is not made again).
pub fn write_atomic_in_place(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_file(path, bytes, true)
}

/// Write `bytes` to `path`, made or truncated, mode 0600 (a record holds the environment the
/// project was loaded with, which may carry secrets: only root reads it); fsynced if `sync`.
fn write_private(path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    if sync {
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    Ok(())
}

/// Replace `path` by a temp file renamed over it; fsynced before the rename if `sync`.
fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    let dir = path.parent().context("path without parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    write_private(&tmp, bytes, sync)?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// One record file written by a save: fsynced and renamed (`replace_file`), or, unsynced (the
/// supervisor's saves), swapped in (`swap_in_file`).
fn write_record(path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    if sync {
        replace_file(path, bytes, true)
    } else {
        swap_in_file(path, bytes)
    }
}

/// Where `swap_in_file` keeps the content `path` had before its last write (a dot file: a
/// load never reads it as a record).
fn prev_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".{}.prev",
        path.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Replace `path` atomically without a new inode per write: the content is written into
/// `.NAME.prev`, which is then exchanged with `path` (renameat2 RENAME_EXCHANGE), so
/// `.NAME.prev` holds the previous content until the next write reuses its inode. A rename
/// over `path` would allocate an inode and free one on every save: on ext4 every inode
/// allocation walks past the inodes freed in the last ~35 s when the filesystem has no journal
/// (`recently_deleted`), and right after an `up` of 500 containers that made one container's
/// stop/start cost ~1 ms more in file creation than at 50. A process crash leaves the old or
/// the new content at `path`, as with a rename; a machine crash before the deferred fsync
/// leaves the new inode's unsynced content as a rename would, and `.NAME.prev` the one before.
/// Only the supervisor writes this way, and one supervisor runs per project (its lock), so
/// `.NAME.prev` has one writer. The first write of a file, and a filesystem without
/// RENAME_EXCHANGE, rename instead.
fn swap_in_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let prev = prev_path(path);
    write_private(&prev, bytes, false)?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .with_context(|| format!("{}: NUL in path", p.display()))
    };
    let (from, to) = (c(&prev)?, c(path)?);
    // SAFETY: two NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not there yet (its first write), or no exchange on this filesystem.
        Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            fs::rename(&prev, path).with_context(|| format!("renaming into {}", path.display()))
        }
        _ => Err(e).with_context(|| format!("swapping {} into place", path.display())),
    }
}

/// An exclusive advisory lock on a project (flock), held while its record is changed.
pub struct ProjectLock {
    _file: File,
}

impl ProjectLock {
    pub fn acquire(paths: &Paths, project: &str) -> anyhow::Result<ProjectLock> {
        let dir = paths.project(project);
        fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the project");
        }
        Ok(ProjectLock { _file: file })
    }
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process recorded (same start time).
pub fn pid_matches(pid: i32, start: Option<u64>) -> bool {
    match (pid_start_time(pid), start) {
        (Some(now), Some(rec)) => now == rec,
        (Some(_), None) => true,
        _ => false,
    }
}

pub fn now_rfc3339() -> String {
    format_time(std::time::SystemTime::now())
}

/// RFC 3339 with nanoseconds, UTC, without pulling a date crate.
pub fn format_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Parse the RFC 3339 UTC form written by `format_time` (and plain `YYYY-MM-DDTHH:MM:SSZ`).
pub fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, d) = (dp.next()?.ok()?, dp.next()?.ok()?, dp.next()?.ok()?);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut tp = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (tp.next()?.ok()?, tp.next()?.ok()?, tp.next()?.ok()?);
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let f = &frac[..frac.len().min(9)];
        f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
    };
    let days = days_from_civil(y, m, d);
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    if secs < 0 {
        return None;
    }
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos))
}

// Howard Hinnant's civil-date algorithms.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A record for unit tests: `name` of `service`, replica 1, running, nothing else set.
#[cfg(test)]
impl ContainerRecord {
    pub(crate) fn sample(name: &str, service: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            service: service.into(),
            number: 1,
            config_hash: "h".into(),
            generation: 0,
            image: "i".into(),
            image_id: "x".into(),
            dir: PathBuf::from("/d"),
            netns: None,
            endpoints: vec![],
            ports: vec![],
            status: Status::Running,
            pid: None,
            pid_start: None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            restart_count: 0,
            health: None,
            stopped_by_user: false,
            oneoff: false,
            anon_volumes: vec![],
            log_max_size: None,
            log_max_file: None,
            restart: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_795_000_123, 456_789_012);
        let s = format_time(t);
        assert_eq!(s, "2026-11-18T11:08:43.456789012Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(
            parse_time("2013-01-02T13:23:37Z"),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1357133017))
        );
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // no temp file left behind
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn own_pid_matches_its_start_time() {
        let pid = std::process::id() as i32;
        let st = pid_start_time(pid);
        assert!(st.is_some());
        assert!(pid_matches(pid, st));
        assert!(!pid_matches(pid, st.map(|s| s + 1)));
    }

    fn rec(name: &str, service: &str) -> ContainerRecord {
        ContainerRecord {
            generation: 1,
            image: "img".into(),
            image_id: "sha256:x".into(),
            status: Status::Created,
            ..ContainerRecord::sample(name, service)
        }
    }

    fn paths(d: &Path) -> Paths {
        Paths {
            data: d.join("data"),
            run: d.join("run"),
        }
    }

    fn names(st: &ProjectState) -> Vec<&str> {
        st.containers.iter().map(|c| c.name.as_str()).collect()
    }

    fn files(p: &Paths) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p.project("p").join(CONTAINERS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// Project "p" with containers p-a-1 and p-b-1 (services a, b).
    fn two_containers() -> ProjectState {
        let mut st = ProjectState {
            name: "p".into(),
            ..Default::default()
        };
        st.put_container(rec("p-a-1", "a"));
        st.put_container(rec("p-b-1", "b"));
        st
    }

    #[test]
    fn unsynced_write_is_read_back_and_names_what_to_sync() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let mut st = two_containers();
        let w = st.save_batch(&p).unwrap().write_unsynced().unwrap();
        let dir = p.project("p");
        let mut want = vec![
            dir.join("containers/p-a-1.json"),
            dir.join("containers/p-b-1.json"),
            dir.join(PROJECT_FILE),
        ];
        let mut got = w.files.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&back), ["p-a-1", "p-b-1"]);
        // A second write swaps its content in: the record's inode is the one the first write
        // left as `.prev` (no inode made), `.prev` holds the first content, a load reads the
        // new one; removing the container removes both.
        use std::os::unix::fs::MetadataExt;
        let file = dir.join("containers/p-b-1.json");
        let prev = dir.join("containers/.p-b-1.json.prev");
        st.container_mut("p-b-1").unwrap().status = Status::Running;
        st.save_batch(&p).unwrap().write_unsynced().unwrap();
        let prev_ino = fs::metadata(&prev).unwrap().ino();
        st.container_mut("p-b-1").unwrap().status = Status::Exited;
        st.save_batch(&p).unwrap().write_unsynced().unwrap();
        assert_eq!(fs::metadata(&file).unwrap().ino(), prev_ino);
        let old: ContainerFile = serde_json::from_slice(&fs::read(&prev).unwrap()).unwrap();
        assert_eq!(old.container.status, Status::Running);
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(back.container("p-b-1").unwrap().status, Status::Exited);
        assert_eq!(names(&back), ["p-a-1", "p-b-1"]);
        // A machine crash before the deferred sync leaves the record empty: its previous
        // version is read instead (a record without one is dropped, see the next test).
        fs::write(&file, b"").unwrap();
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(back.container("p-b-1").unwrap().status, Status::Running);
        assert_eq!(names(&back), ["p-a-1", "p-b-1"]);
        // The same for the project's record: its version before is read.
        st.generation("a", "h1");
        st.save_batch(&p).unwrap().write_unsynced().unwrap();
        st.generation("a", "h2");
        st.save_batch(&p).unwrap().write_unsynced().unwrap();
        fs::write(dir.join(PROJECT_FILE), b"").unwrap();
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(back.generations["a"], ("h1".to_string(), 1));
        assert_eq!(names(&back), ["p-a-1", "p-b-1"]);
        st.remove_container("p-b-1");
        st.save_batch(&p).unwrap().write_unsynced().unwrap();
        assert!(!file.exists() && !prev.exists());
        // A file gone before its sync (the container removed meanwhile) is skipped.
        fs::remove_file(dir.join("containers/p-a-1.json")).unwrap();
        w.sync().unwrap();
    }

    #[test]
    fn empty_files_left_by_a_machine_crash_do_not_stop_a_load() {
        // ext4 keeps the rename of a file written without fsync, not its data: what
        // `DeferredSync` risks if the machine goes down before its pass.
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let st = two_containers();
        st.save(&p).unwrap();
        let dir = p.project("p");
        fs::write(dir.join("containers/p-b-1.json"), b"").unwrap();
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&back), ["p-a-1"]);
        fs::write(dir.join(PROJECT_FILE), b"").unwrap();
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(back.name, "p");
        assert!(back.networks.is_empty());
        assert_eq!(names(&back), ["p-a-1"]);
        // Anything else that is not a record is still an error.
        fs::write(dir.join("containers/p-b-1.json"), b"{").unwrap();
        assert!(ProjectState::load(&p, "p").is_err());
    }

    #[test]
    fn an_event_writes_its_container_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let mut st = ProjectState {
            name: "p".into(),
            ..Default::default()
        };
        for i in 0..50 {
            st.put_container(rec(&format!("p-s{i}-1"), &format!("s{i}")));
        }
        let b = st.save_batch(&p).unwrap();
        assert!(b.has_project());
        assert_eq!(b.containers.len(), 50);
        b.write().unwrap();
        assert_eq!(files(&p).len(), 50);
        // Nothing changed: nothing to write.
        assert!(st.save_batch(&p).unwrap().is_empty());
        // One container's status: its file alone, not the project's.
        st.container_mut("p-s7-1").unwrap().status = Status::Running;
        let b = st.save_batch(&p).unwrap();
        assert!(!b.has_project());
        assert_eq!(b.names(), vec!["p-s7-1".to_string()]);
        b.write().unwrap();
        // A generation change rewrites the project's record, no container.
        st.generation("s1", "new");
        let b = st.save_batch(&p).unwrap();
        assert!(b.has_project() && b.containers.is_empty());
        b.write().unwrap();
        // The same config again is no change; another one is, and so is a new service's.
        assert_eq!(st.generation("s1", "new"), 1);
        assert!(st.save_batch(&p).unwrap().is_empty());
        assert_eq!(st.generation("s1", "newer"), 2);
        assert!(st.save_batch(&p).unwrap().has_project());
        assert_eq!(st.generation("s1", "new"), 3);
        st.generation("s99", "h");
        let b = st.save_batch(&p).unwrap();
        assert!(b.has_project());
        b.write().unwrap();
        // A removal removes the file.
        st.remove_container("p-s3-1");
        st.save_batch(&p).unwrap().write().unwrap();
        assert!(!files(&p).contains(&"p-s3-1.json".to_string()));
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&back), names(&st));
        assert_eq!(back.container("p-s7-1").unwrap().status, Status::Running);
        assert_eq!(back.generations["s1"], ("new".to_string(), 3));
        assert_eq!(back.generations["s99"], ("h".to_string(), 1));
        assert!(back.container("p-s3-1").is_none());
    }

    #[test]
    fn lookups_by_name_and_service_follow_every_change() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let mut st = ProjectState {
            name: "p".into(),
            ..Default::default()
        };
        for (n, svc) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c")] {
            st.put_container(rec(n, svc));
        }
        let of = |st: &ProjectState, s: &str| -> Vec<String> {
            st.of_service(s).iter().map(|c| c.name.clone()).collect()
        };
        let of_all = |st: &ProjectState, s: &[&str]| -> Vec<String> {
            let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            st.of_services(&s).iter().map(|c| c.name.clone()).collect()
        };
        assert_eq!(of(&st, "a"), ["a1", "a2"]);
        assert_eq!(st.container("b1").unwrap().service, "b");
        assert!(st.container("zz").is_none());
        // In creation order whatever the order asked, each once.
        assert_eq!(of_all(&st, &["c", "a", "c"]), ["a1", "a2", "c1"]);
        assert_eq!(of_all(&st, &[]), ["a1", "b1", "a2", "c1"]);
        // Replaced: the newest, found where it now is; removed: gone from both.
        st.put_container(rec("a1", "a"));
        assert_eq!(names(&st), ["b1", "a2", "c1", "a1"]);
        assert_eq!(of(&st, "a"), ["a2", "a1"]);
        st.remove_container("b1");
        assert!(st.container("b1").is_none());
        assert!(of(&st, "b").is_empty());
        assert_eq!(st.container_mut("c1").unwrap().name, "c1");
        // Reloaded: the same answers.
        st.save_batch(&p).unwrap().write().unwrap();
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(of(&back, "a"), ["a2", "a1"]);
        assert_eq!(back.container("c1").unwrap().service, "c");
        // `containers` changed by hand (a filtered copy, a clone): still right, by a scan.
        let mut cut = back.clone();
        cut.containers.retain(|c| c.name != "a2");
        assert_eq!(of(&cut, "a"), ["a1"]);
        assert!(cut.container("a2").is_none());
        assert_eq!(cut.container("c1").unwrap().name, "c1");
        let mut swapped = back;
        swapped.containers.swap(0, 2);
        assert_eq!(swapped.container("a2").unwrap().name, "a2");
        assert_eq!(of(&swapped, "a"), ["a1", "a2"]);
        swapped.put_container(rec("y1", "y"));
        assert_eq!(of(&swapped, "y"), ["y1"]);
        assert_eq!(swapped.container("a2").unwrap().service, "a");
        swapped.remove_container("a2");
        assert_eq!(of(&swapped, "a"), ["a1"]);
    }

    #[test]
    fn creation_order_survives_reloads_and_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let mut st = ProjectState {
            name: "p".into(),
            ..Default::default()
        };
        for n in ["c", "a", "b"] {
            st.put_container(rec(n, n));
        }
        st.save_batch(&p).unwrap().write().unwrap();
        let mut back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&back), ["c", "a", "b"]);
        // Recreated: it becomes the newest, in memory and on disk, also after a reload.
        back.put_container(rec("c", "c"));
        back.put_container(rec("d", "d"));
        assert_eq!(names(&back), ["a", "b", "c", "d"]);
        back.save_batch(&p).unwrap().write().unwrap();
        let again = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&again), ["a", "b", "c", "d"]);
    }

    #[test]
    fn the_old_single_file_is_read_and_replaced_on_the_first_save() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let mut old = ProjectState {
            name: "p".into(),
            ..Default::default()
        };
        old.containers = vec![rec("p-b-1", "b"), rec("p-a-1", "a")];
        old.generation("a", "h");
        // Exactly what berth wrote before: the whole state as one JSON document.
        let legacy = p.project("p").join("state.json");
        write_atomic(&legacy, &serde_json::to_vec(&old).unwrap()).unwrap();
        let mut st = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&st), ["p-b-1", "p-a-1"]);
        assert_eq!(ProjectState::list(&p).unwrap().len(), 1);
        st.container_mut("p-a-1").unwrap().status = Status::Running;
        st.save_batch(&p).unwrap().write().unwrap();
        assert!(!legacy.exists());
        assert_eq!(files(&p), ["p-a-1.json", "p-b-1.json"]);
        let back = ProjectState::load(&p, "p").unwrap().unwrap();
        assert_eq!(names(&back), ["p-b-1", "p-a-1"]);
        assert_eq!(back.container("p-a-1").unwrap().status, Status::Running);
        assert_eq!(back.generations["a"], ("h".to_string(), 1));
    }

    #[test]
    fn a_bad_container_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let st = ProjectState {
            name: "p".into(),
            containers: vec![rec("p-a-1", "a")],
            ..Default::default()
        };
        st.save(&p).unwrap();
        let f = p.project("p").join("containers/p-a-1.json");
        fs::write(&f, b"{ not json").unwrap();
        let e = format!("{:#}", ProjectState::load(&p, "p").unwrap_err());
        assert!(e.contains("containers/p-a-1.json"), "{e}");
        // A temp file of a write in progress is not read.
        st.save(&p).unwrap();
        fs::write(p.project("p").join("containers/.p-a-1.json.tmp1"), b"{").unwrap();
        assert_eq!(
            ProjectState::load(&p, "p")
                .unwrap()
                .unwrap()
                .containers
                .len(),
            1
        );
    }

    #[test]
    fn changes_are_taken_per_consumer() {
        let mut st = ProjectState::default();
        st.put_container(rec("p-a-1", "a"));
        st.put_container(rec("p-b-1", "b"));
        let dns = st.take_dns_changes();
        assert_eq!(dns.len(), 2);
        assert!(st.take_dns_changes().is_empty());
        st.container_mut("p-b-1").unwrap().health = Some("healthy".into());
        assert_eq!(st.take_dns_changes(), HashSet::from(["b".to_string()]));
        // The firewall's changes are its own: still both services and b.
        assert_eq!(st.take_firewall_changes().len(), 2);
        // A snapshot starts clean.
        st.container_mut("p-a-1");
        assert!(st.clone().take_dns_changes().is_empty());
    }
}

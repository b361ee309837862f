//! The executor: runs a parsed Dockerfile's stages into an image of berth's store.
//!
//! Each RUN runs in berth's own runtime (`berth __runtime run`, a re-exec, as the engine does)
//! on an overlay snapshot of the stage's layers; COPY and ADD write into such a snapshot too.
//! The snapshot's upper dir becomes the new layer (`ImageStore::commit_dir`: whiteouts and
//! opaque dirs as OCI entries). Config instructions edit the image config. Every layer step
//! looks up the cache first: its key chains the stage's base, every instruction before it (as
//! expanded), the build args and, for COPY/ADD, the content of the files read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use berth_runtime::image::staged::StagedLayer;
use berth_runtime::image::{Image, ImageStore};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::cacheio;
use super::dockerfile::{self, CmdForm, Dockerfile, Env, Instruction};
use super::filestore::FileStore;
use super::fsutil::{self, CopyMeta};
use super::ignore::{self, Ignore};
use crate::paths::Paths;
use crate::spec::{self, ContainerConfig, MountSpec, NetNs, Seccomp};

/// The network of RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A private network namespace with only loopback (berth's default: builds are offline).
    #[default]
    Isolated,
    /// The host's network namespace (`network: host`).
    Host,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Content(Vec<u8>),
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// The Dockerfile (relative to the context, or absolute); ignored with `inline`.
    pub dockerfile: Option<PathBuf>,
    pub inline: Option<String>,
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub no_cache: bool,
    /// Pull base images even when present.
    pub pull: bool,
    pub network: Network,
    pub secrets: BTreeMap<String, SecretSource>,
    /// `host:ip` lines added to RUN's /etc/hosts.
    pub extra_hosts: Vec<(String, String)>,
    pub shm_size: Option<u64>,
    /// `additional_contexts`: names `FROM` and `COPY --from` resolve (after stage names).
    pub contexts: BTreeMap<String, NamedContext>,
    /// `cache_from`: where cache records are imported from before the build.
    pub cache_from: Vec<CacheSource>,
    /// `cache_to: type=local,dest=DIR`: directories the build's cache records are exported to.
    pub cache_to: Vec<PathBuf>,
    /// `ssh`: agent sockets `RUN --mount=type=ssh,id=ID` may mount, by id.
    pub ssh: BTreeMap<String, SshSource>,
}

/// A named build context (`additional_contexts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory.
    Dir(PathBuf),
    /// An image (`docker-image://ref`, or the image a `service:` builds).
    Image(String),
}

/// A `cache_from` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSource {
    /// `type=local,src=DIR`: an OCI layout written by `cache_to: type=local`.
    Local(PathBuf),
    /// An image in the store (or pulled): the cache records berth's builds put in its config.
    Image(String),
}

/// Where an ssh id's agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// An agent's socket (`default`: `$SSH_AUTH_SOCK`).
    Socket(PathBuf),
    /// Private key files: the build runs its own `ssh-agent` holding them.
    Keys(Vec<PathBuf>),
}

/// Progress of a build.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step starts: (step number overall, stage name, n/total in stage, instruction text).
    Step {
        id: usize,
        stage: String,
        n: usize,
        total: usize,
        text: String,
    },
    Cached {
        id: usize,
    },
    Done {
        id: usize,
        elapsed: Duration,
    },
    /// Output of a RUN (whole, after it ends).
    Output {
        id: usize,
        text: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub id: String,
    /// RUN steps executed (not from the cache).
    pub runs: usize,
    /// Layer steps taken from the cache.
    pub cached: usize,
}

/// The state of a stage as it is built.
#[derive(Debug, Clone)]
struct StageState {
    layers: Vec<String>,
    /// The whole image config (architecture, os, config, history…); rootfs filled at the end.
    image: Map<String, Value>,
    key: String,
    /// Build args declared in this stage, with their values.
    args: BTreeMap<String, String>,
    cmd_set: bool,
    /// `created` of the newest layer (cached or new): a fully cached rebuild is bit-identical.
    created: String,
    /// The cache records of this stage's steps (and of the stages it derives from), carried
    /// in the image config so that the image can serve as `cache_from`.
    records: Vec<cacheio::Record>,
}

impl StageState {
    /// A stage on no image: `scratch`, or a directory context's one layer. Its config names
    /// only the host's platform.
    fn bare(layers: Vec<String>, key: String) -> StageState {
        let (os, arch, variant) = berth_runtime::image::host_platform();
        let mut image = Map::new();
        image.insert("architecture".into(), json!(arch));
        image.insert("os".into(), json!(os));
        if let Some(v) = variant {
            image.insert("variant".into(), json!(v));
        }
        image.insert("config".into(), json!({}));
        StageState {
            layers,
            image,
            key,
            args: BTreeMap::new(),
            cmd_set: false,
            created: "1970-01-01T00:00:00Z".into(),
            records: Vec::new(),
        }
    }

    fn cfg(&mut self) -> &mut Map<String, Value> {
        let c = self
            .image
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !c.is_object() {
            *c = Value::Object(Map::new());
        }
        c.as_object_mut().expect("object")
    }
    fn cfg_ref(&self) -> Option<&Map<String, Value>> {
        self.image.get("config").and_then(|c| c.as_object())
    }
    fn env_list(&self) -> Vec<String> {
        self.cfg_ref()
            .and_then(|c| c.get("Env"))
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn env_map(&self) -> BTreeMap<String, String> {
        self.env_list()
            .into_iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e, String::new()),
            })
            .collect()
    }
    /// Variables for substitution: build args, then ENV (ENV wins, as in Docker).
    fn subst_env(&self) -> Env {
        let mut e: Env = self.args.clone();
        e.extend(self.env_map());
        e
    }
    fn set_env(&mut self, k: &str, v: &str) {
        let mut list = self.env_list();
        let entry = format!("{k}={v}");
        match list.iter().position(|e| e.split('=').next() == Some(k)) {
            Some(i) => list[i] = entry,
            None => list.push(entry),
        }
        self.cfg().insert("Env".into(), json!(list));
    }
    fn str_field(&self, k: &str) -> String {
        self.cfg_ref()
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    }
    fn shell(&self) -> Vec<String> {
        self.cfg_ref()
            .and_then(|c| c.get("Shell"))
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }
    fn history(&mut self, created_by: &str, empty: bool) {
        let h = self
            .image
            .entry("history")
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = h {
            let mut e = json!({"created": self.created, "created_by": created_by, "comment": "berth build"});
            if empty {
                e["empty_layer"] = json!(true);
            }
            a.push(e);
        }
    }
    fn chain(&mut self, parts: &[&[u8]]) {
        let mut h = Sha256::new();
        h.update(self.key.as_bytes());
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        h.update(args.join("\0").as_bytes());
        self.key = hex::encode(h.finalize());
    }
}

struct Stage {
    name: Option<String>,
    from: Instruction,
    body: Vec<Instruction>,
}

/// A cache entry: the layer a step made (none: the step changed nothing).
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    diff_id: Option<String>,
    created: String,
}

/// Set by the CLI's SIGINT handler: the build stops before its next step (a running RUN gets
/// the signal from the runtime, which forwards it, and fails). Cleanup runs either way.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn cache_dir(paths: &Paths) -> PathBuf {
    paths.data.join("build-cache")
}

/// The layers every cache entry names (held from prune by the caller).
pub fn cached_layers(paths: &Paths) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(cache_dir(paths).join("steps")) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                if let Ok(c) = serde_json::from_slice::<CacheEntry>(&b) {
                    out.extend(c.diff_id);
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Drop the whole build cache (entries and cache mounts); returns the entries removed.
pub fn prune_cache(paths: &Paths) -> anyhow::Result<usize> {
    let dir = cache_dir(paths);
    let n = std::fs::read_dir(dir.join("steps"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => {}
    }
    Ok(n)
}

/// RFC 3339 (UTC) for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d) = crate::state::civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn now_rfc3339() -> String {
    rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Go's `time.ParseDuration` (as HEALTHCHECK flags take it), in nanoseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let v: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += v * mult;
        rest = &rest[u..];
    }
    Ok(total as u64)
}

/// The platform args BuildKit predefines (host = build = target here).
fn platform_args() -> BTreeMap<String, String> {
    let (os, arch, variant) = berth_runtime::image::host_platform();
    let plat = match &variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    let mut m = BTreeMap::new();
    for p in ["BUILD", "TARGET"] {
        m.insert(format!("{p}PLATFORM"), plat.clone());
        m.insert(format!("{p}OS"), os.clone());
        m.insert(format!("{p}ARCH"), arch.clone());
        m.insert(format!("{p}VARIANT"), variant.clone().unwrap_or_default());
    }
    m
}

pub struct Builder<'a> {
    paths: &'a Paths,
    store: &'a ImageStore,
    opts: &'a BuildOptions,
    file: String,
    df: Dockerfile,
    ignore: Ignore,
    events: &'a mut dyn FnMut(Event),
    step: usize,
    outcome: Outcome,
    stages: Vec<Stage>,
    done: BTreeMap<usize, StageState>,
    globals: BTreeMap<String, String>,
    /// Records from `cache_from`, by key: hits when the local cache has none.
    imported: BTreeMap<String, cacheio::Imported>,
    /// Every layer step's record of this build (cached or new), for `cache_to`.
    made: BTreeMap<String, (Option<String>, String)>,
    /// The context files' digests kept between builds (read only where their stat changed).
    stat: super::cache::StatCache,
    /// Layers this build made, not yet synced nor in the store's `layers/` (published at the
    /// end: one sync per build).
    staged: Vec<StagedLayer>,
    /// Snapshots being unmounted and removed off the build's path (rmdir and umount wait on
    /// the file system's journal and RCU, not on CPU); joined before `build` returns.
    retiring: Vec<std::thread::JoinHandle<()>>,
}

/// A RUN/COPY working dir: an overlay snapshot (and, for RUN, a bundle and a netns).
struct Work {
    dir: PathBuf,
    netns: Option<PathBuf>,
    /// A tmpfs holding the RUN's secrets (never on disk).
    tmpfs: Option<PathBuf>,
}

impl Work {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns {
            let _ = berth_network::netns::remove(ns);
        }
        if let Some(t) = &self.tmpfs {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = berth_runtime::image::snapshot::remove(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(format!("{}-{t}-{n}", std::process::id()).as_bytes());
    hex::encode(&h.finalize()[..6])
}

/// The Dockerfile (read and parsed) and the context's `.dockerignore` of a build; errors name the
/// file and line.
fn load_dockerfile(opts: &BuildOptions) -> anyhow::Result<(String, Dockerfile, Ignore)> {
    let ctx = &opts.context;
    if !ctx.is_dir() {
        bail!("build context {} is not a directory", ctx.display());
    }
    let (file, text) = match (&opts.inline, &opts.dockerfile) {
        (Some(t), _) => ("Dockerfile (dockerfile_inline)".to_string(), t.clone()),
        (None, df) => {
            let p = df.clone().unwrap_or_else(|| PathBuf::from("Dockerfile"));
            let p = if p.is_absolute() { p } else { ctx.join(p) };
            let t = std::fs::read_to_string(&p)
                .with_context(|| format!("reading the Dockerfile {}", p.display()))?;
            (p.display().to_string(), t)
        }
    };
    let df = dockerfile::parse(&text).map_err(|e| anyhow!("{file}:{}: {}", e.line, e.msg))?;
    let ig_path = ctx.join(".dockerignore");
    let ignore = match std::fs::read_to_string(&ig_path) {
        Ok(t) => Ignore::parse(&t).map_err(|e| anyhow!("{}: {e}", ig_path.display()))?,
        Err(_) => Ignore::default(),
    };
    Ok((file, df, ignore))
}

/// `build --check`: the context exists, the Dockerfile and `.dockerignore` parse. Builds nothing.
pub fn check(opts: &BuildOptions) -> anyhow::Result<()> {
    load_dockerfile(opts).map(|_| ())
}

pub fn build(
    paths: &Paths,
    opts: &BuildOptions,
    events: &mut dyn FnMut(Event),
) -> anyhow::Result<Outcome> {
    let (file, df, ignore) = load_dockerfile(opts)?;
    let store = ImageStore::open(&paths.images())?;
    // Prune waits while this build adds layers no record names yet.
    let _guard = store.write_guard()?;
    let mut b = Builder {
        paths,
        store: &store,
        opts,
        file,
        df,
        ignore,
        events,
        step: 0,
        outcome: Outcome::default(),
        stages: Vec::new(),
        done: BTreeMap::new(),
        globals: BTreeMap::new(),
        imported: BTreeMap::new(),
        made: BTreeMap::new(),
        stat: if opts.no_cache {
            super::cache::StatCache::disabled()
        } else {
            super::cache::StatCache::open(&cache_dir(paths).join("stat"), &opts.context)
        },
        staged: Vec::new(),
        retiring: Vec::new(),
    };
    if !opts.no_cache {
        b.import_cache();
    }
    let r = b.run();
    for h in std::mem::take(&mut b.retiring) {
        let _ = h.join();
    }
    crate::trace::step(|| "build: snapshots removed".into());
    // The layers of the steps that succeeded stay (the cache names them), as `commit_dir` left
    // them before: a retry after a failed step reuses them.
    let published = store.publish_staged(&mut b.staged);
    // The digests taken are right whether or not the build succeeded.
    b.stat.save();
    crate::trace::step(|| {
        format!(
            "build: context files hashed {}, digests reused {}",
            b.stat.hashed, b.stat.reused
        )
    });
    r?;
    published?;
    // After the publish: the export reads the layers from the store's `layers/`.
    for dir in &opts.cache_to {
        cacheio::export_local(&store, dir, &b.made)
            .with_context(|| format!("cache_to: exporting the build cache to {}", dir.display()))?;
    }
    Ok(b.outcome)
}

impl Builder<'_> {
    fn err(&self, ins: &Instruction, msg: impl std::fmt::Display) -> anyhow::Error {
        let mut shown = ins.original.clone();
        if shown.chars().count() > 80 {
            shown = shown.chars().take(77).collect::<String>() + "...";
        }
        anyhow!("{}:{}: {shown}: {msg}", self.file, ins.line)
    }

    fn run(&mut self) -> anyhow::Result<()> {
        // Global ARGs (before the first FROM), then stages.
        let mut globals = platform_args();
        let mut iter = self.df.instructions.clone().into_iter().peekable();
        while let Some(ins) = iter.peek() {
            if ins.keyword == "FROM" {
                break;
            }
            let ins = iter.next().expect("peeked");
            if ins.keyword != "ARG" {
                return Err(self.err(&ins, "only ARG may come before the first FROM"));
            }
            for (k, v) in self.arg_decls(&ins, &globals)? {
                let val = self.opts.args.get(&k).cloned().or(v).unwrap_or_default();
                globals.insert(k, val);
            }
        }
        self.globals = globals;
        for ins in iter {
            if ins.keyword == "FROM" {
                let words = dockerfile::split_words(&ins.args, self.df.escape);
                let name = match words.as_slice() {
                    [_] => None,
                    [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_ascii_lowercase()),
                    _ => return Err(self.err(&ins, "expected FROM [--platform=P] IMAGE [AS NAME]")),
                };
                ins.check_flags(&["platform"])
                    .map_err(|e| self.err(&ins, e.msg))?;
                self.stages.push(Stage {
                    name,
                    from: ins,
                    body: vec![],
                });
            } else {
                match self.stages.last_mut() {
                    Some(s) => s.body.push(ins),
                    None => unreachable!("ARGs only before the first FROM"),
                }
            }
        }
        if self.stages.is_empty() {
            bail!("{}: no FROM instruction", self.file);
        }
        let target = match &self.opts.target {
            Some(t) => self
                .stage_index(t)
                .ok_or_else(|| anyhow!("{}: target stage {t:?} not found", self.file))?,
            None => self.stages.len() - 1,
        };
        // The stages the target needs, built in file order.
        let mut need = BTreeSet::new();
        self.deps(target, &mut need)?;
        for i in need {
            let st = self.build_stage(i)?;
            self.done.insert(i, st);
        }
        let st = self.done.remove(&target).expect("built");
        self.finish(st)
    }

    fn stage_index(&self, name: &str) -> Option<usize> {
        let l = name.to_ascii_lowercase();
        if let Some(i) = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&l))
        {
            return Some(i);
        }
        name.parse::<usize>()
            .ok()
            .filter(|i| *i < self.stages.len())
    }

    fn base_ref(&self, i: usize) -> anyhow::Result<String> {
        let s = &self.stages[i];
        let words = dockerfile::split_words(&s.from.args, self.df.escape);
        dockerfile::process_word(&words[0], &self.globals, self.df.escape)
            .map_err(|e| self.err(&s.from, e))
    }

    fn deps(&self, i: usize, need: &mut BTreeSet<usize>) -> anyhow::Result<()> {
        if !need.insert(i) {
            return Ok(());
        }
        let r = self.base_ref(i)?;
        if let Some(j) = self.stage_index_before(&r, i) {
            self.deps(j, need)?;
        }
        for ins in &self.stages[i].body {
            let mut froms: Vec<String> = Vec::new();
            if matches!(ins.keyword.as_str(), "COPY" | "ADD") {
                froms.extend(ins.flag("from").map(String::from));
            }
            if ins.keyword == "RUN" {
                for m in ins.flag_all("mount") {
                    for kv in m.split(',') {
                        if let Some(v) = kv.strip_prefix("from=") {
                            froms.push(v.to_string());
                        }
                    }
                }
            }
            for f in froms {
                let f = dockerfile::process_word(&f, &self.globals, self.df.escape)
                    .map_err(|e| self.err(ins, e))?;
                if let Some(j) = self.stage_index_before(&f, i) {
                    self.deps(j, need)?;
                } else if f.parse::<usize>().is_ok() {
                    return Err(self.err(ins, format!("stage {f} does not exist before this one")));
                }
            }
        }
        Ok(())
    }

    /// A stage named (or numbered) `r` defined before stage `i`.
    fn stage_index_before(&self, r: &str, i: usize) -> Option<usize> {
        self.stage_index(r).filter(|j| *j < i)
    }

    fn arg_decls(
        &self,
        ins: &Instruction,
        env: &Env,
    ) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        for w in dockerfile::split_words(&ins.args, self.df.escape) {
            match w.split_once('=') {
                Some((k, v)) => {
                    let v = dockerfile::process_word(v, env, self.df.escape)
                        .map_err(|e| self.err(ins, e))?;
                    out.push((k.to_string(), Some(v)));
                }
                None => out.push((w, None)),
            }
        }
        Ok(out)
    }

    fn image_for(&self, reference: &str, ins: &Instruction) -> anyhow::Result<Image> {
        if !self.opts.pull {
            if let Some(i) = self.store.get(reference)? {
                return Ok(i);
            }
        }
        crate::commands::image::pull_one(self.store, reference).map_err(|e| {
            self.err(
                ins,
                format!("base image {reference} is not in berth's store and could not be pulled ({e:#}); load it with `berth load`"),
            )
        })
    }

    fn build_stage(&mut self, i: usize) -> anyhow::Result<StageState> {
        let from = self.stages[i].from.clone();
        let body = self.stages[i].body.clone();
        let stage_name = self.stages[i]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{i}"));
        if let Some(p) = from.flag("platform") {
            let p = dockerfile::process_word(p, &self.globals, self.df.escape)
                .map_err(|e| self.err(&from, e))?;
            let host = &self.globals["TARGETPLATFORM"];
            let norm = |s: &str| s.trim_end_matches("/v8").to_string();
            if norm(&p) != norm(host) {
                return Err(self.err(
                    &from,
                    format!(
                        "platform {p} is not this host's ({host}); berth builds for the host only"
                    ),
                ));
            }
        }
        let r = self.base_ref(i)?;
        let total = body.len() + 1;
        let id = self.next_step(&stage_name, 1, total, &from.original);
        let t0 = Instant::now();
        // A named context (`additional_contexts`) stands for an image name it shadows.
        let named = match self.stage_index_before(&r, i) {
            Some(_) => None,
            None => self.opts.contexts.get(&r).cloned(),
        };
        let r = match &named {
            Some(NamedContext::Image(x)) => x.clone(),
            _ => r,
        };
        let mut st = if let Some(j) = self.stage_index_before(&r, i) {
            let mut s = self.done.get(&j).cloned().expect("dependency built first");
            s.args.clear();
            s.cmd_set = false;
            s
        } else if let Some(NamedContext::Dir(d)) = &named {
            // A directory as the stage's root filesystem: one layer of its files.
            if !d.is_dir() {
                return Err(self.err(&from, format!("context {} is not a directory", d.display())));
            }
            let l = self
                .store
                .commit_dir(d)
                .map_err(|e| self.err(&from, format!("context {}: {e}", d.display())))?;
            StageState::bare(
                vec![l.diff_id.clone()],
                hex::encode(Sha256::digest(format!("context\0{}", l.diff_id).as_bytes())),
            )
        } else if r.eq_ignore_ascii_case("scratch") {
            StageState::bare(vec![], hex::encode(Sha256::digest(b"scratch")))
        } else {
            let img = self.image_for(&r, &from)?;
            let raw = self.store.config_json(&img)?;
            let mut image: Map<String, Value> =
                serde_json::from_slice(&raw).with_context(|| format!("image config of {r}"))?;
            let layers = img.config.rootfs().diff_ids().to_vec();
            image.remove("rootfs");
            let created = image
                .get("created")
                .and_then(|c| c.as_str())
                .unwrap_or("1970-01-01T00:00:00Z")
                .to_string();
            for k in [
                "container",
                "container_config",
                "docker_version",
                "id",
                "parent",
                cacheio::IMAGE_FIELD,
            ] {
                image.remove(k);
            }
            StageState {
                layers,
                image,
                key: img.id.trim_start_matches("sha256:").to_string(),
                args: BTreeMap::new(),
                cmd_set: false,
                created,
                records: Vec::new(),
            }
        };
        (self.events)(Event::Done {
            id,
            elapsed: t0.elapsed(),
        });
        // ONBUILD triggers of the base run first, then are cleared.
        let triggers: Vec<String> = st
            .cfg_ref()
            .and_then(|c| c.get("OnBuild"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        st.cfg().remove("OnBuild");
        let mut instrs: Vec<Instruction> = Vec::new();
        for t in &triggers {
            let d = dockerfile::parse(t)
                .map_err(|e| self.err(&from, format!("ONBUILD trigger {t:?}: {}", e.msg)))?;
            for mut x in d.instructions {
                x.line = from.line;
                instrs.push(x);
            }
        }
        instrs.extend(body);
        let total = instrs.len() + 1;
        for (n, ins) in instrs.iter().enumerate() {
            self.instruction(&mut st, ins, &stage_name, n + 2, total)?;
        }
        Ok(st)
    }

    fn next_step(&mut self, stage: &str, n: usize, total: usize, text: &str) -> usize {
        self.step += 1;
        crate::trace::step(|| format!("build: [{stage} {n}/{total}] {text}"));
        (self.events)(Event::Step {
            id: self.step,
            stage: stage.to_string(),
            n,
            total,
            text: text.to_string(),
        });
        self.step
    }

    fn words(&self, st: &StageState, ins: &Instruction) -> anyhow::Result<Vec<String>> {
        dockerfile::process_words(&ins.args, &st.subst_env(), self.df.escape)
            .map_err(|e| self.err(ins, e))
    }

    fn one_word(&self, st: &StageState, ins: &Instruction) -> anyhow::Result<String> {
        dockerfile::process_word(ins.args.trim(), &st.subst_env(), self.df.escape)
            .map_err(|e| self.err(ins, e))
    }

    fn form(&self, st: &StageState, ins: &Instruction) -> Vec<String> {
        match ins.cmd_form() {
            CmdForm::Exec(v) => v,
            CmdForm::Shell(s) => {
                let mut v = st.shell();
                v.push(s);
                v
            }
        }
    }

    fn instruction(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        stage: &str,
        n: usize,
        total: usize,
    ) -> anyhow::Result<()> {
        let kw = ins.keyword.as_str();
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("{}: build interrupted", self.file);
        }
        let id = self.next_step(stage, n, total, &ins.original);
        let t0 = Instant::now();
        let esc = self.df.escape;
        if !matches!(kw, "RUN" | "COPY" | "ADD") && !ins.flags.is_empty() && kw != "HEALTHCHECK" {
            ins.check_flags(&[]).map_err(|e| self.err(ins, e.msg))?;
        }
        match kw {
            "RUN" => self.run_step(st, ins, id)?,
            "COPY" | "ADD" => self.copy_step(st, ins, id)?,
            "ENV" => {
                let kv = dockerfile::key_values(&ins.args, &st.subst_env(), esc, true)
                    .map_err(|e| self.err(ins, e))?;
                for (k, v) in kv {
                    st.set_env(&k, &v);
                }
            }
            "ARG" => {
                let decls = self.arg_decls(ins, &st.subst_env())?;
                for (k, default) in decls {
                    let v = self
                        .opts
                        .args
                        .get(&k)
                        .cloned()
                        .or(default)
                        .or_else(|| self.globals.get(&k).cloned());
                    // Declared without a value and not given: unset (not an empty variable).
                    match v {
                        Some(v) => {
                            st.args.insert(k, v);
                        }
                        None => {
                            st.args.remove(&k);
                        }
                    }
                }
            }
            "LABEL" => {
                let kv = dockerfile::key_values(&ins.args, &st.subst_env(), esc, true)
                    .map_err(|e| self.err(ins, e))?;
                let c = st.cfg();
                let labels = c.entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                for (k, v) in kv {
                    labels[k] = json!(v);
                }
            }
            "MAINTAINER" => {
                let a = ins.args.trim().to_string();
                st.image.insert("author".into(), json!(a));
            }
            "WORKDIR" => {
                let w = self.one_word(st, ins)?;
                let cur = st.str_field("WorkingDir");
                let p = if w.starts_with('/') {
                    ignore::clean(&w)
                } else {
                    ignore::clean(&format!("{}/{w}", if cur.is_empty() { "/" } else { &cur }))
                };
                st.cfg().insert("WorkingDir".into(), json!(p));
            }
            "USER" => {
                let u = self.one_word(st, ins)?;
                st.cfg().insert("User".into(), json!(u));
            }
            "EXPOSE" => {
                let words = self.words(st, ins)?;
                let c = st.cfg();
                let ports = c.entry("ExposedPorts").or_insert_with(|| json!({}));
                if !ports.is_object() {
                    *ports = json!({});
                }
                for w in words {
                    let (p, proto) = w.split_once('/').unwrap_or((&w, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    let ok = p.split('-').all(|x| x.parse::<u16>().is_ok())
                        && matches!(proto.as_str(), "tcp" | "udp" | "sctp");
                    if !ok {
                        return Err(self.err(ins, format!("invalid port {w:?}")));
                    }
                    ports[format!("{p}/{proto}")] = json!({});
                }
            }
            "VOLUME" => {
                let vols = match ins.json_args() {
                    Some(v) => v
                        .iter()
                        .map(|w| dockerfile::process_word(w, &st.subst_env(), esc))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| self.err(ins, e))?,
                    None => self.words(st, ins)?,
                };
                let c = st.cfg();
                let v = c.entry("Volumes").or_insert_with(|| json!({}));
                if !v.is_object() {
                    *v = json!({});
                }
                for x in vols {
                    if x.is_empty() {
                        return Err(self.err(ins, "VOLUME specified can not be an empty string"));
                    }
                    v[x] = json!({});
                }
            }
            "ENTRYPOINT" => {
                let v = self.form(st, ins);
                st.cfg().insert("Entrypoint".into(), json!(v));
                if !st.cmd_set {
                    st.cfg().insert("Cmd".into(), Value::Null);
                }
            }
            "CMD" => {
                let v = self.form(st, ins);
                st.cfg().insert("Cmd".into(), json!(v));
                st.cmd_set = true;
            }
            "SHELL" => {
                let v = ins.json_args().filter(|v| !v.is_empty()).ok_or_else(|| {
                    self.err(ins, "SHELL requires the arguments to be in JSON form")
                })?;
                st.cfg().insert("Shell".into(), json!(v));
            }
            "STOPSIGNAL" => {
                let s = self.one_word(st, ins)?;
                st.cfg().insert("StopSignal".into(), json!(s));
            }
            "HEALTHCHECK" => {
                ins.check_flags(&[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ])
                .map_err(|e| self.err(ins, e.msg))?;
                let words = dockerfile::split_words(&ins.args, esc);
                let first = words.first().map(|w| w.to_ascii_uppercase());
                let hc = match first.as_deref() {
                    Some("NONE") => {
                        if words.len() > 1 || !ins.flags.is_empty() {
                            return Err(self.err(ins, "HEALTHCHECK NONE takes no other arguments"));
                        }
                        json!({"Test": ["NONE"]})
                    }
                    Some("CMD") => {
                        let rest = ins.args.trim_start()[3..].trim_start();
                        let test = match dockerfile::parse_json_array(rest) {
                            Some(v) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(v);
                                t
                            }
                            None => vec!["CMD-SHELL".to_string(), rest.to_string()],
                        };
                        let mut h = json!({"Test": test});
                        for (flag, key) in [
                            ("interval", "Interval"),
                            ("timeout", "Timeout"),
                            ("start-period", "StartPeriod"),
                            ("start-interval", "StartInterval"),
                        ] {
                            if let Some(v) = ins.flag(flag) {
                                let d = parse_duration(v).map_err(|e| self.err(ins, e))?;
                                h[key] = json!(d);
                            }
                        }
                        if let Some(r) = ins.flag("retries") {
                            let r: u32 = r
                                .parse()
                                .map_err(|_| self.err(ins, format!("invalid --retries {r:?}")))?;
                            h["Retries"] = json!(r);
                        }
                        h
                    }
                    _ => return Err(self.err(ins, "HEALTHCHECK takes NONE or CMD ...")),
                };
                st.cfg().insert("Healthcheck".into(), hc);
            }
            "ONBUILD" => {
                let t = ins.args.trim();
                let k = t
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if matches!(k.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(self.err(ins, format!("{k} isn't allowed as an ONBUILD trigger")));
                }
                let c = st.cfg();
                let v = c.entry("OnBuild").or_insert_with(|| json!([]));
                if !v.is_array() {
                    *v = json!([]);
                }
                v.as_array_mut().expect("array").push(json!(t));
            }
            "FROM" => unreachable!("FROM starts a stage"),
            other => return Err(self.err(ins, format!("unknown instruction {other}"))),
        }
        if !matches!(kw, "RUN" | "COPY" | "ADD") {
            let text = ins.original.clone();
            st.chain(&[text.as_bytes()]);
            if !matches!(kw, "ARG") {
                st.history(&text, true);
            }
        }
        (self.events)(Event::Done {
            id,
            elapsed: t0.elapsed(),
        });
        Ok(())
    }

    // ---- cache -------------------------------------------------------------------------

    fn cache_path(&self, key: &str) -> PathBuf {
        cache_dir(self.paths).join("steps").join(key)
    }

    fn cache_get(&self, key: &str) -> Option<CacheEntry> {
        if self.opts.no_cache {
            return None;
        }
        if !self.cache_path(key).exists() {
            if let Some(e) = self.imported_get(key) {
                return Some(e);
            }
        }
        let b = std::fs::read(self.cache_path(key)).ok()?;
        let e: CacheEntry = serde_json::from_slice(&b).ok()?;
        match &e.diff_id {
            Some(d) if self.layer_dir(d).is_none() => None,
            _ => Some(e),
        }
    }

    fn cache_put(&self, key: &str, e: &CacheEntry) -> anyhow::Result<()> {
        let p = self.cache_path(key);
        let dir = p.parent().expect("parent");
        std::fs::create_dir_all(dir)?;
        // A temp name of this build's own: parallel builds may write the same entry.
        let tmp = dir.join(format!(".{key}.{}", rand_id()));
        std::fs::write(&tmp, serde_json::to_vec(e)?)?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// Apply a layer step's result (cached or new) to the stage.
    fn apply(&mut self, st: &mut StageState, e: &CacheEntry, text: &str) {
        self.made
            .insert(st.key.clone(), (e.diff_id.clone(), e.created.clone()));
        st.records.push(cacheio::Record {
            key: st.key.clone(),
            layer: e.diff_id.as_ref().map(|_| st.layers.len()),
            created: e.created.clone(),
        });
        st.created = e.created.clone();
        match &e.diff_id {
            Some(d) => {
                st.layers.push(d.clone());
                st.history(text, false);
            }
            None => st.history(text, true),
        }
    }

    // ---- cache_from --------------------------------------------------------------------

    /// Read the `cache_from` sources. One that cannot be read is warned about and skipped: a
    /// cache source only saves work.
    fn import_cache(&mut self) {
        for src in &self.opts.cache_from {
            let r = match src {
                CacheSource::Local(d) => cacheio::import_local(d)
                    .with_context(|| format!("cache_from type=local,src={}", d.display())),
                CacheSource::Image(r) => (|| {
                    let img = match self.store.get(r)? {
                        Some(i) => i,
                        None => crate::commands::image::pull_one(self.store, r)?,
                    };
                    let cfg = self.store.config_json(&img)?;
                    cacheio::import_image(&cfg, img.config.rootfs().diff_ids())
                })()
                .with_context(|| format!("cache_from {r}")),
            };
            match r {
                Ok(m) => {
                    for (k, v) in m {
                        self.imported.entry(k).or_insert(v);
                    }
                }
                Err(e) => eprintln!("warning: {}: {e:#}; building without it", self.file),
            }
        }
    }

    /// A record from a cache source, its layer brought into the store, written to the local
    /// cache so that later builds hit it too.
    fn imported_get(&self, key: &str) -> Option<CacheEntry> {
        let i = self.imported.get(key)?;
        match cacheio::materialize(self.store, i) {
            Ok(diff_id) => {
                let e = CacheEntry {
                    diff_id,
                    created: i.created.clone(),
                };
                let _ = self.cache_put(key, &e);
                Some(e)
            }
            Err(err) => {
                eprintln!("warning: cache_from record {key}: {err:#}; running the step");
                None
            }
        }
    }

    /// The key under which the hash of `srcs` read from stage or image `from` is remembered:
    /// the layers' diff_ids (content-addressed: the same ids, the same files) and the source
    /// words. None when `from` is neither a built stage nor an image already in the store.
    fn copy_from_memo_key(&self, from: &str, srcs: &[String]) -> anyhow::Result<Option<String>> {
        let stage = self.stage_index(from).and_then(|j| self.done.get(&j));
        let layers = match stage {
            Some(s) => s.layers.clone(),
            None if from.parse::<usize>().is_ok() || self.opts.pull => return Ok(None),
            None => match self.store.get(from)? {
                Some(img) => img.config.rootfs().diff_ids().to_vec(),
                None => return Ok(None),
            },
        };
        let mut h = Sha256::new();
        h.update(b"copy-from-v1\0");
        for part in layers.iter().chain([&String::new()]).chain(srcs) {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        Ok(Some(hex::encode(h.finalize())))
    }

    fn memo_get(&self, key: &str) -> Option<String> {
        if self.opts.no_cache {
            return None;
        }
        let v = std::fs::read_to_string(cache_dir(self.paths).join("from").join(key)).ok()?;
        (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
    }

    /// Best effort: a memo not written costs the next build a mount and a hash.
    fn memo_put(&self, key: &str, content: &str) {
        let dir = cache_dir(self.paths).join("from");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{key}.{}", rand_id()));
        if std::fs::write(&tmp, content).is_err() || std::fs::rename(&tmp, dir.join(key)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    // ---- snapshots ---------------------------------------------------------------------

    /// A layer's directory: staged by this build, or in the store.
    fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        self.staged
            .iter()
            .find(|l| l.info.diff_id == diff_id)
            .and_then(|l| l.dir().map(Path::to_path_buf))
            .or_else(|| self.store.layer_dir(diff_id))
    }

    fn layer_dirs(&self, layers: &[String]) -> anyhow::Result<Vec<PathBuf>> {
        layers
            .iter()
            .map(|d| {
                self.layer_dir(d)
                    .ok_or_else(|| anyhow!("layer {d} is missing from the image store"))
            })
            .collect()
    }

    fn work(&self, layers: &[String]) -> anyhow::Result<Work> {
        let dir = self.paths.data.join("build").join(rand_id());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let w = Work {
            dir,
            netns: None,
            tmpfs: None,
        };
        let dirs = self.layer_dirs(layers)?;
        berth_runtime::image::snapshot::mount_volatile(&dirs, &w.dir)?;
        crate::trace::step(|| format!("build: snapshot of {} layers mounted", dirs.len()));
        Ok(w)
    }

    /// Remove a snapshot (and a RUN's netns, tmpfs) on another thread: nothing reads it again.
    fn retire(&mut self, w: Work) {
        // Where no thread can start, the closure (and the work in it) is dropped right here.
        if let Ok(h) = std::thread::Builder::new()
            .name("snapshot-remove".into())
            .spawn(move || drop(w))
        {
            self.retiring.push(h);
        }
    }

    /// Commit the work's upper dir as a layer (none if nothing changed).
    fn commit(&mut self, w: &Work) -> anyhow::Result<Option<String>> {
        berth_runtime::image::snapshot::unmount(&w.dir)?;
        crate::trace::step(|| "build: snapshot unmounted".into());
        let upper = w.dir.join("upper");
        let empty = std::fs::read_dir(&upper)?.next().is_none();
        if empty {
            return Ok(None);
        }
        // The upper dir becomes the layer (no copy); synced with the others at the end.
        let l = self.store.commit_dir_staged(&upper)?;
        crate::trace::step(|| format!("build: layer staged ({} entries)", l.info.entries));
        let d = l.info.diff_id.clone();
        l.start_writeback();
        self.staged.push(l);
        Ok(Some(d))
    }

    /// A new layer step's end: commit its work as a layer, cache that under the step's key
    /// and apply it to the stage.
    fn commit_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        w: Work,
    ) -> anyhow::Result<()> {
        let diff = self.commit(&w)?;
        self.retire(w);
        let e = CacheEntry {
            diff_id: diff,
            created: now_rfc3339(),
        };
        self.cache_put(&st.key, &e)?;
        self.apply(st, &e, &ins.original);
        Ok(())
    }

    // ---- RUN ---------------------------------------------------------------------------

    fn run_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        id: usize,
    ) -> anyhow::Result<()> {
        ins.check_flags(&["mount", "network", "security"])
            .map_err(|e| self.err(ins, e.msg))?;
        if let Some(s) = ins.flag("security") {
            if s != "sandbox" {
                return Err(self.err(
                    ins,
                    format!("--security={s} is not supported (insecure builds are not allowed)"),
                ));
            }
        }
        let network = match ins.flag("network") {
            None | Some("default") => self.opts.network,
            Some("none") => Network::Isolated,
            Some("host") => Network::Host,
            Some(o) => {
                return Err(self.err(ins, format!("--network={o}: use default, none or host")))
            }
        };
        // The command.
        let args: Vec<String> = if !ins.heredocs.is_empty() {
            let h = &ins.heredocs[0];
            let bare = ins
                .args
                .trim()
                .trim_start_matches("<<")
                .trim_start_matches('-')
                .trim_matches(['"', '\''])
                == h.name
                && ins.heredocs.len() == 1;
            let mut v = st.shell();
            if bare {
                v.push(h.content.clone());
            } else {
                let mut script = ins.args.clone();
                for h in &ins.heredocs {
                    script.push('\n');
                    script.push_str(&h.content);
                    script.push_str(&h.name);
                }
                v.push(script);
            }
            v
        } else {
            self.form(st, ins)
        };
        // Mounts (parsed now: their text is part of the key, secrets' content is not).
        let mut mounts: Vec<RunMount> = Vec::new();
        for m in ins.flag_all("mount") {
            mounts.push(self.parse_mount(st, ins, m)?);
        }
        let mut n_ssh = 0;
        for m in &mut mounts {
            if let RunMount::Ssh { target, .. } = m {
                if target.is_empty() {
                    *target = format!("/run/buildkit/ssh_agent.{n_ssh}");
                }
                n_ssh += 1;
            }
        }
        let mut run_key = format!("{network:?}");
        for m in &mounts {
            if let RunMount::Bind { key, .. } = m {
                run_key.push_str(key);
            }
        }
        st.chain(&[
            ins.original.as_bytes(),
            args.join("\0").as_bytes(),
            run_key.as_bytes(),
        ]);
        if let Some(e) = self.cache_get(&st.key) {
            (self.events)(Event::Cached { id });
            self.outcome.cached += 1;
            self.apply(st, &e, &ins.original);
            return Ok(());
        }
        let w = self.work(&st.layers)?;
        let mut w = w;
        let out = self.exec_run(st, ins, &mut w, args, &mounts, network);
        let (code, output) = out?;
        crate::trace::step(|| format!("build: RUN done ({code})"));
        (self.events)(Event::Output {
            id,
            text: output.clone(),
        });
        self.outcome.runs += 1;
        if code != 0 {
            let tail: Vec<&str> = output.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(self.err(
                ins,
                format!(
                    "the command returned exit code {code}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; its output:\n{}", tail.join("\n"))
                    }
                ),
            ));
        }
        self.commit_step(st, ins, w)
    }

    fn parse_mount(&self, st: &StageState, ins: &Instruction, m: &str) -> anyhow::Result<RunMount> {
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        for part in m.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let v = dockerfile::process_word(v, &st.subst_env(), self.df.escape)
                .map_err(|e| self.err(ins, e))?;
            kv.insert(k.trim().to_ascii_lowercase(), v);
        }
        let kind = kv.get("type").cloned().unwrap_or_else(|| "bind".into());
        let target = kv
            .get("target")
            .or(kv.get("dst"))
            .or(kv.get("destination"))
            .cloned();
        let mode = kv
            .get("mode")
            .map(|m| u32::from_str_radix(m, 8))
            .transpose()
            .map_err(|_| self.err(ins, "--mount mode must be octal"))?;
        let uid = kv.get("uid").and_then(|u| u.parse().ok());
        let gid = kv.get("gid").and_then(|u| u.parse().ok());
        match kind.as_str() {
            "secret" => {
                let sid = kv
                    .get("id")
                    .cloned()
                    .or_else(|| {
                        target
                            .as_ref()
                            .and_then(|t| t.rsplit('/').next().map(String::from))
                    })
                    .ok_or_else(|| self.err(ins, "--mount=type=secret needs id= or target="))?;
                let target = target.unwrap_or_else(|| format!("/run/secrets/{sid}"));
                let required = flag(&kv, "required");
                let src = self.opts.secrets.get(&sid).cloned();
                if src.is_none() && required {
                    return Err(self.err(
                        ins,
                        format!("secret {sid} is required but was not given to the build"),
                    ));
                }
                Ok(RunMount::Secret {
                    target,
                    src,
                    mode: mode.unwrap_or(0o400),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                })
            }
            "cache" => {
                let target =
                    target.ok_or_else(|| self.err(ins, "--mount=type=cache needs target="))?;
                if kv.contains_key("from") {
                    return Err(self.err(ins, "--mount=type=cache,from= is not supported"));
                }
                let cid = kv.get("id").cloned().unwrap_or_else(|| target.clone());
                Ok(RunMount::Cache {
                    target,
                    id: cid,
                    readonly: kv.contains_key("readonly") || kv.contains_key("ro"),
                    mode: mode.unwrap_or(0o755),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                })
            }
            "tmpfs" => Ok(RunMount::Tmpfs {
                target: target.ok_or_else(|| self.err(ins, "--mount=type=tmpfs needs target="))?,
                size: kv.get("size").and_then(|s| s.parse().ok()),
            }),
            "bind" => {
                let target =
                    target.ok_or_else(|| self.err(ins, "--mount=type=bind needs target="))?;
                let src = kv
                    .get("source")
                    .or(kv.get("src"))
                    .cloned()
                    .unwrap_or_else(|| ".".into());
                // What the RUN reads is part of its key: the content of a directory's files,
                // or the key of the stage (the id of the image) it binds from.
                let mut h = Sha256::new();
                let content = |dir: &Path, ig: Option<&Ignore>, h: &mut Sha256| {
                    let rel = fsutil::context_rel(&src).map_err(|e| self.err(ins, e))?;
                    let host = dir.join(&rel);
                    if !host.exists() || ig.is_some_and(|ig| rel != "." && ig.excluded(&rel)) {
                        return Err(self.err(ins, format!("bind source {src} not found")));
                    }
                    let keep = |r: &str| ig.is_none_or(|ig| !ig.excluded(r));
                    let rel_key = if rel == "." { String::new() } else { rel };
                    fsutil::content_hash(&host, &rel_key, &keep, false, h)?;
                    Ok(host)
                };
                let (host, layers) = match kv.get("from") {
                    None => (
                        content(&self.opts.context, Some(&self.ignore), &mut h)?,
                        None,
                    ),
                    Some(f) => {
                        let stage = self.stage_index(f).and_then(|j| self.done.get(&j));
                        match (stage, self.opts.contexts.get(f)) {
                            (Some(s), _) => {
                                h.update(s.key.as_bytes());
                                (PathBuf::new(), Some(s.layers.clone()))
                            }
                            (None, Some(NamedContext::Dir(d))) => (content(d, None, &mut h)?, None),
                            (None, named) => {
                                let r = match named {
                                    Some(NamedContext::Image(r)) => r.clone(),
                                    _ => f.clone(),
                                };
                                let img = self.image_for(&r, ins)?;
                                h.update(img.id.as_bytes());
                                (
                                    PathBuf::new(),
                                    Some(img.config.rootfs().diff_ids().to_vec()),
                                )
                            }
                        }
                    }
                };
                Ok(RunMount::Bind {
                    target,
                    host,
                    rw: kv.contains_key("rw") || kv.contains_key("readwrite"),
                    layers,
                    inner: src.clone(),
                    key: hex::encode(h.finalize()),
                })
            }
            "ssh" => {
                let sid = kv.get("id").cloned().unwrap_or_else(|| "default".into());
                let required = flag(&kv, "required");
                let src = self.opts.ssh.get(&sid).cloned();
                if src.is_none() && required {
                    return Err(self.err(
                        ins,
                        format!(
                            "ssh {sid} is required but was not given to the build (build.ssh: \
                             [{sid}] or [{sid}=/path/to/key])"
                        ),
                    ));
                }
                Ok(RunMount::Ssh {
                    // Empty: numbered by run_step (`/run/buildkit/ssh_agent.N`, as BuildKit).
                    target: target.unwrap_or_default(),
                    src,
                    mode: mode.unwrap_or(0o600),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                })
            }
            o => Err(self.err(ins, format!("unknown --mount type {o}"))),
        }
    }

    fn exec_run(
        &mut self,
        st: &StageState,
        ins: &Instruction,
        w: &mut Work,
        args: Vec<String>,
        mounts: &[RunMount],
        network: Network,
    ) -> anyhow::Result<(i32, String)> {
        let rootfs = w.rootfs();
        let cname = format!(
            "berth-build-{}",
            w.dir.file_name().unwrap_or_default().to_string_lossy()
        );
        // The working directory exists before the command runs (as Docker makes it).
        let cwd = {
            let c = st.str_field("WorkingDir");
            if c.is_empty() {
                "/".to_string()
            } else {
                c
            }
        };
        let user_spec = st.str_field("User");
        let user = berth_runtime::user::resolve(&rootfs, &user_spec, &[])
            .map_err(|e| self.err(ins, format!("USER {user_spec}: {e}")))?;
        if cwd != "/" {
            fsutil::mkdir_in_root(&rootfs, &cwd, None).map_err(|e| self.err(ins, e))?;
        }
        // Environment: the image's, then build args not overridden by ENV, then proxies.
        let mut env = st.env_list();
        let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
        for (k, v) in &st.args {
            if !has(&env, k) {
                env.push(format!("{k}={v}"));
            }
        }
        for k in dockerfile::PREDEFINED_ARGS {
            if let Some(v) = self.opts.args.get(k) {
                if !has(&env, k) {
                    env.push(format!("{k}={v}"));
                }
            }
        }
        if !has(&env, "PATH") {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let mut c = ContainerConfig::new(&cname, rootfs.clone(), args);
        c.hostname = "buildkitsandbox".into();
        c.env = env;
        c.cwd = cwd;
        c.uid = user.uid;
        c.gid = user.gid;
        c.additional_gids = user.additional_gids;
        c.shm_size = self.opts.shm_size;
        c.cgroups_path = format!("/berth/build/{cname}");
        let hard = crate::engine::container::host_nofile_hard().min(spec::DEFAULT_NOFILE.1);
        c.ulimits
            .push(("nofile".into(), spec::DEFAULT_NOFILE.0.min(hard), hard));
        let caps = spec::capabilities(&c);
        c.seccomp = Seccomp::Profile(serde_json::to_value(
            berth_runtime::seccomp::docker_default(&caps),
        )?);
        crate::trace::step(|| "build: RUN seccomp profile made".into());
        // Files the RUN sees but that never go into a layer.
        let files = w.dir.join("files");
        std::fs::create_dir_all(&files)?;
        if mounts.iter().any(|m| matches!(m, RunMount::Secret { .. })) {
            // Secrets live in memory only, like the engine's.
            crate::engine::container::mount_files_tmpfs(&files)?;
            w.tmpfs = Some(files.clone());
        }
        match network {
            Network::Host => {
                c.netns = NetNs::Host;
                for f in ["resolv.conf", "hosts"] {
                    let host = Path::new("/etc").join(f);
                    if host.exists() {
                        let mut content = std::fs::read(&host)?;
                        if f == "hosts" {
                            for (h, ip) in &self.opts.extra_hosts {
                                content.extend(format!("{ip}\t{h}\n").as_bytes());
                            }
                        }
                        std::fs::write(files.join(f), content)?;
                        c.mounts.push(MountSpec::bind(
                            files.join(f).to_string_lossy(),
                            format!("/etc/{f}"),
                            true,
                        ));
                    }
                }
            }
            Network::Isolated => {
                let ns = self.paths.netns(&cname);
                std::fs::create_dir_all(ns.parent().expect("parent"))?;
                berth_network::netns::create(&ns)?;
                crate::trace::step(|| "build: RUN netns made".into());
                w.netns = Some(ns.clone());
                c.netns = NetNs::Path(ns);
                let mut hosts = String::from("127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n");
                for (h, ip) in &self.opts.extra_hosts {
                    hosts.push_str(&format!("{ip}\t{h}\n"));
                }
                std::fs::write(files.join("hosts"), hosts)?;
                c.mounts.push(MountSpec::bind(
                    files.join("hosts").to_string_lossy(),
                    "/etc/hosts",
                    true,
                ));
            }
        }
        // Agents started for this RUN's ssh mounts, stopped when it returns.
        let mut agents: Vec<Agent> = Vec::new();
        let mut proxies: Vec<SshProxy> = Vec::new();
        // Snapshots of stages and images bound with `from=`, unmounted when the RUN is over.
        let mut snapshots: Vec<Work> = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            match m {
                RunMount::Secret {
                    target,
                    src,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(src) = src else { continue };
                    let p = files.join(format!("secret-{i}"));
                    match src {
                        SecretSource::File(f) => {
                            std::fs::copy(f, &p)
                                .with_context(|| format!("reading secret file {}", f.display()))?;
                        }
                        SecretSource::Content(b) => std::fs::write(&p, b)?,
                    }
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
                    std::os::unix::fs::chown(&p, Some(*uid), Some(*gid))?;
                    c.mounts
                        .push(MountSpec::bind(p.to_string_lossy(), target, true));
                }
                RunMount::Cache {
                    target,
                    id,
                    readonly,
                    mode,
                    uid,
                    gid,
                } => {
                    let h = hex::encode(&Sha256::digest(id.as_bytes())[..12]);
                    let d = cache_dir(self.paths).join("mounts").join(h);
                    if !d.exists() {
                        std::fs::create_dir_all(&d)?;
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(*mode))?;
                        std::os::unix::fs::chown(&d, Some(*uid), Some(*gid))?;
                    }
                    c.mounts
                        .push(MountSpec::bind(d.to_string_lossy(), target, *readonly));
                }
                RunMount::Tmpfs { target, size } => {
                    c.mounts.push(MountSpec::tmpfs(target, *size, None))
                }
                RunMount::Ssh {
                    target,
                    src,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(src) = src else { continue };
                    let agent_sock = match src {
                        SshSource::Socket(p) => {
                            if !p.exists() {
                                return Err(self.err(
                                    ins,
                                    format!("ssh agent socket {} does not exist", p.display()),
                                ));
                            }
                            p.clone()
                        }
                        SshSource::Keys(keys) => {
                            // Our own agent (as BuildKit runs one for key files).
                            let p = files.join(format!("agent-{i}.sock"));
                            agents.push(start_agent(&p, keys).map_err(|e| self.err(ins, e))?);
                            p
                        }
                    };
                    // The RUN talks to a proxy socket of berth's, owned and moded as the mount
                    // asks: ssh-agent refuses peers of another uid than its own (but root).
                    let sock = files.join(format!("ssh-{i}.sock"));
                    let proxy = SshProxy::start(&sock, agent_sock).map_err(|e| self.err(ins, e))?;
                    proxies.push(proxy);
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(*mode))?;
                    std::os::unix::fs::chown(&sock, Some(*uid), Some(*gid))?;
                    c.mounts
                        .push(MountSpec::bind(sock.to_string_lossy(), target, false));
                    if !c.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                        c.env.push(format!("SSH_AUTH_SOCK={target}"));
                    }
                }
                RunMount::Bind {
                    target,
                    host,
                    rw,
                    layers,
                    inner,
                    ..
                } => {
                    let host = match layers {
                        None => host.clone(),
                        Some(l) => {
                            let snap = self.work(l)?;
                            let p = fsutil::resolve_in_root(&snap.rootfs(), inner)
                                .map_err(|e| self.err(ins, e))?;
                            if std::fs::symlink_metadata(&p).is_err() {
                                return Err(self.err(ins, format!("bind source {inner} not found")));
                            }
                            snapshots.push(snap);
                            p
                        }
                    };
                    // The context as the build sees it: with a .dockerignore, a RUN binds a copy
                    // without the excluded files (as BuildKit, whose context never has them).
                    if layers.is_none()
                        && host.starts_with(&self.opts.context)
                        && !self.ignore.patterns.is_empty()
                    {
                        let rel = fsutil::context_rel(inner).map_err(|e| self.err(ins, e))?;
                        let rel = if rel == "." { String::new() } else { rel };
                        let copy = files.join(format!("ctx-{i}"));
                        let ig = &self.ignore;
                        let keep = |r: &str| !ig.excluded(r);
                        let meta = CopyMeta {
                            owner: None,
                            chmod: None,
                            keep_owner: false,
                        };
                        if host.is_dir() {
                            std::fs::create_dir(&copy)?;
                            for (n, r) in fsutil::children(&host, &rel)? {
                                if keep(&r) {
                                    fsutil::copy_entry(
                                        &host.join(&n),
                                        &copy.join(&n),
                                        meta,
                                        &r,
                                        &keep,
                                    )?;
                                }
                            }
                        } else {
                            fsutil::copy_entry(&host, &copy, meta, &rel, &keep)?;
                        }
                        c.mounts
                            .push(MountSpec::bind(copy.to_string_lossy(), target, !*rw));
                        continue;
                    }
                    let host = &host;
                    if *rw {
                        // BuildKit: writes to a bind of the context are discarded; work on a copy.
                        let copy = files.join(format!("bind-{i}"));
                        let status = std::process::Command::new("cp")
                            .arg("-a")
                            .arg(host)
                            .arg(&copy)
                            .status()?;
                        if !status.success() {
                            bail!("copying {} for a read-write bind", host.display());
                        }
                        c.mounts
                            .push(MountSpec::bind(copy.to_string_lossy(), target, false));
                    } else {
                        c.mounts
                            .push(MountSpec::bind(host.to_string_lossy(), target, true));
                    }
                }
            }
        }
        let oci = spec::build(&c)?;
        // Mount points the runtime would create in the rootfs: remember which did not exist,
        // and take them out of the upper dir afterwards (they are not the command's changes).
        let mut stubs = Vec::new();
        for m in oci.mounts().iter().flatten() {
            let d = m.destination().to_string_lossy().into_owned();
            if let Some(s) = missing_prefix(&rootfs, &d) {
                stubs.push((s, d));
            }
        }
        std::fs::write(w.dir.join("config.json"), serde_json::to_vec_pretty(&oci)?)?;
        crate::trace::step(|| "build: RUN bundle written".into());
        let log = w.dir.join("output.log");
        let logf = std::fs::File::create(&log)?;
        let status = std::process::Command::new(crate::engine::runtime::self_exe())
            .arg("__runtime")
            .arg("--root")
            .arg(self.paths.runtime_root())
            .arg("run")
            .arg("--bundle")
            .arg(&w.dir)
            .arg(&cname)
            .stdin(std::process::Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .status()
            .context("running the container runtime")?;
        let output = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let code = status.code().unwrap_or(128 + 9);
        // `run` deletes the container; a failure to create it leaves nothing either.
        let upper = w.dir.join("upper");
        stubs.sort_by_key(|s| std::cmp::Reverse(s.1.len()));
        for (s, d) in stubs {
            remove_stub(&upper, &s, &d);
        }
        Ok((code, output))
    }

    // ---- COPY / ADD --------------------------------------------------------------------

    fn copy_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        id: usize,
    ) -> anyhow::Result<()> {
        let is_add = ins.keyword == "ADD";
        let allowed: &[&str] = if is_add {
            &[
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "exclude",
            ]
        } else {
            &["from", "chown", "chmod", "link", "parents", "exclude"]
        };
        ins.check_flags(allowed).map_err(|e| self.err(ins, e.msg))?;
        let env = st.subst_env();
        let esc = self.df.escape;
        // `--parents`: each source keeps its path (below a `/./` pivot) under the destination.
        let parents = match ins.flag("parents") {
            None | Some("false") => false,
            Some("" | "true") => true,
            Some(o) => return Err(self.err(ins, format!("--parents={o}: use true or false"))),
        };
        // `--exclude=PATTERN` (repeatable): .dockerignore-style patterns, matched against the
        // path below a directory source, a file's name, or its path in the context.
        let mut excl_text = String::new();
        for pat in ins.flag_all("exclude") {
            let pat = dockerfile::process_word(pat, &env, esc).map_err(|e| self.err(ins, e))?;
            if pat.is_empty() || pat.starts_with('!') {
                return Err(self.err(ins, format!("--exclude={pat:?}: a pattern is needed")));
            }
            excl_text.push_str(&pat);
            excl_text.push('\n');
        }
        let excl = Ignore::parse(&excl_text).map_err(|e| self.err(ins, e))?;
        let mut words = match ins.json_args() {
            Some(v) => v
                .iter()
                .map(|w| dockerfile::process_word(w, &env, esc))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(ins, e))?,
            None => self.words(st, ins)?,
        };
        // Heredoc sources: `COPY <<EOF /dest`.
        let heredoc_names: Vec<String> = ins.heredocs.iter().map(|h| h.name.clone()).collect();
        words.retain(|w| {
            !(w.starts_with("<<")
                && heredoc_names.iter().any(|n| {
                    w.trim_start_matches("<<")
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == n
                }))
        });
        if words.is_empty() || (words.len() < 2 && ins.heredocs.is_empty()) {
            return Err(self.err(
                ins,
                format!("{} requires at least two arguments", ins.keyword),
            ));
        }
        let dest_raw = words.pop().expect("checked");
        let srcs = words;
        let chmod = ins
            .flag("chmod")
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .map_err(|_| self.err(ins, format!("invalid --chmod {m:?} (octal only)")))
            })
            .transpose()?;
        // Where the sources come from.
        let from = match ins.flag("from") {
            None => None,
            Some(f) => {
                let f = dockerfile::process_word(f, &env, esc).map_err(|e| self.err(ins, e))?;
                Some(f)
            }
        };
        // COPY --from with the sources' hash remembered for these (content-addressed) layers:
        // a cached step mounts and reads nothing.
        let memo = match &from {
            Some(f) if ins.heredocs.is_empty() => self.copy_from_memo_key(f, &srcs)?,
            _ => None,
        };
        if let Some(content) = memo.as_deref().and_then(|m| self.memo_get(m)) {
            let mut probe = st.clone();
            probe.chain(&[
                ins.original.as_bytes(),
                dest_raw.as_bytes(),
                content.as_bytes(),
            ]);
            if let Some(e) = self.cache_get(&probe.key) {
                st.key = probe.key;
                (self.events)(Event::Cached { id });
                self.outcome.cached += 1;
                self.apply(st, &e, &ins.original);
                return Ok(());
            }
        }
        let mut hasher = Sha256::new();
        // The root the sources are read from (another stage, a named context, an image) and
        // the snapshot that keeps it mounted.
        let from_root: Option<(PathBuf, Option<Work>)> = match &from {
            None => None,
            Some(f) => {
                let stage = self
                    .stage_index(f)
                    .and_then(|j| self.done.get(&j).map(|s| (j, s)));
                // The key takes the content of the files read there, not the stage's whole key:
                // a change elsewhere in that stage does not rerun this copy (as BuildKit).
                let layers = match (stage, self.opts.contexts.get(f)) {
                    (Some((_, s)), _) => Some(s.layers.clone()),
                    (None, Some(NamedContext::Dir(d))) => {
                        if !d.is_dir() {
                            return Err(self.err(
                                ins,
                                format!("context {f} ({}) is not a directory", d.display()),
                            ));
                        }
                        None
                    }
                    (None, Some(NamedContext::Image(r))) => {
                        let img = self.image_for(r, ins)?;
                        Some(img.config.rootfs().diff_ids().to_vec())
                    }
                    (None, None) => {
                        if f.parse::<usize>().is_ok() {
                            return Err(self.err(ins, format!("stage {f} not found")));
                        }
                        let img = self.image_for(f, ins)?;
                        Some(img.config.rootfs().diff_ids().to_vec())
                    }
                };
                match (layers, self.opts.contexts.get(f)) {
                    (Some(l), _) => {
                        let w = self.work(&l)?;
                        Some((w.rootfs(), Some(w)))
                    }
                    (None, Some(NamedContext::Dir(d))) => Some((d.clone(), None)),
                    (None, _) => unreachable!("layers, or a directory context"),
                }
            }
        };
        // Resolve the sources to host paths (with the part of the path below them kept), and
        // for `--parents` the path each gets under the destination.
        let mut sources: Vec<(PathBuf, String)> = Vec::new();
        let mut keep: Vec<String> = Vec::new();
        let ctx = self.opts.context.clone();
        match &from_root {
            None => {
                let all = if srcs.iter().any(|s| ignore::has_glob(s)) {
                    Some(fsutil::walk_context(&ctx, &self.ignore)?)
                } else {
                    None
                };
                for s in &srcs {
                    if is_add && (s.contains("://") || s.starts_with("git@")) {
                        return Err(self.err(ins, format!("ADD of a remote URL ({s}) is not supported: berth builds offline; download it in the context and COPY it")));
                    }
                    let rel = fsutil::context_rel(s).map_err(|e| self.err(ins, e))?;
                    let pivot = parents_pivot(s);
                    if ignore::has_glob(&rel) {
                        let mut hits = 0;
                        for p in all.as_ref().expect("walked") {
                            if ignore::glob_match(&rel, p).map_err(|e| self.err(ins, e))? {
                                sources.push((ctx.join(p), p.clone()));
                                keep.push(below_pivot(p, &pivot));
                                hits += 1;
                            }
                        }
                        if hits == 0 {
                            return Err(self.err(ins, format!("no source files were specified: {s} matches nothing in the build context")));
                        }
                    } else {
                        let host = ctx.join(&rel);
                        let excluded = rel != "." && self.ignore.excluded(&rel);
                        if excluded || std::fs::symlink_metadata(&host).is_err() {
                            return Err(self.err(
                                ins,
                                format!(
                                    "{s}: not found in the build context{}",
                                    if excluded {
                                        " (excluded by .dockerignore)"
                                    } else {
                                        ""
                                    }
                                ),
                            ));
                        }
                        keep.push(below_pivot(&rel, &pivot));
                        sources.push((host, if rel == "." { String::new() } else { rel }));
                    }
                }
            }
            Some((root, _)) => {
                let root = root.clone();
                for s in &srcs {
                    let host = fsutil::resolve_in_root(&root, s).map_err(|e| self.err(ins, e))?;
                    if std::fs::symlink_metadata(&host).is_err() {
                        return Err(self.err(
                            ins,
                            format!("{s}: not found in {}", from.as_deref().unwrap_or("")),
                        ));
                    }
                    let inner = ignore::clean(&format!("/{s}"));
                    keep.push(below_pivot(
                        inner.trim_start_matches('/'),
                        &parents_pivot(s),
                    ));
                    sources.push((host, String::new()));
                }
            }
        }
        // `--exclude`d sources themselves.
        if !excl.patterns.is_empty() {
            let mut i = 0;
            while i < sources.len() {
                let (host, rel) = &sources[i];
                let name = host
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if (!rel.is_empty() && excl.excluded(rel))
                    || (!name.is_empty() && excl.excluded(&name))
                {
                    sources.remove(i);
                    keep.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        // The content hash.
        let ig = self.ignore.clone();
        let from_ctx = from_root.is_none();
        // Is a path `r` inside source `base` left out (.dockerignore, `--exclude`)?
        let dropped = |r: &str, base: &str| -> bool {
            if from_ctx && ig.excluded(r) {
                return true;
            }
            if excl.patterns.is_empty() {
                return false;
            }
            let below = if base.is_empty() {
                Some(r)
            } else {
                r.strip_prefix(base).and_then(|x| x.strip_prefix('/'))
            };
            excl.excluded(r) || below.is_some_and(|b| excl.excluded(b))
        };
        for (host, rel) in &sources {
            let filter = |r: &str| !dropped(r, rel);
            // Context paths are relative to the context (the filter matches them); sources of
            // another stage or image are named by the instruction text in the key.
            let files = if from_ctx { Some(&mut self.stat) } else { None };
            fsutil::content_hash_with(host, rel, &filter, !from_ctx, files, &mut hasher)?;
        }
        for h in &ins.heredocs {
            hasher.update(h.name.as_bytes());
            hasher.update(h.content.as_bytes());
        }
        let content = hex::encode(hasher.finalize());
        crate::trace::step(|| format!("build: {} sources hashed", sources.len()));
        if let Some(m) = &memo {
            self.memo_put(m, &content);
        }
        st.chain(&[
            ins.original.as_bytes(),
            dest_raw.as_bytes(),
            content.as_bytes(),
        ]);
        if let Some(e) = self.cache_get(&st.key) {
            drop(from_root);
            (self.events)(Event::Cached { id });
            self.outcome.cached += 1;
            self.apply(st, &e, &ins.original);
            return Ok(());
        }
        let w = self.work(&st.layers)?;
        let rootfs = w.rootfs();
        let owner = match ins.flag("chown") {
            None => None,
            Some(u) => {
                let u = dockerfile::process_word(u, &env, esc).map_err(|e| self.err(ins, e))?;
                let r = berth_runtime::user::resolve(&rootfs, &u, &[])
                    .map_err(|e| self.err(ins, format!("--chown={u}: {e}")))?;
                Some((r.uid, r.gid))
            }
        };
        let meta = CopyMeta {
            owner,
            chmod,
            // Files of another stage or an image keep their owners; a directory's do not.
            keep_owner: from_root.as_ref().is_some_and(|(_, w)| w.is_some()),
        };
        let cwd = st.str_field("WorkingDir");
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!(
                "{}/{dest_raw}",
                if cwd.is_empty() {
                    ""
                } else {
                    cwd.trim_end_matches('/')
                }
            )
        };
        let n_src = sources.len() + ins.heredocs.len();
        let dest_is_dir = dest_raw.ends_with('/')
            || dest_raw == "."
            || parents
            || n_src > 1
            || srcs.iter().any(|s| ignore::has_glob(s))
            || fsutil::resolve_in_root(&rootfs, &dest)
                .map(|p| p.is_dir())
                .unwrap_or(false);
        // Context files written straight into the upper dir go in as links to the build's file
        // store (`filestore`): an edit rewrites only the files that changed.
        let mut stat = std::mem::take(&mut self.stat);
        let mut store = (from_root.is_none() && !self.opts.no_cache)
            .then(|| FileStore::new(cache_dir(self.paths).join("files"), &mut stat));
        let r = (|| -> anyhow::Result<()> {
            if dest_is_dir {
                let top = fsutil::mkdir_in_root(&rootfs, &dest, owner)?;
                // Straight into the upper dir where every write lands below `top` (no
                // `--parents` subdirectories made through the mount, no archive unpacked).
                let archive = is_add && sources.iter().any(|(h, _)| is_archive(h));
                let direct = !parents && !archive;
                let upper = if direct {
                    fsutil::upper_dir_of(&rootfs, &w.dir.join("upper"), &top)
                } else {
                    None
                };
                // Links only land in the upper dir (the mount is another file system).
                if upper.is_none() {
                    store = None;
                }
                let top = upper.unwrap_or(top);
                for ((host, rel), kept) in sources.iter().zip(&keep) {
                    let filter = |r: &str| !dropped(r, rel);
                    let m = std::fs::symlink_metadata(host)?;
                    // `--parents`: the directory the source's path names, under the destination.
                    let d = if !parents {
                        top.clone()
                    } else {
                        let sub = if m.is_dir() {
                            kept.as_str()
                        } else {
                            kept.rsplit_once('/').map(|x| x.0).unwrap_or("")
                        };
                        fsutil::mkdir_in_root(&rootfs, &format!("{dest}/{sub}"), owner)?
                    };
                    if m.is_dir() {
                        // The contents of a directory source.
                        for (e, r) in fsutil::children(host, rel)? {
                            if filter(&r) {
                                fsutil::copy_entry_with(
                                    &host.join(&e),
                                    &d.join(&e),
                                    meta,
                                    &r,
                                    &filter,
                                    store.as_mut(),
                                )?;
                            }
                        }
                    } else if is_add && is_archive(host) {
                        unpack_archive(host, &d)?;
                    } else {
                        let name = host.file_name().unwrap_or_default();
                        fsutil::copy_entry_with(
                            host,
                            &d.join(name),
                            meta,
                            rel,
                            &filter,
                            store.as_mut(),
                        )?;
                    }
                }
                for h in &ins.heredocs {
                    let body = self.heredoc_body(h, &env)?;
                    fsutil::write_file(&top.join(&h.name), body.as_bytes(), meta)?;
                }
            } else {
                let parent = match dest.rsplit_once('/') {
                    Some((p, _)) => p.to_string(),
                    None => "/".into(),
                };
                let name = dest.rsplit('/').next().unwrap_or(&dest).to_string();
                let pd = fsutil::mkdir_in_root(&rootfs, &parent, owner)?;
                let target = pd.join(&name);
                if let Some(h) = ins.heredocs.first() {
                    let body = self.heredoc_body(h, &env)?;
                    fsutil::write_file(&target, body.as_bytes(), meta)?;
                } else {
                    let (host, rel) = sources
                        .first()
                        .ok_or_else(|| anyhow!("every source is left out by --exclude"))?;
                    let filter = |r: &str| !dropped(r, rel);
                    let m = std::fs::symlink_metadata(host)?;
                    if m.is_dir() {
                        std::fs::create_dir_all(&target)?;
                        for (e, r) in fsutil::children(host, rel)? {
                            if filter(&r) {
                                fsutil::copy_entry(
                                    &host.join(&e),
                                    &target.join(&e),
                                    meta,
                                    &r,
                                    &filter,
                                )?;
                            }
                        }
                        if let Some((u, g)) = owner {
                            std::os::unix::fs::lchown(&target, Some(u), Some(g))?;
                        }
                    } else if is_add && is_archive(host) {
                        std::fs::create_dir_all(&target)?;
                        unpack_archive(host, &target)?;
                    } else {
                        fsutil::copy_entry(host, &target, meta, rel, &filter)?;
                    }
                }
            }
            Ok(())
        })();
        if let Some(fs) = store {
            crate::trace::step(|| {
                format!(
                    "build: files copied in: {} linked, {} stored and linked",
                    fs.linked, fs.stored
                )
            });
        }
        self.stat = stat;
        if let Some((_, Some(fw))) = from_root {
            self.retire(fw);
        }
        r.map_err(|e| self.err(ins, format!("{e:#}")))?;
        self.commit_step(st, ins, w)
    }

    fn heredoc_body(&self, h: &dockerfile::Heredoc, env: &Env) -> anyhow::Result<String> {
        if h.quoted {
            return Ok(h.content.clone());
        }
        // Unquoted: variables expand, quotes stay (a here-document, not a word).
        let mut out = String::new();
        for line in h.content.split_inclusive('\n') {
            // Single quotes are literal inside double quotes: only `"` needs escaping.
            let escaped = line.replace('"', "\\\"");
            let v = dockerfile::process_word(
                &format!("\"{}\"", escaped.trim_end_matches('\n')),
                env,
                '\\',
            )
            .map_err(|e| anyhow!("heredoc {}: {e}", h.name))?;
            out.push_str(&v);
            if line.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }

    // ---- the image ---------------------------------------------------------------------

    fn finish(&mut self, mut st: StageState) -> anyhow::Result<()> {
        if !self.opts.labels.is_empty() {
            let c = st.cfg();
            let labels = c.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in &self.opts.labels {
                labels[k] = json!(v);
            }
        }
        st.image.insert("created".into(), json!(st.created));
        if !st.records.is_empty() {
            st.image.insert(
                cacheio::IMAGE_FIELD.into(),
                serde_json::to_value(&st.records)?,
            );
        }
        st.image.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": st.layers}),
        );
        let cfg = serde_json::to_vec(&Value::Object(st.image.clone()))?;
        // Layers synced and in place, then the image recorded, in one update.
        let id = self
            .store
            .publish_staged_image(&mut self.staged, &cfg, &self.opts.tags)?;
        crate::trace::step(|| "build: layers synced and in place, image recorded".into());
        self.outcome.id = id;
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum RunMount {
    Secret {
        target: String,
        src: Option<SecretSource>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Cache {
        target: String,
        id: String,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Bind {
        target: String,
        host: PathBuf,
        rw: bool,
        /// `from=` a stage or an image: its layers, mounted for the RUN, and `inner` in them
        /// is the source (instead of `host`).
        layers: Option<Vec<String>>,
        inner: String,
        /// The content (or stage key) of what is bound, for the step's cache key.
        key: String,
    },
    /// An ssh agent's socket (none: not given and not required, so not mounted).
    Ssh {
        target: String,
        src: Option<SshSource>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The `ssh-agent` a RUN with key files gets: killed and reaped when dropped.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A socket forwarding each connection to an ssh agent's socket, on threads of its own;
/// stopped (and its threads joined) when dropped.
struct SshProxy {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SshProxy {
    fn start(path: &Path, agent: PathBuf) -> anyhow::Result<SshProxy> {
        use std::os::unix::net::{UnixListener, UnixStream};
        let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in l.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let Ok(a) = UnixStream::connect(&agent) else {
                    continue;
                };
                let (Ok(c2), Ok(a2)) = (c.try_clone(), a.try_clone()) else {
                    continue;
                };
                let pipe = |mut from: UnixStream, mut to: UnixStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    })
                };
                conns.push(pipe(c, a));
                conns.push(pipe(a2, c2));
            }
            // The RUN is over: its connections are closed, so these end.
            for t in conns {
                let _ = t.join();
            }
        });
        Ok(SshProxy {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Start `ssh-agent` on `sock` holding `keys` (like BuildKit's own agent for key files).
fn start_agent(sock: &Path, keys: &[PathBuf]) -> anyhow::Result<Agent> {
    let child = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting ssh-agent for the build's ssh keys (is openssh-client installed?)")?;
    let mut agent = Agent(child);
    let t0 = Instant::now();
    // The socket file appears at bind(), before listen(): wait until it accepts.
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        if let Some(st) = agent.0.try_wait()? {
            bail!("ssh-agent exited ({st}) before making its socket");
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("ssh-agent did not listen on its socket within 10s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for k in keys {
        let out = std::process::Command::new("ssh-add")
            .arg(k)
            .env("SSH_AUTH_SOCK", sock)
            .env("SSH_ASKPASS_REQUIRE", "never")
            .stdin(std::process::Stdio::null())
            .output()
            .context("running ssh-add")?;
        if !out.status.success() {
            bail!(
                "ssh-add {}: {} (keys with a passphrase need an agent: give its socket, or \
                 `default` with $SSH_AUTH_SOCK)",
                k.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(agent)
}

/// The first component of `dest` (inside `rootfs`) that does not exist: what creating a mount
/// point there would add to the upper dir. None if it all exists, or a symlink is on the way.
fn missing_prefix(rootfs: &Path, dest: &str) -> Option<String> {
    let mut cur = String::new();
    for c in dest.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(c);
        match std::fs::symlink_metadata(rootfs.join(cur.trim_start_matches('/'))) {
            Ok(m) if m.file_type().is_symlink() => return None,
            Ok(_) => continue,
            Err(_) => return Some(cur),
        }
    }
    None
}

/// Remove a mount point the runtime made (`dest`, below the first missing component `stub`)
/// from the upper dir: the mount point itself if it is an empty file or directory tree, then
/// directories up to the stub that are left empty, then copied-up parents left empty.
fn remove_stub(upper: &Path, stub: &str, dest: &str) {
    fn empty_tree(p: &Path) -> bool {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|rd| rd.flatten().all(|e| empty_tree(&e.path())))
                .unwrap_or(false),
            Ok(m) if m.is_file() => m.len() == 0,
            _ => false,
        }
    }
    let p = upper.join(dest.trim_start_matches('/'));
    if !empty_tree(&p) {
        return;
    }
    let _ = if p.is_dir() {
        std::fs::remove_dir_all(&p)
    } else {
        std::fs::remove_file(&p)
    };
    let _ = stub;
    let mut parent = p.parent().map(Path::to_path_buf);
    while let Some(d) = parent {
        if d == upper || !d.starts_with(upper) {
            break;
        }
        if std::fs::read_dir(&d)
            .map(|mut r| r.next().is_none())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_dir(&d);
            parent = d.parent().map(Path::to_path_buf);
        } else {
            break;
        }
    }
}

/// The part of a `COPY --parents` source before a `/./` pivot (cleaned, relative; empty if
/// none): the path kept under the destination starts after it.
fn parents_pivot(src: &str) -> String {
    match src.find("/./") {
        Some(i) => {
            let c = ignore::clean(&format!("/{}", &src[..i]));
            c.trim_start_matches('/').to_string()
        }
        None => String::new(),
    }
}

/// `path` (relative, cleaned) below `pivot`.
fn below_pivot(path: &str, pivot: &str) -> String {
    let p = if path == "." { "" } else { path };
    if pivot.is_empty() {
        return p.to_string();
    }
    match p.strip_prefix(pivot) {
        Some(r) => r.trim_start_matches('/').to_string(),
        None => p.to_string(),
    }
}

/// A local tar archive ADD unpacks (plain, gzip or zstd, as the image store reads them).
fn is_archive(p: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(p) else {
        return false;
    };
    let mut head = vec![0u8; 512];
    let n = f.read(&mut head).unwrap_or(0);
    let head = &head[..n];
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &head[257..262] == b"ustar")
}

fn unpack_archive(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(src)?;
    berth_runtime::image::unpack::unpack_blob(f, dest)
        .with_context(|| format!("unpacking {}", src.display()))?;
    Ok(())
}

/// A `--mount` boolean option: `required` alone or `required=true` (BuildKit's reading).
fn flag(kv: &BTreeMap<String, String>, key: &str) -> bool {
    kv.get(key).is_some_and(|v| v.is_empty() || v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        assert_eq!(parse_duration("30s").unwrap(), 30_000_000_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn copy_parents_pivot() {
        assert_eq!(parents_pivot("a/x/one.txt"), "");
        assert_eq!(parents_pivot("./src/./app/"), "src");
        assert_eq!(parents_pivot("/x/y/./z/*.txt"), "x/y");
        assert_eq!(below_pivot("src/app/main.txt", "src"), "app/main.txt");
        assert_eq!(below_pivot("a/x/one.txt", ""), "a/x/one.txt");
        assert_eq!(below_pivot(".", ""), "");
        // A path not below the pivot (cannot happen for a match) is kept whole.
        assert_eq!(below_pivot("other/f", "src"), "other/f");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_400_000), "2026-12-04T16:00:00Z");
    }
}

//! Making and removing one container: rootfs snapshot, network namespace and endpoints,
//! /etc files, volumes, secrets, the OCI bundle; then the runtime's create/start.
//! Removal is best-effort: it goes on through errors and reports them all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::plan::{MountPlan, ProjectPlan, ServicePlan};
use super::volumes;
use super::Engine;
use crate::spec::{self, ContainerConfig, MountSpec, NetNs, Seccomp};
use crate::state::{
    ContainerRecord, EndpointRecord, NetworkRecord, PortRecord, ProjectState, Status,
};

/// Compose's container name: `container_name`, else `<project>-<service>-<n>`.
pub fn container_name(project: &str, svc: &ServicePlan, number: u32) -> String {
    match &svc.container_name {
        Some(n) => n.clone(),
        None if svc.compat_names => format!("{project}_{}_{number}", svc.name),
        None => format!("{project}-{}-{number}", svc.name),
    }
}

/// Command line with compose's rules: a service `entrypoint` resets the image's Cmd.
pub fn resolve_args(
    svc: &ServicePlan,
    image_entrypoint: &[String],
    image_cmd: &[String],
) -> Vec<String> {
    let (ep, cmd): (Vec<String>, Vec<String>) = match &svc.entrypoint {
        Some(ep) => (ep.clone(), svc.command.clone().unwrap_or_default()),
        None => (
            image_entrypoint.to_vec(),
            svc.command.clone().unwrap_or_else(|| image_cmd.to_vec()),
        ),
    };
    ep.into_iter().chain(cmd).collect()
}

/// Environment: the image's Env first, then the service's (which already holds env_file).
pub fn resolve_env(image_env: &[String], svc: &ServicePlan) -> Vec<String> {
    let mut map: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(e) = map.iter_mut().find(|(kk, _)| kk == k) {
            e.1 = v.to_string();
        } else {
            map.push((k.to_string(), v.to_string()));
        }
    };
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in &svc.environment {
        set(k, v);
    }
    if !map.iter().any(|(k, _)| k == "PATH") {
        map.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    if !map.iter().any(|(k, _)| k == "HOSTNAME") {
        // Docker sets HOSTNAME; filled in by the caller who knows it.
    }
    map.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Anonymous volumes: one per container and mount point.
/// Whether a bundle's process wants a terminal (`process.terminal`, from `tty: true`): the
/// runtime then needs a console socket.
pub fn bundle_terminal(bundle: &Path) -> bool {
    // Only `process.terminal` is decoded: the rest of the spec (a seccomp profile of
    // hundreds of syscalls) is skipped without being built up. It is on every start's path.
    #[derive(serde::Deserialize)]
    struct Spec {
        process: Option<Process>,
    }
    #[derive(serde::Deserialize)]
    struct Process {
        terminal: Option<bool>,
    }
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Spec>(&b).ok())
        .and_then(|s| s.process?.terminal)
        .unwrap_or(false)
}

pub fn anon_volume_name(container: &str, target: &str) -> String {
    hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(format!("{container}:{target}"))[..16])
}

/// The volumes and bind mounts of another container (volumes_from), read from its bundle;
/// berth's own /etc files and secrets are not shared.
fn shared_mounts(dir: &Path) -> anyhow::Result<Vec<MountSpec>> {
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let mut out = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let (Some(src), Some(kind)) = (m.source().clone(), m.typ().clone()) else {
            continue;
        };
        let dst = m.destination().to_string_lossy().to_string();
        if kind != "bind"
            || src.starts_with(dir)
            || ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"].contains(&dst.as_str())
        {
            continue;
        }
        out.push(MountSpec {
            kind,
            source: src.to_string_lossy().to_string(),
            destination: dst,
            options: m.options().clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// A service's secrets and configs, copied into the container's `files` tmpfs (mounted here);
/// returns each copy with its target in the container. Also how they come back after a reboot
/// (the tmpfs went with it).
fn write_files(svc: &ServicePlan, files_dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    if !svc.secrets.is_empty() || !svc.configs.is_empty() {
        std::fs::create_dir_all(files_dir)?;
        mount_files_tmpfs(files_dir)?;
    }
    for (i, f) in svc.secrets.iter().chain(svc.configs.iter()).enumerate() {
        let p = files_dir.join(i.to_string());
        match (&f.file, &f.content) {
            (Some(src), _) => {
                std::fs::copy(src, &p).with_context(|| format!("reading {}", src.display()))?;
            }
            (None, Some(c)) => std::fs::write(&p, c)?,
            (None, None) => bail!("{}: no file or content", f.target),
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
        std::os::unix::fs::chown(&p, Some(f.uid.unwrap_or(0)), Some(f.gid.unwrap_or(0)))?;
        out.push((p, f.target.clone()));
    }
    Ok(out)
}

/// Whether a container's kernel side is gone while its bundle (config.json, overlay upper and
/// work dirs, /etc files, all under the persistent data root) stays: after a reboot. Its own
/// network namespace file (under /run) is gone, or, without one, its rootfs is not mounted.
pub fn kernel_side_gone(paths: &crate::paths::Paths, rec: &ContainerRecord) -> bool {
    match &rec.netns {
        Some(ns) if *ns == paths.netns(&rec.name) && !ns.exists() => true,
        _ => !berth_runtime::image::snapshot::is_mountpoint(&rec.dir.join("rootfs")),
    }
}

/// `devices: ["/dev/x:/dev/y:rwm"]`: the node's type and numbers come from the host.
fn device(src: &str, dst: &str, perms: &str) -> anyhow::Result<crate::spec::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(src).with_context(|| format!("device {src}"))?;
    let kind = if md.file_type().is_char_device() {
        'c'
    } else if md.file_type().is_block_device() {
        'b'
    } else {
        bail!("{src} is not a device");
    };
    let rdev = md.rdev();
    Ok(crate::spec::Device {
        path: dst.to_string(),
        kind,
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        file_mode: md.mode() & 0o777,
        uid: md.uid(),
        gid: md.gid(),
        permissions: perms.to_string(),
    })
}

/// The host's hard RLIMIT_NOFILE (the default's if it cannot be read): a container's nofile
/// limit is capped by it.
pub(crate) fn host_nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return spec::DEFAULT_NOFILE.1;
    }
    r.rlim_max
}

impl Engine {
    /// Prepare everything for one container and write its bundle. Nothing runs yet.
    /// On error, what was made is removed before returning.
    pub async fn prepare_container(
        &self,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        number: u32,
        networks: &[NetworkRecord],
        state: &ProjectState,
    ) -> anyhow::Result<ContainerRecord> {
        let name = container_name(&plan.name, svc, number);
        let dir = self.paths.container(&name);
        let mut rec = ContainerRecord {
            name: name.clone(),
            service: svc.name.clone(),
            number,
            config_hash: svc.config_hash.clone(),
            generation: 0,
            image: svc.image.clone(),
            image_id: String::new(),
            dir: dir.clone(),
            netns: None,
            endpoints: vec![],
            ports: vec![],
            status: Status::Created,
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
            log_max_size: svc.log_max_size,
            log_max_file: Some(svc.log_max_file),
            restart: Some(svc.restart.clone()),
        };
        let inherited = self
            .inherit_anon
            .lock()
            .unwrap()
            .remove(&name)
            .unwrap_or_default();
        match self
            .prepare_inner(plan, svc, &mut rec, networks, state, &inherited)
            .await
        {
            Ok(()) => Ok(rec),
            Err(e) => {
                // No `create` follows the `warm` of `create_one`.
                self.runtime.not_coming();
                // The volumes it was to take over stay (as the replaced container left them).
                let mut made = rec.clone();
                made.anon_volumes
                    .retain(|v| !inherited.iter().any(|(_, n)| n == v));
                let errs = self.remove_container(&made).await;
                if !errs.is_empty() {
                    tracing::warn!("cleanup after failed create of {name}: {errs:?}");
                }
                Err(e.context(format!("creating container {name}")))
            }
        }
    }

    async fn prepare_inner(
        &self,
        plan: &ProjectPlan,
        svc: &ServicePlan,
        rec: &mut ContainerRecord,
        networks: &[NetworkRecord],
        state: &ProjectState,
        inherited: &[(String, String)],
    ) -> anyhow::Result<()> {
        let dir = rec.dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let image = {
            let store = self.images.clone();
            let r = svc.image.clone();
            tokio::task::spawn_blocking(move || store.get(&r)).await??
        }
        .ok_or_else(|| {
            anyhow!(
                "image {} not found in the store (berth pull or berth load first)",
                svc.image
            )
        })?;
        rec.image_id = image.id.clone();
        crate::trace::step(|| format!("{}: image config read", rec.name));
        let rootfs = {
            // Through the store, which records the lease so rmi/prune keep the layers.
            let store = self.images.clone();
            let (d, id, img) = (dir.clone(), rec.name.clone(), image.clone());
            tokio::task::spawn_blocking(move || store.snapshot(&id, &img, &d)).await??
        };
        crate::trace::step(|| format!("{}: rootfs snapshot", rec.name));
        let icfg = image.config.config().clone().unwrap_or_default();
        let image_env: Vec<String> = icfg.env().clone().unwrap_or_default();
        let image_ep: Vec<String> = icfg.entrypoint().clone().unwrap_or_default();
        let image_cmd: Vec<String> = icfg.cmd().clone().unwrap_or_default();

        // Docker uses the short container id; berth's ids are the container names.
        let hostname = svc.hostname.clone().unwrap_or_else(|| rec.name.clone());

        // --- network namespace and endpoints
        let mut nameservers: Vec<String> = Vec::new();
        let mut my_addrs: Vec<Ipv4Addr> = Vec::new();
        // Sharing another container's netns: its hosts and resolv.conf too, as Docker does.
        let mut shared_etc: Option<std::path::PathBuf> = None;
        let netns = match svc.network_mode.as_deref() {
            Some("host") => NetNs::Host,
            Some(m) if m.starts_with("service:") || m.starts_with("container:") => {
                let other = m.split_once(':').map(|x| x.1).unwrap_or_default();
                let target = state
                    .containers
                    .iter()
                    .find(|c| (m.starts_with("service:") && c.service == other) || c.name == other)
                    .filter(|c| c.netns.is_some())
                    .ok_or_else(|| anyhow!("network_mode {m}: no running container to share"))?;
                shared_etc = Some(target.dir.clone());
                NetNs::Path(target.netns.clone().unwrap_or_default())
            }
            mode => {
                let ns = self.paths.netns(&rec.name);
                std::fs::create_dir_all(ns.parent().unwrap())?;
                let nsp = ns.clone();
                tokio::task::spawn_blocking(move || berth_network::netns::create(&nsp)).await??;
                crate::trace::step(|| format!("{}: netns", rec.name));
                rec.netns = Some(ns.clone());
                if mode != Some("none") {
                    for (i, np) in svc.networks.iter().enumerate() {
                        let net = networks
                            .iter()
                            .find(|n| n.key == np.key)
                            .ok_or_else(|| anyhow!("network {} is not set up", np.key))?;
                        // Under a file lock, with a read and a write of the state file: on a
                        // blocking thread, not on one of the two async workers.
                        let ip = {
                            let (ipam, net, owner) =
                                (self.ipam.clone(), net.name.clone(), rec.name.clone());
                            let want = np.ipv4_address;
                            tokio::task::spawn_blocking(move || {
                                ipam.allocate_address(&net, &owner, want)
                            })
                            .await??
                        };
                        let host_ifname = berth_network::endpoint::veth_name(&rec.name, i);
                        // Record before attaching so a failure still releases the address.
                        rec.endpoints.push(EndpointRecord {
                            network: np.key.clone(),
                            network_name: net.name.clone(),
                            host_ifname: host_ifname.clone(),
                            ip,
                            aliases: np.aliases.clone(),
                        });
                        let spec = berth_network::endpoint::EndpointSpec {
                            netns: ns.clone(),
                            bridge: net.bridge.clone(),
                            host_ifname,
                            container_ifname: format!("eth{i}"),
                            address: ipnet::Ipv4Net::new(ip, net.subnet.prefix_len())?,
                            gateway: if i == 0 && !net.internal {
                                Some(net.gateway)
                            } else {
                                None
                            },
                            mac: np
                                .mac_address
                                .as_deref()
                                .and_then(berth_network::endpoint::parse_mac),
                            mtu: None,
                        };
                        tokio::task::spawn_blocking(move || berth_network::endpoint::attach(&spec))
                            .await??;
                        crate::trace::step(|| format!("{}: veth on {}", rec.name, net.name));
                        my_addrs.push(ip);
                        if i == 0 {
                            nameservers.push(net.gateway.to_string());
                        }
                    }
                }
                NetNs::Path(ns)
            }
        };

        // --- /etc files
        let shared = |f: &str| {
            shared_etc
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(f)).ok())
        };
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let etc_hosts = if let Some(h) = shared("hosts") {
            h
        } else if matches!(netns, NetNs::Host) {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            berth_network::files::hosts(&hostname, &my_addrs, &svc.extra_hosts)
        };
        std::fs::write(dir.join("hosts"), etc_hosts)?;
        let resolv = if let Some(r) = shared("resolv.conf") {
            r
        } else if matches!(netns, NetNs::Host) || nameservers.is_empty() {
            host_resolv
        } else {
            // Docker's layout behind its embedded server: ndots:0, the host's search domains
            // and options unless the service sets its own.
            let (search, options) = berth_network::files::embedded_search_and_options(
                &host_resolv,
                &svc.dns_search,
                &svc.dns_opt,
            );
            berth_network::files::resolv_conf(&nameservers, &search, &options)
        };
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;

        // --- mounts
        let mut mounts = vec![
            MountSpec::bind(dir.join("hosts").to_string_lossy(), "/etc/hosts", false),
            MountSpec::bind(
                dir.join("resolv.conf").to_string_lossy(),
                "/etc/resolv.conf",
                false,
            ),
            MountSpec::bind(
                dir.join("hostname").to_string_lossy(),
                "/etc/hostname",
                false,
            ),
        ];
        // Anonymous volumes: those of the container this one replaces (compose's recreate
        // without -V), else named afresh for each container made (compose's are new volumes),
        // so one kept after an `rm`/`down` without -v is never reused by a later container of
        // the same name; recorded before they are made, so a failed create removes the new.
        let incarnation = format!(
            "{}@{}",
            rec.name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let anon: Vec<(String, String)> = svc
            .mounts
            .iter()
            .filter(|m| m.kind == "volume" && m.source.is_none())
            .map(|m| {
                let name = inherited
                    .iter()
                    .find(|(t, _)| *t == m.target)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_else(|| anon_volume_name(&incarnation, &m.target));
                (m.target.clone(), name)
            })
            .collect();
        rec.anon_volumes = anon.iter().map(|(_, n)| n.clone()).collect();
        for m in &svc.mounts {
            mounts.push(self.mount_for(plan, &anon, m, &rootfs)?);
        }
        for t in &svc.tmpfs {
            let (path, opts) = t.split_once(':').unwrap_or((t, ""));
            let mut ms = MountSpec::tmpfs(path, None, None);
            ms.options
                .extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
            mounts.push(ms);
        }
        // Secrets and configs are copies in a per-container tmpfs (never on disk, never a bind
        // of the host file), so the requested owner and mode always hold.
        for (p, target) in write_files(svc, &dir.join("files"))? {
            mounts.push(MountSpec::bind(p.to_string_lossy(), &target, true));
        }

        let mut mounts_from: Vec<MountSpec> = Vec::new();
        // --- process
        let user_spec = svc.user.as_deref().or(icfg.user().as_deref()).unwrap_or("");
        let user = berth_runtime::user::resolve(&rootfs, user_spec, &[])?;
        let (uid, gid, groups) = (user.uid, user.gid, user.additional_gids);
        let args = resolve_args(svc, &image_ep, &image_cmd);
        if args.is_empty() {
            bail!("no command specified (the image has no Cmd or Entrypoint)");
        }
        let mut env = resolve_env(&image_env, svc);
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={hostname}"));
        }
        let mut c = ContainerConfig::new(&rec.name, rootfs.clone(), args);
        c.hostname = hostname;
        c.domainname = svc.domainname.clone();
        c.env = env;
        c.cwd = svc
            .working_dir
            .clone()
            .or_else(|| icfg.working_dir().clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        c.uid = uid;
        c.gid = gid;
        c.additional_gids = groups;
        c.read_only = svc.read_only;
        c.netns = netns;
        // volumes_from: the other container's volumes and binds, as its bundle has them.
        for vf in &svc.volumes_from {
            let (target, ro) = match vf.rsplit_once(':') {
                Some((t, "ro")) => (t, true),
                Some((t, "rw")) => (t, false),
                _ => (vf.as_str(), false),
            };
            let other = match target.strip_prefix("container:") {
                Some(name) => state.containers.iter().find(|c| c.name == name),
                None => state
                    .containers
                    .iter()
                    .filter(|c| c.service == target)
                    .min_by_key(|c| c.number),
            }
            .ok_or_else(|| anyhow!("volumes_from {vf}: no such container"))?;
            for m in shared_mounts(&other.dir)? {
                let mut m = m;
                if ro {
                    m.options.retain(|o| o != "rw");
                    m.options.push("ro".into());
                }
                mounts_from.push(m);
            }
        }
        // The service's own mounts win over the ones it takes from others.
        mounts_from.retain(|m| !mounts.iter().any(|x| x.destination == m.destination));
        c.mounts = mounts;
        c.mounts.extend(mounts_from);
        for (src, dst, perms) in &svc.devices {
            c.devices.push(device(src, dst, perms)?);
        }
        c.tty = svc.tty;
        c.init = svc.init;
        c.privileged = svc.privileged;
        c.cap_add = svc.cap_add.clone();
        c.cap_drop = svc.cap_drop.clone();
        c.pids_limit = svc.pids_limit;
        c.memory = svc.mem_limit;
        c.memory_reservation = svc.mem_reservation;
        c.cpus = svc.cpus;
        c.cpu_shares = svc.cpu_shares;
        c.cpuset = svc.cpuset.clone();
        c.ulimits = svc.ulimits.clone();
        if !c.ulimits.iter().any(|(n, _, _)| n == "nofile") {
            // berth's default (1024:524288), capped by what this host lets us set: raising a
            // hard limit needs CAP_SYS_RESOURCE, which some hosts (VMs, nested) withhold.
            let hard = host_nofile_hard().min(spec::DEFAULT_NOFILE.1);
            c.ulimits
                .push(("nofile".into(), spec::DEFAULT_NOFILE.0.min(hard), hard));
        }
        c.sysctls = svc.sysctls.clone();
        c.shm_size = svc.shm_size;
        c.oom_score_adj = svc.oom_score_adj;
        c.cgroups_path =
            crate::rootless::cgroups_path(&format!("/berth/{}/{}", plan.name, rec.name));
        let mut unconfined = false;
        for opt in &svc.security_opt {
            let o = opt.replace('=', ":");
            match o.as_str() {
                "no-new-privileges" | "no-new-privileges:true" => c.no_new_privileges = true,
                "no-new-privileges:false" => c.no_new_privileges = false,
                "seccomp:unconfined" => unconfined = true,
                _ => {}
            }
        }
        c.seccomp = if unconfined || svc.privileged {
            Seccomp::Unconfined
        } else {
            let caps = spec::capabilities(&c);
            Seccomp::Profile(serde_json::to_value(
                berth_runtime::seccomp::docker_default(&caps),
            )?)
        };
        let mut ann = BTreeMap::new();
        ann.insert("com.docker.compose.project".into(), plan.name.clone());
        ann.insert("com.docker.compose.service".into(), svc.name.clone());
        ann.insert(
            "com.docker.compose.container-number".into(),
            rec.number.to_string(),
        );
        ann.insert(
            "com.docker.compose.config-hash".into(),
            svc.config_hash.clone(),
        );
        for (k, v) in &svc.labels {
            ann.insert(k.clone(), v.clone());
        }
        c.annotations = ann;
        let oci = spec::build(&c)?;
        let json = serde_json::to_vec_pretty(&oci)?;
        // Renamed into place without an fsync (0.75-3.7 ms of a lone container's `up` here):
        // the supervisor syncs it in its next deferred pass, with the container's record
        // (`supervisor::batch::DeferredSync`, which says what a machine crash before it leaves).
        crate::state::write_atomic_unsynced(&dir.join("config.json"), &json)?;
        Ok(())
    }

    fn mount_for(
        &self,
        plan: &ProjectPlan,
        anon: &[(String, String)],
        m: &MountPlan,
        rootfs: &Path,
    ) -> anyhow::Result<MountSpec> {
        match m.kind.as_str() {
            "bind" => {
                let src = PathBuf::from(m.source.clone().unwrap_or_default());
                if !src.exists() {
                    if m.create_host_path {
                        std::fs::create_dir_all(&src)
                            .with_context(|| format!("creating {}", src.display()))?;
                    } else {
                        bail!("bind source path does not exist: {}", src.display());
                    }
                }
                Ok(MountSpec::bind(
                    src.to_string_lossy(),
                    &m.target,
                    m.read_only,
                ))
            }
            "volume" => {
                let name = match &m.source {
                    Some(s) => plan
                        .volumes
                        .iter()
                        .find(|v| v.key == *s)
                        .map(|v| v.name.clone())
                        .unwrap_or_else(|| s.clone()),
                    None => anon
                        .iter()
                        .find(|(t, _)| *t == m.target)
                        .map(|(_, n)| n.clone())
                        .ok_or_else(|| anyhow!("no name for the volume at {}", m.target))?,
                };
                let data = volumes::ensure(&self.paths, &name)?;
                if !m.nocopy {
                    volumes::copy_up(rootfs, &m.target, &data)?;
                }
                Ok(MountSpec::bind(
                    data.to_string_lossy(),
                    &m.target,
                    m.read_only,
                ))
            }
            "tmpfs" => Ok(MountSpec::tmpfs(&m.target, m.tmpfs_size, m.tmpfs_mode)),
            other => bail!("volume type {other} is not supported"),
        }
    }

    /// After a reboot: make a container's kernel side again from its bundle and record, so the
    /// same container (same id, same writable layer) starts again, as Docker restarts rather
    /// than recreates its containers: the overlay mount over the kept upper dir, its network
    /// namespace with its veths on the same addresses (still held in the persisted IPAM) and
    /// bridges, the secrets tmpfs. The cgroup and the runtime state come with the runtime's
    /// create; DNS and the firewall with the supervisor's start path. Does nothing for what is
    /// still there; on error what it made is left for `remove_container`.
    pub async fn restore_kernel_side(
        &self,
        rec: &ContainerRecord,
        networks: &[NetworkRecord],
        svc: Option<&ServicePlan>,
    ) -> anyhow::Result<()> {
        let rootfs = rec.dir.join("rootfs");
        if !berth_runtime::image::snapshot::is_mountpoint(&rootfs) {
            let store = self.images.clone();
            let (dir, id) = (rec.dir.clone(), rec.name.clone());
            let (image_id, image) = (rec.image_id.clone(), rec.image.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let img = match store.get(&image_id)? {
                    Some(i) => i,
                    None => store.get(&image)?.ok_or_else(|| {
                        anyhow!("image {image} ({image_id}) is no longer in the store")
                    })?,
                };
                store.snapshot(&id, &img, &dir)?;
                Ok(())
            })
            .await?
            .with_context(|| format!("mounting the root filesystem of {} again", rec.name))?;
        }
        if let Some(svc) = svc {
            let files = rec.dir.join("files");
            if (!svc.secrets.is_empty() || !svc.configs.is_empty())
                && !berth_runtime::image::snapshot::is_mountpoint(&files)
            {
                write_files(svc, &files)?;
            }
        }
        let Some(ns) = rec.netns.clone() else {
            return Ok(());
        };
        if ns.exists() {
            return Ok(());
        }
        if ns != self.paths.netns(&rec.name) {
            bail!(
                "the network namespace it shares ({}) is gone: start the container it belongs to first",
                ns.display()
            );
        }
        std::fs::create_dir_all(ns.parent().unwrap())?;
        let nsp = ns.clone();
        tokio::task::spawn_blocking(move || berth_network::netns::create(&nsp)).await??;
        for (i, ep) in rec.endpoints.iter().enumerate() {
            let net = networks
                .iter()
                .find(|n| n.name == ep.network_name)
                .ok_or_else(|| anyhow!("network {} is not in the project's record", ep.network))?;
            if !net.external {
                let spec = berth_network::bridge::BridgeSpec {
                    name: net.bridge.clone(),
                    gateway: ipnet::Ipv4Net::new(net.gateway, net.subnet.prefix_len())?,
                    mtu: None,
                    internal: net.internal,
                };
                tokio::task::spawn_blocking(move || berth_network::bridge::ensure(&spec))
                    .await?
                    .with_context(|| format!("creating network {} again", net.name))?;
            }
            let mac = svc
                .and_then(|s| s.networks.iter().find(|n| n.key == ep.network))
                .and_then(|n| n.mac_address.as_deref())
                .and_then(berth_network::endpoint::parse_mac);
            let spec = berth_network::endpoint::EndpointSpec {
                netns: ns.clone(),
                bridge: net.bridge.clone(),
                host_ifname: ep.host_ifname.clone(),
                container_ifname: format!("eth{i}"),
                address: ipnet::Ipv4Net::new(ep.ip, net.subnet.prefix_len())?,
                gateway: if i == 0 && !net.internal {
                    Some(net.gateway)
                } else {
                    None
                },
                mac,
                mtu: None,
            };
            tokio::task::spawn_blocking(move || berth_network::endpoint::attach(&spec))
                .await?
                .with_context(|| format!("attaching {} to {} again", rec.name, net.name))?;
        }
        Ok(())
    }

    /// Compose's recreate: the next container made under `rec`'s name mounts `rec`'s
    /// anonymous volumes again at the same targets (read from its bundle) instead of new ones.
    /// Remove `rec` keeping its anonymous volumes after this.
    pub fn inherit_anon_volumes(&self, rec: &ContainerRecord) {
        let Ok(bytes) = std::fs::read(rec.dir.join("config.json")) else {
            return;
        };
        let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(&bytes) else {
            return;
        };
        let mut list = Vec::new();
        for m in spec.mounts().clone().unwrap_or_default() {
            let Some(src) = m.source() else { continue };
            if let Some(v) = rec
                .anon_volumes
                .iter()
                .find(|v| *src == volumes::volume_data(&self.paths, v))
            {
                list.push((m.destination().to_string_lossy().to_string(), v.clone()));
            }
        }
        self.inherit_anon
            .lock()
            .unwrap()
            .insert(rec.name.clone(), list);
    }

    /// Remove a container and everything made for it; goes on through errors and returns them.
    pub async fn remove_container(&self, rec: &ContainerRecord) -> Vec<String> {
        self.remove_container_with(rec, true).await
    }

    /// [`Self::remove_container`], keeping its anonymous volumes unless `anon_volumes`, as
    /// compose's `rm` and `down` without `-v` keep them.
    pub async fn remove_container_with(
        &self,
        rec: &ContainerRecord,
        anon_volumes: bool,
    ) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = self.runtime.delete(&rec.name, true).await {
            let msg = e.to_string();
            if !msg.contains("does not exist")
                && !msg.contains("not found")
                && !msg.contains("no such")
            {
                errs.push(format!("runtime delete: {msg}"));
            }
        }
        if let Some(ns) = &rec.netns {
            let ns = ns.clone();
            match tokio::task::spawn_blocking(move || berth_network::netns::remove(&ns)).await {
                Ok(Err(e)) => errs.push(format!("netns: {e}")),
                Err(e) => errs.push(format!("netns: {e}")),
                _ => {}
            }
        }
        for ep in &rec.endpoints {
            // The veth goes with the namespace; make sure the host side is gone too.
            let ifname = ep.host_ifname.clone();
            let _ =
                tokio::task::spawn_blocking(move || berth_network::endpoint::detach(&ifname)).await;
            if let Err(e) = self.ipam.release_address(&ep.network_name, &rec.name) {
                errs.push(format!("ipam: {e}"));
            }
        }
        let dir = rec.dir.clone();
        let (store, id) = (self.images.clone(), rec.name.clone());
        match tokio::task::spawn_blocking(move || store.remove_snapshot(&id, &dir)).await {
            Ok(Err(e)) => errs.push(format!("snapshot: {e}")),
            Err(e) => errs.push(format!("snapshot: {e}")),
            _ => {}
        }
        for v in rec.anon_volumes.iter().filter(|_| anon_volumes) {
            if let Err(e) = volumes::remove(&self.paths, v) {
                errs.push(format!("volume {v}: {e}"));
            }
        }
        let files = rec.dir.join("files");
        match nix::mount::umount2(&files, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errs.push(format!("unmounting {}: {e}", files.display())),
        }
        if rec.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&rec.dir) {
                errs.push(format!("removing {}: {e}", rec.dir.display()));
            }
        }
        errs
    }

    /// The published ports of a container, with free host ports picked where none was given.
    pub fn assign_ports(
        &self,
        svc: &ServicePlan,
        siblings: &[PortRecord],
    ) -> anyhow::Result<Vec<PortRecord>> {
        let mut out = Vec::new();
        for p in &svc.ports {
            let proto = if p.protocol.is_empty() {
                "tcp".to_string()
            } else {
                p.protocol.clone()
            };
            let shared = siblings
                .iter()
                .find(|s| s.target == p.target && s.protocol == proto && s.host_ip == p.host_ip);
            let host_port = match (p.host_port, shared) {
                (Some(hp), _) => hp,
                (None, Some(s)) => s.host_port,
                // Rootless: from the host's free ports (src/rootless.rs).
                (None, None) => match crate::rootless::pick_host_port(&proto, p.host_ip.as_deref())
                {
                    Some(port) => port?,
                    None => berth_network::firewall::pick_free_port(&proto, p.host_ip.as_deref())?,
                },
            };
            out.push(PortRecord {
                host_ip: p.host_ip.clone(),
                host_port,
                target: p.target,
                protocol: proto,
            });
        }
        Ok(out)
    }
}

/// Mount the in-memory tmpfs that holds a container's (or a build step's) secret and config
/// copies on `dir`: root-only, 16 MiB, nothing on it runs or is a device.
pub(crate) fn mount_files_tmpfs(dir: &Path) -> anyhow::Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700,size=16m"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServicePlan {
        ServicePlan {
            name: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bundle_terminal_reads_process_terminal_alone() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                r#"{"ociVersion":"1.0.2","process":{"terminal":true,"args":["sh"]},"linux":{"seccomp":{"syscalls":[{"names":["read"]}]}}}"#,
                true,
            ),
            (r#"{"process":{"args":["sh"],"terminal":false}}"#, false),
            (r#"{"process":{"args":["sh"]}}"#, false),
            (r#"{"root":{"path":"rootfs"}}"#, false),
            ("not json", false),
        ];
        for (json, want) in cases {
            std::fs::write(d.path().join("config.json"), json).unwrap();
            assert_eq!(bundle_terminal(d.path()), want, "{json}");
        }
        std::fs::remove_file(d.path().join("config.json")).unwrap();
        assert!(!bundle_terminal(d.path()));
    }

    #[test]
    fn args_follow_compose_rules() {
        let ep = vec!["/entry".to_string()];
        let cmd = vec!["serve".to_string()];
        let mut s = svc();
        assert_eq!(resolve_args(&s, &ep, &cmd), vec!["/entry", "serve"]);
        s.command = Some(vec!["run".into()]);
        assert_eq!(resolve_args(&s, &ep, &cmd), vec!["/entry", "run"]);
        s.command = None;
        s.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        // entrypoint resets the image's Cmd
        assert_eq!(resolve_args(&s, &ep, &cmd), vec!["/bin/sh", "-c"]);
    }

    #[test]
    fn env_layers_image_then_service() {
        let mut s = svc();
        s.environment = vec![("B".into(), "svc".into()), ("C".into(), "new".into())];
        let env = resolve_env(&["PATH=/x".into(), "A=img".into(), "B=img".into()], &s);
        assert_eq!(env, vec!["PATH=/x", "A=img", "B=svc", "C=new"]);
    }
}

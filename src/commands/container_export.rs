//! `berth export SERVICE` (a container's filesystem as a tar) and `berth commit` (a container's
//! changes as a new image in berth's store). `export k8s|swarm` (model conversions) are in
//! `export.rs`, which sends any other first word here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use berth_runtime::image::pack::{self, Mode};
use berth_runtime::image::ImageStore;

use crate::cli::{CommitArgs, ProjectOpts};
use crate::paths::Paths;
use crate::state::{ContainerRecord, ProjectState};

use super::project_name;

fn container(
    p: &ProjectOpts,
    service: &str,
    index: u32,
) -> anyhow::Result<(Paths, ContainerRecord)> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let st =
        ProjectState::load(&paths, &name)?.ok_or_else(|| anyhow!("no such project: {name}"))?;
    // `--index N`: the N-th current replica, as for exec, logs and cp.
    let c = crate::commands::inspect::replica(&st.containers, service, index)?.clone();
    Ok((paths, c))
}

/// The container's merged root filesystem, mounting its snapshot for the duration if it is not
/// mounted (a stopped container); the guard unmounts what it mounted.
struct Rootfs {
    path: PathBuf,
    mounted_here: Option<PathBuf>,
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Some(dir) = &self.mounted_here {
            let _ = berth_runtime::image::snapshot::unmount(dir);
        }
    }
}

fn rootfs(store: &ImageStore, c: &ContainerRecord) -> anyhow::Result<Rootfs> {
    let path = c.dir.join("rootfs");
    if berth_runtime::image::snapshot::is_mountpoint(&path) {
        return Ok(Rootfs {
            path,
            mounted_here: None,
        });
    }
    let img = store
        .get(&c.image_id)?
        .ok_or_else(|| anyhow!("image {} of {} is not in the store", c.image, c.name))?;
    let path = berth_runtime::image::snapshot::mount(&img.layers, &c.dir)
        .with_context(|| format!("mounting the filesystem of {}", c.name))?;
    Ok(Rootfs {
        path,
        mounted_here: Some(c.dir.clone()),
    })
}

/// `export SERVICE`: the filesystem as docker export writes it (no whiteouts, devices as
/// devices), to `-o FILE` or standard output (refused when it is a terminal, as docker does).
pub fn export_container(
    p: &ProjectOpts,
    service: &str,
    index: u32,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    let (paths, c) = container(p, service, index)?;
    let store = ImageStore::open(&paths.images())?;
    let root = rootfs(&store, &c)?;
    match output {
        Some(f) => {
            let tmp = f.with_extension("berth-tmp");
            let r = (|| {
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                let mut w = std::io::BufWriter::new(file);
                pack::pack(&root.path, Mode::Filesystem, &mut w)?;
                w.flush()?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))
            })();
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r?;
        }
        None => {
            if console::Term::stdout().is_term() {
                bail!("cowardly refusing to write a tar to a terminal: use -o FILE or redirect");
            }
            let out = std::io::stdout();
            let mut w = std::io::BufWriter::new(out.lock());
            pack::pack(&root.path, Mode::Filesystem, &mut w)?;
            w.flush()?;
        }
    }
    Ok(0)
}

/// Apply one `--change` instruction (the Dockerfile instructions `docker commit` allows that
/// make sense without a build) to an image config.
pub fn apply_change(config: &mut serde_json::Value, change: &str) -> anyhow::Result<()> {
    let (instr, rest) = change
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| anyhow!("invalid --change {change:?}"))?;
    let rest = rest.trim();
    let c = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("image config is not an object"))?
        .entry("config")
        .or_insert_with(|| serde_json::json!({}));
    let words = |s: &str| -> Vec<String> {
        match serde_json::from_str::<Vec<String>>(s) {
            Ok(v) => v,
            Err(_) => vec!["/bin/sh".into(), "-c".into(), s.to_string()],
        }
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => c["Cmd"] = words(rest).into(),
        "ENTRYPOINT" => c["Entrypoint"] = words(rest).into(),
        "WORKDIR" => c["WorkingDir"] = rest.into(),
        "USER" => c["User"] = rest.into(),
        "STOPSIGNAL" => c["StopSignal"] = rest.into(),
        "ENV" => {
            let (k, v) = rest
                .split_once('=')
                .or_else(|| rest.split_once(char::is_whitespace))
                .ok_or_else(|| anyhow!("invalid --change {change:?}: ENV KEY=VALUE"))?;
            let env = c
                .as_object_mut()
                .unwrap()
                .entry("Env")
                .or_insert_with(|| serde_json::json!([]));
            if !env.is_array() {
                *env = serde_json::json!([]);
            }
            let a = env.as_array_mut().unwrap();
            a.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(&format!("{k}="))));
            a.push(format!("{k}={}", v.trim().trim_matches('"')).into());
        }
        "LABEL" => {
            let (k, v) = rest
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid --change {change:?}: LABEL KEY=VALUE"))?;
            let labels = c
                .as_object_mut()
                .unwrap()
                .entry("Labels")
                .or_insert_with(|| serde_json::json!({}));
            if !labels.is_object() {
                *labels = serde_json::json!({});
            }
            labels[k.trim()] = v.trim().trim_matches('"').into();
        }
        "EXPOSE" => {
            let ports = c
                .as_object_mut()
                .unwrap()
                .entry("ExposedPorts")
                .or_insert_with(|| serde_json::json!({}));
            if !ports.is_object() {
                *ports = serde_json::json!({});
            }
            for p in rest.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                ports[p] = serde_json::json!({});
            }
        }
        other => bail!(
            "--change {other} is not supported (CMD, ENTRYPOINT, ENV, LABEL, EXPOSE, WORKDIR, USER, STOPSIGNAL)"
        ),
    }
    Ok(())
}

/// `commit SERVICE [REPOSITORY[:TAG]]`: the container's upper dir (its changes over the image)
/// packed as one more layer on its image; paused while packing unless `--pause=false`.
pub fn commit(p: &ProjectOpts, args: &CommitArgs) -> anyhow::Result<u8> {
    let (paths, c) = container(p, &args.service, args.index)?;
    let store = ImageStore::open(&paths.images())?;
    let mut probe = serde_json::json!({"config": {}});
    for ch in &args.change {
        apply_change(&mut probe, ch)?;
    }
    let upper = c.dir.join("upper");
    if !upper.is_dir() {
        bail!("container {} has no filesystem changes directory", c.name);
    }
    let project = project_name(p)?;
    let running = crate::commands::ps::live_status(&c) == crate::state::Status::Running;
    let cg = if args.pause && running {
        let path = std::fs::read(c.dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.pointer("/linux/cgroupsPath")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("/berth/{project}/{}", c.name));
        let g = berth_runtime::cgroups::Cgroup::new(&path)?;
        g.freeze(true)?;
        Some(g)
    } else {
        None
    };
    let tmp = store
        .root()
        .join("tmp")
        .join(format!("commit-{}-{}", c.name, std::process::id()));
    let packed = (|| {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        pack::pack(&upper, Mode::Layer, &mut w)?;
        w.flush()?;
        Ok::<_, anyhow::Error>(())
    })();
    if let Some(g) = &cg {
        let _ = g.freeze(false);
    }
    let r = packed.and_then(|()| {
        let author = args.author.clone();
        let message = args.message.clone();
        let changes = args.change.clone();
        let created = crate::state::now_rfc3339();
        let edit = move |cfg: &mut serde_json::Value| {
            cfg["created"] = created.clone().into();
            if let Some(a) = &author {
                cfg["author"] = a.clone().into();
            }
            for ch in &changes {
                let _ = apply_change(cfg, ch);
            }
            let mut h = serde_json::json!({"created": created, "created_by": "berth commit"});
            if let Some(a) = &author {
                h["author"] = a.clone().into();
            }
            if let Some(m) = &message {
                h["comment"] = m.clone().into();
            }
            match cfg.get_mut("history").and_then(|x| x.as_array_mut()) {
                Some(a) => a.push(h),
                None => cfg["history"] = serde_json::json!([h]),
            }
        };
        store
            .commit(&c.image_id, &tmp, args.repository.as_deref(), &edit)
            .map_err(anyhow::Error::from)
    });
    let _ = std::fs::remove_file(&tmp);
    let id = r.with_context(|| format!("committing {}", c.name))?;
    println!("{id}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_config() {
        let mut c = serde_json::json!({"config": {"Env": ["A=1", "B=2"]}});
        apply_change(&mut c, "ENV A=3").unwrap();
        apply_change(&mut c, r#"CMD ["sleep", "1"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT echo hi").unwrap();
        apply_change(&mut c, "LABEL org.x=y").unwrap();
        apply_change(&mut c, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        assert_eq!(c["config"]["Env"], serde_json::json!(["B=2", "A=3"]));
        assert_eq!(c["config"]["Cmd"], serde_json::json!(["sleep", "1"]));
        assert_eq!(
            c["config"]["Entrypoint"],
            serde_json::json!(["/bin/sh", "-c", "echo hi"])
        );
        assert_eq!(c["config"]["Labels"]["org.x"], "y");
        assert!(c["config"]["ExposedPorts"]["53/udp"].is_object());
        assert!(c["config"]["ExposedPorts"]["80/tcp"].is_object());
        assert_eq!(c["config"]["WorkingDir"], "/srv");
        assert!(apply_change(&mut c, "RUN rm -rf /").is_err());
        assert!(apply_change(&mut c, "CMD").is_err());
    }
}

//! `berth push` (service images to their registries) and `berth publish` (the compose
//! application as an OCI artifact, as compose publishes it).

use anyhow::{anyhow, bail, Context};
use berth_runtime::image::push::{push_artifact, PushProgress};
use berth_runtime::image::reference::Reference;
use berth_runtime::image::ImageStore;

use crate::cli::{ProjectOpts, PublishArgs, PushArgs};
use crate::paths::Paths;

/// compose's media types for a published application.
pub const ARTIFACT_TYPE: &str = "application/vnd.docker.compose.project";
pub const FILE_TYPE: &str = "application/vnd.docker.compose.file+yaml";
pub const ENV_TYPE: &str = "application/vnd.docker.compose.envfile";
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";

fn push_one(store: &ImageStore, image: &str, quiet: bool) -> anyhow::Result<String> {
    let shown = Reference::parse(image)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| image.to_string());
    if store.get(image)?.is_none() {
        bail!("image {shown} is not in berth's store (pull, load or commit it first)");
    }
    if !quiet {
        eprintln!("Pushing {shown}");
    }
    let opts = super::image::pull_options();
    let digest = store
        .push(image, image, &opts, &mut |p| {
            if quiet {
                return;
            }
            match p {
                PushProgress::Preparing { .. } => {}
                PushProgress::Exists { layer } => {
                    eprintln!("{}: Layer already exists", &layer[..layer.len().min(12)])
                }
                PushProgress::Pushed { layer, .. } => {
                    eprintln!("{}: Pushed", &layer[..layer.len().min(12)])
                }
                PushProgress::Manifest { digest } => eprintln!("{shown}: digest: {digest}"),
            }
        })
        .with_context(|| format!("pushing {shown}"))?;
    Ok(digest)
}

/// The services to act on (with `--include-deps`, their dependencies too), file order.
fn selected(
    project: &crate::compose::Project,
    services: &[String],
    include_deps: bool,
) -> anyhow::Result<Vec<String>> {
    for s in services {
        if !project.services.contains_key(s) {
            bail!("no such service: {s}");
        }
    }
    let mut want: Vec<String> = services.to_vec();
    if include_deps {
        let mut i = 0;
        while i < want.len() {
            if let Some(s) = project.services.get(&want[i]) {
                for d in s.depends_on.keys() {
                    if !want.contains(d) {
                        want.push(d.clone());
                    }
                }
            }
            i += 1;
        }
    }
    Ok(project
        .services
        .keys()
        .filter(|n| services.is_empty() || want.contains(n))
        .cloned()
        .collect())
}

pub fn push(p: &ProjectOpts, args: &PushArgs) -> anyhow::Result<u8> {
    let opts = crate::compose::LoadOptions::from_cli(p);
    let project = crate::compose::load(&opts).map_err(|e| anyhow!("{e}"))?;
    let store = ImageStore::open(&Paths::from_env().images())?;
    let mut done: Vec<String> = Vec::new();
    let mut code = 0;
    for name in selected(&project, &args.services, args.include_deps)? {
        let Some(image) = project.services[&name].image.clone() else {
            continue;
        };
        if done.contains(&image) {
            continue;
        }
        done.push(image.clone());
        if let Err(e) = push_one(&store, &image, args.quiet) {
            if args.ignore_push_failures {
                eprintln!("{name}: {}", super::render_error(&e));
                continue;
            }
            eprintln!("{name}: {}", super::render_error(&e));
            code = 1;
            break;
        }
    }
    Ok(code)
}

/// `publish REPOSITORY`: the project's compose files (and with `--with-env` its env files) as
/// layers of one OCI artifact; `--app` pushes the services' images first.
pub fn publish(p: &ProjectOpts, args: &PublishArgs) -> anyhow::Result<u8> {
    let mut opts = crate::compose::LoadOptions::from_cli(p);
    opts.resolve_env_files = false;
    let project = crate::compose::load(&opts).map_err(|e| anyhow!("{e}"))?;
    if !args.with_env {
        for (n, s) in &project.services {
            if !s.environment.is_empty() || !s.env_file.is_empty() {
                bail!(
                    "service {n:?} has environment variables or env files; they may hold secrets: \
                     publish with --with-env to include them"
                );
            }
        }
    }
    if let Some(v) = &args.oci_version {
        if v != "1.0" && v != "1.1" {
            bail!("--oci-version must be 1.0 or 1.1");
        }
    }
    if args.app {
        let store = ImageStore::open(&Paths::from_env().images())?;
        for s in project.services.values() {
            if let Some(i) = &s.image {
                push_one(&store, i, false)?;
            }
        }
    }
    let mut layers = Vec::new();
    for f in &project.config_files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        layers.push((
            FILE_TYPE.to_string(),
            data,
            serde_json::json!({
                "com.docker.compose.file": name,
                "com.docker.compose.version": env!("CARGO_PKG_VERSION"),
            }),
        ));
    }
    if args.resolve_image_digests {
        // compose adds the pinned images as one more compose file (an override).
        let mut pinned = project.clone();
        super::config::pin_digests(&mut pinned)?;
        let mut y = String::from("services:\n");
        for (n, s) in &pinned.services {
            if let Some(i) = &s.image {
                y.push_str(&format!("  {n}:\n    image: {i}\n"));
            }
        }
        layers.push((
            FILE_TYPE.to_string(),
            y.into_bytes(),
            serde_json::json!({
                "com.docker.compose.file": "image-digests.yaml",
                "com.docker.compose.version": env!("CARGO_PKG_VERSION"),
            }),
        ));
    }
    if args.with_env {
        for s in project.services.values() {
            for e in &s.env_file {
                let path = project.working_dir.join(&e.path);
                if let Ok(data) = std::fs::read(&path) {
                    layers.push((
                        ENV_TYPE.to_string(),
                        data,
                        serde_json::json!({
                            "com.docker.compose.envfile": e.path.to_string_lossy(),
                            "com.docker.compose.version": env!("CARGO_PKG_VERSION"),
                        }),
                    ));
                }
            }
        }
    }
    let oci11 = args.oci_version.as_deref() != Some("1.0");
    let (artifact_type, config) = if oci11 {
        (Some(ARTIFACT_TYPE), (EMPTY_TYPE, b"{}".as_slice()))
    } else {
        (None, (ARTIFACT_TYPE, b"{}".as_slice()))
    };
    let digest = push_artifact(
        &args.repository,
        &super::image::pull_options(),
        artifact_type,
        config,
        &layers,
        serde_json::json!({"com.docker.compose.version": env!("CARGO_PKG_VERSION")}),
    )
    .with_context(|| format!("publishing to {}", args.repository))?;
    eprintln!("{} published ({digest})", args.repository);
    Ok(0)
}

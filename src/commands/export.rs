//! `berth export k8s|swarm`: load the project as `config` does, convert it (src/export/),
//! print every report line on stderr, write the output. `docker compose export SERVICE`
//! (a container's filesystem) shares the command name: a first word other than `k8s` or
//! `swarm` is a service name and belongs to that command.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{ExportArgs, ProjectOpts, PublishKind};
use crate::compose::{self, LoadOptions};
use crate::export::{self, k8s, swarm, Level, Report};

pub fn run(project: &ProjectOpts, args: &ExportArgs) -> anyhow::Result<u8> {
    let target = args.target.as_str();
    if target != "k8s" && target != "swarm" {
        // compose's `export SERVICE`: the container's filesystem as a tar.
        if !args.services.is_empty() {
            anyhow::bail!(
                "berth export takes one SERVICE (or `k8s`/`swarm` followed by services), got {:?}",
                std::iter::once(target)
                    .chain(args.services.iter().map(String::as_str))
                    .collect::<Vec<_>>()
            );
        }
        return super::container_export::export_container(
            project,
            target,
            args.index,
            args.output.as_deref(),
        )
        .with_context(|| {
            format!("export {target}: not a container of this project (or give `k8s` or `swarm`)")
        });
    }
    let mut opts = LoadOptions::from_cli(project);
    opts.services = args.services.clone();
    let p = match compose::load(&opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    for w in &p.warnings {
        eprintln!("WARN[0000] {w}");
    }
    if let Err(e) = compose::graph::ServiceGraph::new(&p) {
        eprintln!("error: {e}");
        return Ok(1);
    }
    let (out, report) = if target == "k8s" {
        let o = k8s::Options {
            namespace: args.namespace.clone(),
            k8s_version: args.k8s_version.clone(),
            services: args.services.clone(),
            publish: match args.publish {
                PublishKind::NodePort => k8s::PublishType::NodePort,
                PublishKind::LoadBalancer => k8s::PublishType::LoadBalancer,
            },
            allow_hostpath: args.allow_hostpath,
            registry: args.registry.clone(),
            volume_size: args.volume_size.clone(),
            wait_image: args.wait_image.clone(),
        };
        let (docs, mut r) = k8s::export(&p, &o);
        if !r.has(Level::Error) {
            // berth's own semantic checks: a finding here is a bug of the exporter.
            for problem in export::lint::lint(&docs) {
                r.error(
                    None,
                    "(lint)",
                    format!("exported manifest fails a semantic check: {problem}"),
                );
            }
        }
        (Output::Docs(docs), r)
    } else {
        if !args.services.is_empty() {
            eprintln!("error: export swarm exports the whole stack; no SERVICE arguments");
            return Ok(2);
        }
        let (v, r) = swarm::export(
            &p,
            &swarm::Options {
                registry: args.registry.clone(),
            },
        );
        (Output::One(v), r)
    };
    if !finish(&report, args.strict, target) {
        return Ok(1);
    }
    write(&out, args.output.as_deref())?;
    Ok(0)
}

enum Output {
    Docs(Vec<Value>),
    One(Value),
}

/// Print the report; `false` when it stops the export (errors, or unmapped fields with
/// `--strict`).
fn finish(r: &Report, strict: bool, target: &str) -> bool {
    let mut err = std::io::stderr().lock();
    for it in &r.items {
        let _ = writeln!(err, "{it}");
    }
    let errors = r.count(Level::Error);
    let unmapped = r.count(Level::Unmapped);
    if errors > 0 {
        let _ = writeln!(
            err,
            "error: export {target}: {errors} error(s); nothing written"
        );
        return false;
    }
    if strict && unmapped > 0 {
        let _ = writeln!(
            err,
            "error: export {target} --strict: {unmapped} field(s) have no {target} meaning; nothing written"
        );
        return false;
    }
    if unmapped > 0 {
        let _ = writeln!(
            err,
            "export {target}: {unmapped} field(s) not exported (listed above)"
        );
    }
    true
}

fn write(out: &Output, dest: Option<&Path>) -> anyhow::Result<()> {
    let to_stdout = dest.is_none_or(|d| d == Path::new("-"));
    match out {
        Output::One(v) => {
            let text = export::yaml_stream(std::slice::from_ref(v));
            match dest {
                Some(d) if !to_stdout => private_write(d, &text)?,
                _ => print!("{text}"),
            }
        }
        Output::Docs(docs) => match dest {
            Some(d) if !to_stdout => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                for doc in docs {
                    let kind = doc["kind"].as_str().unwrap_or("object").to_lowercase();
                    let name = doc["metadata"]["name"].as_str().unwrap_or("unnamed");
                    let f = d.join(format!("{kind}-{name}.yaml"));
                    private_write(&f, &export::yaml_stream(std::slice::from_ref(doc)))?;
                }
            }
            _ => print!("{}", export::yaml_stream(docs)),
        },
    }
    Ok(())
}

/// Output may hold Secret data: created 0600, as `docker compose` keeps secrets.
fn private_write(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

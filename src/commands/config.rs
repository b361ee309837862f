//! `berth config`: load, resolve and print the project in compose's canonical form.

use anyhow::Context;

use crate::cli::{ConfigArgs, Format, ProjectOpts};
use crate::compose::{self, hash::service_hash, LoadOptions, Project};

/// Render the project as `docker compose config` does (see `compose::render`).
pub fn render_with(p: &Project, format: Format, escape: bool) -> anyhow::Result<String> {
    compose::render::render(p, format == Format::Json, escape).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(project: &ProjectOpts, args: &ConfigArgs) -> anyhow::Result<u8> {
    let mut opts = LoadOptions::from_cli(project);
    opts.interpolate = !args.no_interpolate;
    if let Some(h) = &args.hash {
        if h != "*" {
            opts.services = h.split(',').map(|s| s.trim().to_string()).collect();
        }
    }
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
    if args.quiet {
        return Ok(0);
    }
    let mut lines: Vec<String> = Vec::new();
    let listing = if args.services {
        lines.extend(p.services.keys().cloned());
        true
    } else if args.volumes {
        lines.extend(p.volumes.keys().cloned());
        true
    } else if args.networks {
        lines.extend(p.networks.keys().cloned());
        true
    } else if args.profiles {
        lines.extend(p.all_profiles());
        true
    } else if args.images {
        for (k, s) in &p.services {
            lines.push(
                s.image
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}", p.name, k)),
            );
        }
        true
    } else if let Some(h) = &args.hash {
        let mut names: Vec<&String> = if h == "*" {
            p.services.keys().collect()
        } else {
            opts.services.iter().collect()
        };
        names.sort();
        for n in names {
            let Some(s) = p.services.get(n) else {
                eprintln!("error: no such service: {n}");
                return Ok(1);
            };
            lines.push(format!("{n} {}", service_hash(s)));
        }
        true
    } else {
        false
    };
    let out = if listing {
        let mut s = lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    } else {
        render_with(&p, args.format, !args.no_interpolate)?
    };
    match &args.output {
        Some(f) => std::fs::write(f, out).with_context(|| format!("writing {}", f.display()))?,
        None => print!("{out}"),
    }
    Ok(0)
}

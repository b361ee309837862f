//! `berth config`: load, resolve and print the project in compose's canonical form.

use std::sync::Arc;

use anyhow::Context;

use crate::cli::{ConfigArgs, Format, ProjectOpts};
use crate::compose::{self, hash::service_hash, LoadOptions, Project};

/// Render the project as `docker compose config` does (YAML or JSON). With `escape`, every
/// `$` in a value is written `$$`, so that the output loads back to the same project.
pub fn render_with(p: &Project, format: Format, escape: bool) -> anyhow::Result<String> {
    // serde_json keeps the struct field order; re-read it as an ordered tree.
    let json = serde_json::to_string(p)?;
    let mut node = compose::yaml::parse(&json, &Arc::from("<json>"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("empty output")?;
    if escape {
        escape_dollars(&mut node);
    }
    if format == Format::Json {
        json_shape(&mut node);
    }
    Ok(match format {
        Format::Json => compose::yaml::emit_json(&node) + "\n",
        Format::Yaml => compose::yaml::emit(&node),
    })
}

/// `render_with(p, format, true)`: the normal `config` output.
pub fn render(p: &Project, format: Format) -> anyhow::Result<String> {
    render_with(p, format, true)
}

/// Go's encoding/json prints a few fields YAML omits: `command`/`entrypoint` (null when
/// unset), a network's `ipam` and a deploy's `placement` (empty objects).
fn json_shape(root: &mut compose::yaml::Node) {
    use compose::yaml::{Node, V};
    let m = root.mark.clone();
    if let Some(V::Map(svcs)) = root.get_mut("services").map(|n| &mut n.v) {
        for e in svcs {
            for k in ["command", "entrypoint"] {
                if e.val.get(k).is_none() {
                    e.val.set(k, Node::new(V::Null, m.clone()));
                }
            }
            if let Some(d) = e.val.get_mut("deploy") {
                if d.get("resources").is_none() {
                    d.set("resources", Node::map(vec![], m.clone()));
                }
                if d.get("placement").is_none() {
                    d.set("placement", Node::map(vec![], m.clone()));
                }
            }
        }
    }
    if let Some(V::Map(nets)) = root.get_mut("networks").map(|n| &mut n.v) {
        for e in nets {
            if e.val.get("ipam").is_none() {
                e.val.set("ipam", Node::map(vec![], m.clone()));
            }
        }
    }
}

fn escape_dollars(n: &mut compose::yaml::Node) {
    use compose::yaml::V;
    match &mut n.v {
        V::Scalar(s, false) if s.contains('$') => *s = s.replace('$', "$$"),
        V::Seq(items) => items.iter_mut().for_each(escape_dollars),
        V::Map(entries) => entries.iter_mut().for_each(|e| escape_dollars(&mut e.val)),
        _ => {}
    }
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

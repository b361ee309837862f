//! `berth config`: load, resolve and print the project in compose's canonical form.

use anyhow::Context;

use crate::cli::{ConfigArgs, Format, ProjectOpts};
use crate::compose::{self, hash::service_hash, LoadOptions, Project};

/// Render the project as `docker compose config` does (see `compose::render`).
pub fn render_with(p: &Project, format: Format, escape: bool) -> anyhow::Result<String> {
    compose::render::render(p, format == Format::Json, escape).map_err(|e| anyhow::anyhow!("{e}"))
}

/// One variable the files use, as `config --variables` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Variable {
    pub name: String,
    pub default_value: String,
    pub presence_value: String,
    pub required: bool,
}

/// Every `${NAME…}` / `$NAME` in `text` (not `$$`), with its default (`:-`/`-`), alternate
/// (`:+`/`+`) and whether it is required (`:?`/`?`); defaults are scanned for nested variables.
pub fn variables(text: &str, out: &mut std::collections::BTreeMap<String, Variable>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                // Find the matching brace.
                let start = i + 2;
                let mut depth = 1;
                let mut j = start;
                while j < b.len() && depth > 0 {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let inner = &text[start..j.saturating_sub(1).max(start)];
                let name_len = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                let (name, rest) = inner.split_at(name_len);
                if !name.is_empty() {
                    let mut v = Variable {
                        name: name.to_string(),
                        default_value: String::new(),
                        presence_value: String::new(),
                        required: false,
                    };
                    for (op, f) in [
                        (":-", 0),
                        ("-", 0),
                        (":?", 1),
                        ("?", 1),
                        (":+", 2),
                        ("+", 2),
                    ] {
                        if let Some(arg) = rest.strip_prefix(op) {
                            match f {
                                0 => v.default_value = arg.to_string(),
                                1 => v.required = true,
                                _ => v.presence_value = arg.to_string(),
                            }
                            variables(arg, out);
                            break;
                        }
                    }
                    let e = out.entry(v.name.clone()).or_insert_with(|| v.clone());
                    e.required |= v.required;
                    if e.default_value.is_empty() {
                        e.default_value = v.default_value;
                    }
                    if e.presence_value.is_empty() {
                        e.presence_value = v.presence_value;
                    }
                }
                i = j;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let name = &text[start..j];
                out.entry(name.to_string()).or_insert_with(|| Variable {
                    name: name.to_string(),
                    default_value: String::new(),
                    presence_value: String::new(),
                    required: false,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
}

/// `image@sha256:…` for each service whose image berth's store has (`--resolve-image-digests`).
pub fn pin_digests(p: &mut Project) -> anyhow::Result<()> {
    let store = berth_runtime::image::ImageStore::open(&crate::paths::Paths::from_env().images())?;
    let list = store.list()?;
    for (name, s) in p.services.iter_mut() {
        let Some(image) = s.image.clone() else {
            continue;
        };
        if image.contains('@') {
            continue;
        }
        let img = store.get(&image)?.ok_or_else(|| {
            anyhow::anyhow!(
                "service {name}: image {image} is not in berth's store (berth pull first)"
            )
        })?;
        // The digest in the image's own repository (an image pulled from one registry and
        // pushed to another has one per repository).
        let name = berth_runtime::image::Reference::parse(&image)
            .map(|r| r.name())
            .unwrap_or_default();
        let digests = list
            .iter()
            .find(|x| x.id == img.id)
            .map(|x| x.repo_digests.clone())
            .unwrap_or_default();
        let digest = digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(n, _)| n == name))
            .and_then(|d| d.split_once('@').map(|x| x.1.to_string()))
            .ok_or_else(|| {
                anyhow::anyhow!("service {name}: image {image} has no registry digest (it was loaded or committed, not pulled)")
            })?;
        s.image = Some(format!("{image}@{digest}"));
    }
    Ok(())
}

pub fn run(project: &ProjectOpts, args: &ConfigArgs) -> anyhow::Result<u8> {
    let mut opts = LoadOptions::from_cli(project);
    opts.interpolate = !args.no_interpolate;
    opts.resolve_env_files = !args.no_env_resolution;
    if args.no_normalize || args.no_path_resolution {
        eprintln!("warning: berth always normalizes the model and resolves paths; --no-normalize and --no-path-resolution change nothing");
    }
    if args.variables || args.models {
        // Read from the files as written, before interpolation.
        let mut o = opts.clone();
        o.interpolate = false;
        o.resolve_env_files = false;
        let p = match compose::load::load_unchecked(&o) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(1);
            }
        };
        let mut texts = Vec::new();
        for f in &p.config_files {
            texts.push(
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            );
        }
        if args.models {
            for t in &texts {
                if let Ok(Some(root)) = compose::yaml::parse(t, &std::sync::Arc::from("")) {
                    if let Some(compose::yaml::V::Map(m)) = root.get("models").map(|n| &n.v) {
                        for e in m {
                            println!("{}", e.key);
                        }
                    }
                }
            }
            return Ok(0);
        }
        let mut vars = std::collections::BTreeMap::new();
        for t in &texts {
            variables(t, &mut vars);
        }
        if args.format == Format::Json {
            println!("{}", serde_json::to_string_pretty(&vars)?);
        } else {
            let mut lines = vec!["NAME\tREQUIRED\tDEFAULT VALUE\tALTERNATE VALUE".to_string()];
            for v in vars.values() {
                lines.push(format!(
                    "{}\t{}\t{}\t{}",
                    v.name, v.required, v.default_value, v.presence_value
                ));
            }
            print!("{}", super::template::tabulate(&lines));
        }
        return Ok(0);
    }
    if let Some(h) = &args.hash {
        if h != "*" {
            opts.services = h.split(',').map(|s| s.trim().to_string()).collect();
        }
    }
    let loaded = if args.no_consistency {
        compose::load::load_unchecked(&opts)
    } else {
        compose::load(&opts)
    };
    let mut p = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    for w in &p.warnings {
        eprintln!("WARN[0000] {w}");
    }
    if args.no_consistency {
    } else if let Err(e) = compose::graph::ServiceGraph::new(&p) {
        eprintln!("error: {e}");
        return Ok(1);
    }
    if args.quiet {
        return Ok(0);
    }
    if args.environment {
        let mut env: Vec<(&String, &String)> = p.environment.iter().collect();
        env.sort();
        for (k, v) in env {
            println!("{k}={v}");
        }
        return Ok(0);
    }
    if args.resolve_image_digests || args.lock_image_digests {
        pin_digests(&mut p)?;
    }
    if args.lock_image_digests {
        // An override file that pins every service's image.
        let mut services = serde_json::Map::new();
        for (n, s) in &p.services {
            if let Some(i) = &s.image {
                services.insert(n.clone(), serde_json::json!({ "image": i }));
            }
        }
        let v = serde_json::json!({ "services": services });
        let out = if args.format == Format::Json {
            serde_json::to_string_pretty(&v)? + "\n"
        } else {
            let mut y = String::from("services:\n");
            for (n, s) in &services {
                y.push_str(&format!(
                    "  {n}:\n    image: {}\n",
                    s["image"].as_str().unwrap_or("")
                ));
            }
            y
        };
        match &args.output {
            Some(f) => {
                std::fs::write(f, out).with_context(|| format!("writing {}", f.display()))?
            }
            None => print!("{out}"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_as_compose_lists_them() {
        let mut v = std::collections::BTreeMap::new();
        variables(
            "image: busybox:${TAG:-1.36}\nA: ${A:?need a}\nB: $B and $$NOT ${C:+on} ${D-${E}}\n",
            &mut v,
        );
        let names: Vec<&str> = v.keys().map(String::as_str).collect();
        assert_eq!(names, ["A", "B", "C", "D", "E", "TAG"]);
        assert_eq!(v["TAG"].default_value, "1.36");
        assert!(v["A"].required && !v["TAG"].required);
        assert_eq!(v["C"].presence_value, "on");
        assert_eq!(v["D"].default_value, "${E}");
        let j = serde_json::to_value(&v["TAG"]).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"Name": "TAG", "DefaultValue": "1.36", "PresenceValue": "", "Required": false})
        );
    }
}

//! `berth load | images | rmi | image prune | image ls | pull` (owned by the image-store work).
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use berth_runtime::image::reference::{familiar, familiar_name, Reference};
use berth_runtime::image::{Image, ImageStore, ImageSummary, PullOptions, PullProgress};

use crate::cli::{
    ImageCmd, ImageSub, ImagesArgs, LoadArgs, ProjectOpts, PullArgs, RmiArgs, TableFormat,
};
use crate::paths::Paths;

fn open_store() -> anyhow::Result<ImageStore> {
    let p = Paths::from_env().images();
    ImageStore::open(&p).with_context(|| format!("opening the image store at {}", p.display()))
}

pub fn load(args: &LoadArgs) -> anyhow::Result<u8> {
    let store = open_store()?;
    let refs = store
        .load(&args.input)
        .with_context(|| format!("loading {}", args.input.display()))?;
    if !args.quiet {
        for r in refs {
            if r.starts_with("sha256:") {
                println!("Loaded image ID: {r}");
            } else {
                println!("Loaded image: {}", familiar(&r));
            }
        }
    }
    Ok(0)
}

/// `(service, image)` for the project's services (all, or the ones named), in file order.
fn project_images(
    p: &ProjectOpts,
    only: &[String],
) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let opts = crate::compose::LoadOptions::from_cli(p);
    let project = crate::compose::load(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    for name in only {
        if !project.services.contains_key(name) {
            anyhow::bail!("no such service: {name}");
        }
    }
    Ok(project
        .services
        .iter()
        .filter(|(n, _)| only.is_empty() || only.contains(n))
        .filter_map(|(n, s)| {
            s.image
                .clone()
                .map(|i| (n.clone(), i, s.pull_policy.clone()))
        })
        .collect())
}

pub fn images(p: &ProjectOpts, args: &ImagesArgs) -> anyhow::Result<u8> {
    let store = open_store()?;
    let mut list = store.list()?;
    if !args.all {
        // The project's images when a compose file is found, every image otherwise.
        if let Ok(wanted) = project_images(p, &[]) {
            let ids: Vec<String> = wanted
                .iter()
                .filter_map(|(_, r, _)| store.get(r).ok().flatten())
                .map(|i| i.id)
                .collect();
            list.retain(|s| ids.contains(&s.id));
        }
        if args.format == TableFormat::Json && !args.quiet {
            // compose's shape: one object per container of the project.
            if let Ok(name) = crate::commands::project_name(p) {
                let paths = Paths::from_env();
                if let Some(st) = crate::state::ProjectState::load(&paths, &name)? {
                    println!(
                        "{}",
                        serde_json::to_string(&container_images(&store, &st)?)?
                    );
                    return Ok(0);
                }
            }
        }
    }
    print_images(&list, args);
    Ok(0)
}

/// `images --format json` as compose prints it: per container, `ID`, `ContainerName`,
/// `Repository`, `Tag`, `Platform`, `Size`, `Created`.
pub fn container_images(
    store: &ImageStore,
    st: &crate::state::ProjectState,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let list = store.list()?;
    let (os, arch, variant) = berth_runtime::image::host_platform();
    let platform = match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    let mut out = Vec::new();
    for c in &st.containers {
        let sum = list.iter().find(|s| s.id == c.image_id);
        let (repo, tag) = match Reference::parse(&c.image) {
            Ok(r) => (
                familiar_name(&r.registry, &r.repository),
                r.tag.unwrap_or_default(),
            ),
            Err(_) => (c.image.clone(), String::new()),
        };
        let mut v = serde_json::json!({
            "ID": c.image_id,
            "ContainerName": c.name,
            "Repository": repo,
            "Tag": tag,
            "Platform": platform,
            "Size": sum.map(|s| s.size).unwrap_or(0),
        });
        if let Some(created) = sum.and_then(|s| s.created.clone()) {
            v["Created"] = created.into();
        }
        out.push(v);
    }
    Ok(out)
}

fn print_images(list: &[ImageSummary], args: &ImagesArgs) {
    if args.quiet {
        let mut seen = Vec::new();
        for s in list {
            if !seen.contains(&s.id) {
                println!("{}", short_id(&s.id));
                seen.push(s.id.clone());
            }
        }
        return;
    }
    if args.format == TableFormat::Json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "ID": s.id,
                    "RepoTags": s.repo_tags.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
                    "RepoDigests": s.repo_digests.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
                    "Created": s.created,
                    "Size": s.size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for s in list {
        let created = s
            .created
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|t| ago(now - t))
            .unwrap_or_else(|| "N/A".into());
        let tags: Vec<(String, String)> = if s.repo_tags.is_empty() {
            // Pulled by digest: Docker shows the repository with a <none> tag.
            let mut v: Vec<(String, String)> = s
                .repo_digests
                .iter()
                .filter_map(|d| Reference::parse(d).ok())
                .map(|r| {
                    (
                        familiar_name(&r.registry, &r.repository),
                        "<none>".to_string(),
                    )
                })
                .collect();
            v.dedup();
            if v.is_empty() {
                v.push(("<none>".into(), "<none>".into()));
            }
            v
        } else {
            s.repo_tags
                .iter()
                .map(|t| match Reference::parse(t) {
                    Ok(r) => (
                        familiar_name(&r.registry, &r.repository),
                        r.tag.unwrap_or_default(),
                    ),
                    Err(_) => (t.clone(), "<none>".into()),
                })
                .collect()
        };
        for (repo, tag) in tags {
            rows.push([
                repo,
                tag,
                short_id(&s.id),
                created.clone(),
                human_size(s.size),
            ]);
        }
    }
    let mut w = [0usize; 5];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {:w3$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Docker's units: powers of 1000, 3 significant digits.
pub fn human_size(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v >= 100.0 {
        format!("{v:.0}{}", units[i])
    } else if v >= 10.0 {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{v:.2}{}", units[i])
    }
}

fn ago(secs: i64) -> String {
    let s = secs.max(0);
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=1_209_599 => (s / 86_400, "day"),
        1_209_600..=5_183_999 => (s / 604_800, "week"),
        5_184_000..=63_071_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    if n == 1 {
        format!("{} {unit} ago", if unit == "hour" { "An" } else { "A" })
    } else {
        format!("{n} {unit}s ago")
    }
}

/// `2026-11-23T10:00:00.123Z` / `…+01:00` → unix seconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    // days from civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut t = days * 86_400 + h * 3600 + mi * 60 + se;
    let rest = &s[19..];
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(off) = rest.strip_prefix('+').or_else(|| rest.strip_prefix('-')) {
        let sign = if rest.starts_with('+') { 1 } else { -1 };
        let oh: i64 = off.get(0..2)?.parse().ok()?;
        let om: i64 = off.get(3..5)?.parse().ok()?;
        t -= sign * (oh * 3600 + om * 60);
    }
    Some(t)
}

pub fn rmi(args: &RmiArgs) -> anyhow::Result<u8> {
    let store = open_store()?;
    let mut code = 0;
    for r in &args.images {
        let Some(img) = store.get(r)? else {
            eprintln!("Error: No such image: {r}");
            code = 1;
            continue;
        };
        match store.remove_with(r, args.force) {
            Ok(()) => {
                if Reference::parse(r).is_ok()
                    && !r.starts_with("sha256:")
                    && !img.id[7..].starts_with(r.as_str())
                {
                    println!("Untagged: {}", familiar(&img.reference));
                }
                if store.get(&img.id)?.is_none() {
                    println!("Deleted: {}", img.id);
                }
            }
            Err(e) => {
                eprintln!("Error: {r}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub fn image_cmd(cmd: &ImageCmd) -> anyhow::Result<u8> {
    match &cmd.command {
        ImageSub::Prune => {
            let store = open_store()?;
            // The build cache goes too (its layers are held from prune until then).
            let paths = crate::paths::Paths::from_env();
            crate::build::exec::prune_cache(&paths)?;
            store.release_hold("build-cache")?;
            let rep = store.prune()?;
            for i in &rep.images {
                println!("deleted: {i}");
            }
            for l in &rep.layers {
                println!("deleted layer: {l}");
            }
            println!("Total reclaimed space: {}", human_size(rep.reclaimed_bytes));
            Ok(0)
        }
        ImageSub::Ls(args) => {
            let store = open_store()?;
            print_images(&store.list()?, args);
            Ok(0)
        }
    }
}

/// Pull one image, drawing `docker pull`-style progress on stderr.
pub fn pull_one(store: &ImageStore, reference: &str) -> anyhow::Result<Image> {
    let tty = crate::ui::effective_tty(console::Term::stderr().is_term());
    let mut ui = PullUi::new(tty);
    let shown = Reference::parse(reference)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| reference.to_string());
    ui.line(&format!("Pulling {shown}"));
    let opts = pull_options();
    let r = store.pull(reference, &opts, &mut |p| ui.event(p));
    ui.finish();
    let img = r.with_context(|| format!("pulling {shown}"))?;
    ui.line(&format!("Pulled {shown} ({})", short_id(&img.id)));
    Ok(img)
}

/// Registry options from the environment: `BERTH_INSECURE_REGISTRIES=host:port,…`.
pub fn pull_options() -> PullOptions {
    PullOptions {
        insecure_registries: std::env::var("BERTH_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        ..Default::default()
    }
}

/// `berth pull [SERVICE...]`: pull the image of each (selected) service, as `docker compose
/// pull` does; services whose `pull_policy` is `build` or `never` are skipped.
pub fn pull(p: &ProjectOpts, args: &PullArgs) -> anyhow::Result<u8> {
    let store = open_store()?;
    let mut only = args.services.clone();
    if args.include_deps && !only.is_empty() {
        let opts = crate::compose::LoadOptions::from_cli(p);
        let project = crate::compose::load(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut i = 0;
        while i < only.len() {
            if let Some(s) = project.services.get(&only[i]) {
                for d in s.depends_on.keys() {
                    if !only.contains(d) {
                        only.push(d.clone());
                    }
                }
            }
            i += 1;
        }
    }
    let mut services = project_images(p, &only)?;
    if args.ignore_buildable {
        // Services with a `build:` section: their image is built, not pulled.
        let mut o = crate::compose::LoadOptions::from_cli(p);
        o.resolve_env_files = false;
        let project = crate::compose::load(&o).map_err(|e| anyhow::anyhow!("{e}"))?;
        services.retain(|(svc, _, _)| project.services.get(svc).is_none_or(|s| s.build.is_none()));
    }
    if let Some(pol) = &args.policy {
        if pol != "missing" && pol != "always" {
            anyhow::bail!("invalid --policy {pol:?}: want missing or always");
        }
    }
    let quiet = args.quiet || crate::ui::progress_quiet();
    let mut code = 0;
    let mut done: Vec<String> = Vec::new();
    for (svc, image, policy) in services {
        if matches!(policy.as_deref(), Some("build") | Some("never")) || done.contains(&image) {
            continue;
        }
        done.push(image.clone());
        if args.policy.as_deref() == Some("missing") && store.get(&image)?.is_some() {
            continue;
        }
        let r = if quiet {
            store
                .pull(&image, &pull_options(), &mut |_| {})
                .map(|_| ())
                .with_context(|| format!("pulling {image}"))
        } else {
            pull_one(&store, &image).map(|_| ())
        };
        if let Err(e) = r {
            eprintln!("{svc}: {}", crate::commands::render_error(&e));
            // compose: a failed pull fails the command unless --ignore-pull-failures.
            if !args.ignore_pull_failures {
                code = 1;
            }
        }
    }
    Ok(code)
}

/// One line per layer: on a TTY redrawn in place, otherwise a line per state change.
struct PullUi {
    tty: bool,
    order: Vec<String>,
    state: BTreeMap<String, String>,
    drawn: usize,
    last: Instant,
}

impl PullUi {
    fn new(tty: bool) -> Self {
        PullUi {
            tty,
            order: Vec::new(),
            state: BTreeMap::new(),
            drawn: 0,
            last: Instant::now(),
        }
    }
    fn line(&mut self, s: &str) {
        if crate::ui::progress_quiet() {
            return;
        }
        if crate::ui::progress_json() {
            eprintln!("{}", crate::ui::json_event("", "", s));
            return;
        }
        eprintln!("{s}");
        // The layer block is redrawn below this line from now on.
        self.drawn = 0;
    }
    fn set(&mut self, layer: &str, st: String, important: bool) {
        let id: String = layer
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        if !self.state.contains_key(&id) {
            self.order.push(id.clone());
        }
        let changed = self.state.get(&id) != Some(&st);
        self.state.insert(id.clone(), st.clone());
        if crate::ui::progress_quiet() {
            return;
        }
        if crate::ui::progress_json() {
            if important && changed {
                eprintln!("{}", crate::ui::json_event(&id, &st, &st));
            }
            return;
        }
        if self.tty {
            if important || self.last.elapsed().as_millis() >= 100 {
                self.redraw();
            }
        } else if important && changed {
            eprintln!("{id}: {st}");
        }
    }
    fn redraw(&mut self) {
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        for id in &self.order {
            let _ = writeln!(
                err,
                "\x1b[2K{id}: {}",
                self.state.get(id).map(String::as_str).unwrap_or("")
            );
        }
        self.drawn = self.order.len();
        let _ = err.flush();
    }
    fn event(&mut self, p: PullProgress) {
        match p {
            PullProgress::Resolved { digest, .. } => self.line(&format!("Digest: {digest}")),
            PullProgress::Exists { layer } => self.set(&layer, "Already exists".into(), true),
            PullProgress::Downloading {
                layer,
                current,
                total,
            } => {
                let st = if self.tty {
                    let width = 40usize;
                    let fill = (current.min(total) * width as u64)
                        .checked_div(total)
                        .unwrap_or(0) as usize;
                    format!(
                        "Downloading [{}>{}] {}/{}",
                        "=".repeat(fill.saturating_sub(1)),
                        " ".repeat(width - fill.max(1)),
                        human_size(current),
                        human_size(total)
                    )
                } else {
                    "Downloading".into()
                };
                self.set(&layer, st, false);
            }
            PullProgress::Done { layer } => self.set(&layer, "Pull complete".into(), true),
            PullProgress::Retry {
                what,
                attempt,
                error,
            } => self.line(&format!("retrying {what} (attempt {attempt}): {error}")),
        }
    }
    fn finish(&mut self) {
        if self.tty && !self.order.is_empty() {
            self.redraw();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-23T10:00:00.5Z"), Some(1_795_428_000));
        assert_eq!(
            parse_rfc3339("2026-11-23T11:00:00+01:00"),
            Some(1_795_428_000)
        );
        assert_eq!(parse_rfc3339("junk"), None);
        assert_eq!(ago(30), "Less than a minute ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
        assert_eq!(ago(3600), "An hour ago");
    }
}

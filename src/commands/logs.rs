//! `berth logs`: reads the per-container JSON-lines files directly, so it works with or without
//! a supervisor; `-f` keeps following restarted containers and replicas that appear.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::cli::{LogsArgs, ProjectOpts};
use crate::logs::{self, LogLine};
use crate::paths::Paths;
use crate::state::ProjectState;

use super::project_name;

/// Compose's palette for service prefixes, cycled per container.
const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];

pub struct Printer {
    pub color: bool,
    pub prefix: bool,
    pub timestamps: bool,
    width: usize,
    colors: HashMap<String, u8>,
}

impl Printer {
    pub fn new(color: bool, prefix: bool, timestamps: bool, names: &[String]) -> Printer {
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
        Printer {
            color,
            prefix,
            timestamps,
            width,
            colors: HashMap::new(),
        }
    }

    pub fn widen(&mut self, name: &str) {
        self.width = self.width.max(name.len());
    }

    pub fn format(&mut self, container: &str, line: &LogLine) -> String {
        let mut out = String::new();
        if self.prefix {
            let n = self.colors.len();
            let code = *self
                .colors
                .entry(container.to_string())
                .or_insert(COLORS[n % COLORS.len()]);
            let pad = format!("{container:<w$}", w = self.width);
            if self.color {
                out.push_str(&format!("\x1b[{code}m{pad}  |\x1b[0m "));
            } else {
                out.push_str(&format!("{pad}  | "));
            }
        }
        if self.timestamps {
            out.push_str(&line.t);
            out.push(' ');
        }
        out.push_str(&line.l);
        out
    }
}

pub fn run(p: &ProjectOpts, args: &LogsArgs) -> anyhow::Result<u8> {
    let paths = Paths::from_env();
    let name = project_name(p)?;
    let Some(state) = ProjectState::load(&paths, &name)? else {
        anyhow::bail!("no such project: {name}");
    };
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| logs::parse_since(s, now).ok_or_else(|| anyhow::anyhow!("invalid --since {s:?}")))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| logs::parse_since(s, now).ok_or_else(|| anyhow::anyhow!("invalid --until {s:?}")))
        .transpose()?;
    let tail = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("invalid --tail {n:?}"))?,
        ),
    };
    let selected = |svc: &str| args.services.is_empty() || args.services.iter().any(|s| s == svc);
    let containers: Vec<(String, String)> = state
        .containers
        .iter()
        .filter(|c| selected(&c.service))
        .filter(|c| args.index.is_none_or(|i| c.number == i && !c.oneoff))
        .map(|c| (c.name.clone(), c.service.clone()))
        .collect();
    let color =
        !args.no_color && console::Term::stdout().is_term() && p.ansi != crate::cli::Ansi::Never
            || p.ansi == crate::cli::Ansi::Always;
    let names: Vec<String> = containers.iter().map(|c| c.0.clone()).collect();
    let mut printer = Printer::new(color, !args.no_log_prefix, args.timestamps, &names);
    let project_dir = paths.project(&name);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();

    // Merge the containers' lines by time, as compose shows them.
    let mut all: Vec<(String, LogLine)> = Vec::new();
    for (c, _) in &containers {
        for l in logs::select(
            logs::read_all(&logs::log_path(&project_dir, c)),
            since,
            until,
            tail,
        ) {
            all.push((c.clone(), l));
        }
    }
    all.sort_by(|a, b| a.1.t.cmp(&b.1.t));
    for (c, l) in &all {
        writeln!(out, "{}", printer.format(c, l))?;
    }
    out.flush()?;
    drop(out);
    if !args.follow {
        return Ok(0);
    }
    follow(
        &paths,
        &name,
        &project_dir,
        &mut printer,
        &selected,
        until,
        args.index,
    )
}

/// Follows the log files of a project's containers from where it last read, picking up new
/// files (replicas, recreated containers) as they appear.
pub struct Tailer {
    project_dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
}

impl Tailer {
    pub fn new(project_dir: &std::path::Path) -> Tailer {
        Tailer {
            project_dir: project_dir.to_path_buf(),
            offsets: HashMap::new(),
        }
    }

    /// Skip what the files hold now (for `logs -f` after the history was printed).
    pub fn skip_existing(&mut self, state: &ProjectState) {
        for c in &state.containers {
            let p = logs::log_path(&self.project_dir, &c.name);
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            self.offsets.insert(p, len);
        }
    }

    /// Print the new lines of every selected container; returns whether anything was printed.
    pub fn pump(
        &mut self,
        state: &ProjectState,
        selected: &dyn Fn(&str) -> bool,
        printer: &mut Printer,
    ) -> anyhow::Result<bool> {
        self.pump_until(state, selected, printer, None)
    }

    pub fn pump_until(
        &mut self,
        state: &ProjectState,
        selected: &dyn Fn(&str) -> bool,
        printer: &mut Printer,
        until: Option<SystemTime>,
    ) -> anyhow::Result<bool> {
        let mut printed = false;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for c in state.containers.iter().filter(|c| selected(&c.service)) {
            let p = logs::log_path(&self.project_dir, &c.name);
            printer.widen(&c.name);
            let off = self.offsets.entry(p.clone()).or_insert(0);
            let Ok(mut f) = std::fs::File::open(&p) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // rotated
            }
            if len == *off {
                continue;
            }
            f.seek(SeekFrom::Start(*off))?;
            let mut reader = BufReader::new(f);
            let mut buf = String::new();
            loop {
                buf.clear();
                let n = reader.read_line(&mut buf)?;
                if n == 0 || !buf.ends_with('\n') {
                    break;
                }
                *off += n as u64;
                if let Ok(l) = serde_json::from_str::<LogLine>(buf.trim_end()) {
                    if until.is_some_and(|u| crate::state::parse_time(&l.t).is_some_and(|t| t > u))
                    {
                        continue;
                    }
                    writeln!(out, "{}", printer.format(&c.name, &l))?;
                    printed = true;
                }
            }
        }
        out.flush()?;
        Ok(printed)
    }
}

/// `logs -f`: follow until the project's record disappears (down) or the user interrupts.
pub fn follow(
    paths: &Paths,
    project: &str,
    project_dir: &std::path::Path,
    printer: &mut Printer,
    selected: &dyn Fn(&str) -> bool,
    until: Option<SystemTime>,
    index: Option<u32>,
) -> anyhow::Result<u8> {
    let mut tail = Tailer::new(project_dir);
    if let Some(state) = ProjectState::load(paths, project)? {
        tail.skip_existing(&state);
    }
    loop {
        let Some(mut state) = ProjectState::load(paths, project)? else {
            return Ok(0);
        };
        if let Some(i) = index {
            // --index: only that replica.
            state.containers.retain(|c| c.number == i && !c.oneoff);
        }
        if !tail.pump_until(&state, selected, printer, until)? {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

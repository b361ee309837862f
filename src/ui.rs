//! Progress display like `docker compose up`: on a terminal one line per network, volume and
//! container with its state and elapsed time, redrawn in place; plain lines otherwise.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use crate::cli::{Ansi, ProgressMode};

/// The global `--progress` and `--ansi` choice, set once by the CLI before any output.
static MODE: OnceLock<(Option<ProgressMode>, Ansi)> = OnceLock::new();

pub fn configure(progress: Option<ProgressMode>, ansi: Ansi) {
    let _ = MODE.set((progress, ansi));
}

fn mode() -> (Option<ProgressMode>, Ansi) {
    MODE.get().copied().unwrap_or((None, Ansi::Auto))
}

/// Whether `--progress`/`--ansi` ask for quiet progress.
pub fn progress_quiet() -> bool {
    mode().0 == Some(ProgressMode::Quiet)
}

/// Whether progress is drawn as JSON lines.
pub fn progress_json() -> bool {
    mode().0 == Some(ProgressMode::Json)
}

/// Apply `--progress` and `--ansi` to the caller's terminal guess: `tty` forces the redrawn
/// block, `plain` and `--ansi never` force plain lines, `--ansi always` forces escapes.
pub fn effective_tty(tty: bool) -> bool {
    match mode() {
        (Some(ProgressMode::Plain | ProgressMode::Json | ProgressMode::Quiet), _) => false,
        (_, Ansi::Never) => false,
        (Some(ProgressMode::Tty), _) | (_, Ansi::Always) => true,
        _ => tty,
    }
}

/// One compose `--progress json` line (the fields of compose's `jsonMessage`).
pub fn json_event(id: &str, status: &str, text: &str) -> String {
    let mut m = serde_json::Map::new();
    if crate::commands::dryrun::active() {
        m.insert("dry-run".into(), true.into());
    }
    if !id.is_empty() {
        m.insert("id".into(), id.into());
    }
    if !status.is_empty() {
        m.insert("status".into(), status.into());
    }
    if !text.is_empty() {
        m.insert("text".into(), text.into());
    }
    serde_json::Value::Object(m).to_string()
}

struct Row {
    kind: String,
    name: String,
    state: String,
    started: Instant,
    elapsed: f64,
}

pub struct Progress {
    tty: bool,
    title: String,
    rows: Vec<Row>,
    drawn: usize,
    quiet: bool,
}

fn done_state(s: &str) -> bool {
    matches!(
        s,
        "Created"
            | "Started"
            | "Running"
            | "Healthy"
            | "Stopped"
            | "Removed"
            | "Killed"
            | "Paused"
            | "Unpaused"
            | "Exited"
    )
}

impl Progress {
    pub fn new(title: &str, tty: bool) -> Progress {
        Progress {
            tty: effective_tty(tty),
            title: title.to_string(),
            rows: Vec::new(),
            drawn: 0,
            quiet: progress_quiet(),
        }
    }

    pub fn quiet(mut self, q: bool) -> Self {
        self.quiet = q || progress_quiet();
        self
    }

    pub fn update(&mut self, kind: &str, name: &str, state: &str) {
        if self.quiet {
            return;
        }
        let label = capitalize(kind);
        match self
            .rows
            .iter_mut()
            .find(|r| r.kind == label && r.name == name)
        {
            Some(r) => {
                r.state = state.to_string();
                r.elapsed = r.started.elapsed().as_secs_f64();
            }
            None => self.rows.push(Row {
                kind: label.clone(),
                name: name.to_string(),
                state: state.to_string(),
                started: Instant::now(),
                elapsed: 0.0,
            }),
        }
        if progress_json() {
            eprintln!("{}", json_event(&format!("{label} {name}"), state, state));
        } else if self.tty {
            self.redraw();
        } else {
            // Plain mode: compose's `--progress plain` lines.
            eprintln!(" {label} {name}  {state}");
        }
    }

    pub fn message(&mut self, text: &str) {
        if progress_json() {
            eprintln!("{}", json_event("", "", text));
        } else if self.tty && self.drawn > 0 {
            // Print above the block, then redraw it.
            self.clear();
            eprintln!("{text}");
            self.redraw();
        } else {
            eprintln!("{text}");
        }
    }

    fn clear(&mut self) {
        let mut e = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(e, "\x1b[{}A\x1b[J", self.drawn);
        }
        self.drawn = 0;
    }

    fn redraw(&mut self) {
        self.clear();
        let mut e = std::io::stderr().lock();
        let done = self.rows.iter().filter(|r| done_state(&r.state)).count();
        let _ = writeln!(e, "[+] {} {}/{}", self.title, done, self.rows.len());
        let w = self
            .rows
            .iter()
            .map(|r| r.kind.len() + 1 + r.name.len())
            .max()
            .unwrap_or(0);
        for r in &self.rows {
            let mark = if done_state(&r.state) {
                "\x1b[32m✔\x1b[0m"
            } else {
                "\x1b[34m⠿\x1b[0m"
            };
            let label = format!("{} {}", r.kind, r.name);
            let _ = writeln!(
                e,
                " {mark} {label:<w$}  {:<10} {:>5.1}s",
                r.state, r.elapsed
            );
        }
        self.drawn = self.rows.len() + 1;
    }

    /// Leave the block on screen.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

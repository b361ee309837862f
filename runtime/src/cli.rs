//! The runc-compatible command line (`berth-runtime` and `berth __runtime`).
//!
//! Global flags: `--root DIR` (default `/run/berth-runtime`), `--log FILE`, `--log-format F`,
//! `--debug`, `--systemd-cgroup` (accepted, ignored). Commands: create, start, state, kill,
//! delete, list, run, exec, ps, pause, resume, stats (`events --stats`); `serve` (a fork
//! server that runs these commands for a caller that must not fork, see serve.rs).
use std::ffi::OsString;
use std::path::PathBuf;

use crate::container::{self, CreateOpts, ExecOpts};
use crate::error::{Result, RuntimeError};

pub const DEFAULT_ROOT: &str = "/run/berth-runtime";

/// Run the CLI with `args` (without the program name); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match run_cli(&args) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("berth-runtime: {e}");
            eprintln!("{msg}");
            if let Some(f) = std::env::var_os("BERTH_RUNTIME_ERROR_FILE") {
                let _ = std::fs::write(f, format!("{e}\n"));
            }
            1
        }
    }
}

struct Args {
    v: Vec<String>,
    i: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let a = self.v.get(self.i).cloned();
        self.i += 1;
        a
    }
    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .next()
                .ok_or_else(|| RuntimeError::Usage(format!("{flag} needs a value"))),
        }
    }
}

/// Split `--flag=value`.
fn split(a: &str) -> (String, Option<String>) {
    match a.split_once('=') {
        Some((f, v)) if a.starts_with('-') => (f.to_string(), Some(v.to_string())),
        _ => (a.to_string(), None),
    }
}

fn run_cli(argv: &[String]) -> Result<i32> {
    let mut a = Args {
        v: argv.to_vec(),
        i: 0,
    };
    let mut root = PathBuf::from(DEFAULT_ROOT);
    let cmd = loop {
        let Some(x) = a.next() else {
            return Err(RuntimeError::Usage(
                "berth-runtime [--root DIR] COMMAND ...".into(),
            ));
        };
        let (f, inline) = split(&x);
        match f.as_str() {
            "--root" => root = PathBuf::from(a.value("--root", inline)?),
            "--log" | "--log-format" | "--criu" | "--rootless" => {
                a.value(&f, inline)?;
            }
            "--debug" | "--systemd-cgroup" => {}
            "--version" | "-v" | "version" => {
                println!(
                    "berth-runtime version {}\nspec: 1.0.2",
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(0);
            }
            _ if f.starts_with('-') => {
                return Err(RuntimeError::Usage(format!("unknown global flag {f}")))
            }
            _ => break x,
        }
    };
    match cmd.as_str() {
        "create" | "run" => {
            let mut o = CreateOpts {
                root,
                bundle: PathBuf::from("."),
                ..Default::default()
            };
            let mut detach = false;
            let mut id = None;
            while let Some(x) = a.next() {
                let (f, inline) = split(&x);
                match f.as_str() {
                    "--bundle" | "-b" => o.bundle = a.value(&f, inline)?.into(),
                    "--pid-file" => o.pid_file = Some(a.value(&f, inline)?.into()),
                    "--console-socket" => o.console_socket = Some(a.value(&f, inline)?.into()),
                    "--detach" | "-d" => detach = true,
                    "--no-pivot" | "--no-new-keyring" | "--keep" | "--no-subreaper" => {}
                    "--preserve-fds" => {
                        a.value(&f, inline)?;
                    }
                    _ if f.starts_with('-') => {
                        return Err(RuntimeError::Usage(format!("unknown flag {f}")))
                    }
                    _ => id = Some(x),
                }
            }
            o.id = id.ok_or_else(|| RuntimeError::Usage(format!("{cmd} [flags] ID")))?;
            if let Some(pf) = &o.pid_file {
                o.pid_file = Some(absolute(pf));
            }
            crate::selfclone::ensure_cloned()?;
            if cmd == "create" {
                container::create(&o)?;
                Ok(0)
            } else {
                container::run(&o, detach)
            }
        }
        // A fork server for `create` (see serve.rs): stdin is its control socket.
        "serve" => crate::serve::main(),
        "start" => {
            container::start(&root, &one_id(&mut a, "start")?)?;
            Ok(0)
        }
        "state" => {
            let st = container::state(&root, &one_id(&mut a, "state")?)?;
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            Ok(0)
        }
        "kill" => {
            let mut all = false;
            let mut pos = Vec::new();
            while let Some(x) = a.next() {
                match x.as_str() {
                    "--all" | "-a" => all = true,
                    _ if x.starts_with("--") => {
                        return Err(RuntimeError::Usage(format!("unknown flag {x}")))
                    }
                    _ => pos.push(x),
                }
            }
            let id = pos
                .first()
                .ok_or_else(|| RuntimeError::Usage("kill ID [SIGNAL]".into()))?;
            let sig = container::parse_signal_number(
                pos.get(1).map(String::as_str).unwrap_or("SIGTERM"),
            )?;
            container::kill_number(&root, id, sig, all)?;
            Ok(0)
        }
        "delete" => {
            let mut force = false;
            let mut id = None;
            while let Some(x) = a.next() {
                match x.as_str() {
                    "--force" | "-f" => force = true,
                    _ if x.starts_with('-') => {
                        return Err(RuntimeError::Usage(format!("unknown flag {x}")))
                    }
                    _ => id = Some(x),
                }
            }
            container::delete(
                &root,
                &id.ok_or_else(|| RuntimeError::Usage("delete [--force] ID".into()))?,
                force,
            )?;
            Ok(0)
        }
        "list" => {
            let mut json = false;
            let mut quiet = false;
            while let Some(x) = a.next() {
                let (f, inline) = split(&x);
                match f.as_str() {
                    "--format" | "-f" => json = a.value(&f, inline)? == "json",
                    "--quiet" | "-q" => quiet = true,
                    _ => return Err(RuntimeError::Usage(format!("unknown flag {f}"))),
                }
            }
            let l = container::list(&root)?;
            if json {
                println!("{}", serde_json::to_string(&l).unwrap_or_default());
            } else if quiet {
                for s in l {
                    println!("{}", s.id);
                }
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in l {
                    println!(
                        "{:<24} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created
                    );
                }
            }
            Ok(0)
        }
        "ps" => {
            let mut json = false;
            let mut id = None;
            while let Some(x) = a.next() {
                let (f, inline) = split(&x);
                match f.as_str() {
                    "--format" | "-f" => json = a.value(&f, inline)? == "json",
                    _ if f.starts_with('-') => {
                        return Err(RuntimeError::Usage(format!("unknown flag {f}")))
                    }
                    _ if id.is_none() => id = Some(x),
                    _ => {} // ps(1) options are not supported; the pid list is printed
                }
            }
            let pids = container::pids(
                &root,
                &id.ok_or_else(|| RuntimeError::Usage("ps ID".into()))?,
            )?;
            if json {
                println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
            Ok(0)
        }
        "stats" | "events" => {
            // `stats ID` and runc's `events --stats ID`: one JSON snapshot of the cgroup.
            let mut id = None;
            while let Some(x) = a.next() {
                match x.as_str() {
                    "--stats" => {}
                    _ if x.starts_with('-') => {
                        return Err(RuntimeError::Usage(format!("unknown flag {x}")))
                    }
                    _ => id = Some(x),
                }
            }
            let id = id.ok_or_else(|| RuntimeError::Usage(format!("{cmd} ID")))?;
            let s = container::stats(&root, &id)?;
            let v = serde_json::json!({"type": "stats", "id": id, "data": s});
            println!("{v}");
            Ok(0)
        }
        "pause" => {
            container::pause(&root, &one_id(&mut a, "pause")?)?;
            Ok(0)
        }
        "resume" => {
            container::resume(&root, &one_id(&mut a, "resume")?)?;
            Ok(0)
        }
        "exec" => {
            let mut o = ExecOpts {
                root,
                ..Default::default()
            };
            loop {
                let Some(x) = a.next() else {
                    return Err(RuntimeError::Usage("exec [flags] ID CMD [ARGS...]".into()));
                };
                let (f, inline) = split(&x);
                match f.as_str() {
                    "--tty" | "-t" => o.tty = true,
                    "--detach" | "-d" => o.detach = true,
                    "--cwd" => o.cwd = Some(a.value(&f, inline)?.into()),
                    "--env" | "-e" => o.env.push(a.value(&f, inline)?),
                    "--user" | "-u" => o.user = Some(a.value(&f, inline)?),
                    "--additional-gids" | "-g" => o.additional_gids.push(a.value(&f, inline)?),
                    "--pid-file" => {
                        o.pid_file = Some(absolute(&PathBuf::from(a.value(&f, inline)?)))
                    }
                    "--console-socket" => o.console_socket = Some(a.value(&f, inline)?.into()),
                    "--process" | "-p" => o.process_file = Some(a.value(&f, inline)?.into()),
                    "--cap" | "-c" => o.cap_add.push(a.value(&f, inline)?),
                    "--no-new-privs" => o.no_new_privs = true,
                    "--preserve-fds" | "--process-label" | "--apparmor" | "--cgroup" => {
                        a.value(&f, inline)?;
                    }
                    "--ignore-paused" => {}
                    "--" => {}
                    _ if f.starts_with('-') => {
                        return Err(RuntimeError::Usage(format!("unknown flag {f}")))
                    }
                    _ => {
                        o.id = x;
                        break;
                    }
                }
            }
            while let Some(x) = a.next() {
                o.args.push(x);
            }
            if o.args.first().map(|s| s == "--").unwrap_or(false) {
                o.args.remove(0);
            }
            crate::selfclone::ensure_cloned()?;
            container::exec(&o)
        }
        other => Err(RuntimeError::Usage(format!("unknown command {other:?}"))),
    }
}

fn one_id(a: &mut Args, cmd: &str) -> Result<String> {
    match a.next() {
        Some(id) if !id.starts_with('-') => Ok(id),
        _ => Err(RuntimeError::Usage(format!("{cmd} ID"))),
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

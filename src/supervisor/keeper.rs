//! The keeper: the small synchronous parent of a project's supervisor, so that no container's
//! exit status is lost when the supervisor dies.
//!
//! Container inits are children of the supervisor (a child subreaper). If it dies (SIGKILL, an
//! OOM kill, a crash), they are re-parented to the nearest subreaper above it; without one that
//! is the host's init, which reaps them and their exit codes are gone. The keeper is that
//! subreaper: `berth __supervisor` first runs as the keeper (single-threaded, no tokio), which
//! starts the real supervisor as its child and then only waits. For each orphan that exits it
//! writes the wait status to `run/projects/<p>/exits/<pid>-<start time>` before it reaps it;
//! the next supervisor (adopting the project) reads it there (`recorded_exit`). The keeper
//! exits once it has no child left, with its supervisor's exit code.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::engine::proc::{self, Exit};
use crate::paths::Paths;

/// Set in the supervisor's environment by its keeper.
const CHILD_ENV: &str = "BERTH_SUPERVISOR_CHILD";

/// Whether this process is the supervisor proper (started by a keeper).
pub fn is_supervisor() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

fn exits_dir(paths: &Paths, project: &str) -> PathBuf {
    paths.project_run(project).join("exits")
}

/// The project of a keeper's command line, `berth __supervisor --project P` (exactly what the
/// CLI starts, `client.rs`) when this process is not yet the supervisor proper; anything else
/// (`--foreground`, a malformed line) goes through the CLI parser as before.
pub fn keeper_args(args: &[std::ffi::OsString]) -> Option<&str> {
    match args {
        [_, cmd, flag, project] if cmd == "__supervisor" && flag == "--project" => {
            let p = project.to_str()?;
            (!p.is_empty() && !p.starts_with('-') && !is_supervisor()).then_some(p)
        }
        _ => None,
    }
}

/// The supervisor's glibc tunables: the caller's, plus no cache of exited threads' stacks.
/// The runtime's blocking threads come and go with bursts of work (at most 8 at once, they
/// leave 2 s after one), and glibc otherwise keeps up to 40 MiB of their stacks mapped for
/// reuse, each with the pages it touched (about 0.3 MiB at 50 containers, 19 stacks).
fn tunables(caller: Option<std::ffi::OsString>) -> std::ffi::OsString {
    const NO_STACK_CACHE: &str = "glibc.pthread.stack_cache_size=0";
    match caller {
        Some(mut t) if !t.is_empty() => {
            t.push(":");
            t.push(NO_STACK_CACHE);
            t
        }
        _ => NO_STACK_CACHE.into(),
    }
}

/// `run` as `main` calls it: an error goes to stderr (the supervisor's log) and exits 1.
pub fn main(project: &str) -> u8 {
    match run(project) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth __supervisor: {e:#}");
            1
        }
    }
}

/// Entry point of `berth __supervisor` when started by the CLI: become a subreaper, start the
/// supervisor, record and reap orphans until no child is left.
pub fn run(project: &str) -> anyhow::Result<u8> {
    proc::set_child_subreaper().context("becoming a child subreaper")?;
    let child = Command::new(crate::engine::runtime::self_exe())
        .arg("__supervisor")
        .arg("--project")
        .arg(project)
        .env(CHILD_ENV, "1")
        .env(
            "GLIBC_TUNABLES",
            tunables(std::env::var_os("GLIBC_TUNABLES")),
        )
        .spawn()
        .context("starting the supervisor")?;
    let supervisor = child.id() as i32;
    // The supervisor has the CLI's readiness pipe (`client::signal_ready`); the keeper's copy
    // goes, so the CLI reads EOF if the supervisor dies without listening.
    drop(super::client::take_ready_fd());
    // Reaped below by waitid/waitpid, not through the handle.
    drop(child);
    let paths = Paths::from_env();
    let dir = exits_dir(&paths, project);
    let mut code = 0u8;
    // From here on the keeper only waits: what start-up ran of the binary need not stay mapped
    // (an exit record maps back the few pages that write it).
    super::mem::release_text();
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // Look first (WNOWAIT), write the record, then reap: whoever watches the process
        // through a pidfd finds the record there once it is gone.
        // SAFETY: plain syscall with a valid out-pointer.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: nothing left to keep.
            break;
        }
        // SAFETY: waitid filled in a child's exit, so the sigchld fields are the valid ones.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => Exit::Signal(status),
            _ => Exit::Unknown,
        };
        if pid == supervisor {
            code = match exit {
                Exit::Code(c) => c.clamp(0, 255) as u8,
                _ => 1,
            };
        } else if let Some(start) = crate::state::pid_start_time(pid) {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(format!("{pid}-{start}")), exit.code().to_string());
        }
        let mut st = 0;
        // SAFETY: reaping the child waitid just reported.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    Ok(code)
}

/// The keeper of the supervisor `pid`: its parent, if that is a `berth __supervisor` too.
pub fn keeper_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: i32 = stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    let is_keeper = cmd.split(|b| *b == 0).any(|a| a == b"__supervisor");
    is_keeper.then_some(ppid)
}

/// Whether a keeper recorded the exit of `pid` (started at `start`), without taking it.
pub fn has_record(paths: &Paths, project: &str, pid: i32, start: Option<u64>) -> bool {
    let dir = exits_dir(paths, project);
    match start {
        Some(s) => dir.join(format!("{pid}-{s}")).exists(),
        None => std::fs::read_dir(&dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&format!("{pid}-")))
            })
        }),
    }
}

/// The exit of the container process `pid` (started at `start`) that a keeper reaped, if one
/// did. Taken once: the record is removed.
pub fn recorded_exit(paths: &Paths, project: &str, pid: i32, start: Option<u64>) -> Option<Exit> {
    let dir = exits_dir(paths, project);
    let path = match start {
        Some(s) => dir.join(format!("{pid}-{s}")),
        None => std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pid}-")))
            })?,
    };
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let code: i32 = text.trim().parse().ok()?;
    Some(exit_from_code(code))
}

/// Docker's exit code back into an `Exit`: above 128 a signal.
fn exit_from_code(code: i32) -> Exit {
    if code > 128 && code < 128 + 65 {
        Exit::Signal(code - 128)
    } else {
        Exit::Code(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeper_command_line() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        // What client.rs starts (the test process is not a supervisor child).
        assert_eq!(
            keeper_args(&a(&["berth", "__supervisor", "--project", "web"])),
            Some("web")
        );
        // Anything else goes through the CLI parser (errors, --foreground, other commands).
        for v in [
            &["berth", "__supervisor", "--project"][..],
            &["berth", "__supervisor", "--project", ""],
            &["berth", "__supervisor", "--project", "--foreground"],
            &["berth", "__supervisor", "--project", "web", "--foreground"],
            &["berth", "__supervisor", "--foreground", "web"],
            &["berth", "up", "--project", "web"],
            &["berth"],
        ] {
            assert_eq!(keeper_args(&a(v)), None, "{v:?}");
        }
    }

    #[test]
    fn tunables_keep_the_callers() {
        assert_eq!(tunables(None), "glibc.pthread.stack_cache_size=0");
        assert_eq!(
            tunables(Some("".into())),
            "glibc.pthread.stack_cache_size=0"
        );
        assert_eq!(
            tunables(Some("glibc.malloc.check=3".into())),
            "glibc.malloc.check=3:glibc.pthread.stack_cache_size=0"
        );
    }

    #[test]
    fn codes_round_trip() {
        for e in [
            Exit::Code(0),
            Exit::Code(7),
            Exit::Signal(9),
            Exit::Signal(15),
        ] {
            assert_eq!(exit_from_code(e.code()), e);
        }
    }
}

//! CLI side: is the project's supervisor there, and if it died, bring it back.
//!
//! The rule (README, "When the supervisor dies"): a command that reads a project (`ps`, `ls`,
//! `logs`, `top`, `events`) and finds its supervisor gone while the project was up (some
//! container was running when it died, and was not stopped by the user) starts a new one,
//! unless `BERTH_NO_RESPAWN=1`. The new one adopts what still runs (`adopt.rs`) and applies
//! the restart policy to what exited meanwhile, with the exit code its keeper recorded
//! (`keeper.rs`). Never revived: a stopped project (`stop` records it), a project taken down
//! (`down` leaves no record), and containers whose processes vanished without a trace (the
//! host rebooted, or the keeper was killed too): then the command warns and `up` brings the
//! project back. Commands that change the project start a supervisor anyway
//! (`Client::connect_or_start`).

use crate::paths::Paths;
use crate::state::{pid_matches, ContainerRecord, ProjectState, Status};

use super::client::Client;
use super::keeper;
use super::proto::Request;

/// Set to 1: never start a supervisor from a read command, only warn.
pub const NO_RESPAWN_ENV: &str = "BERTH_NO_RESPAWN";
/// Set by the CLI in a respawned supervisor's environment: which command started it.
pub const RESPAWNED_BY_ENV: &str = "BERTH_RESPAWNED_BY";

/// What became of a container that was running when the supervisor died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its process still runs.
    Running,
    /// It exited, and its keeper recorded the exit.
    Exited,
    /// Its process is gone without a record (host reboot, keeper killed too).
    Vanished,
}

/// What a read command does about the project's supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs, or nothing of the project needs one.
    Nothing,
    /// Start one: these containers run or exited unsupervised.
    Respawn {
        running: Vec<String>,
        exited: Vec<String>,
    },
    /// Only say so: respawn is off, or nothing can be accounted for.
    Warn {
        running: Vec<String>,
        exited: Vec<String>,
        vanished: Vec<String>,
    },
}

/// Whether the record says the container was running (not stopped by the user).
fn meant_to_run(c: &ContainerRecord) -> bool {
    matches!(
        c.status,
        Status::Running | Status::Paused | Status::Restarting
    ) && !c.stopped_by_user
}

/// The decision, from the record, whether a supervisor answers, what became of each
/// container (`fate`), and `BERTH_NO_RESPAWN`.
pub fn decide(
    state: &ProjectState,
    supervisor_alive: bool,
    fate: &dyn Fn(&ContainerRecord) -> Fate,
    no_respawn: bool,
) -> Decision {
    if supervisor_alive {
        return Decision::Nothing;
    }
    let (mut running, mut exited, mut vanished) = (Vec::new(), Vec::new(), Vec::new());
    for c in state.containers.iter().filter(|c| meant_to_run(c)) {
        match fate(c) {
            Fate::Running => running.push(c.name.clone()),
            Fate::Exited => exited.push(c.name.clone()),
            Fate::Vanished => vanished.push(c.name.clone()),
        }
    }
    if running.is_empty() && exited.is_empty() {
        if vanished.is_empty() {
            return Decision::Nothing;
        }
    } else if !no_respawn {
        return Decision::Respawn { running, exited };
    }
    Decision::Warn {
        running,
        exited,
        vanished,
    }
}

/// The project's supervisor as a read command reports it (`ps`/`ls --format json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    Running,
    /// Gone; this command started a new one.
    Respawned,
    /// Not running (gone, or not needed).
    NotRunning,
}

impl Supervision {
    pub fn as_str(self) -> &'static str {
        match self {
            Supervision::Running => "running",
            Supervision::Respawned => "respawned",
            Supervision::NotRunning => "not running",
        }
    }
}

/// Look at `project`'s supervisor for the read command `by`: respawn it or warn on stderr
/// per `decide`. Returns what the command should report.
pub fn check(paths: &Paths, project: &str, by: &str) -> Supervision {
    let Ok(Some(state)) = ProjectState::load(paths, project) else {
        return Supervision::NotRunning;
    };
    let up = Client::connect(paths, project).is_some();
    let no_respawn = std::env::var(NO_RESPAWN_ENV).is_ok_and(|v| v == "1");
    let fate = |c: &ContainerRecord| match c.pid {
        Some(p) if pid_matches(p, c.pid_start) => Fate::Running,
        Some(p) if keeper::has_record(paths, project, p, c.pid_start) => Fate::Exited,
        // Waiting for its restart delay when the supervisor died: its exit is recorded.
        None if c.status == Status::Restarting => Fate::Exited,
        _ => Fate::Vanished,
    };
    let fix = format!("run `berth -p {project} up -d`");
    match decide(&state, up, &fate, no_respawn) {
        Decision::Nothing if up => Supervision::Running,
        Decision::Nothing => Supervision::NotRunning,
        Decision::Respawn { running, exited } => match respawn(paths, project, by) {
            Ok(()) => {
                eprintln!(
                    "berth: the supervisor of project {project} was not running; started a new one, which adopted {} running container(s) and applies the restart policies again{}",
                    running.len(),
                    if exited.is_empty() {
                        String::new()
                    } else {
                        format!(" (exited meanwhile: {})", exited.join(", "))
                    }
                );
                Supervision::Respawned
            }
            Err(e) => {
                eprintln!(
                    "warning: the supervisor of project {project} is not running and could not be started again ({e:#}): restart policies, healthchecks and rolling updates are not enforced; {fix}"
                );
                Supervision::NotRunning
            }
        },
        Decision::Warn {
            running,
            exited,
            vanished,
        } => {
            if !running.is_empty() {
                eprintln!(
                    "warning: the supervisor of project {project} is not running: restart policies, healthchecks and rolling updates are not enforced for {} ({NO_RESPAWN_ENV}=1 keeps it from starting again); {fix}",
                    running.join(", ")
                );
            }
            if !exited.is_empty() {
                eprintln!(
                    "warning: the supervisor of project {project} is not running and {} exited meanwhile: nothing applied their restart policy; {fix}",
                    exited.join(", ")
                );
            }
            if !vanished.is_empty() {
                eprintln!(
                    "warning: the supervisor of project {project} is not running and the processes of {} are gone without a trace (host reboot?): the project is not revived by itself; {fix}",
                    vanished.join(", ")
                );
            }
            Supervision::NotRunning
        }
    }
}

/// Start a supervisor for `project` and wait until it has adopted the containers (it answers
/// requests only after adopting).
fn respawn(paths: &Paths, project: &str, by: &str) -> anyhow::Result<()> {
    let client = Client::start(paths, project, Some(by))?;
    let (ok, error, _) = client.call(&Request::Ping, &mut |_| {})?;
    if !ok {
        anyhow::bail!("{}", error.unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, status: Status, user_stop: bool) -> ContainerRecord {
        ContainerRecord {
            status,
            pid: Some(1),
            stopped_by_user: user_stop,
            ..ContainerRecord::sample(name, name)
        }
    }

    #[test]
    fn respawn_rule() {
        use Fate::{Exited as Gone, Running as Runs, Vanished as Lost};
        use Status::*;
        let s = |v: Vec<ContainerRecord>| ProjectState {
            name: "p".into(),
            containers: v,
            ..Default::default()
        };
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let respawn = |r: &[&str], e: &[&str]| Decision::Respawn {
            running: n(r),
            exited: n(e),
        };
        let warn = |r: &[&str], e: &[&str], v: &[&str]| Decision::Warn {
            running: n(r),
            exited: n(e),
            vanished: n(v),
        };
        let up = |name: &str| rec(name, Running, false);
        // (case, containers, fate of each by name, supervisor up, no_respawn, decision)
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, ProjectState, &[(&str, Fate)], bool, bool, Decision)> = vec![
            (
                "supervisor up",
                s(vec![up("a")]),
                &[("a", Runs)],
                true,
                false,
                Decision::Nothing,
            ),
            (
                "dead, both run",
                s(vec![up("a"), up("b")]),
                &[("a", Runs), ("b", Runs)],
                false,
                false,
                respawn(&["a", "b"], &[]),
            ),
            (
                "dead, one ran, one exited",
                s(vec![up("a"), up("b")]),
                &[("a", Runs), ("b", Gone)],
                false,
                false,
                respawn(&["a"], &["b"]),
            ),
            (
                "dead, all exited, recorded",
                s(vec![up("a"), up("b")]),
                &[("a", Gone), ("b", Gone)],
                false,
                false,
                respawn(&[], &["a", "b"]),
            ),
            (
                "no respawn: warn",
                s(vec![up("a"), up("b")]),
                &[("a", Runs), ("b", Gone)],
                false,
                true,
                warn(&["a"], &["b"], &[]),
            ),
            (
                "paused counts as running",
                s(vec![rec("a", Paused, false)]),
                &[("a", Runs)],
                false,
                false,
                respawn(&["a"], &[]),
            ),
            (
                "restart pending counts",
                s(vec![rec("a", Restarting, false)]),
                &[("a", Gone)],
                false,
                false,
                respawn(&[], &["a"]),
            ),
            (
                "stopped project: never revived",
                s(vec![rec("a", Exited, true), rec("b", Exited, true)]),
                &[],
                false,
                false,
                Decision::Nothing,
            ),
            (
                "exited while supervised: policy already applied",
                s(vec![rec("a", Exited, false)]),
                &[("a", Gone)],
                false,
                false,
                Decision::Nothing,
            ),
            (
                "vanished (reboot): warn only",
                s(vec![up("a"), up("b")]),
                &[("a", Lost), ("b", Lost)],
                false,
                false,
                warn(&[], &[], &["a", "b"]),
            ),
            (
                "one vanished, one runs: respawn",
                s(vec![up("a"), up("b")]),
                &[("a", Runs), ("b", Lost)],
                false,
                false,
                respawn(&["a"], &[]),
            ),
            (
                "being stopped by the user",
                s(vec![rec("a", Running, true)]),
                &[("a", Runs)],
                false,
                false,
                Decision::Nothing,
            ),
            (
                "no containers (down)",
                s(vec![]),
                &[],
                false,
                false,
                Decision::Nothing,
            ),
        ];
        for (case, st, fates, sup_up, no, want) in rows {
            let fate = |c: &ContainerRecord| {
                fates
                    .iter()
                    .find(|(name, _)| *name == c.name)
                    .map(|(_, f)| *f)
                    .unwrap_or(Lost)
            };
            assert_eq!(decide(&st, sup_up, &fate, no), want, "{case}");
        }
    }
}

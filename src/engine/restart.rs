//! Restart policies with Docker's timing (moby `restartmanager`): a delay that starts at 100 ms,
//! doubles on each restart up to 1 minute, and resets once a run lasted at least 10 s.
//! `deploy.restart_policy` (Swarm's form) uses its own fixed `delay`, `max_attempts` and `window`.

use std::time::Duration;

pub const BACKOFF_START: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub condition: Condition,
    /// Give up after this many restarts (on-failure:N, max_attempts).
    pub max_attempts: Option<u32>,
    /// A fixed delay (deploy.restart_policy.delay); None = Docker's doubling backoff.
    pub delay: Option<Duration>,
    /// Swarm's window: attempts are counted only within it.
    pub window: Option<Duration>,
    /// Replace unhealthy replicas (Swarm semantics; only with deploy.restart_policy).
    pub replace_unhealthy: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            condition: Condition::No,
            max_attempts: None,
            delay: None,
            window: None,
            replace_unhealthy: false,
        }
    }
}

impl Policy {
    /// `restart:` as compose writes it: no, always, unless-stopped, on-failure[:N].
    pub fn parse_restart(s: &str) -> Result<Policy, String> {
        let s = s.trim();
        let (name, n) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let condition = match name {
            "" | "no" => Condition::No,
            "always" => Condition::Always,
            "unless-stopped" => Condition::UnlessStopped,
            "on-failure" => Condition::OnFailure,
            other => return Err(format!("invalid restart policy {other:?}")),
        };
        let max_attempts = match n {
            Some(n) if condition == Condition::OnFailure => Some(
                n.parse::<u32>()
                    .map_err(|_| format!("invalid restart count {n:?}"))?,
            ),
            Some(_) => return Err(format!("restart policy {name:?} takes no count")),
            None => None,
        };
        Ok(Policy {
            condition,
            max_attempts,
            ..Policy::default()
        })
    }

    /// `deploy.restart_policy` (condition: none|on-failure|any; default any).
    pub fn from_deploy(
        condition: Option<&str>,
        delay: Option<Duration>,
        max_attempts: Option<u64>,
        window: Option<Duration>,
    ) -> Policy {
        let condition = match condition.unwrap_or("any") {
            "none" => Condition::No,
            "on-failure" => Condition::OnFailure,
            _ => Condition::Always,
        };
        Policy {
            condition,
            max_attempts: max_attempts.filter(|n| *n > 0).map(|n| n as u32),
            delay,
            window,
            replace_unhealthy: true,
        }
    }
}

/// Per-container restart bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    next: Option<Duration>,
    /// Restarts counted against `max_attempts`.
    pub attempts: u32,
    /// Start times of counted attempts (for Swarm's window).
    window_starts: Vec<std::time::Instant>,
}

impl Backoff {
    /// Decide what to do after an exit. `ran_for` is how long the run lasted; `stopped_by_user`
    /// is true for `stop`/`down`/`kill` from berth. Returns the delay before the restart, or None.
    pub fn on_exit(
        &mut self,
        policy: &Policy,
        exit_code: i32,
        ran_for: Duration,
        stopped_by_user: bool,
        now: std::time::Instant,
    ) -> Option<Duration> {
        if stopped_by_user {
            return None;
        }
        let restart = match policy.condition {
            Condition::No => false,
            Condition::Always | Condition::UnlessStopped => true,
            Condition::OnFailure => exit_code != 0,
        };
        if !restart {
            return None;
        }
        if ran_for >= BACKOFF_RESET_AFTER {
            // A run that lasted long enough resets Docker's doubling delay (not the failure count
            // of on-failure:N, which Docker keeps until the container is restarted by hand).
            self.next = None;
        }
        if let Some(w) = policy.window {
            self.window_starts.retain(|t| now.duration_since(*t) < w);
            self.attempts = self.window_starts.len() as u32;
        }
        if let Some(max) = policy.max_attempts {
            if self.attempts >= max {
                return None;
            }
        }
        self.attempts += 1;
        self.window_starts.push(now);
        if let Some(d) = policy.delay {
            return Some(d);
        }
        let delay = self.next.unwrap_or(BACKOFF_START);
        self.next = Some((delay * 2).min(BACKOFF_MAX));
        Some(delay)
    }

    /// A manual restart (or a config change) forgets the history.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_compose_restart_values() {
        assert_eq!(
            Policy::parse_restart("no").unwrap().condition,
            Condition::No
        );
        assert_eq!(
            Policy::parse_restart("always").unwrap().condition,
            Condition::Always
        );
        assert_eq!(
            Policy::parse_restart("unless-stopped").unwrap().condition,
            Condition::UnlessStopped
        );
        let p = Policy::parse_restart("on-failure:3").unwrap();
        assert_eq!(
            (p.condition, p.max_attempts),
            (Condition::OnFailure, Some(3))
        );
        assert!(Policy::parse_restart("sometimes").is_err());
        assert!(Policy::parse_restart("always:3").is_err());
        assert!(Policy::parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn docker_backoff_doubles_caps_and_resets() {
        let p = Policy::parse_restart("always").unwrap();
        let mut b = Backoff::default();
        let now = Instant::now();
        let delays: Vec<_> = (0..12)
            .map(|_| b.on_exit(&p, 1, ms(5), false, now).unwrap())
            .collect();
        assert_eq!(
            &delays[..5],
            &[ms(100), ms(200), ms(400), ms(800), ms(1600)]
        );
        assert_eq!(delays[10], BACKOFF_MAX);
        assert_eq!(delays[11], BACKOFF_MAX);
        // a run of 10 s or more resets the delay
        assert_eq!(
            b.on_exit(&p, 1, Duration::from_secs(10), false, now),
            Some(ms(100))
        );
        assert_eq!(b.on_exit(&p, 1, ms(1), false, now), Some(ms(200)));
    }

    #[test]
    fn on_failure_counts_and_ignores_success() {
        let p = Policy::parse_restart("on-failure:2").unwrap();
        let mut b = Backoff::default();
        let now = Instant::now();
        assert_eq!(
            b.on_exit(&p, 0, ms(1), false, now),
            None,
            "exit 0 is not a failure"
        );
        assert!(b.on_exit(&p, 1, ms(1), false, now).is_some());
        assert!(b.on_exit(&p, 1, ms(1), false, now).is_some());
        assert_eq!(
            b.on_exit(&p, 1, ms(1), false, now),
            None,
            "two restarts, then give up"
        );
    }

    #[test]
    fn user_stop_and_no_never_restart() {
        let mut b = Backoff::default();
        let now = Instant::now();
        assert_eq!(
            b.on_exit(
                &Policy::parse_restart("always").unwrap(),
                1,
                ms(1),
                true,
                now
            ),
            None
        );
        assert_eq!(
            b.on_exit(&Policy::parse_restart("no").unwrap(), 1, ms(1), false, now),
            None
        );
    }

    #[test]
    fn deploy_policy_uses_fixed_delay_and_window() {
        let p = Policy::from_deploy(
            Some("on-failure"),
            Some(ms(500)),
            Some(2),
            Some(Duration::from_secs(60)),
        );
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(b.on_exit(&p, 1, ms(1), false, t0), Some(ms(500)));
        assert_eq!(b.on_exit(&p, 1, ms(1), false, t0), Some(ms(500)));
        assert_eq!(b.on_exit(&p, 1, ms(1), false, t0), None);
        // outside the window the old attempts no longer count
        assert_eq!(
            b.on_exit(&p, 1, ms(1), false, t0 + Duration::from_secs(61)),
            Some(ms(500))
        );
        assert!(p.replace_unhealthy);
        assert_eq!(
            Policy::from_deploy(None, None, None, None).condition,
            Condition::Always
        );
    }

    /// The restart decision across the `restart:` / `deploy.restart_policy` matrix: each row a
    /// policy and a sequence of exits (code, how long the run lasted, stopped by the user,
    /// seconds since the first exit), and the decision after each (a delay in ms, or no
    /// restart).
    #[test]
    fn restart_matrix() {
        let r = |s: &str| Policy::parse_restart(s).unwrap();
        let d = |c: &str, delay: Option<u64>, max: Option<u64>, window: Option<u64>| {
            Policy::from_deploy(Some(c), delay.map(ms), max, window.map(Duration::from_secs))
        };
        const S: u64 = 1000; // a run of 1 s
        const L: u64 = 10_000; // a run long enough to reset the backoff
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, Policy, Vec<(i32, u64, bool, u64)>, Vec<Option<u64>>)> = vec![
            (
                "no: never",
                r("no"),
                vec![(1, S, false, 0), (0, S, false, 1)],
                vec![None, None],
            ),
            (
                "always: exit 0 too",
                r("always"),
                vec![(0, S, false, 0), (0, S, false, 0)],
                vec![Some(100), Some(200)],
            ),
            (
                "always: user stop wins",
                r("always"),
                vec![(137, S, true, 0)],
                vec![None],
            ),
            (
                "unless-stopped: like always",
                r("unless-stopped"),
                vec![(1, S, false, 0), (2, S, false, 0)],
                vec![Some(100), Some(200)],
            ),
            (
                "unless-stopped: user stop",
                r("unless-stopped"),
                vec![(143, S, true, 0)],
                vec![None],
            ),
            (
                "on-failure: 0 is success",
                r("on-failure"),
                vec![(0, S, false, 0), (3, S, false, 0)],
                vec![None, Some(100)],
            ),
            (
                "on-failure:2 gives up",
                r("on-failure:2"),
                vec![(1, S, false, 0), (1, S, false, 0), (1, S, false, 0)],
                vec![Some(100), Some(200), None],
            ),
            (
                "on-failure:1 count survives a long run",
                r("on-failure:1"),
                vec![(1, L, false, 0), (1, L, false, 60)],
                vec![Some(100), None],
            ),
            (
                "long run resets the doubling",
                r("always"),
                vec![(1, S, false, 0), (1, S, false, 0), (1, L, false, 0)],
                vec![Some(100), Some(200), Some(100)],
            ),
            (
                "deploy any: fixed delay",
                d("any", Some(700), None, None),
                vec![(0, S, false, 0), (1, S, false, 0)],
                vec![Some(700), Some(700)],
            ),
            (
                "deploy none",
                d("none", Some(700), None, None),
                vec![(1, S, false, 0)],
                vec![None],
            ),
            (
                "deploy on-failure: success stays",
                d("on-failure", None, None, None),
                vec![(0, S, false, 0)],
                vec![None],
            ),
            (
                "deploy max_attempts 2",
                d("any", Some(10), Some(2), None),
                vec![(1, S, false, 0), (1, S, false, 1), (1, S, false, 2)],
                vec![Some(10), Some(10), None],
            ),
            (
                "deploy max_attempts 0 = unlimited",
                d("any", Some(10), Some(0), None),
                vec![(1, S, false, 0); 5],
                vec![Some(10); 5],
            ),
            // Window 30 s, 1 attempt: the second exit inside the window is refused, the third
            // after the window expired is allowed again.
            (
                "window expiry",
                d("any", Some(10), Some(1), Some(30)),
                vec![(1, S, false, 0), (1, S, false, 29), (1, S, false, 31)],
                vec![Some(10), None, Some(10)],
            ),
            (
                "window: attempts age out one by one",
                d("on-failure", Some(5), Some(2), Some(10)),
                vec![
                    (1, S, false, 0),
                    (1, S, false, 5),
                    (1, S, false, 9),
                    (1, S, false, 11),
                ],
                vec![Some(5), Some(5), None, Some(5)],
            ),
        ];
        let t0 = Instant::now();
        for (case, policy, exits, want) in rows {
            let mut b = Backoff::default();
            let got: Vec<Option<u64>> = exits
                .iter()
                .map(|&(code, ran, user, at)| {
                    b.on_exit(&policy, code, ms(ran), user, t0 + Duration::from_secs(at))
                        .map(|d| d.as_millis() as u64)
                })
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }
}

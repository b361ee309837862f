//! Rollout decisions as data (Swarm's `update_config` / `rollback_config` on one host): how a
//! service's outdated replicas are replaced, in which batches and with which delays, when a
//! new replica counts as ready, and what a rollout does once too many new replicas failed.
//! Pure functions over plain state, unit-tested here; `supervisor/rollout.rs` and
//! `supervisor/service.rs` carry them out.

use std::time::Duration;

use crate::engine::plan::{HealthPlan, UpdatePlan};
use crate::state::Status;

/// How a service's outdated replicas are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Compose's recreate: each outdated replica is removed, then made again, one after the
    /// other, with no health gate.
    InPlace,
    /// A rolling update: batches, each new replica gated on health (or `monitor`).
    Rolling,
}

/// Several replicas, or an explicit start-first order (even with one replica): roll. One
/// replica with the default order, or `--no-start`: compose's stop-first recreate.
pub fn replace_strategy(update: &UpdatePlan, replicas: usize, no_start: bool) -> Replace {
    if !no_start && (update.order_start_first || replicas > 1) {
        Replace::Rolling
    } else {
        Replace::InPlace
    }
}

/// Which replicas go when a service scales down from `existing` to `desired`: outdated ones
/// (config hash differs from `current_hash`) before current ones, highest numbers first.
/// `existing` is (name, number, config hash).
pub fn scale_down(
    existing: &[(String, u32, String)],
    desired: usize,
    current_hash: &str,
) -> Vec<String> {
    let mut order: Vec<&(String, u32, String)> = existing.iter().collect();
    order.sort_by_key(|(_, number, hash)| (hash == current_hash, std::cmp::Reverse(*number)));
    order
        .into_iter()
        .take(existing.len().saturating_sub(desired))
        .map(|(name, _, _)| name.clone())
        .collect()
}

/// One batch of a rolling update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Indices into the list of outdated replicas.
    pub replicas: std::ops::Range<usize>,
    /// Wait this long before the batch (`delay`; nothing before the first one).
    pub delay: Duration,
    /// stop-first: the batch's old replicas leave before its new ones start. start-first: the
    /// old ones leave once their successors are ready.
    pub stop_first: bool,
}

/// What a rollout does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next batch (or finish).
    Go,
    /// Stop here, leave what runs (failure_action: pause, the default).
    Pause,
    /// Put the replicas switched so far back on the previous configuration.
    Rollback,
}

/// A rolling update's progress: hands out batches, counts failed replicas, and decides after
/// each batch. The failure ratio is looked at once a batch is complete (a batch is never cut in
/// half): `failures / total > max_failure_ratio` with at least one failure.
#[derive(Debug, Clone)]
pub struct Rollout {
    batch: usize,
    total: usize,
    next: usize,
    delay: Duration,
    stop_first: bool,
    max_failure_ratio: f64,
    failure_action: String,
    failures: usize,
}

impl Rollout {
    /// A rollout of `total` outdated replicas; `parallelism: 0` means all at once.
    pub fn new(update: &UpdatePlan, total: usize) -> Rollout {
        let batch = if update.parallelism == 0 {
            total
        } else {
            update.parallelism as usize
        };
        Rollout {
            batch,
            total,
            next: 0,
            delay: update.delay,
            stop_first: !update.order_start_first,
            max_failure_ratio: update.max_failure_ratio,
            failure_action: update.failure_action.clone(),
            failures: 0,
        }
    }

    /// Replicas per batch (`parallelism`, or all of them for 0).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The next batch, or None when every replica had its turn.
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let start = self.next;
        let end = (start + self.batch.max(1)).min(self.total);
        self.next = end;
        Some(Batch {
            replicas: start..end,
            delay: if start == 0 {
                Duration::ZERO
            } else {
                self.delay
            },
            stop_first: self.stop_first,
        })
    }

    /// A new replica did not become ready.
    pub fn failed(&mut self) {
        self.failures += 1;
    }

    pub fn failures(&self) -> usize {
        self.failures
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// After a batch: go on, pause, or roll back.
    pub fn verdict(&self) -> Verdict {
        if self.failures == 0 || self.total == 0 {
            return Verdict::Go;
        }
        if self.failures as f64 / self.total as f64 <= self.max_failure_ratio {
            return Verdict::Go;
        }
        match self.failure_action.as_str() {
            "continue" => Verdict::Go,
            "rollback" => Verdict::Rollback,
            _ => Verdict::Pause,
        }
    }
}

/// The wait before putting back the `i`th replica of a rollback (`rollback_config.delay`,
/// nothing before the first). Rollbacks go one replica at a time, start-first.
pub fn rollback_delay(rollback: &UpdatePlan, i: usize) -> Duration {
    if i == 0 {
        Duration::ZERO
    } else {
        rollback.delay
    }
}

/// How long a new replica has to become ready: with a healthcheck, its start period and
/// `retries + 1` probes (interval + timeout each) and 2 s of slack; without, `monitor` (it
/// must still run then). At most 5 minutes.
pub fn ready_limit(health: Option<&HealthPlan>, monitor: Duration) -> Duration {
    let limit = match health {
        Some(h) => {
            h.start_period + (h.interval + h.timeout) * (h.retries + 1) + Duration::from_secs(2)
        }
        None => monitor,
    };
    limit.min(Duration::from_secs(300))
}

/// Whether a new replica counts as up yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Waiting,
    Ready,
    Failed,
}

/// A new replica's readiness from what is seen of it: its status, its health (None without
/// a healthcheck), and whether `ready_limit` has passed. With a healthcheck it is ready once
/// healthy; without, once it still runs at the deadline. Exiting or turning unhealthy fails
/// it at once, and so does a healthcheck that never passed by the deadline.
pub fn readiness(
    has_healthcheck: bool,
    status: Status,
    health: Option<&str>,
    deadline_passed: bool,
) -> Readiness {
    if status == Status::Exited || health == Some("unhealthy") {
        return Readiness::Failed;
    }
    if has_healthcheck && health == Some("healthy") {
        return Readiness::Ready;
    }
    if deadline_passed {
        return if !has_healthcheck && status == Status::Running {
            Readiness::Ready
        } else {
            Readiness::Failed
        };
    }
    Readiness::Waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn update(
        parallelism: u64,
        start_first: bool,
        action: &str,
        ratio: f64,
        delay_ms: u64,
    ) -> UpdatePlan {
        UpdatePlan {
            parallelism,
            delay: ms(delay_ms),
            order_start_first: start_first,
            failure_action: action.into(),
            monitor: Duration::from_secs(5),
            max_failure_ratio: ratio,
        }
    }

    /// Drive a rollout the way the supervisor does: batch by batch, each replica's outcome
    /// from `ok`, the verdict after each batch. Returns the batches run (their sizes and
    /// delays) and the verdict that ended it.
    fn drive(u: &UpdatePlan, ok: &[bool]) -> (Vec<(usize, u64)>, Verdict, bool) {
        let mut r = Rollout::new(u, ok.len());
        let mut ran = Vec::new();
        let mut stop_first = None;
        while let Some(b) = r.next_batch() {
            stop_first.get_or_insert(b.stop_first);
            ran.push((b.replicas.len(), b.delay.as_millis() as u64));
            for i in b.replicas {
                if !ok[i] {
                    r.failed();
                }
            }
            let v = r.verdict();
            if v != Verdict::Go {
                return (ran, v, stop_first.unwrap());
            }
        }
        (ran, Verdict::Go, stop_first.unwrap_or(!u.order_start_first))
    }

    #[test]
    fn rollout_matrix() {
        use Verdict::*;
        const T: bool = true;
        const F: bool = false;
        // (case, update_config, outcomes per replica, batches run as (size, delay ms), verdict, stop_first)
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            &str,
            UpdatePlan,
            Vec<bool>,
            Vec<(usize, u64)>,
            Verdict,
            bool,
        )> = vec![
            (
                "default: one at a time, stop-first",
                update(1, F, "pause", 0.0, 0),
                vec![T, T, T],
                vec![(1, 0), (1, 0), (1, 0)],
                Go,
                true,
            ),
            (
                "parallelism 2 of 5: 2, 2, 1",
                update(2, F, "pause", 0.0, 0),
                vec![T; 5],
                vec![(2, 0), (2, 0), (1, 0)],
                Go,
                true,
            ),
            (
                "parallelism 0: all at once",
                update(0, F, "pause", 0.0, 0),
                vec![T; 4],
                vec![(4, 0)],
                Go,
                true,
            ),
            (
                "parallelism above the count: one batch",
                update(9, T, "pause", 0.0, 0),
                vec![T; 3],
                vec![(3, 0)],
                Go,
                false,
            ),
            (
                "start-first with 1 replica",
                update(1, T, "pause", 0.0, 0),
                vec![T],
                vec![(1, 0)],
                Go,
                false,
            ),
            (
                "delay between batches, not before the first",
                update(1, F, "pause", 0.0, 250),
                vec![T; 3],
                vec![(1, 0), (1, 250), (1, 250)],
                Go,
                true,
            ),
            (
                "pause at the first failure",
                update(1, F, "pause", 0.0, 0),
                vec![T, F, T],
                vec![(1, 0), (1, 0)],
                Pause,
                true,
            ),
            (
                "unknown action pauses",
                update(1, F, "explode", 0.0, 0),
                vec![F, T],
                vec![(1, 0)],
                Pause,
                true,
            ),
            (
                "continue never stops",
                update(1, F, "continue", 0.0, 0),
                vec![F, F, F],
                vec![(1, 0), (1, 0), (1, 0)],
                Go,
                true,
            ),
            (
                "rollback at the first failure",
                update(1, T, "rollback", 0.0, 0),
                vec![T, T, F, T],
                vec![(1, 0), (1, 0), (1, 0)],
                Rollback,
                false,
            ),
            (
                "ratio tolerates one failure of four",
                update(1, F, "pause", 0.25, 0),
                vec![F, T, T, T],
                vec![(1, 0), (1, 0), (1, 0), (1, 0)],
                Go,
                true,
            ),
            (
                "ratio exceeded by the second failure",
                update(1, F, "rollback", 0.25, 0),
                vec![F, T, F, T],
                vec![(1, 0), (1, 0), (1, 0)],
                Rollback,
                true,
            ),
            // Ratio reached by the batch's first replica: the batch still completes, then the
            // rollout stops before the next one.
            (
                "ratio reached mid-batch",
                update(3, F, "pause", 0.1, 0),
                vec![F, T, T, T, T, T],
                vec![(3, 0)],
                Pause,
                true,
            ),
            (
                "all of a parallelism-0 batch fail",
                update(0, T, "rollback", 0.5, 0),
                vec![F, F, T],
                vec![(3, 0)],
                Rollback,
                false,
            ),
            (
                "ratio exactly reached is tolerated",
                update(2, F, "pause", 0.5, 0),
                vec![F, T, F, T],
                vec![(2, 0), (2, 0)],
                Go,
                true,
            ),
            (
                "ratio 1.0 never stops",
                update(1, F, "pause", 1.0, 0),
                vec![F, F],
                vec![(1, 0), (1, 0)],
                Go,
                true,
            ),
        ];
        for (case, u, ok, batches, verdict, stop_first) in rows {
            assert_eq!(drive(&u, &ok), (batches, verdict, stop_first), "{case}");
        }
    }

    #[test]
    fn no_replicas_no_batches() {
        let mut r = Rollout::new(&update(0, false, "pause", 0.0, 0), 0);
        assert_eq!(r.next_batch(), None);
        assert_eq!(r.verdict(), Verdict::Go);
    }

    #[test]
    fn replace_strategy_matrix() {
        // (start-first, replicas, no_start, expected)
        let rows = [
            (false, 1, false, Replace::InPlace),
            (true, 1, false, Replace::Rolling),
            (false, 2, false, Replace::Rolling),
            (true, 3, false, Replace::Rolling),
            (true, 3, true, Replace::InPlace),
            (false, 2, true, Replace::InPlace),
        ];
        for (start_first, n, no_start, want) in rows {
            let u = update(1, start_first, "pause", 0.0, 0);
            assert_eq!(
                replace_strategy(&u, n, no_start),
                want,
                "start_first={start_first} replicas={n} no_start={no_start}"
            );
        }
    }

    #[test]
    fn scale_down_takes_outdated_then_highest() {
        let e = |n: &str, num: u32, h: &str| (n.to_string(), num, h.to_string());
        let existing = vec![
            e("a-1", 1, "new"),
            e("a-2", 2, "old"),
            e("a-3", 3, "new"),
            e("a-4", 4, "new"),
        ];
        // (desired, removed)
        let rows: [(usize, &[&str]); 4] = [
            (4, &[]),
            (3, &["a-2"]),
            (2, &["a-2", "a-4"]),
            (0, &["a-2", "a-4", "a-3", "a-1"]),
        ];
        for (desired, want) in rows {
            assert_eq!(
                scale_down(&existing, desired, "new"),
                want,
                "desired {desired}"
            );
        }
        assert!(scale_down(&existing, 9, "new").is_empty());
    }

    #[test]
    fn rollback_delays() {
        let u = update(1, true, "pause", 0.0, 300);
        assert_eq!(
            (0..3).map(|i| rollback_delay(&u, i)).collect::<Vec<_>>(),
            vec![Duration::ZERO, ms(300), ms(300)]
        );
    }

    #[test]
    fn ready_limit_from_health_or_monitor() {
        let h = HealthPlan {
            test: vec!["CMD".into(), "true".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::from_secs(5),
            start_interval: Duration::ZERO,
        };
        // 5 + (1 + 2) * 4 + 2
        assert_eq!(ready_limit(Some(&h), ms(1)), Duration::from_secs(19));
        assert_eq!(ready_limit(None, ms(1500)), ms(1500));
        assert_eq!(
            ready_limit(None, Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn readiness_matrix() {
        use Readiness::*;
        use Status::{Created, Exited, Restarting, Running};
        // (healthcheck, status, health, deadline passed, expected)
        let rows = [
            (false, Running, None, false, Waiting),
            (false, Running, None, true, Ready),
            (false, Exited, None, false, Failed),
            (false, Restarting, None, false, Waiting),
            (false, Restarting, None, true, Failed),
            (false, Created, None, true, Failed),
            (true, Running, Some("starting"), false, Waiting),
            (true, Running, Some("healthy"), false, Ready),
            (true, Running, Some("unhealthy"), false, Failed),
            (true, Running, Some("starting"), true, Failed),
            (true, Exited, Some("healthy"), false, Failed),
            (true, Running, Some("healthy"), true, Ready),
        ];
        for (hc, status, health, passed, want) in rows {
            assert_eq!(
                readiness(hc, status, health, passed),
                want,
                "{hc} {status:?} {health:?} {passed}"
            );
        }
    }
}

//! Coalescing of work that many events ask for at once: the state write (of the containers
//! that changed) and the DNS update. A caller is served by a run that started after it asked (so when the call
//! returns, its change is on disk or in DNS, as before), and callers that arrive while a run
//! is going share the next one: a burst of N events costs a few runs, not N.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(super) struct Coalesce {
    /// Tickets handed out (one per call).
    asked: AtomicU64,
    /// Every ticket up to this one is covered by a finished run.
    done: AtomicU64,
    /// One run at a time; tokio's mutex is FIFO, so waiters are served in order.
    run: tokio::sync::Mutex<()>,
}

impl Coalesce {
    /// Run `work` unless a run that started after this call already covered it. The caller
    /// must have made its change before calling.
    pub(super) async fn run<F, Fut>(&self, work: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _one = self.run.lock().await;
        if self.done.load(Ordering::SeqCst) >= ticket {
            return;
        }
        // Every ticket up to `upto` was taken after its change: the run below sees them all.
        let upto = self.asked.load(Ordering::SeqCst);
        work().await;
        self.done.fetch_max(upto, Ordering::SeqCst);
    }
}

/// How long a sync pass waits for more writes before it starts (see `DeferredSync::drain`):
/// a crash of the machine may lose this much more of the records' latest writes.
const PASS_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// The fsyncs of the state writes, taken off the path of the events that made them.
///
/// A container's record is written (temp file, rename) before its runtime `create` and again
/// before its `start`, and the caller goes on once the rename is done, not once the disk has
/// it: what each point protects is a crash of the supervisor (a new one adopts the containers
/// from their records, `down` removes them), and the page cache outlives the process. The
/// fsyncs follow on a blocking thread, one pass for every file written meanwhile (a burst of
/// 50 creates costs a few passes instead of 100 fsyncs, and none of them waits on one).
/// A crash of the machine before a pass loses at most the records written since the last
/// one (tens of ms, plus `PASS_DELAY`): the containers and bridges they describe died with the
/// machine anyway, and each file is its old content or, on ext4, an empty file. An empty
/// file is read as its previous version, which the write swapped aside (`.NAME.prev`, see
/// `state::swap_in_file`) and an earlier pass synced; without one (a container's first
/// write), an empty container file is skipped by `ProjectState::load` (that container's bundle
/// directory stays on disk) and an empty `project.json` reads as a project without networks,
/// its container files still read (so `down` and `resume` still find them). A container's
/// `config.json` (its bundle's spec, written as it is prepared) goes in the same passes: one
/// left empty by a crash makes that container's `resume` fail with the runtime's error on the
/// spec, and `up --force-recreate` makes it again.
#[derive(Default)]
pub(super) struct DeferredSync {
    inner: std::sync::Mutex<DeferredInner>,
}

#[derive(Default)]
struct DeferredInner {
    pending: crate::state::Written,
    /// A pass is running or queued: it takes `pending` when it starts.
    running: bool,
}

impl DeferredSync {
    /// Sync `w` soon, without waiting for it.
    pub(super) fn later(self: &std::sync::Arc<Self>, w: crate::state::Written) {
        if w.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap();
        g.pending.merge(w);
        if g.running {
            return;
        }
        g.running = true;
        drop(g);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.drain());
    }

    /// Sync what is pending, in passes, until nothing is. Each pass first lets the burst
    /// that started it go on for `PASS_DELAY`: a container's record is written three times
    /// on its way up (made, created, started), and without the wait an `up` synced most
    /// records three times (150 fsyncs of 50 records at flat-50, on a disk the overlay
    /// mounts and bundle writes of the same `up` are waiting on).
    fn drain(&self) {
        loop {
            std::thread::sleep(PASS_DELAY);
            let w = {
                let mut g = self.inner.lock().unwrap();
                if g.pending.is_empty() {
                    g.running = false;
                    return;
                }
                std::mem::take(&mut g.pending)
            };
            if let Err(e) = w.sync() {
                tracing::warn!("syncing state: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_runs_and_each_sees_its_change() {
        let c = Arc::new(Coalesce::default());
        let value = Arc::new(AtomicUsize::new(0));
        let published = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 1..=200usize {
            let (c, value, published, runs) =
                (c.clone(), value.clone(), published.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                value.fetch_max(i, Ordering::SeqCst);
                c.run(|| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // A slow run, so that callers pile up behind it.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    published.store(value.load(Ordering::SeqCst), Ordering::SeqCst);
                })
                .await;
                // What was published covers this caller's change.
                assert!(published.load(Ordering::SeqCst) >= i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(published.load(Ordering::SeqCst), 200);
        let n = runs.load(Ordering::SeqCst);
        assert!(n < 200, "{n} runs for 200 concurrent calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_sync_passes_end_and_skip_files_gone() {
        let d = tempfile::tempdir().unwrap();
        let kept = d.path().join("a.json");
        std::fs::write(&kept, b"{}").unwrap();
        let s = Arc::new(DeferredSync::default());
        let idle = |s: &DeferredSync| {
            let g = s.inner.lock().unwrap();
            !g.running && g.pending.is_empty()
        };
        for round in 0..2 {
            s.later(crate::state::Written {
                files: vec![kept.clone(), d.path().join("gone.json")],
            });
            // Bounded: a pass over two files.
            let mut ok = false;
            for _ in 0..500 {
                if idle(&s) {
                    ok = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(ok, "round {round}: the pass did not end");
        }
        assert_eq!(std::fs::read(&kept).unwrap(), b"{}");
    }

    #[tokio::test]
    async fn a_call_after_a_run_runs_again() {
        let c = Coalesce::default();
        let runs = AtomicUsize::new(0);
        for _ in 0..3 {
            c.run(|| async {
                runs.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}

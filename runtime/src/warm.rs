//! Keeps the kernel's cgroup migration lock on its fast path while `create`s are expected.
//!
//! Every `create` writes the container's init into its cgroup (`cgroup.procs`, in each v1
//! hierarchy or the v2 tree). Such a write takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing: a per-cpu rwsem whose writer first waits for a
//! whole RCU grace period (`rcu_sync_enter`), unless another writer came less than about one
//! grace period before it (the lock is then still on its slow reader path). That wait was
//! 6-14 ms on this project's VM, the largest single step of a lone container's `create`
//! (flat-1), none of it CPU. Hosts whose cgroup file system is mounted with `favordynmods`
//! keep the lock on the slow reader path for good; without it, a [`Warmer`] does the same
//! for a bounded while: from [`Warmer::expect`] (the caller began to prepare a container)
//! until as many [`Warmer::arrived`] (its `create` returned), at most [`WARM_MAX`] after the
//! last `expect`, a thread writes the process's own pid into its own cgroup (a migration that
//! moves nothing) every [`WARM_EVERY`]. Its first write waits out the grace period while the
//! caller prepares the container (snapshot, network namespace, veth, bundle); the `create`'s
//! own write then finds the fast path. The cost: a write every 3 ms while containers are
//! being prepared, and while the fast path is held, the host's forks and exits take the
//! lock's reader side with an atomic operation instead of a per-cpu one (what
//! `favordynmods` makes permanent).
//!
//! No fork: a multi-threaded caller (berth's supervisor) may use it in-process.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the thread writes: well under a grace period (at least a few ms with
/// HZ ≤ 1000; 6-14 ms measured here).
pub const WARM_EVERY: Duration = Duration::from_millis(3);
/// How long an `expect` keeps the thread writing without its `arrived`.
pub const WARM_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    /// `expect`s minus `arrived`s.
    expected: usize,
    until: Option<Instant>,
    running: bool,
    /// Set once a write failed (no permission, no such cgroup): no warming any more.
    disabled: bool,
    /// Writes done (tests).
    writes: u64,
}

/// See the module's comment. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct Warmer {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Warmer {
    pub fn new() -> Warmer {
        Warmer::default()
    }

    /// A `create` will follow: start writing (if not already) until it [`arrived`].
    ///
    /// [`arrived`]: Warmer::arrived
    pub fn expect(&self) {
        let (m, _) = &*self.inner;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        if st.disabled {
            return;
        }
        st.expected += 1;
        st.until = Some(Instant::now() + WARM_MAX);
        if st.running {
            return;
        }
        let Some(procs) = own_cgroup_procs() else {
            st.disabled = true;
            return;
        };
        st.running = true;
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-cg-warm".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&inner, &procs));
        if spawned.is_err() {
            st.running = false;
        }
    }

    /// The `create` an [`expect`](Warmer::expect) announced returned (or will not come).
    pub fn arrived(&self) {
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        st.expected = st.expected.saturating_sub(1);
        cv.notify_all();
    }

    /// Whether the thread runs (tests).
    pub fn running(&self) -> bool {
        self.inner.0.lock().map(|s| s.running).unwrap_or(false)
    }

    /// Writes done so far (tests).
    pub fn writes(&self) -> u64 {
        self.inner.0.lock().map(|s| s.writes).unwrap_or(0)
    }
}

fn run(inner: &(Mutex<State>, Condvar), procs: &Path) {
    let (m, cv) = inner;
    let file = std::fs::OpenOptions::new().write(true).open(procs);
    let pid = std::process::id().to_string();
    let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let done = st.expected == 0 || st.until.is_none_or(|u| Instant::now() >= u);
        if done || st.disabled {
            break;
        }
        drop(st);
        // The write may wait a grace period: without the lock held.
        let ok = file.as_ref().is_ok_and(|f| {
            use std::os::unix::fs::FileExt;
            f.write_at(pid.as_bytes(), 0).is_ok()
        });
        st = m.lock().unwrap_or_else(|e| e.into_inner());
        st.writes += 1;
        if !ok {
            st.disabled = true;
            break;
        }
        st = cv
            .wait_timeout(st, WARM_EVERY)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    st.running = false;
    st.expected = 0;
}

/// This process's own `cgroup.procs`: in the v2 tree (unified, or a hybrid host's
/// `/sys/fs/cgroup/unified`) where there is one, else in the first v1 hierarchy mounted at
/// its usual place.
fn own_cgroup_procs() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own_cgroup_procs_in(&text, |p| p.exists())
}

fn own_cgroup_procs_in(proc_self_cgroup: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let root = Path::new(crate::cgroups::CGROUP_ROOT);
    let mut candidates = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        if ctrls.is_empty() {
            // The v2 tree: at the root on a v2 host, at `unified` on a hybrid one (never a
            // v1 hierarchy's directory of the same name: a write there would move us).
            for top in [root.to_path_buf(), root.join("unified")] {
                if exists(&top.join("cgroup.controllers")) {
                    candidates.insert(0, top.join(rel));
                    break;
                }
            }
        } else {
            let name = ctrls.strip_prefix("name=").unwrap_or(ctrls);
            if !name.contains('/') && !name.is_empty() {
                candidates.push(root.join(name).join(rel));
            }
        }
    }
    candidates
        .into_iter()
        .map(|d| d.join("cgroup.procs"))
        .find(|p| exists(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_procs_prefers_the_v2_tree() {
        let hybrid = "9:name=systemd:/\n4:memory:/a/b\n0::/u\n";
        let all = |_: &Path| true;
        assert_eq!(
            own_cgroup_procs_in(hybrid, all),
            Some("/sys/fs/cgroup/u/cgroup.procs".into())
        );
        // A hybrid host: the v2 tree is at `unified` (the top is a tmpfs).
        let unified = |p: &Path| p.starts_with("/sys/fs/cgroup/unified");
        assert_eq!(
            own_cgroup_procs_in(hybrid, unified),
            Some("/sys/fs/cgroup/unified/u/cgroup.procs".into())
        );
        // No v2 tree: a v1 directory named like the v2 path is not taken for it.
        let cpu = "1:cpu:/x\n0::/cpu\n";
        let no_v2 = |p: &Path| !p.ends_with("cgroup.controllers");
        assert_eq!(
            own_cgroup_procs_in(cpu, no_v2),
            Some("/sys/fs/cgroup/cpu/x/cgroup.procs".into())
        );
        let v1 = "9:name=systemd:/s\n4:memory:/a/b\n";
        let memory = |p: &Path| p.starts_with("/sys/fs/cgroup/memory");
        assert_eq!(
            own_cgroup_procs_in(v1, memory),
            Some("/sys/fs/cgroup/memory/a/b/cgroup.procs".into())
        );
        assert_eq!(own_cgroup_procs_in("4:memory:/../x\n", all), None);
        assert_eq!(own_cgroup_procs_in("", all), None);
    }

    /// The thread writes while a create is expected and stops once it arrived; the process
    /// stays in its cgroup. Needs root (a write to cgroup.procs).
    #[test]
    fn writes_until_arrived_and_moves_nothing() {
        if !nix::unistd::geteuid().is_root() || own_cgroup_procs().is_none() {
            eprintln!("skipped: needs root and a cgroup file system");
            return;
        }
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let w = Warmer::new();
        w.expect();
        assert!(w.running());
        let t0 = Instant::now();
        while w.writes() < 3 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(w.writes() >= 3, "the thread did not write");
        w.arrived();
        let t0 = Instant::now();
        while w.running() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!w.running(), "the thread did not stop after arrived()");
        let n = w.writes();
        std::thread::sleep(WARM_EVERY * 3);
        assert_eq!(w.writes(), n, "writes after the thread stopped");
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}

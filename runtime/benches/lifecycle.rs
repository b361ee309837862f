//! create+start+wait+delete of `/bin/true` in a busybox bundle: berth-runtime vs runc (and
//! crun when installed). Same bundle, same Docker-like spec (default caps, masked paths,
//! Docker's seccomp profile, cgroup limits). Run as root:
//! `cargo bench -p berth-runtime --bench lifecycle` (BERTH_BENCH_RUNS=N to change the count).
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn time_runs(name: &str, runs: usize, mut one: impl FnMut(usize) -> bool) -> Option<Vec<Duration>> {
    let mut v = Vec::with_capacity(runs);
    // warm-up (page cache, first cgroup creation)
    for i in 0..3 {
        if !one(1_000_000 + i) {
            eprintln!("{name}: warm-up run failed, skipped");
            return None;
        }
    }
    for i in 0..runs {
        let t = Instant::now();
        if !one(i) {
            eprintln!("{name}: run {i} failed");
            return None;
        }
        v.push(t.elapsed());
    }
    v.sort();
    Some(v)
}

fn report(name: &str, v: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<14} runs={:<4} median={:>7.2} ms  p10={:>7.2}  p90={:>7.2}  min={:>7.2}",
        v.len(),
        ms(p(0.5)),
        ms(p(0.1)),
        ms(p(0.9)),
        ms(v[0])
    );
}

fn main() {
    if !common::is_root() {
        eprintln!("lifecycle bench needs root; skipped");
        return;
    }
    // `cargo test --benches` runs this with --bench absent: keep it short then.
    let runs: usize = std::env::var("BERTH_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            100
        } else {
            3
        });
    let c = common::Ctr::new("bench");
    let spec = c.spec(&["/bin/true"]);
    c.write(&spec);
    let root = c.dir.path().join("bench-root");
    let berth = time_runs("berth-runtime", runs, |i| {
        Command::new(common::BIN)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&c.bundle)
            .arg(format!("{}-{i}", c.id))
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    if let Some(v) = &berth {
        report("berth-runtime", v);
    }
    for other in ["runc", "crun"] {
        if Command::new(other).arg("--version").output().is_err() {
            println!("{other:<14} not installed");
            continue;
        }
        let oroot = c.dir.path().join(format!("{other}-root"));
        let cg = format!("{}-{other}", c.cgroups_path);
        let mut s = spec.clone();
        s["linux"]["cgroupsPath"] = serde_json::json!(cg);
        c.write(&s);
        let res = time_runs(other, runs, |i| {
            let id = format!("{}-{other}-{i}", c.id);
            let ok = Command::new(other)
                .arg("--root")
                .arg(&oroot)
                .args(["run", "--bundle"])
                .arg(&c.bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            let _ = Command::new(other)
                .arg("--root")
                .arg(&oroot)
                .args(["delete", "--force", &id])
                .output();
            ok
        });
        // runc joins name=systemd and the unified hierarchy too and leaves parents behind.
        for h in [
            "systemd", "unified", "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
            "blkio", "pids",
        ] {
            let base = std::path::Path::new("/sys/fs/cgroup").join(h);
            let mut p = base.join(cg.trim_start_matches('/'));
            while p.starts_with(base.join("berth")) {
                let _ = std::fs::remove_dir(&p);
                p = p.parent().unwrap().to_path_buf();
            }
        }
        match res {
            Some(v) => report(other, &v),
            None => println!("{other:<14} failed on this host"),
        }
    }
}

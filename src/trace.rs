//! `BERTH_TRACE=1`: per-step timestamps of a command, on stderr, for attributing where the
//! time of `up -d` goes (CLI → supervisor → per container: snapshot, netns/veth, runtime
//! create, start, DNS, firewall).
//!
//! One timeline: the CLI takes its start time (`cli_start`) and passes it to the supervisor in
//! the request's environment (`BERTH_TRACE_T0`, wall-clock µs); the supervisor sends its steps
//! back as messages while the request runs (`Sink`), so every line is milliseconds since the
//! CLI started. Off (the default), a step is one relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Wall-clock µs of the traced command's start; 0 when tracing is off.
static T0: AtomicU64 = AtomicU64::new(0);
/// Where this process's lines go: stderr when `None` (the CLI), else the request's channel.
type SinkFn = Box<dyn Fn(String) + Send + Sync>;
static SINK: Mutex<Option<SinkFn>> = Mutex::new(None);

/// The environment variable that carries the start time to the supervisor.
pub const T0_VAR: &str = "BERTH_TRACE_T0";

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// In the CLI, before any thread: tracing starts if `BERTH_TRACE` is set (and not "0"), and
/// the start time goes into the environment that requests carry.
pub fn cli_start() {
    let on = std::env::var("BERTH_TRACE").is_ok_and(|v| !v.is_empty() && v != "0");
    if on {
        let t0 = now_us();
        T0.store(t0, Ordering::Relaxed);
        // From `main`, before any thread exists.
        std::env::set_var(T0_VAR, t0.to_string());
    }
}

/// Record one step: `what` is formatted only when tracing is on.
pub fn step(what: impl FnOnce() -> String) {
    if enabled() {
        step_at(now_us(), std::process::id(), &what());
    }
}

/// True while tracing (a step would be recorded).
pub fn enabled() -> bool {
    T0.load(Ordering::Relaxed) != 0
}

/// Record a step another process timed (`us`: wall-clock µs since the epoch; `pid`: its
/// pid), e.g. the runtime's own steps of a `create`.
pub fn step_at(us: u64, pid: u32, what: &str) {
    let t0 = T0.load(Ordering::Relaxed);
    if t0 == 0 {
        return;
    }
    let ms = us.saturating_sub(t0) as f64 / 1000.0;
    let line = format!("trace {ms:9.3} ms  [{pid}] {what}");
    match SINK.lock().ok().as_ref().and_then(|s| s.as_ref()) {
        Some(f) => f(line),
        None => eprintln!("{line}"),
    }
}

/// In the supervisor, for the length of one traced request: lines go to `sink`, timed from
/// the CLI's `t0`. Dropping the guard turns tracing off again.
pub struct Session(());

pub fn session(t0: Option<&str>, sink: impl Fn(String) + Send + Sync + 'static) -> Option<Session> {
    let t0: u64 = t0?.parse().ok().filter(|t| *t != 0)?;
    if let Ok(mut s) = SINK.lock() {
        *s = Some(Box::new(sink));
    }
    T0.store(t0, Ordering::Relaxed);
    Some(Session(()))
}

impl Drop for Session {
    fn drop(&mut self) {
        T0.store(0, Ordering::Relaxed);
        if let Ok(mut s) = SINK.lock() {
            *s = None;
        }
    }
}

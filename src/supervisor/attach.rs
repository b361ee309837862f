//! Attached terminals (`berth attach`, `berth run -it`): the pty of a `tty: true` container,
//! whose master the supervisor holds and logs (see `spawn.rs`), shared with a CLI.
//!
//! The CLI sends an `Attach` request line; the supervisor answers with one byte carrying a dup
//! of the pty master (SCM_RIGHTS), then turns the connection into the container's raw output.
//! The CLI writes its stdin and sets the window size on the master itself (the relay of
//! `commands::tty`), and reads the output from the socket, so the log keeps every byte and
//! several attached terminals see the same output. Leaving (EOF from the CLI, a detach) leaves
//! the container alone; the socket ends when the container's last process closes the pty.
//!
//! The master outlives a supervisor crash: a `berth __pty-hold` process (a child, re-parented
//! to the keeper if the supervisor dies) keeps a dup of it and never touches it, so the
//! container's terminal is not hung up; an adopting supervisor takes it back with
//! pidfd_getfd (`take_back`) and logs and serves it again. It exits when the pty's last slave
//! holder is gone. Its pid is in `run/projects/<p>/io/<id>.ptyhold`.
//!
//! A one-off started for `run -it` holds its first output (bounded) until the CLI attaches,
//! so its first prompt is not lost between start and attach.
//!
//! Without a tty, a `stdin_open: true` container's stdin is the FIFO `io/<id>.stdin`, which the
//! container itself holds open for reading and writing (`stdin_fifo`): it never reads EOF,
//! whatever happens to the supervisor or to attached CLIs, and `berth attach` opens the FIFO
//! and writes the caller's input into it (`commands::attach`), as docker attach does.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex as StdMutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::proto::Reply;
use super::Supervisor;
use crate::engine::io::RawTap;

/// The most output held for a one-off's first attach; beyond it, holding stops.
const HOLD_MAX: usize = 64 * 1024;
/// Chunks queued per attached terminal; a terminal that reads slower loses output rather than
/// slowing the container (the log keeps it all).
const QUEUE: usize = 1024;

/// An attacher's live output.
type Output = mpsc::Receiver<Arc<[u8]>>;

/// One container's pty, as attachers see it.
pub(super) struct PtyHub {
    /// A dup of the master (the log copy owns the original), handed to attachers.
    master: OwnedFd,
    inner: StdMutex<HubInner>,
}

struct HubInner {
    held: Option<Vec<u8>>,
    subs: Vec<mpsc::Sender<Arc<[u8]>>>,
    closed: bool,
}

/// The hubs of this supervisor's containers by name (one supervisor per process).
static HUBS: LazyLock<StdMutex<HashMap<String, Arc<PtyHub>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));
/// Containers whose next start holds its output for an attach to come (`run -it`).
static HOLD: LazyLock<StdMutex<std::collections::HashSet<String>>> =
    LazyLock::new(|| StdMutex::new(Default::default()));
/// How long the held output of a one-off that exited before its CLI attached waits for it.
const HELD_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `name`'s next start keeps its first output for the first attach (see the module comment).
pub(super) fn hold_next_start(name: &str) {
    HOLD.lock().unwrap().insert(name.to_string());
}

/// Whether `name`'s start now is one to hold (asked for by `hold_next_start`; once).
pub(super) fn take_hold(name: &str) -> bool {
    HOLD.lock().unwrap().remove(name)
}

impl PtyHub {
    /// Register `name`'s pty (`master`: a dup of it). `hold`: keep the first output for the
    /// first attacher. Returns the tap for the log copy.
    pub(super) fn register(name: &str, master: OwnedFd, hold: bool) -> RawTap {
        let hub = Arc::new(PtyHub {
            master,
            inner: StdMutex::new(HubInner {
                held: hold.then(Vec::new),
                subs: Vec::new(),
                closed: false,
            }),
        });
        HUBS.lock().unwrap().insert(name.to_string(), hub.clone());
        Arc::new(move |b: &[u8]| hub.publish(b))
    }

    /// The pty is done (the container's processes are gone): attachers see EOF.
    /// A one-off that exited before its CLI attached keeps its held output for the attach
    /// (a while, bounded), which then shows it and ends.
    pub(super) fn close(name: &str) {
        let hub = HUBS.lock().unwrap().get(name).cloned();
        let Some(h) = hub else {
            return;
        };
        let keep = {
            let mut i = h.inner.lock().unwrap();
            i.closed = true;
            i.subs.clear();
            i.held.as_ref().is_some_and(|b| !b.is_empty())
        };
        if !keep {
            Self::forget(name, &h);
            return;
        }
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(HELD_AFTER_EXIT).await;
            Self::forget(&name, &h);
        });
    }

    /// Remove `name`'s hub if it is still `hub` (a new run may have registered another).
    fn forget(name: &str, hub: &Arc<PtyHub>) {
        let mut hubs = HUBS.lock().unwrap();
        if hubs.get(name).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(name);
        }
    }

    fn publish(&self, b: &[u8]) {
        let mut i = self.inner.lock().unwrap();
        if let Some(h) = &mut i.held {
            if h.len() + b.len() <= HOLD_MAX {
                h.extend_from_slice(b);
            } else {
                i.held = None;
            }
        }
        if i.subs.is_empty() {
            return;
        }
        let chunk: Arc<[u8]> = Arc::from(b);
        i.subs.retain(|s| match s.try_send(chunk.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// A new attacher: what was held (for the first one) and the live output from then on.
    fn subscribe(&self) -> Option<(Vec<u8>, Output)> {
        let mut i = self.inner.lock().unwrap();
        let (tx, rx) = mpsc::channel(QUEUE);
        if i.closed {
            // Exited before the attach: what it printed, then the end (the sender drops).
            return i.held.take().map(|h| (h, rx));
        }
        i.subs.push(tx);
        Some((i.held.take().unwrap_or_default(), rx))
    }
}

impl Supervisor {
    /// Serve an `Attach` request on its connection (see the module comment).
    pub(super) async fn attach(
        self: Arc<Self>,
        mut rd: OwnedReadHalf,
        mut wr: OwnedWriteHalf,
        name: String,
    ) {
        let hub = HUBS.lock().unwrap().get(&name).cloned();
        let sub = hub.as_ref().and_then(|h| h.subscribe());
        let (Some(hub), Some((held, mut rx))) = (hub, sub) else {
            let running = self
                .state
                .lock()
                .await
                .container(&name)
                .map(|c| c.status == crate::state::Status::Running);
            let error = match running {
                None => format!("no such container: {name}"),
                Some(false) => format!("container {name} is not running"),
                Some(true) => {
                    format!("container {name} has no terminal to attach to (it needs `tty: true`)")
                }
            };
            let done = Reply::Done {
                ok: false,
                error: Some(error),
                code: 1,
            };
            let mut b = serde_json::to_vec(&done).unwrap_or_default();
            b.push(b'\n');
            let _ = wr.write_all(&b).await;
            let _ = wr.shutdown().await;
            return;
        };
        if send_fd(&wr, &hub.master).await.is_err() {
            return;
        }
        drop(hub);
        if !held.is_empty() && wr.write_all(&held).await.is_err() {
            return;
        }
        let mut scratch = [0u8; 64];
        loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(c) => {
                        if wr.write_all(&c).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                // The CLI sends nothing after its request: a read returns when it leaves.
                r = rd.read(&mut scratch) => match r {
                    Ok(n) if n > 0 => {}
                    _ => break,
                },
            }
        }
        let _ = wr.shutdown().await;
    }
}

/// One byte with `fd` attached (SCM_RIGHTS) on the connection.
async fn send_fd(wr: &OwnedWriteHalf, fd: &OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let sock = wr.as_ref();
    let fds = [fd.as_raw_fd()];
    loop {
        sock.writable().await?;
        let iov = [std::io::IoSlice::new(&[1u8])];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        match sock.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn hold_path(io_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    io_dir.join(format!("{name}.ptyhold"))
}

/// Start the process that keeps `master` open for a supervisor after this one (see the module
/// comment) and note its pid.
pub(super) fn keep_master(
    io_dir: &std::path::Path,
    name: &str,
    master: &OwnedFd,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut child = tokio::process::Command::new(crate::engine::runtime::self_exe())
        .arg("__pty-hold")
        .stdin(std::process::Stdio::from(master.try_clone()?))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the pty holder")?;
    let pid = child.id().context("the pty holder's pid")? as i32;
    let start = crate::state::pid_start_time(pid).unwrap_or(0);
    let note = format!("{pid} {start}\n");
    std::fs::write(hold_path(io_dir, name), &note)?;
    let path = hold_path(io_dir, name);
    tokio::spawn(async move {
        let _ = child.wait().await;
        // Only our note: a later run of the container has its own holder.
        if std::fs::read_to_string(&path).is_ok_and(|t| t == note) {
            let _ = std::fs::remove_file(path);
        }
    });
    Ok(())
}

/// The master kept by a previous supervisor's holder for `name`, if it still runs.
pub(super) fn take_back(io_dir: &std::path::Path, name: &str) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let text = std::fs::read_to_string(hold_path(io_dir, name)).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    // The pidfd first, then the check: it then surely names the recorded process.
    let pidfd = crate::engine::proc::pidfd_open(pid).ok()?;
    if !crate::state::pid_matches(pid, Some(start)) {
        return None;
    }
    // SAFETY: pidfd_getfd on a pidfd we own; returns a new fd of ours or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 0, 0) };
    if fd < 0 {
        tracing::warn!(
            "{name}: taking its pty back: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: the kernel just made this fd ours.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One-offs whose next start takes its stdin from its CLI (`run` without a tty).
static STDIN_WANTED: LazyLock<StdMutex<std::collections::HashSet<String>>> =
    LazyLock::new(|| StdMutex::new(Default::default()));
/// Per such container, a write side of its stdin FIFO held until its CLI has opened its own,
/// so the container does not read EOF before the CLI is there.
static STDIN_PLACEHOLDERS: LazyLock<StdMutex<HashMap<String, OwnedFd>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

fn stdin_path(io_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    io_dir.join(format!("{name}.stdin"))
}

/// `name`'s next start reads its stdin from a FIFO its CLI writes (`run -i` without a tty).
pub(super) fn stdin_next_start(name: &str) {
    STDIN_WANTED.lock().unwrap().insert(name.to_string());
}

fn open_c(path: &std::ffi::CStr, flags: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just made it ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// For a start asked for by `stdin_next_start`: a new FIFO `io/<id>.stdin`, its read side
/// (blocking) for the container; a placeholder writer is kept until `stdin_opened`.
pub(super) fn take_stdin(io_dir: &std::path::Path, name: &str) -> std::io::Result<Option<OwnedFd>> {
    if !STDIN_WANTED.lock().unwrap().remove(name) {
        return Ok(None);
    }
    let path = stdin_path(io_dir, name);
    std::fs::create_dir_all(io_dir)?;
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let read = open_c(&c, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let placeholder = open_c(&c, libc::O_WRONLY)?;
    // SAFETY: fcntl on an fd we own: the container's reads block.
    unsafe {
        let fl = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(read.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    STDIN_PLACEHOLDERS
        .lock()
        .unwrap()
        .insert(name.to_string(), placeholder);
    Ok(Some(read))
}

/// The CLI of `name` has its stdin FIFO open: drop the placeholder (its close is then the
/// container's EOF) and the FIFO's name.
pub(super) fn stdin_opened(io_dir: &std::path::Path, name: &str) {
    STDIN_PLACEHOLDERS.lock().unwrap().remove(name);
    let _ = std::fs::remove_file(stdin_path(io_dir, name));
}

/// The stdin of a `stdin_open: true` container without a tty: a new FIFO `io/<id>.stdin`
/// (replacing an earlier run's), opened read-write for the container, which so holds a writer
/// itself and never reads EOF; attached CLIs open it by name and write into it. The
/// supervisor keeps nothing of it.
pub(super) fn stdin_fifo(io_dir: &std::path::Path, name: &str) -> std::io::Result<OwnedFd> {
    let (_read, container) = crate::engine::io::fifo_pair(&stdin_path(io_dir, name))?;
    Ok(container)
}

//! The caller's side of an interactive container process (`exec -it`): the runtime hands us
//! the pty master over a console socket (runc's protocol), and this process copies the
//! caller's terminal to it and back, in raw mode, with the window size kept in step
//! (SIGWINCH), the detach keys, and the process's exit status as ours.
//!
//! Single-threaded and synchronous: one `poll` over the master, stdin and a signalfd.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

/// Docker's default detach sequence: ctrl-p ctrl-q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Parse docker's `--detach-keys` syntax: comma-separated `ctrl-<x>` (x in a-z, @, [, \, ],
/// ^, _) or single characters. An empty string disables detaching.
pub fn parse_detach_keys(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for part in s.split(',') {
        if let Some(k) = part.strip_prefix("ctrl-") {
            let b = match k.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => bail!("invalid detach key {part:?} in {s:?} (ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_)"),
            };
            out.push(b);
        } else if part.len() == 1 {
            out.push(part.as_bytes()[0]);
        } else {
            bail!("invalid detach key {part:?} in {s:?} (a single character or ctrl-<value>)");
        }
    }
    Ok(out)
}

/// What the detach matcher says about one input byte.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    /// Forward these bytes (held-back prefix bytes are released when the sequence breaks).
    Forward(Vec<u8>),
    /// The whole sequence was typed.
    Detach,
}

/// Recognises the detach sequence in the input stream, holding back a partial match (as
/// docker does: a prefix typed alone reaches the container only once the next key breaks
/// the sequence).
struct DetachMatcher {
    keys: Vec<u8>,
    held: usize,
}

impl DetachMatcher {
    fn feed(&mut self, input: &[u8]) -> Key {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return Key::Detach;
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return Key::Detach;
                }
            } else {
                out.push(b);
            }
        }
        Key::Forward(out)
    }
}

/// Puts the caller's terminal into raw mode and restores it on drop (every exit path).
struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd<'static>) -> anyhow::Result<RawMode> {
        let saved = termios::tcgetattr(fd).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSAFLUSH, &self.saved);
    }
}

fn copy_winsize(from: BorrowedFd, to: BorrowedFd) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ / TIOCSWINSZ with a valid winsize struct on fds we hold.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn write_all(fd: BorrowedFd, mut b: &[u8]) -> nix::Result<()> {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::from(100u16));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Wait for the runtime to connect to the console socket and receive the pty master, or
/// fail if the runtime exits first (its error is already on our stderr).
fn receive_master(listener: &UnixListener, child: &mut Child) -> anyhow::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accepting the console socket"),
        }
        if let Some(st) = child.try_wait()? {
            bail!("exec failed before its terminal was ready ({st})");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the runtime did not send the terminal within 60 s");
        }
        let mut p = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut p, PollTimeout::from(50u16));
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the terminal")?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(anyhow!("the console socket carried no terminal"))
}

/// Keep the master open after a detach so the process keeps its terminal: a small process of
/// our own (`berth __pty-drain`, fd 0 = the master) reads and drops its output until the
/// last slave holder is gone.
fn spawn_drain(master: OwnedFd) -> anyhow::Result<()> {
    Command::new(crate::engine::runtime::self_exe())
        .arg("__pty-drain")
        .stdin(Stdio::from(master))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("keeping the detached terminal open")?;
    Ok(())
}

/// `berth __pty-drain`: read fd 0 until EOF/EIO. Exits 0.
pub fn drain() -> u8 {
    // SAFETY: setsid in a fresh single-threaded process; we want no controlling terminal.
    let _ = nix::unistd::setsid();
    let stdin = std::io::stdin();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(stdin.as_fd(), &mut buf) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => return 0,
        }
    }
}

/// `berth __pty-hold`: keep fd 0 (a container's pty master) open, never reading or writing
/// it, until its last slave holder is gone (the master reports a hang-up). Exits 0.
pub fn hold() -> u8 {
    let _ = nix::unistd::setsid();
    let stdin = std::io::stdin();
    loop {
        let mut p = [PollFd::new(stdin.as_fd(), PollFlags::empty())];
        match poll(&mut p, PollTimeout::NONE) {
            Ok(_) => {
                let r = p[0].revents().unwrap_or(PollFlags::empty());
                if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                    return 0;
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(_) => return 0,
        }
    }
}

/// Run `runtime` (a `__runtime exec --tty` command line without the console socket flag and
/// the container id/command, which `finish` adds) attached to the caller's terminal.
/// `console` is where the console socket is made. Returns the process's exit status.
pub fn run_attached(
    mut runtime: Command,
    console: &Path,
    detach_keys: &[u8],
) -> anyhow::Result<u8> {
    // Blocked before any thread exists, so every thread inherits the mask and the signals
    // wait for the signalfd (std resets the mask in spawned children).
    let mask = block_signals()?;
    let _ = std::fs::remove_file(console);
    if let Some(d) = console.parent() {
        std::fs::create_dir_all(d)?;
    }
    // Made 0600 from the start (umask around bind, still single-threaded here): nobody else
    // may connect and hand us a terminal of their own.
    let old_mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(console);
    nix::sys::stat::umask(old_mask);
    let listener =
        listener.with_context(|| format!("binding the console socket {}", console.display()))?;
    // Its own process group: the terminal's signals (and its hang-up) are for us, not for the
    // runtime, which waits for the process and gives us its status.
    // Its stderr comes to us through a pipe we copy, not as our own fd: after a detach the
    // runtime lives on, and must not hold the caller's stderr (a `2>&1 | tee` would never end).
    let mut child = runtime
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting exec")?;
    let (copied, stderr_done) = std::sync::mpsc::channel::<()>();
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::stderr());
            let _ = copied.send(());
        });
    }
    let master = receive_master(&listener, &mut child);
    drop(listener);
    let _ = std::fs::remove_file(console);
    let master = match master {
        Ok(m) => m,
        Err(e) => {
            // Let the runtime's own message reach the caller before ours.
            let _ = stderr_done.recv_timeout(Duration::from_secs(2));
            return Err(e);
        }
    };

    let outcome = relay(
        &mask,
        master.as_fd(),
        master.as_fd(),
        detach_keys,
        true,
        &mut || matches!(child.try_wait(), Ok(Some(_))),
    );
    match outcome? {
        Outcome::Detached => {
            spawn_drain(master)?;
            eprintln!("read escape sequence");
            Ok(0)
        }
        Outcome::Signal(s) => {
            drop(master);
            Ok((128 + s).clamp(0, 255) as u8)
        }
        Outcome::Exited => {
            drop(master);
            let st = child.wait().context("waiting for exec")?;
            let _ = stderr_done.recv_timeout(Duration::from_secs(2));
            Ok(status_code(st))
        }
    }
}

/// How an attached session ended.
pub enum Outcome {
    /// The output ended: the process (or the container) is done.
    Exited,
    /// The caller typed the detach keys.
    Detached,
    /// The caller's side was told to stop (SIGTERM, SIGHUP, SIGINT).
    Signal(i32),
}

/// Block the signals the relay takes through its signalfd. Call before any thread is made,
/// so every thread inherits the mask (std resets it in spawned children).
pub fn block_signals() -> anyhow::Result<SigSet> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGWINCH,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    Ok(mask)
}

/// Copy the caller's terminal to a pty and back until the output ends, the detach keys, a
/// signal, or `done` (the process's owner returned; what is left of the output is copied
/// first). `output`: where the pty's output comes from (the master itself, or a supervisor
/// connection that relays it); `master`: where input goes and the window size is set.
/// `stdin`: forward the caller's input (raw mode); without, only the output is shown.
/// Unblocks `mask` on return.
pub fn relay(
    mask: &SigSet,
    output: BorrowedFd,
    master: BorrowedFd,
    detach_keys: &[u8],
    stdin_on: bool,
    done: &mut dyn FnMut() -> bool,
) -> anyhow::Result<Outcome> {
    // SAFETY: fds 0 and 1 stay open for the life of this process.
    let stdin: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(0) };
    let stdout: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(1) };
    let tty_in = std::io::IsTerminal::is_terminal(&stdin);
    if tty_in {
        copy_winsize(stdin, master);
    }
    let sfd = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let raw = if stdin_on && tty_in {
        Some(RawMode::enter(stdin)?)
    } else {
        None
    };

    let mut keys = DetachMatcher {
        keys: detach_keys.to_vec(),
        held: 0,
    };
    let mut stdin_open = stdin_on;
    let mut buf = [0u8; 16384];
    let outcome = loop {
        let mut fds = vec![
            PollFd::new(output, PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(250u16)) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => break Err(anyhow!("poll: {e}")),
        }
        let rev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let (m_rev, s_rev) = (rev(0), rev(1));
        let i_rev = if stdin_open {
            rev(2)
        } else {
            PollFlags::empty()
        };
        if m_rev.intersects(PollFlags::POLLIN) {
            match nix::unistd::read(output, &mut buf) {
                Ok(0) | Err(_) => break Ok(Outcome::Exited), // EIO: every slave holder is gone
                Ok(n) => {
                    let _ = write_all(stdout, &buf[..n]);
                }
            }
        } else if m_rev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            break Ok(Outcome::Exited);
        }
        if s_rev.intersects(PollFlags::POLLIN) {
            let mut stop = None;
            while let Ok(Some(info)) = sfd.read_signal() {
                match info.ssi_signo as i32 {
                    libc::SIGWINCH if tty_in => copy_winsize(stdin, master),
                    libc::SIGWINCH => {}
                    s => stop = Some(s),
                }
            }
            if let Some(s) = stop {
                // Terminated: restore the terminal and hang the session up (the process gets
                // SIGHUP, as with a closed ssh session).
                break Ok(Outcome::Signal(s));
            }
        }
        if i_rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(stdin, &mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    // End of input: the terminal's EOF character, so the reader sees it.
                    let _ = write_all(master, &[4]);
                }
                Ok(n) => match keys.feed(&buf[..n]) {
                    Key::Forward(b) => {
                        let _ = write_all(master, &b);
                    }
                    Key::Detach => break Ok(Outcome::Detached),
                },
            }
        }
        if done() {
            // The runtime returned: drain what is left of the output, then stop.
            while let Ok(n) = nix::unistd::read(output, &mut buf) {
                if n == 0 || write_all(stdout, &buf[..n]).is_err() {
                    break;
                }
                let mut p = [PollFd::new(output, PollFlags::POLLIN)];
                if !matches!(poll(&mut p, PollTimeout::from(50u16)), Ok(n) if n > 0) {
                    break;
                }
            }
            break Ok(Outcome::Exited);
        }
    };
    drop(raw);
    let _ = mask.thread_unblock();
    outcome
}

fn status_code(st: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("ctrl-a,x").unwrap(), vec![1, b'x']);
        assert_eq!(parse_detach_keys("ctrl-@,ctrl-_").unwrap(), vec![0, 31]);
        assert!(parse_detach_keys("").unwrap().is_empty());
        let e = parse_detach_keys("ctrl-1").unwrap_err().to_string();
        assert!(e.contains("ctrl-1"), "{e}");
        assert!(parse_detach_keys("ab").is_err());
    }

    #[test]
    fn the_matcher_holds_a_prefix_and_releases_it_when_broken() {
        let mut m = DetachMatcher {
            keys: vec![16, 17],
            held: 0,
        };
        assert_eq!(m.feed(b"ab"), Key::Forward(b"ab".to_vec()));
        assert_eq!(m.feed(&[16]), Key::Forward(vec![]));
        assert_eq!(m.feed(b"x"), Key::Forward(vec![16, b'x']));
        assert_eq!(m.feed(&[16, 16]), Key::Forward(vec![16]));
        assert_eq!(m.feed(&[17]), Key::Detach);
        let mut m = DetachMatcher {
            keys: vec![],
            held: 0,
        };
        assert_eq!(m.feed(&[16, 17]), Key::Forward(vec![16, 17]));
        let mut m = DetachMatcher {
            keys: vec![b'q'],
            held: 0,
        };
        assert_eq!(m.feed(b"aq"), Key::Detach);
    }
}

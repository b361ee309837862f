//! Container stdio.
//!
//! A container's stdout and stderr are named FIFOs under the project's run dir
//! (`io/<container>.stdout`, `.stderr`, mode 0600). The container gets each one opened O_RDWR, so
//! it is a reader of its own output pipe: a write never fails with EPIPE or raises SIGPIPE, even
//! when no supervisor reads. With the supervisor gone, the container's writes fill the pipe
//! buffer (64 KiB) and then block; a new supervisor opens the FIFO by its path, drains what was
//! buffered into the log and the container goes on. Nothing is lost and nothing is killed by a
//! supervisor crash, without a process per container (conmon's shim).
//!
//! The supervisor copies complete lines only and consumes from the pipe only what is already in
//! the log: it peeks with tee(2) into a scratch pipe (one per thread), appends the complete lines
//! to the log in one write, then reads exactly those bytes off the FIFO. A partial line stays in
//! the kernel until its newline arrives (or the writers are gone), so a supervisor killed at any
//! point loses nothing; killed between the log write and the consuming read (a few µs), the new
//! supervisor logs those lines a second time.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::logs::LogWriter;

/// A pipe: (read end, write end), both close-on-exec (the runtime dup2()s the write end onto
/// the container's stdout, which clears the flag on the copy only).
pub fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just created them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Where a project's containers' stream FIFOs live (under the project's run dir).
pub fn io_dir(project_run: &Path) -> PathBuf {
    project_run.join("io")
}

/// The FIFO of one stream ("stdout" or "stderr") of a container.
pub fn fifo_path(io_dir: &Path, container: &str, stream: &str) -> PathBuf {
    io_dir.join(format!("{container}.{stream}"))
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn open_path(p: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = cpath(p)?;
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_fifo(fd: &OwnedFd) -> bool {
    // SAFETY: fstat fills a plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

/// Make a new FIFO at `path` (replacing an earlier run's) and open it: (the supervisor's read
/// side, non-blocking; the container's side, read-write). Both close-on-exec.
pub fn fifo_pair(path: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    // A fresh inode per run: a copy task still draining the previous run keeps the old one.
    clear_io_path(path)?;
    let c = cpath(path)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The container's side first: the reader then opens with a writer present, so it sees
    // EPOLLHUP when the last one goes.
    let rw = open_path(path, libc::O_RDWR | libc::O_NOFOLLOW)?;
    Ok((open_fifo_reader(path)?, rw))
}

/// Make the private (0700) directory of an io path and remove what an earlier run left there.
fn clear_io_path(path: &Path) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open the read side of an existing stream FIFO again (a new supervisor adopting a container).
pub fn open_fifo_reader(path: &Path) -> std::io::Result<OwnedFd> {
    let rd = open_path(path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW)?;
    if !is_fifo(&rd) {
        return Err(std::io::Error::other(format!(
            "{} is not a FIFO",
            path.display()
        )));
    }
    Ok(rd)
}

/// The console socket of a `tty: true` container (`io/<container>.console`); a name too long for
/// a unix socket address is replaced by a hash of it.
pub fn console_path(io_dir: &Path, container: &str) -> PathBuf {
    let p = io_dir.join(format!("{container}.console"));
    // sun_path holds 108 bytes with the NUL.
    if p.as_os_str().len() < 108 {
        return p;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(container.as_bytes()));
    io_dir.join(format!("{}.console", &h[..16]))
}

/// The supervisor's end of a runc-style console socket (`create --console-socket`): the
/// runtime connects to it before forking the init, and the init sends the pty master it made
/// (in the container's devpts) with SCM_RIGHTS while it sets up, before `create` returns. The
/// socket file (0600) goes when this is dropped.
pub struct ConsoleSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> std::io::Result<ConsoleSocket> {
        use std::os::unix::fs::PermissionsExt;
        clear_io_path(path)?;
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let me = ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Once `create` has succeeded, the master waits in the socket's queue (a connection is
    /// queued and its message sent without an accept): take it, waiting at most `limit`.
    pub async fn receive(self, limit: Duration) -> std::io::Result<OwnedFd> {
        let l = self.listener.try_clone()?;
        tokio::task::spawn_blocking(move || recv_master(&l, limit))
            .await
            .map_err(std::io::Error::other)?
        // `self` goes here: the socket file is removed.
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Wait (bounded) until `fd` is readable.
fn poll_in(fd: RawFd, limit: Duration) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return Ok(());
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no pty master came over the console socket",
            ));
        }
        let e = last_err();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recv_master(l: &std::os::unix::net::UnixListener, limit: Duration) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    poll_in(l.as_raw_fd(), limit)?;
    let (conn, _) = l.accept()?;
    poll_in(conn.as_raw_fd(), limit)?;
    // runc sends the name ("/dev/ptmx") as the data and the master as the one right.
    let mut name = [0u8; 256];
    let mut cbuf = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let m = loop {
        match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cbuf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut master = None;
    for c in m.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed this fd for us.
                let o = unsafe { OwnedFd::from_raw_fd(f) };
                master.get_or_insert(o);
            }
        }
    }
    let master = master.ok_or_else(|| {
        std::io::Error::other("the console socket got a message without a pty master")
    })?;
    // SAFETY: isatty on an fd we own.
    if unsafe { libc::isatty(master.as_raw_fd()) } != 1 {
        return Err(std::io::Error::other(
            "the console socket got an fd that is not a terminal",
        ));
    }
    Ok(master)
}

/// Remove a container's stream FIFOs (and a console socket left by a crash mid-create).
pub fn remove_fifos(io_dir: &Path, container: &str) {
    for s in ["stdout", "stderr", "stdin"] {
        let _ = std::fs::remove_file(fifo_path(io_dir, container, s));
    }
    let _ = std::fs::remove_file(console_path(io_dir, container));
}

/// Optional live tap of a container's output (attached `up`, `run`).
pub type Tap = Arc<dyn Fn(&str, &str) + Send + Sync>;
/// Sees a pty's output raw, as read (for attached terminals: prompts have no newline).
pub type RawTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Lines longer than this are logged in pieces of this size (as Docker does): a line never
/// waits in the pipe longer than the pipe can hold.
const MAX_LINE: usize = 16 * 1024;
/// The most one step looks at (a default pipe holds 64 KiB).
const PEEK: usize = 64 * 1024;

/// Per thread: a pipe to peek into with tee(2) and the buffer the peeked bytes are read into.
struct Scratch {
    r: OwnedFd,
    w: OwnedFd,
    buf: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

enum Step {
    /// Lines went to the log (and off the pipe): try again.
    Logged,
    /// Nothing to log yet: empty, or only the start of a line.
    Wait,
    /// No writer left and nothing buffered.
    Eof,
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Read exactly `n` bytes that are known to be in the (non-blocking) pipe `fd`.
fn read_exact_now(fd: RawFd, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        if n < 0 {
            let e = last_err();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    Ok(())
}

/// The pieces to log from the peeked bytes and how many bytes they cover. `all`: the writers are
/// gone, so a trailing partial line is the last one. `keep_cr`: a tty's lines keep the `\r` of
/// their CRLF (Docker logs a tty's output as the pty produced it).
fn split_lines(buf: &[u8], all: bool, keep_cr: bool) -> (Vec<&[u8]>, usize) {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            let mut line = &buf[start..i];
            if !keep_cr && line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                pieces.push(line);
            }
            pieces.extend(line.chunks(MAX_LINE));
            start = i + 1;
        }
    }
    let mut rest = &buf[start..];
    while rest.len() >= MAX_LINE {
        pieces.push(&rest[..MAX_LINE]);
        rest = &rest[MAX_LINE..];
        start += MAX_LINE;
    }
    if all && !rest.is_empty() {
        pieces.push(rest);
        start += rest.len();
    }
    (pieces, start)
}

/// One pass: peek, log complete lines, consume them.
fn step(
    fd: RawFd,
    closed: bool,
    stream: &str,
    log: &Mutex<LogWriter>,
    tap: Option<&Tap>,
) -> std::io::Result<Step> {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let (r, w) = pipe_pair()?;
            for f in [&r, &w] {
                // SAFETY: fcntl on fds we own.
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            }
            *slot = Some(Scratch {
                r,
                w,
                buf: Vec::new(),
            });
        }
        let s = slot.as_mut().expect("scratch set above");
        // SAFETY: tee between two pipes we hold; nothing is consumed from `fd`.
        let n = unsafe {
            libc::tee(
                fd,
                s.w.as_raw_fd(),
                PEEK,
                libc::SPLICE_F_NONBLOCK as libc::c_uint,
            )
        };
        if n < 0 {
            let e = last_err();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Step::Wait),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(Step::Eof);
        }
        let n = n as usize;
        s.buf.resize(n, 0);
        if let Err(e) = read_exact_now(s.r.as_raw_fd(), &mut s.buf) {
            // The scratch pipe is in an unknown state: start over with a new one.
            *slot = None;
            return Err(e);
        }
        // The writers are gone (and the peek saw everything): a trailing partial line is final.
        let (pieces, take) = split_lines(&s.buf, closed && n < PEEK, false);
        if take == 0 {
            return Ok(Step::Wait);
        }
        let now = SystemTime::now();
        if let Ok(mut w) = log.lock() {
            let _ = w.write_lines(stream, &pieces, now);
        }
        if let Some(t) = tap {
            for p in &pieces {
                t(stream, &String::from_utf8_lossy(p));
            }
        }
        // Now off the pipe: only what is in the log. (A full disk drops lines rather than
        // blocking the container.)
        read_exact_now(fd, &mut s.buf[..take])?;
        Ok(Step::Logged)
    })
}

/// Copy a stream's complete lines into the log until no writer is left (the container's
/// processes have all exited) and the pipe is empty.
pub async fn copy_to_log(
    read: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<LogWriter>>,
    tap: Option<Tap>,
) {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same fd) until the
    // AsyncFd is dropped.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }) else {
        return;
    };
    let fd = afd.get_ref().as_raw_fd();
    // Sticky once seen: tokio never clears a closed readiness.
    let mut closed = false;
    loop {
        match step(fd, closed, stream, &log, tap.as_ref()) {
            Ok(Step::Logged) => {}
            Ok(Step::Eof) | Err(_) => return,
            Ok(Step::Wait) => {
                if closed {
                    // Hung up, yet the pipe still has a writer: one opened the FIFO again.
                    // Poll slowly rather than spin on the sticky closed readiness.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let Ok(mut g) = afd.readable().await else {
                    return;
                };
                closed = g.ready().is_read_closed();
                // Clear before the next peek: an event after this is never lost.
                g.clear_ready();
            }
        }
    }
}

/// Log pieces of one stream and show them on the tap.
fn emit(stream: &str, pieces: &[&[u8]], log: &Mutex<LogWriter>, tap: Option<&Tap>) {
    if pieces.is_empty() {
        return;
    }
    if let Ok(mut w) = log.lock() {
        let _ = w.write_lines(stream, pieces, SystemTime::now());
    }
    if let Some(t) = tap {
        for p in pieces {
            t(stream, &String::from_utf8_lossy(p));
        }
    }
}

thread_local! {
    static PTY_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One non-blocking read of the master: complete lines to the log, a partial line appended to
/// `pending`. Ok(false): the pty is done (EOF, or EIO: every slave fd is closed).
fn pty_step(
    fd: RawFd,
    pending: &mut Vec<u8>,
    log: &Mutex<LogWriter>,
    tap: Option<&Tap>,
    raw: Option<&RawTap>,
) -> std::io::Result<bool> {
    PTY_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.resize(MAX_LINE, 0);
        // SAFETY: reading into a buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            let e = last_err();
            return match e.raw_os_error() {
                Some(libc::EIO) => Ok(false),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let got = &buf[..n as usize];
        if let Some(r) = raw {
            r(got);
        }
        if pending.is_empty() {
            let (pieces, take) = split_lines(got, false, true);
            emit("stdout", &pieces, log, tap);
            pending.extend_from_slice(&got[take..]);
        } else {
            pending.extend_from_slice(got);
            let (pieces, take) = split_lines(pending, false, true);
            emit("stdout", &pieces, log, tap);
            pending.drain(..take);
        }
        if pending.is_empty() {
            // No buffer kept while the container is quiet.
            *pending = Vec::new();
        }
        Ok(true)
    })
}

/// Copy a `tty: true` container's terminal (the master of its pty) into its log as "stdout"
/// (a tty has no separate stderr), lines ending in CRLF kept as the pty makes them (Docker
/// does the same), until its last process has closed the pty: the master then reads EIO.
///
/// Unlike the stream FIFOs, a partial line waits here (lost if the supervisor is killed); the
/// master itself outlives the supervisor (see `supervisor/attach.rs`).
/// Every read is also shown raw to `raw` (attached terminals).
pub async fn copy_pty_to_log(
    master: OwnedFd,
    log: Arc<Mutex<LogWriter>>,
    tap: Option<Tap>,
    raw: Option<RawTap>,
) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same fd) until the
    // AsyncFd is dropped.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(master, Interest::READABLE) }) else {
        return;
    };
    let fd = afd.get_ref().as_raw_fd();
    let mut pending = Vec::new();
    loop {
        let Ok(mut g) = afd.readable().await else {
            break;
        };
        match pty_step(fd, &mut pending, &log, tap.as_ref(), raw.as_ref()) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => g.clear_ready(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // The last line, even without its newline.
    if !pending.is_empty() {
        emit("stdout", &[&pending[..]], &log, tap.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_newlines_and_long_lines_in_pieces() {
        let (p, n) = split_lines(b"a\r\nb\n\npart", false, false);
        assert_eq!(p, vec![&b"a"[..], b"b", b""]);
        assert_eq!(n, 6);
        let (p, _) = split_lines(b"a\r\nb\n", false, true);
        assert_eq!(p, vec![&b"a\r"[..], b"b"]);
        let (p, n) = split_lines(b"a\npart", true, false);
        assert_eq!(p, vec![&b"a"[..], b"part"]);
        assert_eq!(n, 6);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let (p, n) = split_lines(&long, false, false);
        assert_eq!(p.len(), 2);
        assert_eq!(n, MAX_LINE * 2, "the 5-byte rest waits for its newline");
    }

    /// A pty master: lines keep the pty's CRLF, a last partial line is logged at the end, and
    /// the copy ends (EIO) once the slave is closed.
    #[test]
    fn pty_output_is_logged_until_the_slave_closes() {
        let d = tempfile::tempdir().unwrap();
        let logp = d.path().join("c.log");
        let log = Arc::new(Mutex::new(LogWriter::open(&logp, None, 1).unwrap()));
        let p = nix::pty::openpty(None, None).unwrap();
        let (master, slave) = (p.master, p.slave);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let task = rt.spawn(copy_pty_to_log(master, log.clone(), None, None));
        let mut w = std::fs::File::from(slave);
        use std::io::Write;
        w.write_all(b"one\ntw").unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        w.write_all(b"o\nlast").unwrap();
        drop(w);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("EIO ends the copy once the slave is closed")
            .unwrap();
        // The line discipline turned \n into \r\n (onlcr); the CR stays.
        assert_eq!(read_log(&logp), vec!["one\r", "two\r", "last"]);
    }

    fn read_log(p: &Path) -> Vec<String> {
        crate::logs::read_all(p).into_iter().map(|l| l.l).collect()
    }

    /// The FIFO outlives its reader: the writer neither dies nor loses a byte while nobody
    /// reads, and a new reader gets everything, then EOF once the writer closes.
    #[test]
    fn fifo_survives_the_reader_and_a_new_reader_gets_everything() {
        let d = tempfile::tempdir().unwrap();
        let fifo = fifo_path(&io_dir(d.path()), "c", "stdout");
        let logp = d.path().join("c.log");
        let log = Arc::new(Mutex::new(LogWriter::open(&logp, None, 1).unwrap()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (rd, wr) = fifo_pair(&fifo).unwrap();
        let mut w = std::fs::File::from(wr);
        use std::io::Write;
        w.write_all(b"one\ntw").unwrap();
        let task = rt.spawn(copy_to_log(rd, "stdout", log.clone(), None));
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        // The reader goes (a killed supervisor): "tw" is still in the pipe, not in the log.
        task.abort();
        let _ = rt.block_on(task);
        assert_eq!(read_log(&logp), vec!["one"]);
        // Writing on with no reader neither fails nor raises SIGPIPE.
        w.write_all(b"o\nthree\n").unwrap();
        let rd = open_fifo_reader(&fifo).unwrap();
        let task = rt.spawn(copy_to_log(rd, "stdout", log.clone(), None));
        w.write_all(b"four").unwrap();
        drop(w);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("EOF once the writer is gone")
            .unwrap();
        assert_eq!(read_log(&logp), vec!["one", "two", "three", "four"]);
        remove_fifos(&io_dir(d.path()), "c");
        assert!(!fifo.exists());
    }
}

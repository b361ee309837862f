//! `berth-runtime serve` (src/serve.rs), driven as berth's supervisor drives it: requests with
//! their fds over a SOCK_SEQPACKET socket, exit codes back on each request's reply socket.
mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::serve::{self, Request};
use common::Ctr;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

fn seqpacket() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// Send `args` with stdio fds; wait (bounded) for the exit code.
fn call(ctl: &OwnedFd, args: &[String], stdio: [&OwnedFd; 3]) -> Option<i32> {
    let (reply, theirs) = seqpacket();
    let req = Request {
        args: args.to_vec(),
        env: vec![("SERVE_TEST".into(), "1".into())],
    };
    let fds = [
        theirs.as_raw_fd(),
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    serve::send_request(ctl.as_raw_fd(), &serve::encode(&req), &fds).unwrap();
    drop(theirs);
    wait_reply(&reply)
}

fn wait_reply(reply: &OwnedFd) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut forked = false;
    loop {
        match serve::read_reply(reply.as_raw_fd()) {
            Ok(serve::Reply::Forked) => forked = true,
            Ok(serve::Reply::Exit(code)) => {
                // Every request that ran was announced first; a malformed one was not.
                assert_eq!(forked, code != 125, "exit {code} after forked={forked}");
                return Some(code);
            }
            Ok(serve::Reply::Closed) => return None,
            Err(nix::Error::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reply: {e}"),
        }
    }
}

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), w)
}

#[test]
fn serve_runs_requests_in_forked_children_and_ends_on_eof() {
    need_root!();
    let c = Ctr::new("serve");
    let (ctl, theirs) = seqpacket();
    let mut srv = Command::new(common::BIN)
        .arg("--root")
        .arg(&c.root)
        .arg("serve")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = srv.id() as i32;

    // A container through the server: its output on the fds we passed, its exit code back.
    c.write(&c.spec(&[
        "sh",
        "-c",
        "echo hello from $SERVE_TEST; echo oops >&2; exit 3",
    ]));
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    let args: Vec<String> = vec![
        "--root".into(),
        c.root.to_string_lossy().into_owned(),
        "run".into(),
        "--bundle".into(),
        c.bundle.to_string_lossy().into_owned(),
        c.id.clone(),
    ];
    let code = call(&ctl, &args, [&null, &out_w, &err_w]);
    drop((out_w, err_w));
    assert_eq!(code, Some(3));
    let (mut out, mut err) = (String::new(), String::new());
    out_r.read_to_string(&mut out).unwrap();
    err_r.read_to_string(&mut err).unwrap();
    // The container's env is its spec's, not the request's: the variable is unset inside.
    assert_eq!(out.trim(), "hello from", "stdout: {out:?}");
    assert_eq!(err.trim(), "oops");

    // The runtime's own errors come back as its exit code, its message on the stderr passed.
    let (mut err_r, err_w) = pipe();
    let args: Vec<String> = vec![
        "--root".into(),
        c.root.to_string_lossy().into_owned(),
        "state".into(),
        "no-such-container".into(),
    ];
    let code = call(&ctl, &args, [&null, &null, &err_w]);
    drop(err_w);
    assert_eq!(code, Some(1));
    let mut err = String::new();
    err_r.read_to_string(&mut err).unwrap();
    assert!(err.contains("no-such-container"), "{err}");

    // A malformed request (one fd) is answered with 125 and the server goes on.
    let (reply, theirs) = seqpacket();
    serve::send_request(ctl.as_raw_fd(), b"{}", &[theirs.as_raw_fd()]).unwrap();
    drop(theirs);
    assert_eq!(wait_reply(&reply), Some(125));

    // It is back in our mount namespace (it pins none of the private one's mounts) and runs
    // from a read-only mount of its binary.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_eq!(ns(&pid.to_string()), ns("self"));
    let exe = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    let st = nix::sys::statvfs::fstatvfs(&exe).unwrap();
    assert!(
        st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        "the server's binary is on a writable mount"
    );
    drop(exe);

    // End of file on the control socket ends it.
    drop(ctl);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = srv.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not end on EOF");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

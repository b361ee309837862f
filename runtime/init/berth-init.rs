//! berth-init: pid 1 of a `berth.init=true` container (Compose `init: true`).
//!
//! `berth-init PATH ARGV0 [ARGS...]`: block every signal, fork, run `execve(PATH, ARGV0
//! ARGS..., envp)` in the child with an empty signal mask, then in a `sigtimedwait` loop
//! forward every signal but SIGCHLD to that child and reap every zombie; exit with the child's
//! code (128+n when a signal killed it).
//!
//! Built by `runtime/build.rs` as a freestanding static executable (no libc, raw syscalls, a
//! few kilobytes) and embedded in the runtime, which executes it from a sealed memfd. A forked
//! copy of the runtime binary in the same loop costs 0.5-2 MiB of private memory per container;
//! this costs a few pages. Keep it free of anything that needs a runtime library: no
//! allocation, no formatting, no panics that could unwind.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: usize = 1;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PRCTL: usize = 157;
    pub const EXIT_GROUP: usize = 231;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const WRITE: usize = 64;
    pub const EXIT_GROUP: usize = 94;
    pub const KILL: usize = 129;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const PRCTL: usize = 167;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
}

#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a,
        in("rsi") b,
        in("rdx") c,
        in("r10") d,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
    );
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!(
        "svc 0",
        in("x8") n,
        inlateout("x0") a as isize => ret,
        in("x1") b,
        in("x2") c,
        in("x3") d,
        options(nostack)
    );
    ret
}

// The kernel starts us with the stack pointer at argc (16-byte aligned); hand it to Rust.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "call {main}",
    "ud2",
    main = sym main,
);

#[cfg(target_arch = "aarch64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, sp",
    "bl {main}",
    "brk #0",
    main = sym main,
);

const SIGCHLD: usize = 17;
const SIG_SETMASK: usize = 2;
const WNOHANG: usize = 1;
const PR_SET_NAME: usize = 15;
const PR_SET_DUMPABLE: usize = 4;
const EINTR: isize = 4;
const ALL: u64 = !0;
const NONE: u64 = 0;

fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group never returns.
        unsafe { syscall(nr::EXIT_GROUP, code as usize, 0, 0, 0) };
    }
}

fn write_err(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: a valid buffer; a short or failed write of a diagnostic is acceptable.
        unsafe { syscall(nr::WRITE, 2, p.as_ptr() as usize, p.len(), 0) };
    }
}

/// The NUL-terminated string at `p` (without the NUL). The volatile read keeps LLVM from
/// turning the loop into a call to a `strlen` that does not exist here.
unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    while core::ptr::read_volatile(p.add(n)) != 0 {
        n += 1;
    }
    core::slice::from_raw_parts(p, n)
}

fn errno_name(e: isize) -> &'static [u8] {
    match -e {
        1 => b"operation not permitted",
        2 => b"no such file or directory",
        7 => b"argument list too long",
        8 => b"exec format error",
        11 => b"resource temporarily unavailable",
        12 => b"cannot allocate memory",
        13 => b"permission denied",
        20 => b"not a directory",
        26 => b"text file busy",
        40 => b"too many levels of symbolic links",
        _ => b"error",
    }
}

fn set_mask(m: &u64) -> isize {
    // SAFETY: rt_sigprocmask with an 8-byte kernel sigset.
    unsafe {
        syscall(
            nr::RT_SIGPROCMASK,
            SIG_SETMASK,
            m as *const u64 as usize,
            0,
            8,
        )
    }
}

/// Reap every zombie without blocking; the exit code if `child` was among them.
fn reap(child: isize) -> Option<i32> {
    let mut found = None;
    loop {
        let mut status: i32 = 0;
        // SAFETY: wait4 writes an int status; no rusage.
        let pid = unsafe {
            syscall(
                nr::WAIT4,
                -1isize as usize,
                &mut status as *mut i32 as usize,
                WNOHANG,
                0,
            )
        };
        if pid == -EINTR {
            continue;
        }
        if pid <= 0 {
            return found;
        }
        if pid == child {
            let sig = status & 0x7f;
            found = Some(if sig == 0 {
                (status >> 8) & 0xff
            } else {
                128 + sig
            });
        }
    }
}

unsafe extern "C" fn main(sp: *const usize) -> ! {
    let argc = *sp;
    let argv = sp.add(1) as *const *const u8;
    let envp = argv.add(argc + 1);
    // Everything stays blocked (the runtime already blocked them across the exec, so nothing
    // sent to the container since is lost: it is pending and gets forwarded below).
    set_mask(&ALL);
    syscall(nr::PRCTL, PR_SET_DUMPABLE, 0, 0, 0);
    syscall(
        nr::PRCTL,
        PR_SET_NAME,
        c"berth-init".as_ptr() as usize,
        0,
        0,
    );
    if argc < 3 {
        write_err(&[b"usage: berth-init PATH ARGV0 [ARGS...]\n"]);
        exit(127);
    }
    let path = *argv.add(1);
    let child = syscall(nr::CLONE, SIGCHLD, 0, 0, 0);
    if child < 0 {
        write_err(&[b"berth-init: fork: ", errno_name(child), b"\n"]);
        exit(1);
    }
    if child == 0 {
        // The user process: no signal blocked, every disposition at its default (the runtime
        // reset them before executing us and we installed no handler).
        set_mask(&NONE);
        let e = syscall(
            nr::EXECVE,
            path as usize,
            argv.add(2) as usize,
            envp as usize,
            0,
        );
        write_err(&[
            b"berth-init: exec ",
            cstr(path),
            b": ",
            errno_name(e),
            b"\n",
        ]);
        exit(127);
    }
    loop {
        let sig = syscall(nr::RT_SIGTIMEDWAIT, &ALL as *const u64 as usize, 0, 0, 8);
        if sig <= 0 {
            continue;
        }
        if sig as usize == SIGCHLD {
            if let Some(code) = reap(child) {
                // Orphans that exited together with the child are gone too (reap drained
                // every zombie there was).
                exit(code);
            }
        } else {
            syscall(nr::KILL, child as usize, sig as usize, 0, 0);
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(255)
}

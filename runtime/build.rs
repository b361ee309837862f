//! Builds `init/berth-init.rs`, the pid 1 of `berth.init=true` containers, as a freestanding
//! static executable of a few kilobytes that `process::mini_init` embeds with `include_bytes!`
//! and executes from a sealed memfd.
//!
//! Why not re-exec the runtime binary itself as the init: it is a dynamically linked PIE, and
//! after pivot_root its ELF interpreter (`/lib64/ld-linux-x86-64.so.2`) and libraries
//! (libc, libseccomp, libgcc_s) would be looked up in the container's rootfs: missing in
//! busybox or distroless images, and container-controlled code in the others. Even a fresh exec
//! of it dirties ~0.4 MiB (relocations) before main.
//!
//! Only the compiler that builds this crate is needed (`$RUSTC`, its linker, `core`): no C
//! toolchain, no libc. On targets without the init's few lines of syscall glue the file is
//! empty and the runtime falls back to its in-process reaper.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/berth-init.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth-init");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" || !matches!(arch.as_str(), "x86_64" | "aarch64") {
        std::fs::write(&out, b"").expect("write empty berth-init");
        return;
    }
    let target = std::env::var("TARGET").expect("TARGET");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition=2021",
        "--crate-type=bin",
        "--crate-name=berth_init",
        "--target",
        &target,
        "-Copt-level=s",
        "-Cpanic=abort",
        "-Cdebuginfo=0",
        "-Cstrip=symbols",
        "-Ccodegen-units=1",
        // A static, non-PIE executable: nothing to relocate, no interpreter, no libc.
        "-Crelocation-model=static",
        "-Ctarget-feature=+crt-static",
        "-Clink-arg=-nostartfiles",
        "-Clink-arg=-nostdlib",
        "-Clink-arg=-static",
        "-Clink-arg=-Wl,--build-id=none",
    ]);
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut a = std::ffi::OsString::from("-Clinker=");
        a.push(linker);
        cmd.arg(a);
    }
    let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("init/berth-init.rs");
    cmd.arg("-o").arg(&out).arg(src);
    let status = cmd.status().expect("run rustc for berth-init");
    assert!(status.success(), "building init/berth-init.rs failed");
}

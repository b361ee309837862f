//! The runc-compatible command line (`berth-runtime` and `berth __runtime`).
use std::ffi::OsString;

/// Run the CLI with `args` (without the program name); returns the exit code.
pub fn main(_args: Vec<OsString>) -> i32 {
    eprintln!("berth-runtime: not implemented yet");
    1
}

//! /proc/sys writes (the kernel's own interface for these knobs; no shelling out).

use std::path::PathBuf;

use crate::{io_err, Result};

pub(crate) fn read(key: &str) -> Result<String> {
    let path = PathBuf::from("/proc/sys").join(key);
    Ok(std::fs::read_to_string(&path)
        .map_err(io_err(&path))?
        .trim()
        .to_string())
}

/// Write `value` unless it is already set (avoids needless writes, e.g. to ip_forward which
/// resets per-interface settings when toggled).
pub(crate) fn ensure(key: &str, value: &str) -> Result<()> {
    if read(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    let path = PathBuf::from("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(io_err(&path))
}

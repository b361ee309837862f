//! Container logs: one JSON-lines file per container (`{"t": time, "s": stream, "l": line}`),
//! written by the supervisor, rotated by `logging.options` max-size / max-file, kept across
//! restarts, read by `berth logs` without needing the supervisor.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::state::{format_time, parse_time};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 time with nanoseconds.
    pub t: String,
    /// "stdout" or "stderr".
    pub s: String,
    /// The line without its newline.
    pub l: String,
}

pub fn log_dir(project_dir: &Path) -> PathBuf {
    project_dir.join("logs")
}

pub fn log_path(project_dir: &Path, container: &str) -> PathBuf {
    log_dir(project_dir).join(format!("{container}.log"))
}

/// Appends lines to a container's log file, rotating when it exceeds `max_size`.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: Option<u64>,
    max_files: u32,
}

impl LogWriter {
    pub fn open(path: &Path, max_size: Option<u64>, max_files: u32) -> std::io::Result<LogWriter> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
        })
    }

    /// Append several lines of one stream with one write (rotating between lines as needed).
    pub fn write_lines(
        &mut self,
        stream: &str,
        lines: &[&[u8]],
        at: SystemTime,
    ) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Rec<'a> {
            t: &'a str,
            s: &'a str,
            l: &'a str,
        }
        let t = format_time(at);
        // Written out in slices of about 64 KiB: a big batch of short lines must not make the
        // supervisor's heap grow by ten times its size.
        const FLUSH: usize = 64 * 1024;
        let want: usize = lines.iter().map(|l| l.len() + 64).sum();
        let mut buf: Vec<u8> = Vec::with_capacity(want.min(FLUSH + 1024));
        for l in lines {
            if buf.len() >= FLUSH {
                self.file.write_all(&buf)?;
                self.size += buf.len() as u64;
                buf.clear();
            }
            let mark = buf.len();
            let l = String::from_utf8_lossy(l);
            let rec = Rec {
                t: &t,
                s: stream,
                l: &l,
            };
            serde_json::to_writer(&mut buf, &rec).map_err(std::io::Error::other)?;
            buf.push(b'\n');
            if let Some(max) = self.max_size {
                if self.size + mark as u64 > 0 && self.size + buf.len() as u64 > max {
                    self.file.write_all(&buf[..mark])?;
                    buf.drain(..mark);
                    self.rotate()?;
                }
            }
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // name.log -> name.log.1 -> … -> name.log.(max_files-1); the oldest is dropped.
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.max_files - 1).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Read every line of a container's log, oldest first, across rotated files.
pub fn read_all(path: &Path) -> Vec<LogLine> {
    let mut files = Vec::new();
    let mut i = 1;
    while rotated(path, i).exists() {
        files.push(rotated(path, i));
        i += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        if let Ok(file) = File::open(&f) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(rec) = serde_json::from_str::<LogLine>(&line) {
                    out.push(rec);
                }
            }
        }
    }
    out
}

/// Filter by `--since`/`--until` and keep the last `tail` lines.
pub fn select(
    lines: Vec<LogLine>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    tail: Option<usize>,
) -> Vec<LogLine> {
    let mut v: Vec<LogLine> = lines
        .into_iter()
        .filter(|l| {
            let t = parse_time(&l.t);
            since.is_none_or(|s| t.is_some_and(|t| t >= s))
                && until.is_none_or(|u| t.is_some_and(|t| t <= u))
        })
        .collect();
    if let Some(n) = tail {
        if v.len() > n {
            v.drain(..v.len() - n);
        }
    }
    v
}

/// Parse `--since`/`--until`: an RFC 3339 time, a Unix timestamp, or a duration ago ("42m", "1h30m", "10s").
pub fn parse_since(s: &str, now: SystemTime) -> Option<SystemTime> {
    if let Some(t) = parse_time(s) {
        return Some(t);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs));
    }
    let d = crate::compose::convert::parse_duration(s)?;
    now.checked_sub(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn write_rotate_read_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(&p, Some(200), 3).unwrap();
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..20 {
            let line = format!("line {i}");
            w.write_lines("stdout", &[line.as_bytes()], t0 + Duration::from_secs(i))
                .unwrap();
        }
        assert!(rotated(&p, 1).exists());
        assert!(
            !rotated(&p, 3).exists(),
            "max-file 3 keeps at most 2 rotated files"
        );
        let all = read_all(&p);
        assert!(
            !all.is_empty() && all.len() < 20,
            "the oldest lines were dropped: {}",
            all.len()
        );
        assert_eq!(all.last().unwrap().l, "line 19");
        // order is preserved across files
        let nums: Vec<u32> = all.iter().map(|l| l.l[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[0] + 1 == w[1]), "{nums:?}");
        let tail = select(all.clone(), None, None, Some(2));
        assert_eq!(
            tail.iter().map(|l| l.l.as_str()).collect::<Vec<_>>(),
            vec!["line 18", "line 19"]
        );
        let since = select(all, Some(t0 + Duration::from_secs(18)), None, None);
        assert_eq!(since.len(), 2);
    }

    #[test]
    fn write_lines_batches_and_rotates_between_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(&p, Some(300), 3).unwrap();
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let owned: Vec<String> = (0..8).map(|i| format!("line {i}")).collect();
        let lines: Vec<&[u8]> = owned.iter().map(|s| s.as_bytes()).collect();
        w.write_lines("stderr", &lines, t0).unwrap();
        assert!(rotated(&p, 1).exists(), "rotated within the batch");
        for f in [p.clone(), rotated(&p, 1)] {
            assert!(
                std::fs::metadata(&f).unwrap().len() <= 300,
                "{}",
                f.display()
            );
        }
        let all = read_all(&p);
        let nums: Vec<u32> = all.iter().map(|l| l.l[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[0] + 1 == w[1]), "{nums:?}");
        assert_eq!(*nums.last().unwrap(), 7);
        assert!(all.iter().all(|l| l.s == "stderr"));
    }
}

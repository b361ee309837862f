//! The supervisor's resident memory: letting go of the binary's pages it is not running.
//!
//! Most of a quiet supervisor's PSS is the berth binary's own file pages (text and read-only
//! data), not heap: one binary holds the CLI, the loader, the builder and the supervisor, and
//! on a fault the kernel maps the whole page-cache folio around the address (64-128 KiB here),
//! so the code that ran once (start-up, the `up` path, the Compose loader) stays mapped for the
//! process's whole life. `release_text` drops this process's mappings of those pages
//! (`MADV_DONTNEED` on the executable's read-only `PT_LOAD` segments) once a burst of work is
//! over. The pages stay in the page cache (shared with every `berth` command, reclaimable like
//! any file's cache); the next code that runs maps its pages again with minor faults, so what
//! stays resident is what ran since the last release. Writable segments (`.data`, `.bss`, the
//! relocated RELRO data) are never touched: their private copies would be lost.
//!
//! `BERTH_KEEP_TEXT=1` turns it off (to measure without it).

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Page size (4 KiB on every platform berth runs on; read once).
fn page_size() -> usize {
    // SAFETY: plain getter.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The main executable's read-only loaded segments, as page-aligned `(start, len)` ranges
/// (rounded inwards, so no byte of a neighbouring writable segment is included).
fn read_only_segments() -> Vec<(usize, usize)> {
    struct Acc {
        page: usize,
        out: Vec<(usize, usize)>,
        seen: bool,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Acc` passed below; `info` is valid for this call.
        let acc = unsafe { &mut *(data as *mut Acc) };
        if acc.seen {
            return 1;
        }
        // The first object is the main program.
        acc.seen = true;
        let info = unsafe { &*info };
        let base = info.dlpi_addr as usize;
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` holds `dlpi_phnum` headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = base + ph.p_vaddr as usize;
            // Only what the file backs: a bss tail (memsz > filesz) is anonymous memory.
            let end = start + ph.p_filesz as usize;
            let s = start.div_ceil(acc.page) * acc.page;
            let e = end / acc.page * acc.page;
            if e > s {
                acc.out.push((s, e - s));
            }
        }
        1
    }
    let mut acc = Acc {
        page: page_size(),
        out: Vec::new(),
        seen: false,
    };
    // SAFETY: the callback only reads the headers the loader hands it.
    unsafe {
        libc::dl_iterate_phdr(Some(each), &mut acc as *mut Acc as *mut c_void);
    }
    acc.out
}

/// Requests served so far (see `quiet_later`).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How long after its last request the supervisor counts as quiet.
const QUIET: Duration = Duration::from_secs(10);

/// Called as each client request ends: once no other request came for `QUIET`, let go of the
/// text that served them (a `ps`, `stop`, `logs`...), and of the heap's free pages.
pub(super) fn quiet_later() {
    let mine = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::spawn(async move {
        tokio::time::sleep(QUIET).await;
        if REQUESTS.load(Ordering::Relaxed) == mine {
            super::trim_heap();
        }
    });
}

/// Drop this process's page-table entries for the binary's text and read-only data; returns
/// the bytes advised (0 when turned off or refused).
pub(super) fn release_text() -> usize {
    if std::env::var_os("BERTH_KEEP_TEXT").is_some() {
        return 0;
    }
    let mut done = 0;
    for (start, len) in read_only_segments() {
        // SAFETY: the range is a read-only, file-backed segment of this executable that nothing
        // writes: dropping its page-table entries only makes the next access fault the same
        // file pages in again.
        let rc = unsafe { libc::madvise(start as *mut c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            done += len;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of this process's read-only mappings of its own executable
    /// (`/proc/self/smaps`).
    fn resident_exe() -> usize {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy().into_owned();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut mine, mut kib) = (false, 0);
        for line in smaps.lines() {
            let mut it = line.split_whitespace();
            let (Some(a), Some(perms)) = (it.next(), it.next()) else {
                continue;
            };
            if perms.len() == 4
                && a.split('-').count() == 2
                && a.split('-').all(|h| usize::from_str_radix(h, 16).is_ok())
            {
                mine = line.ends_with(exe.as_str()) && !perms.contains('w');
            } else if let (true, Some(v)) = (mine, line.strip_prefix("Rss:")) {
                kib += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .unwrap();
            }
        }
        kib * 1024
    }

    #[test]
    fn segments_are_the_executables_read_only_ones() {
        let segs = read_only_segments();
        assert!(!segs.is_empty());
        // This very function's code is in one of them, and no writable static is.
        let here = segments_are_the_executables_read_only_ones as fn() as usize;
        assert!(segs.iter().any(|(s, l)| (*s..s + l).contains(&here)));
        static WRITABLE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(7);
        let w = &WRITABLE as *const _ as usize;
        assert!(!segs.iter().any(|(s, l)| (*s..s + l).contains(&w)));
    }

    #[test]
    fn release_drops_resident_text_and_code_still_runs() {
        // Touch a good part of the text first (formatting, collections), then release.
        CHANGED.store(43, std::sync::atomic::Ordering::Relaxed);
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        let before = resident_exe();
        let advised = release_text();
        let after = resident_exe();
        assert!(advised > 0);
        assert!(after < before, "resident text {before} -> {after}");
        // Code and read-only data fault back in: the same work gives the same result.
        let again: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v, again);
        assert_eq!(CHANGED.load(std::sync::atomic::Ordering::Relaxed), 43);
    }

    /// A static changed at run time (a private copy of its page): it must survive a release.
    static CHANGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(42);
}

//! Small /proc helpers shared by the test files: finding the stratafs daemon of a mount point,
//! whether a pid is alive, its open fds and RSS, dropping the kernel's caches, polling a
//! condition with a timeout, and the mount table.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Pids of the stratafs daemons of `mnt`: processes (other than this one) whose argv[0] ends
/// with "stratafs" and one of whose arguments is exactly `mnt`. Looks at the command line only
/// (not /proc/PID/exe); finds none when there is none.
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let me = std::process::id() as i32;
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            let is_strata = args
                .first()
                .map(|a0| a0.ends_with(b"stratafs"))
                .unwrap_or(false);
            if is_strata && args.contains(&want) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The daemon serving `mnt`: a process whose executable (/proc/PID/exe) is a file named
/// "stratafs" and one of whose arguments is exactly `mnt`. Panics if there is none.
pub fn daemon_pid(mnt: &Path) -> i32 {
    let want = mnt.as_os_str().as_bytes();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let is_strata = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.ends_with("stratafs"))
            .unwrap_or(false);
        if is_strata && cmd.split(|&b| b == 0).any(|a| a == want) {
            return pid;
        }
    }
    panic!("no stratafs daemon found for {}", mnt.display());
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// The number of open fds of `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The resident set size of `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Drops the kernel's dentry and inode caches so it forgets what it still holds of the mounts.
pub fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// Polls `ok` every `poll` until it holds; fails ("timed out waiting for {what}") once `timeout`
/// has passed without it holding.
pub fn wait_until(what: &str, timeout: Duration, poll: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// Pids of live processes (other than this one's threads: any pid) whose argv[0] ends with one
/// of `argv0_suffixes` and whose command line contains `needle` anywhere (a substring match,
/// so a path inside an option counts).
pub fn daemons_mentioning(needle: &Path, argv0_suffixes: &[&[u8]]) -> Vec<i32> {
    let needle = needle.as_os_str().as_bytes();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let matches = cmdline
            .split(|&b| b == 0)
            .next()
            .is_some_and(|a0| argv0_suffixes.iter().any(|s| a0.ends_with(s)));
        if matches && cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// One line of /proc/self/mountinfo, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub point: PathBuf,
    /// The per-mount options (field 6).
    pub opts: String,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let o = &field[i + 1..i + 4];
            if o.iter().all(|b| (b'0'..=b'7').contains(b)) {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Every mount of this mount namespace, oldest first.
pub fn mounts() -> Vec<MountEntry> {
    let info = fs::read("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let text = |f: &[u8]| String::from_utf8_lossy(&unescape_octal(f)).into_owned();
        out.push(MountEntry {
            point: PathBuf::from(OsStr::from_bytes(&unescape_octal(fields[4]))),
            opts: text(fields[5]),
            fstype: text(fields[sep + 1]),
            source: text(fields[sep + 2]),
        });
    }
    out
}

/// The mount points, oldest first.
pub fn mount_points() -> Vec<PathBuf> {
    mounts().into_iter().map(|m| m.point).collect()
}

/// Whether something is mounted at exactly `path`.
pub fn mounted_at(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

//! Small system helpers: running commands, dropping caches, Ctrl-C, finding a FUSE daemon.

use std::ffi::{CStr, OsStr};
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Error type of the instrument: a message for the user.
pub type Result<T> = std::result::Result<T, String>;

/// Adds what was being done to an I/O error.
pub fn ctx<T>(what: impl std::fmt::Display, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP only set a flag: the run stops at the next check and every guard
/// (mounts, loop device, scratch dir) is dropped on the way out.
pub fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Returns an error once Ctrl-C was pressed, so `?` unwinds through the guards.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        Err("interrupted".to_string())
    } else {
        Ok(())
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command whose children do not get the terminal's Ctrl-C (FUSE daemons must outlive it
/// until we unmount them).
pub fn command<S: AsRef<OsStr>>(program: S) -> Command {
    let mut c = Command::new(program);
    c.process_group(0);
    c
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// First line of a command's stdout (or stderr), or `None` if it cannot run.
pub fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Full path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Writes dirty data, then drops the page cache, dentries and inodes; then reads back the
/// programs the workloads run (and their libraries), which would otherwise come from this
/// VM's disk at the first exec and put its latency into the measure.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    ctx(
        "writing /proc/sys/vm/drop_caches (needs root)",
        fs::write("/proc/sys/vm/drop_caches", "3\n"),
    )?;
    for f in tool_files() {
        let _ = fs::read(f);
    }
    Ok(())
}

/// The executables the workloads spawn, and the shared libraries they load.
fn tool_files() -> &'static [PathBuf] {
    static FILES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let mut files = Vec::new();
        for tool in ["find", "tar", "fio"] {
            let Some(exe) = which(tool) else { continue };
            if let Ok(out) = Command::new("ldd").arg(&exe).output() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux..."
                    if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
                        let p = PathBuf::from(p);
                        if !files.contains(&p) {
                            files.push(p);
                        }
                    }
                }
            }
            files.push(exe);
        }
        files
    })
}

/// Times a closure.
pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let v = f()?;
    Ok((start.elapsed(), v))
}

/// Pid of the process whose command line names `mountpoint` as one of its arguments: the FUSE
/// daemon serving it (every run uses a fresh mountpoint path, so there is no stale match).
pub fn daemon_pid(mountpoint: &Path) -> Option<i32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|arg| arg == want) && !is_zombie(pid) {
            return Some(pid);
        }
    }
    None
}

pub fn is_zombie(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Waits until a process is gone (or a zombie nobody reaps).
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Memory and descriptors of a daemon, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonCost {
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Resident set now (VmRSS), KiB.
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

pub fn daemon_cost(pid: i32) -> Option<DaemonCost> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(DaemonCost {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

/// Is `path` a mountpoint right now (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mount(mp) == want)
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// MemAvailable from /proc/meminfo, KiB.
pub fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `setxattr(2)` on a path (following symlinks), with no flags.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated C strings and `value` is a live slice whose
    // pointer and length are passed together; the kernel only reads them during the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

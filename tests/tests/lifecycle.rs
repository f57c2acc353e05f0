//! Mount lifecycle of the `stratafs` binary: daemonizing, readiness, unmounting by
//! `fusermount3 -u` and `umount`, stop signals, the foreground mode, `mount -t fuse.stratafs`,
//! and that an exiting daemon never unmounts the next mount at the same mountpoint.
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---- helpers (kept in this file on purpose: the test files are self-contained) ----

/// The binary under test: $STRATAFS_BIN, else target/<profile>/stratafs next to this test.
fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("stratafs"))
        .expect("test binary lives in target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace` first (or set STRATAFS_BIN)",
        path.display()
    );
    path
}

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount filesystems and must run as root"
    );
}

/// A unique directory under the temp dir with a lower layer `l` (holding `hello.txt`) and a
/// mountpoint `m`; on drop, lazily unmounts anything still mounted below it and removes it.
struct Scratch {
    root: PathBuf,
}

const HELLO: &str = "hello from the lower layer\n";

impl Scratch {
    fn new(name: &str) -> Scratch {
        assert_root();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stratafs-life-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("m")).unwrap();
        let s = Scratch {
            root: std::fs::canonicalize(&dir).unwrap(),
        };
        s.lower("l");
        s
    }

    /// A lower layer `name` holding `hello.txt`.
    fn lower(&self, name: &str) -> PathBuf {
        let l = self.root.join(name);
        std::fs::create_dir_all(&l).unwrap();
        std::fs::write(l.join("hello.txt"), HELLO).unwrap();
        l
    }

    fn m(&self) -> PathBuf {
        self.root.join("m")
    }

    fn opts(&self, lower: &str) -> String {
        // The daemon's life cycle is the FUSE driver's.
        format!("driver=fuse,lowerdir={}", self.root.join(lower).display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut below: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.root))
            .collect();
        below.reverse();
        for m in below {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
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

/// (mountpoint, fstype, source) of every mount, oldest first.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let text = |f: &[u8]| String::from_utf8_lossy(&unescape_octal(f)).into_owned();
        out.push((
            PathBuf::from(OsStr::from_bytes(&unescape_octal(fields[4]))),
            text(fields[sep + 1]),
            text(fields[sep + 2]),
        ));
    }
    out
}

fn mount_points() -> Vec<PathBuf> {
    mounts().into_iter().map(|m| m.0).collect()
}

fn mounted_at(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Pids of live `stratafs` processes whose command line mentions `needle`.
fn daemons(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_stratafs = cmdline
            .split(|&b| b == 0)
            .next()
            .is_some_and(|a0| a0.ends_with(b"stratafs"));
        if is_stratafs && cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The one daemon whose command line names `needle`.
fn daemon(needle: &Path) -> i32 {
    let pids = daemons(needle);
    assert_eq!(
        pids.len(),
        1,
        "one daemon for {}: {pids:?}",
        needle.display()
    );
    pids[0]
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `stratafs -o OPTS MNT`, which must return 0 with the mount ready.
fn mount(opts: &str, mnt: &Path) {
    let out = Command::new(bin())
        .arg("-o")
        .arg(opts)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stratafs -o {opts} {} failed: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted_at(mnt), "mounted once stratafs returns");
}

/// Uses the mount: the file of the lower layer must read back through it. The file is read
/// by a `cat` child: a descriptor open in this (multi-threaded) test process would be
/// inherited by children that other tests fork at that moment, and keep the mount busy.
fn use_mount(mnt: &Path) {
    let meta = std::fs::metadata(mnt).unwrap_or_else(|e| panic!("stat {}: {e}", mnt.display()));
    assert!(meta.is_dir());
    let out = Command::new("cat")
        .arg(mnt.join("hello.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cat {}/hello.txt: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO);
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn umount(mnt: &Path) {
    run_ok(Command::new("umount").arg(mnt));
}

fn fusermount_u(mnt: &Path) {
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt));
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills a still running foreground child if an assertion failed half way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---- tests ----

#[test]
fn two_hundred_mount_use_unmount_cycles() {
    let s = Scratch::new("cycles");
    let m = s.m();
    for i in 0..200 {
        mount(&s.opts("l"), &m);
        let pid = daemon(&m);
        use_mount(&m);
        if i % 2 == 0 {
            fusermount_u(&m);
        } else {
            umount(&m);
        }
        assert!(!mounted_at(&m), "cycle {i}: still mounted");
        wait_until(&format!("cycle {i}: daemon {pid} to exit"), || {
            daemons(&m).is_empty()
        });
    }
}

#[test]
fn stop_signals_unmount_and_exit() {
    let s = Scratch::new("signals");
    let m = s.m();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mount(&s.opts("l"), &m);
        let pid = daemon(&m);
        kill(Pid::from_raw(pid), sig).unwrap();
        wait_until(&format!("{sig:?}: daemon to exit"), || {
            daemons(&m).is_empty()
        });
        assert!(!mounted_at(&m), "{sig:?} unmounts");
    }
}

#[test]
fn foreground_mode_stays_until_unmounted() {
    let s = Scratch::new("foreground");
    let m = s.m();
    for flag in ["-f", "-d"] {
        let log = std::fs::File::create(s.root.join("stderr.log")).unwrap();
        let mut child = KillOnDrop(
            Command::new(bin())
                .arg(flag)
                .arg("-o")
                .arg(s.opts("l"))
                .arg(&m)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_until("the foreground mount", || mounted_at(&m));
        // The process we started is the one serving: it did not fork away.
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{flag}: still running"
        );
        assert_eq!(daemon(&m), child.0.id() as i32);
        use_mount(&m);
        umount(&m);
        let status = wait_exit(&mut child.0);
        assert!(status.success(), "{flag}: exit status {status}");
        assert!(!mounted_at(&m));
    }
}

#[test]
fn foreground_mode_sigterm() {
    let s = Scratch::new("fg-sigterm");
    let m = s.m();
    let mut child = KillOnDrop(
        Command::new(bin())
            .arg("-f")
            .arg("-o")
            .arg(s.opts("l"))
            .arg(&m)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the foreground mount", || mounted_at(&m));
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child.0);
    assert!(status.success(), "exit status {status}");
    assert!(!mounted_at(&m));
}

/// A directory holding a `stratafs` symlink to the binary under test.
fn bin_dir(s: &Scratch) -> PathBuf {
    let dir = s.root.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(bin(), dir.join("stratafs")).unwrap();
    dir
}

/// Checks the mount made by mount(8)/mount.fuse3, uses it, unmounts it.
fn check_helper_mount(m: &Path) {
    let found = mounts().into_iter().rfind(|x| x.0 == m);
    let Some((_, fstype, source)) = found else {
        panic!("{} is not mounted", m.display());
    };
    assert_eq!(fstype, "fuse.stratafs");
    assert_eq!(source, "mysrc");
    let pid = daemon(m);
    use_mount(m);
    umount(m);
    wait_until(&format!("daemon {pid} to exit"), || daemons(m).is_empty());
}

#[test]
fn mount_fuse3_runs_stratafs_from_path() {
    // For `mount -t fuse.stratafs SOURCE MNT -o OPTS`, mount(8) runs
    // `mount.fuse3 SOURCE MNT -o OPTS -t fuse.stratafs`, which runs `stratafs SOURCE MNT -o
    // OPTS` from PATH (plus generic options such as `rw` and `dev`).
    let s = Scratch::new("mountfuse3");
    let m = s.m();
    let path = format!(
        "{}:{}",
        bin_dir(&s).display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_string())
    );
    run_ok(
        Command::new("mount.fuse3")
            .arg("mysrc")
            .arg(&m)
            .arg("-o")
            .arg(format!("rw,{},nosuid,nodev", s.opts("l")))
            .args(["-t", "fuse.stratafs"])
            .env("PATH", path),
    );
    check_helper_mount(&m);
}

#[test]
fn mount_t_fuse_stratafs() {
    // mount(8) drops PATH from the environment of its helpers, so mount.fuse3 finds
    // `stratafs` only in the shell's default PATH (/usr/local/sbin, /usr/local/bin, ...), as
    // an installed binary would be. To stay off the real system, run mount(8) in a private
    // mount namespace where /usr/local/sbin is a directory holding our binary.
    let s = Scratch::new("mount8");
    let m = s.m();
    let script = r#"set -e
        mount --bind "$1" /usr/local/sbin
        mount -t fuse.stratafs mysrc "$2" -o "$3"
        grep -F " $2 " /proc/self/mountinfo
        cat "$2/hello.txt"
        umount "$2"
    "#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(bin_dir(&s))
        .arg(&m)
        .arg(format!("{},nosuid,nodev", s.opts("l")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mount -t fuse.stratafs in a private namespace: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let info = lines.next().unwrap_or_default();
    assert!(
        info.contains(" - fuse.stratafs mysrc "),
        "mountinfo line: {info:?}"
    );
    assert!(
        info.contains("nosuid") && info.contains("nodev"),
        "{info:?}"
    );
    assert_eq!(lines.collect::<Vec<_>>().join("\n") + "\n", HELLO);
    wait_until("the daemon to exit", || daemons(&m).is_empty());
}

#[test]
fn exiting_daemon_spares_the_next_mount() {
    // Unmount and at once mount again at the same place: the first daemon, exiting in the
    // meantime, must not take the second mount with it.
    let s = Scratch::new("remount");
    let m = s.m();
    let (a, b) = (s.lower("a"), s.lower("b"));
    for i in 0..20 {
        mount(&s.opts("a"), &m);
        let first = daemon(&a);
        if i % 2 == 0 {
            umount(&m);
        } else {
            fusermount_u(&m);
        }
        mount(&s.opts("b"), &m);
        wait_until(&format!("{i}: first daemon {first} to exit"), || {
            daemons(&a).is_empty()
        });
        assert!(mounted_at(&m), "{i}: the second mount survives");
        let second = daemon(&b);
        use_mount(&m);
        umount(&m);
        wait_until(&format!("{i}: second daemon {second} to exit"), || {
            daemons(&b).is_empty()
        });
        assert!(!mounted_at(&m));
    }
}

#[test]
fn signal_after_lazy_unmount_spares_the_next_mount() {
    // A lazily unmounted mount that is still in use keeps its daemon alive. When that daemon
    // is told to stop, the mountpoint already holds a newer mount, which it must leave alone.
    let s = Scratch::new("lazy");
    let m = s.m();
    let (a, b) = (s.lower("a"), s.lower("b"));
    mount(&s.opts("a"), &m);
    let first = daemon(&a);
    // An O_PATH descriptor on the root pins the detached mount without sending a request.
    let pin = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&m)
        .unwrap();
    run_ok(Command::new("umount").arg("-l").arg(&m));
    assert!(!mounted_at(&m));
    assert_eq!(daemons(&a), vec![first], "still serving the detached mount");
    mount(&s.opts("b"), &m);
    let second = daemon(&b);
    kill(Pid::from_raw(first), Signal::SIGTERM).unwrap();
    wait_until(&format!("first daemon {first} to exit"), || {
        daemons(&a).is_empty()
    });
    assert!(mounted_at(&m), "the newer mount survives");
    assert_eq!(daemons(&b), vec![second]);
    drop(pin);
    use_mount(&m);
    umount(&m);
    wait_until(&format!("second daemon {second} to exit"), || {
        daemons(&b).is_empty()
    });
}

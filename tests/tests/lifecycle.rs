//! Mount lifecycle of the `stratafs` binary: daemonizing, readiness, unmounting by
//! `fusermount3 -u` and `umount`, stop signals, the foreground mode, `mount -t fuse.stratafs`,
//! and that an exiting daemon never unmounts the next mount at the same mountpoint.
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use e2e::procfs::{self, daemons_mentioning, mounted_at, mounts, MountEntry};
use e2e::{assert_root, stratafs_bin, Scratch};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---- helpers (scratch dirs, the binary and the mount table come from the harness) ----

const HELLO: &str = "hello from the lower layer\n";

/// A scratch directory with a lower layer `l` (holding `hello.txt`) and a mountpoint `m`.
struct Life(Scratch);

impl Life {
    fn new(name: &str) -> Life {
        assert_root();
        let s = Life(Scratch::new("stratafs-life", name));
        s.0.dir("m");
        s.lower("l");
        s
    }

    /// A lower layer `name` holding `hello.txt`.
    fn lower(&self, name: &str) -> PathBuf {
        let l = self.0.dir(name);
        std::fs::write(l.join("hello.txt"), HELLO).unwrap();
        l
    }

    fn m(&self) -> PathBuf {
        self.0.path("m")
    }

    fn opts(&self, lower: &str) -> String {
        // The daemon's life cycle is the FUSE driver's.
        format!("driver=fuse,lowerdir={}", self.0.path(lower).display())
    }
}

/// Pids of live `stratafs` processes whose command line mentions `needle`.
fn daemons(needle: &Path) -> Vec<i32> {
    daemons_mentioning(needle, &[b"stratafs"])
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

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    procfs::wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(5),
        cond,
    );
}

/// `stratafs -o OPTS MNT`, which must return 0 with the mount ready.
fn mount(opts: &str, mnt: &Path) {
    let out = Command::new(stratafs_bin())
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
    let s = Life::new("cycles");
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
    let s = Life::new("signals");
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
    let s = Life::new("foreground");
    let m = s.m();
    for flag in ["-f", "-d"] {
        let log = std::fs::File::create(s.0.path("stderr.log")).unwrap();
        let mut child = KillOnDrop(
            Command::new(stratafs_bin())
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
    let s = Life::new("fg-sigterm");
    let m = s.m();
    let mut child = KillOnDrop(
        Command::new(stratafs_bin())
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
fn bin_dir(s: &Life) -> PathBuf {
    let dir = s.0.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(stratafs_bin(), dir.join("stratafs")).unwrap();
    dir
}

/// Checks the mount made by mount(8)/mount.fuse3, uses it, unmounts it.
fn check_helper_mount(m: &Path) {
    let found = mounts().into_iter().rfind(|x| x.point == m);
    let Some(MountEntry { fstype, source, .. }) = found else {
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
    let s = Life::new("mountfuse3");
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
    let s = Life::new("mount8");
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
    let s = Life::new("remount");
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
    let s = Life::new("lazy");
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

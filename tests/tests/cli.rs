//! Command line contract of the `stratafs` binary: every bad input is one line on stderr,
//! exit status 2, no panic and no mount left behind; the generic options that mount(8) and
//! mount.fuse3 pass are accepted.
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use e2e::procfs::{self, daemons_mentioning, mounted_at, mounts, MountEntry};
use e2e::{assert_root, stratafs_bin, Scratch};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

// ---- helpers (scratch dirs, the binary and the mount table come from the harness) ----

/// A scratch directory of this file's tests.
fn scratch(name: &str) -> Scratch {
    Scratch::new("stratafs-cli", name)
}

/// Pids of live `stratafs` processes whose command line mentions `needle`.
fn daemons(needle: &Path) -> Vec<i32> {
    daemons_mentioning(needle, &[b"stratafs", b"/proc/self/exe"])
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    procfs::wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(10),
        cond,
    );
}

fn stratafs(args: &[&OsStr]) -> Output {
    Command::new(stratafs_bin()).args(args).output().unwrap()
}

fn o(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The contract for bad input: status 2, one `stratafs: ...` line naming the problem, no
/// panic, nothing mounted on `mnt`.
fn assert_rejected(out: &Output, needles: &[&str], mnt: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "status; stderr: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(stderr.starts_with("stratafs: "), "{stderr:?}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }
    for panic_text in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(panic_text), "{stderr:?}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert!(
        !mounted_at(mnt),
        "nothing may be mounted on {}",
        mnt.display()
    );
    assert!(daemons(mnt).is_empty(), "no daemon may be left running");
}

/// Runs `stratafs -o OPTS MNT` and checks the rejection.
fn reject(opts: &str, mnt: &Path, needles: &[&str]) {
    let out = stratafs(&[o("-o"), o(opts), mnt.as_os_str()]);
    assert_rejected(&out, needles, mnt);
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

// ---- bad input ----

#[test]
fn missing_lowerdir_option() {
    let s = scratch("nolower");
    let (u, w, m) = (s.dir("u"), s.dir("w"), s.dir("m"));
    reject(
        &format!("upperdir={},workdir={}", p(&u), p(&w)),
        &m,
        &["lowerdir"],
    );
    let out = stratafs(&[m.as_os_str()]);
    assert_rejected(&out, &["lowerdir"], &m);
}

#[test]
fn missing_lower_layer() {
    let s = scratch("missinglower");
    let (l, m) = (s.dir("l"), s.dir("m"));
    let missing = s.root.join("does-not-exist");
    reject(
        &format!("lowerdir={}:{}", p(&l), p(&missing)),
        &m,
        &[&p(&missing), "No such file or directory"],
    );
}

#[test]
fn lower_layer_is_a_file() {
    let s = scratch("filelower");
    let (f, m) = (s.file("plain", "x\n"), s.dir("m"));
    reject(
        &format!("lowerdir={}", p(&f)),
        &m,
        &[&p(&f), "Not a directory"],
    );
}

#[test]
fn missing_upper_and_work_layers() {
    let s = scratch("missingupper");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let missing = s.root.join("nope");
    reject(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            p(&l),
            p(&missing),
            p(&w)
        ),
        &m,
        &["upperdir", &p(&missing)],
    );
    reject(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            p(&l),
            p(&u),
            p(&missing)
        ),
        &m,
        &["workdir", &p(&missing)],
    );
}

#[test]
fn upperdir_without_workdir_and_reverse() {
    let s = scratch("pair");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    reject(
        &format!("lowerdir={},upperdir={}", p(&l), p(&u)),
        &m,
        &["workdir"],
    );
    reject(
        &format!("lowerdir={},workdir={}", p(&l), p(&w)),
        &m,
        &["upperdir"],
    );
}

/// `lowerdir=L,upperdir=U,workdir=W` rejected, message naming both overlapping layers.
fn reject_overlap(name: &str, l: &str, u: &str, w: &str, needles: &[&str]) {
    let s = scratch(name);
    let m = s.dir("m");
    let (l, u, w) = (s.dir(l), s.dir(u), s.dir(w));
    let needles: Vec<String> = needles
        .iter()
        .map(|n| match *n {
            "L" => p(&l),
            "U" => p(&u),
            "W" => p(&w),
            other => other.to_string(),
        })
        .collect();
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    reject(
        &format!("lowerdir={},upperdir={},workdir={}", p(&l), p(&u), p(&w)),
        &m,
        &needles,
    );
}

#[test]
fn upper_inside_lower() {
    reject_overlap(
        "up-in-low",
        "l",
        "l/u",
        "w",
        &["upperdir", "lowerdir", "U", "L"],
    );
}

#[test]
fn work_inside_lower() {
    reject_overlap(
        "work-in-low",
        "l",
        "u",
        "l/w",
        &["workdir", "lowerdir", "W", "L"],
    );
}

#[test]
fn lower_inside_upper() {
    reject_overlap(
        "low-in-up",
        "u/l",
        "u",
        "w",
        &["upperdir", "lowerdir", "U", "L"],
    );
}

#[test]
fn lower_inside_work() {
    reject_overlap(
        "low-in-work",
        "w/l",
        "u",
        "w",
        &["workdir", "lowerdir", "W", "L"],
    );
}

#[test]
fn upper_inside_work() {
    reject_overlap(
        "up-in-work",
        "l",
        "w/u",
        "w",
        &["upperdir", "workdir", "U", "W"],
    );
}

#[test]
fn work_inside_upper() {
    reject_overlap(
        "work-in-up",
        "l",
        "u",
        "u/w",
        &["upperdir", "workdir", "U", "W"],
    );
}

#[test]
fn upper_equals_work() {
    reject_overlap(
        "up-eq-work",
        "l",
        "x",
        "x",
        &["upperdir", "workdir", "same"],
    );
}

#[test]
fn upper_equals_lower() {
    reject_overlap(
        "up-eq-low",
        "x",
        "x",
        "w",
        &["upperdir", "lowerdir", "same"],
    );
}

#[test]
fn overlap_through_a_symlink_is_seen() {
    // Paths are compared after canonicalization.
    let s = scratch("symlink");
    let (l, w, m) = (s.dir("l"), s.dir("w"), s.dir("m"));
    s.dir("l/u");
    let link = s.root.join("link-to-upper");
    std::os::unix::fs::symlink(l.join("u"), &link).unwrap();
    reject(
        &format!("lowerdir={},upperdir={},workdir={}", p(&l), p(&link), p(&w)),
        &m,
        &["upperdir", "lowerdir"],
    );
}

#[test]
fn workdir_on_another_filesystem() {
    assert_root();
    let s = scratch("xdev");
    let (l, u, m) = (s.dir("l"), s.dir("u"), s.dir("m"));
    let other = s.dir("tmpfs");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    let w = s.dir("tmpfs/w");
    reject(
        &format!("lowerdir={},upperdir={},workdir={}", p(&l), p(&u), p(&w)),
        &m,
        &["workdir", &p(&w), "same filesystem"],
    );
    let status = Command::new("umount").arg(&other).status().unwrap();
    assert!(status.success(), "umount tmpfs");
}

#[test]
fn missing_mountpoint() {
    let s = scratch("nomnt");
    let l = s.dir("l");
    let m = s.root.join("no-such-mountpoint");
    reject(
        &format!("lowerdir={}", p(&l)),
        &m,
        &["mountpoint", &p(&m), "No such file or directory"],
    );
    let out = stratafs(&[o("-o"), o(&format!("lowerdir={}", p(&l)))]);
    assert_rejected(&out, &["mountpoint"], &m);
}

#[test]
fn mountpoint_is_a_file() {
    let s = scratch("filemnt");
    let (l, m) = (s.dir("l"), s.file("plain", "x\n"));
    reject(
        &format!("lowerdir={}", p(&l)),
        &m,
        &["mountpoint", &p(&m), "Not a directory"],
    );
}

#[test]
fn unknown_option() {
    let s = scratch("unknown");
    let (l, m) = (s.dir("l"), s.dir("m"));
    reject(
        &format!("lowerdir={},bogus_option=1", p(&l)),
        &m,
        &["unknown option", "bogus_option"],
    );
    // Overlay options stratafs does not implement are unknown too, not silently ignored.
    reject(
        &format!("lowerdir={},redirect_dir=on", p(&l)),
        &m,
        &["unknown option", "redirect_dir"],
    );
}

#[test]
fn volatile_without_upper() {
    let s = scratch("volatile");
    let (l, l2, m) = (s.dir("l"), s.dir("l2"), s.dir("m"));
    // Both drivers: the option only means something for an upper layer.
    for driver in ["fuse", "kernel", "auto"] {
        reject(
            &format!("lowerdir={}:{},volatile,driver={driver}", p(&l), p(&l2)),
            &m,
            &["volatile needs upperdir and workdir"],
        );
    }
}

#[test]
fn unknown_flag() {
    let s = scratch("flag");
    let (l, m) = (s.dir("l"), s.dir("m"));
    let out = stratafs(&[
        o("--frobnicate"),
        o("-o"),
        o(&format!("lowerdir={}", p(&l))),
        m.as_os_str(),
    ]);
    assert_rejected(&out, &["--frobnicate"], &m);
}

#[test]
fn empty_path_components() {
    let s = scratch("empty");
    let (a, b, m) = (s.dir("a"), s.dir("b"), s.dir("m"));
    reject(
        &format!("lowerdir={}::{}", p(&a), p(&b)),
        &m,
        &["lowerdir", "empty"],
    );
    reject(&format!("lowerdir={}:", p(&a)), &m, &["lowerdir", "empty"]);
    reject("lowerdir=", &m, &["lowerdir", "empty"]);
    reject(
        &format!("lowerdir={},upperdir=,workdir={}", p(&a), p(&b)),
        &m,
        &["upperdir", "empty"],
    );
}

#[test]
fn bad_driver_value() {
    let s = scratch("driver");
    let (l, m) = (s.dir("l"), s.dir("m"));
    reject(
        &format!("lowerdir={},driver=zfs", p(&l)),
        &m,
        &["driver", "zfs"],
    );
}

#[test]
fn bad_threads_value() {
    let s = scratch("threads");
    let (l, m) = (s.dir("l"), s.dir("m"));
    reject(&format!("lowerdir={},threads=0", p(&l)), &m, &["threads"]);
}

// ---- accepted input ----

#[test]
fn help_and_version() {
    for flag in ["--help", "-h"] {
        let out = stratafs(&[o(flag)]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("lowerdir=") && text.contains("upperdir="));
        assert!(out.stderr.is_empty());
    }
    for flag in ["--version", "-V"] {
        let out = stratafs(&[o(flag)]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("stratafs "));
    }
}

/// Mounts with `args`, checks the mount, unmounts it and waits for the daemon to exit.
/// Returns the (options, fstype, source) the mount had.
fn mount_check_unmount(args: &[&OsStr], m: &Path) -> (String, String, String) {
    let out = stratafs(args);
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = mounts().into_iter().rfind(|x| x.point == m);
    let Some(MountEntry {
        opts,
        fstype,
        source,
        ..
    }) = found
    else {
        panic!("{} is not mounted", m.display());
    };
    assert_eq!(daemons(m).len(), 1, "one daemon serves the mount");
    let status = Command::new("umount").arg(m).status().unwrap();
    assert!(status.success(), "umount");
    wait_until("the daemon to exit", || daemons(m).is_empty());
    assert!(!mounted_at(m));
    (opts, fstype, source)
}

#[test]
fn generic_mount_options_in_helper_form() {
    assert_root();
    let s = scratch("generic");
    let (l, m) = (s.dir("l"), s.dir("m"));
    // What mount.fuse3 runs for an fstab line: SOURCE MOUNTPOINT -o OPTIONS.
    let opts = format!("rw,nosuid,nodev,noatime,driver=fuse,lowerdir={}", p(&l));
    let (mount_opts, fstype, source) =
        mount_check_unmount(&[o("mysource"), m.as_os_str(), o("-o"), o(&opts)], &m);
    assert_eq!(fstype, "fuse.stratafs");
    assert_eq!(source, "mysource");
    for flag in ["nosuid", "nodev", "noatime"] {
        assert!(mount_opts.split(',').any(|f| f == flag), "{mount_opts}");
    }
    // Without an upper layer the stack is read-only whatever `rw` says, as the kernel's overlay.
    assert!(mount_opts.split(',').any(|f| f == "ro"), "{mount_opts}");
}

#[test]
fn every_generic_option_is_accepted() {
    assert_root();
    let s = scratch("allgeneric");
    let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
    let opts = format!(
        "rw,dev,suid,exec,atime,relatime,strictatime,nodiratime,sync,async,dirsync,auto,noauto,\
         user,nouser,users,_netdev,nofail,defaults,x-systemd.automount,x-foo=bar,\
         default_permissions,allow_other,allow_root,fsname=named,subtype=stratafs,\
         userxattr,threads=2,driver=fuse,lowerdir={},upperdir={},workdir={}",
        p(&l),
        p(&u),
        p(&w)
    );
    let (_, _, source) = mount_check_unmount(&[o("-o"), o(&opts), m.as_os_str()], &m);
    assert_eq!(source, "named", "fsname= names the source");
    let opts = format!("ro,nodev,nosuid,noexec,driver=fuse,lowerdir={}", p(&l));
    let (mount_opts, _, _) = mount_check_unmount(&[o("-o"), o(&opts), m.as_os_str()], &m);
    for flag in ["ro", "nodev", "nosuid", "noexec"] {
        assert!(mount_opts.split(',').any(|f| f == flag), "{mount_opts}");
    }
}

#[test]
fn escaped_layer_paths() {
    assert_root();
    let s = scratch("escapes");
    let (l, m) = (s.dir("odd:name,with\\chars"), s.dir("m"));
    let escaped = p(&l)
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,");
    let opts = format!("driver=fuse,lowerdir={escaped}");
    mount_check_unmount(&[o("-o"), o(&opts), m.as_os_str()], &m);
}

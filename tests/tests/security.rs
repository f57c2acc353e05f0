//! Security, beyond semantics_misc.rs (symlink_safety_*, unprivileged_user_permissions) and the
//! set-id tests of semantics_write.rs:
//! * canaries outside the layers, watched with inotify (any open, read, write, attribute change,
//!   create or delete is an event) and including a FIFO (a daemon opening it would block; a
//!   watchdog detects a reader): the daemon's own operations on lower symlinks that point at
//!   them (absolute, `../../..`, symlinked directories, symlinks where a merged directory has a
//!   directory in another layer) never touch them: copy-up of the links and of their parent
//!   directories, whiteouts, readdir, xattr calls. The kernel's overlay, mounted side by side on
//!   an identical set, is the control (its canaries must stay silent too);
//! * workdir/work that is a symlink, or holds leftovers that are symlinks, FIFOs and hard links
//!   to outside files: the mount never follows them (the outside stays unchanged);
//! * `security.capability` on copy-up, write, truncate and chown, as the kernel does (compared
//!   with a kernel overlay of identical layers), by root and by an unprivileged user.

#![deny(unsafe_code)]

use e2e::sys::Inotify;
use e2e::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// inotify watch of the canaries
// ---------------------------------------------------------------------------------------------

/// Watches paths for any access; `events()` drains what was seen (path, mask).
struct Watch {
    ino: Inotify,
    wds: BTreeMap<i32, PathBuf>,
}

impl Watch {
    fn new(paths: &[PathBuf]) -> Watch {
        let ino = Inotify::new().unwrap_or_else(|e| panic!("inotify_init1: {e}"));
        let mut wds = BTreeMap::new();
        for p in paths {
            // Not IN_DONT_FOLLOW: a watched symlink would be the wrong object; watch targets.
            let wd = ino
                .add_watch(p, libc::IN_ALL_EVENTS)
                .unwrap_or_else(|e| panic!("inotify_add_watch {}: {e}", p.display()));
            wds.insert(wd, p.clone());
        }
        Watch { ino, wds }
    }

    fn events(&self) -> Vec<String> {
        self.ino
            .events()
            .into_iter()
            .map(|ev| {
                let path = self.wds.get(&ev.wd).cloned().unwrap_or_default();
                format!("{}/{}: mask {:#x}", path.display(), ev.name, ev.mask)
            })
            .collect()
    }
}

/// Detects a reader of the FIFO (open for writing succeeds only when someone has it open for
/// reading) and unblocks it; counts the detections.
struct FifoGuard {
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl FifoGuard {
    fn new(fifos: Vec<PathBuf>) -> FifoGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, hh) = (stop.clone(), hits.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for f in &fifos {
                    if let Ok(fd) = open(f, libc::O_WRONLY | libc::O_NONBLOCK, 0) {
                        hh.fetch_add(1, Ordering::SeqCst);
                        drop(fd);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FifoGuard {
            stop,
            hits,
            h: Some(h),
        }
    }

    fn hits(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            h.join().unwrap();
        }
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Lower symlinks pointing outside: the daemon's own operations never reach the canaries
// ---------------------------------------------------------------------------------------------

/// {SET}/canary (file with an xattr), {SET}/canarydir (dir with a file and a subdir),
/// {SET}/canaryfifo; the lower layers link to them in every way, and have directories that
/// are symlinks in one layer and directories in another.
fn canary_layers() -> Layers {
    Layers::new()
        .outside(
            Layer::new()
                .file("canary", "CANARY: must never be read by the daemon")
                .xattr("user.canary", "secret")
                .xattr("trusted.canary", "secret")
                .dir("canarydir")
                .xattr("user.canary", "dir")
                .file("canarydir/inner", "CANARY inner")
                .dir("canarydir/sub")
                .fifo("canaryfifo"),
        )
        .lower(
            Layer::new()
                .symlink("abs", "{SET}/canary")
                .symlink("absdir", "{SET}/canarydir")
                .symlink("fifolink", "{SET}/canaryfifo")
                .dir("p")
                .symlink("p/rel", "../../../canary")
                .symlink("p/reldir", "../../../canarydir")
                .symlink("p/deep", "../../../../../../../../../../canary")
                .file("p/f", "lower p/f")
                // `x`: a directory here, a symlink to the canary dir below (never merged).
                .dir("x")
                .file("x/top", "x/top")
                // `y`: a symlink here, a directory below: the symlink wins.
                .symlink("y", "{SET}/canarydir"),
        )
        .lower(
            Layer::new()
                .symlink("x", "{SET}/canarydir")
                .dir("y")
                .file("y/bottom", "hidden by the symlink above")
                .dir("q")
                .symlink("q/absdir", "{SET}/canarydir")
                .file("q/g", "lower q/g"),
        )
        .upper(
            Layer::new()
                // `a`: a real directory in the upper; a symlink to the canary dir in the lower.
                .dir("a")
                .file("a/up", "upper a/up"),
        )
}

fn canary_paths(side: &Side) -> Vec<PathBuf> {
    [
        "canary",
        "canarydir",
        "canarydir/inner",
        "canarydir/sub",
        "canaryfifo",
    ]
    .iter()
    .map(|n| side.set.join(n))
    .collect()
}

#[test]
fn daemon_operations_never_touch_what_lower_symlinks_point_to() {
    let mut layers = canary_layers();
    layers = layers.lower(Layer::new().symlink("a", "{SET}/canarydir"));
    let pair = Pair::new("canary", &layers);
    // Watches on both sides' canaries; the FIFO guard on both FIFOs.
    let kw = Watch::new(&canary_paths(&pair.k));
    let sw = Watch::new(&canary_paths(&pair.s));
    let mut fifo = FifoGuard::new(vec![
        pair.k.set.join("canaryfifo"),
        pair.s.set.join("canaryfifo"),
    ]);
    let links = [
        "abs", "absdir", "fifolink", "p/rel", "p/reldir", "p/deep", "y", "q/absdir",
    ];
    // Lookups, readdir, readlink: on the links themselves.
    for l in links {
        pair.step(|r| {
            (
                lstat(r.join(l)),
                readlink(r.join(l)).map(|t| norm_set(r, &t)),
            )
        });
    }
    for d in ["", "p", "q", "x", "a"] {
        pair.step(|r| readdir_types(r.join(d)));
    }
    pair.step(|r| {
        (
            lstat(r.join("x/top")),
            lstat(r.join("a/up")),
            lstat(r.join("a/inner")),
        )
    });
    // xattr calls on the links (l* variants: the link, never the target).
    for l in links {
        pair.step(|r| llistxattr(r.join(l)));
        pair.step(|r| lgetxattr(r.join(l), "user.canary"));
        pair.step(|r| lgetxattr(r.join(l), "trusted.canary"));
    }
    pair.step(|r| lsetxattr(r.join("abs"), "trusted.mark", "1", 0));
    pair.step(|r| lgetxattr(r.join("abs"), "trusted.mark"));
    pair.step(|r| lremovexattr(r.join("abs"), "trusted.mark"));
    pair.step(|r| lremovexattr(r.join("absdir"), "trusted.canary"));
    pair.step(|r| lsetxattr(r.join("p/rel"), "trusted.mark", "2", 0));
    // Copy-up of the links (metadata changes) and of the directories holding them.
    pair.step(|r| lchown(r.join("fifolink"), 1, 1));
    pair.step(|r| lchown(r.join("p/reldir"), 2, 2));
    pair.step(|r| lutimens(r.join("absdir"), Ts::At(5, 0), Ts::At(6, 0)));
    pair.step(|r| lutimens(r.join("q/absdir"), Ts::At(7, 0), Ts::At(8, 0)));
    pair.step(|r| write_file(r.join("p/new"), "new in p"));
    pair.step(|r| write_file(r.join("q/new"), "new in q"));
    pair.step(|r| write_file(r.join("x/new"), "new in x"));
    pair.step(|r| write_file(r.join("a/new"), "new in a"));
    pair.step(|r| mkdir(r.join("x/sub"), 0o755));
    pair.step(|r| append(r.join("p/f"), "+"));
    // Hard links and renames of the links; whiteouts where they were.
    pair.step(|r| link(r.join("abs"), r.join("abs_hard")));
    pair.step(|r| rename(r.join("p/deep"), r.join("q/deep_moved")));
    pair.step(|r| rename(r.join("absdir"), r.join("absdir_moved")));
    pair.step(|r| unlink(r.join("fifolink")));
    pair.step(|r| unlink(r.join("y")));
    pair.step(|r| unlink(r.join("q/absdir")));
    pair.step(|r| unlink(r.join("p/rel")));
    // Where a whiteout now hides a link, a new directory: opaque, with no canary content.
    pair.step(|r| mkdir(r.join("y"), 0o755));
    pair.step(|r| {
        (
            readdir(r.join("y")),
            readdir(r.join("x")),
            readdir(r.join("a")),
        )
    });
    pair.step(|r| mkdir(r.join("q/absdir"), 0o755));
    pair.step(|r| readdir(r.join("q/absdir")));
    for d in ["", "p", "q", "x", "a", "y"] {
        pair.step(|r| readdir_types(r.join(d)));
    }
    // Directories made of a real directory above a symlink below: removing them leaves
    // whiteouts, never touches the target.
    pair.step(|r| rm_rf(r.join("x")));
    pair.step(|r| rm_rf(r.join("a")));
    pair.step(|r| (lstat(r.join("x")), lstat(r.join("a"))));
    let fifo_hits = fifo.hits();
    let (ke, se) = (kw.events(), sw.events());
    assert!(
        ke.is_empty(),
        "control failed: the kernel's overlay touched its canaries (the test follows a \
         link?): {ke:#?}"
    );
    assert!(
        se.is_empty(),
        "stratafs touched what lower symlinks point to: {se:#?}"
    );
    assert_eq!(fifo_hits, 0, "someone opened a canary FIFO for reading");
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. The work directory: never followed
// ---------------------------------------------------------------------------------------------

struct Dirs {
    root: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let m = self.root.join("m");
        let _ = unmount(&m);
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn setup(name: &str) -> (Dirs, PathBuf) {
    let root = std::env::temp_dir().join(format!("sec-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for d in ["l", "u", "w", "m", "outside/dir/sub"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("l/f"), "lower").unwrap();
    fs::write(root.join("outside/file"), "OUTSIDE").unwrap();
    fs::write(root.join("outside/dir/inner"), "OUTSIDE inner").unwrap();
    mkfifo(root.join("outside/fifo"), 0o644).unwrap();
    (Dirs { root: root.clone() }, root)
}

fn mount_strata(root: &Path) -> std::process::Output {
    let o = format!(
        "driver=fuse,lowerdir={},upperdir={},workdir={}",
        root.join("l").display(),
        root.join("u").display(),
        root.join("w").display()
    );
    // stdout/stderr to a file: a daemon keeps a pipe open.
    let log = root.join("log");
    let f = fs::File::create(&log).unwrap();
    let st = Command::new(stratafs_bin())
        .args(["-o", &o])
        .arg(root.join("m"))
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    std::process::Output {
        status: st,
        stdout: Vec::new(),
        stderr: fs::read(&log).unwrap_or_default(),
    }
}

fn outside_snapshot(root: &Path) -> Tree {
    snapshot_with(
        &root.join("outside"),
        &SnapOpts {
            exact: true,
            ..SnapOpts::default()
        },
    )
}

#[test]
fn workdir_leftovers_are_removed_never_followed() {
    let (_d, root) = setup("leftovers");
    let work = root.join("w/work");
    fs::create_dir_all(work.join("sub/deeper")).unwrap();
    let out = root.join("outside");
    symlink(out.join("dir").to_str().unwrap(), work.join("dirlink")).unwrap();
    symlink(
        out.join("file").to_str().unwrap(),
        work.join("sub/filelink"),
    )
    .unwrap();
    symlink("../../../outside/dir", work.join("sub/deeper/rel")).unwrap();
    symlink(out.join("fifo").to_str().unwrap(), work.join("fifolink")).unwrap();
    mkfifo(work.join("sub/fifo"), 0o644).unwrap();
    link(out.join("file"), work.join("hardlink")).unwrap();
    let before = outside_snapshot(&root);
    let w = Watch::new(&[
        out.clone(),
        out.join("dir"),
        out.join("dir/sub"),
        out.join("file"),
        out.join("dir/inner"),
        out.join("fifo"),
    ]);
    let mut fifo = FifoGuard::new(vec![out.join("fifo")]);
    let r = mount_strata(&root);
    assert!(
        r.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        fs::read_dir(&work).unwrap().count(),
        0,
        "leftovers not removed"
    );
    assert_eq!(fs::read(root.join("m/f")).unwrap(), b"lower");
    unmount(&root.join("m")).unwrap();
    assert_eq!(fifo.hits(), 0, "the outside FIFO was opened");
    let events = w.events();
    // The hard link's removal changes the outside file's link count and ctime only.
    let after = outside_snapshot(&root);
    let strip = |t: &Tree| -> Tree {
        t.iter()
            .map(|(k, e)| {
                let mut e = e.clone();
                if k == "file" {
                    e.nlink = None;
                    e.times_ino = e.times_ino.map(|(m, _, i)| (m, (0, 0), i));
                }
                (k.clone(), e)
            })
            .collect()
    };
    assert_trees_eq(
        "outside changed by the work dir cleanup",
        "before",
        &strip(&before),
        "after",
        &strip(&after),
    );
    let ev: Vec<String> = events
        .into_iter()
        // The hard link's unlink is an attribute change of the file (link count).
        .filter(|e| !(e.contains("/file/: mask 0x4") || e.ends_with("/file/: mask 0x4")))
        .collect();
    assert!(ev.is_empty(), "outside accessed: {ev:#?}");
}

#[test]
fn workdir_work_symlink_is_never_followed() {
    let (_d, root) = setup("worklink");
    // workdir/work is a symlink to a directory outside (with content to lose).
    symlink(
        root.join("outside/dir").to_str().unwrap(),
        root.join("w/work"),
    )
    .unwrap();
    let before = outside_snapshot(&root);
    let out = root.join("outside");
    let w = Watch::new(&[out.join("dir"), out.join("dir/sub"), out.join("dir/inner")]);
    let r = mount_strata(&root);
    let mounted = r.status.success();
    if mounted {
        // Whatever it did with the link, it must not have used the target as its work dir.
        write_file(root.join("m/new"), "x").unwrap();
        write_at(root.join("m/f"), 0, "L").unwrap();
        unlink(root.join("m/new")).unwrap();
        unmount(&root.join("m")).unwrap();
    }
    let ev = w.events();
    eprintln!(
        "workdir/work as a symlink: stratafs {} ({})",
        if mounted { "mounts" } else { "refuses" },
        String::from_utf8_lossy(&r.stderr).trim()
    );
    assert_trees_eq(
        "outside changed",
        "before",
        &before,
        "after",
        &outside_snapshot(&root),
    );
    // Opening the directory to look at it would be harmless, but nothing is expected at all.
    assert!(ev.is_empty(), "outside accessed: {ev:#?}");
}

// ---------------------------------------------------------------------------------------------
// 3. security.capability on copy-up and write, as the kernel
// ---------------------------------------------------------------------------------------------

/// A VFS_CAP_REVISION_2 value with the effective flag: cap_net_raw (13) permitted.
fn cap_value() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

fn cap_layers() -> Layers {
    let cap = cap_value();
    let mut l = Layer::new();
    for name in [
        "chmod", "touch", "chown", "xattr", "wroot", "wuser", "troot", "tuser", "trunc0",
    ] {
        l = l
            .file(name, "#!/bin/sh\n")
            .mode(0o4777)
            .owner(1000, 1000)
            .xattr("security.capability", &cap);
    }
    Layers::new().lower(l).upper(
        Layer::new()
            .file("up", "#!/bin/sh\n")
            .mode(0o755)
            .xattr("security.capability", &cap),
    )
}

fn caps(r: &Path, name: &str) -> (R<Data>, R<u32>) {
    (
        getxattr(r.join(name), "security.capability"),
        lstat(r.join(name)).map(|s| s.perm),
    )
}

/// Metadata-only copy-ups keep the capability, as the kernel's copy-up does.
#[test]
fn capability_survives_metadata_copy_up() {
    let pair = Pair::new("capcopyup", &cap_layers());
    pair.step(|r| caps(r, "chmod"));
    pair.step(|r| chmod(r.join("chmod"), 0o4755));
    pair.step(|r| caps(r, "chmod"));
    pair.step(|r| utimens(r.join("touch"), Ts::At(1, 0), Ts::At(2, 0)));
    pair.step(|r| caps(r, "touch"));
    pair.step(|r| setxattr(r.join("xattr"), "user.other", "1", 0));
    pair.step(|r| caps(r, "xattr"));
    pair.finish();
}

/// Writes drop the capability (and set-uid as the caller's rights say), whoever does them,
/// as the kernel does; so does an O_TRUNC open; root may set it again, a user may not.
#[test]
fn capability_dropped_on_write() {
    let pair = Pair::new("capwrite", &cap_layers());
    pair.step(|r| append(r.join("wroot"), "echo\n"));
    pair.step(|r| caps(r, "wroot"));
    pair.step(|r| as_user(NOBODY, NOBODY, || append(r.join("wuser"), "echo\n")));
    pair.step(|r| caps(r, "wuser"));
    pair.step(|r| open(r.join("trunc0"), libc::O_WRONLY | libc::O_TRUNC, 0).map(drop));
    pair.step(|r| caps(r, "trunc0"));
    // An upper file (no copy-up): the same rules.
    pair.step(|r| caps(r, "up"));
    pair.step(|r| append(r.join("up"), "echo\n"));
    pair.step(|r| caps(r, "up"));
    pair.step(|r| setxattr(r.join("up"), "security.capability", cap_value(), 0));
    pair.step(|r| caps(r, "up"));
    pair.step(|r| {
        as_user(NOBODY, NOBODY, || {
            setxattr(r.join("wuser"), "security.capability", cap_value(), 0)
        })
    });
    pair.step(|r| caps(r, "wuser"));
    pair.finish();
}

/// truncate and chown of a lower file with a capability: the kernel drops the capability (and
/// set-uid); stratafs fails with ENODATA: its copy-up already lost the capability (see above)
/// and the kernel's "kill privileges" removexattr(security.capability), sent because the file
/// had one, then finds none.
#[test]
fn capability_dropped_on_truncate_and_chown() {
    let pair = Pair::new("captrunc", &cap_layers());
    pair.step(|r| chown(r.join("chown"), 1001, 1001));
    pair.step(|r| caps(r, "chown"));
    pair.step(|r| truncate(r.join("troot"), 3));
    pair.step(|r| caps(r, "troot"));
    pair.step(|r| as_user(NOBODY, NOBODY, || truncate(r.join("tuser"), 3)));
    pair.step(|r| caps(r, "tuser"));
    pair.finish();
}

//! Resource bounds of the daemon during a walk over 300,000 files in the lower layers (3,000
//! directories over 2 layers, 110 files each per layer, 10 names of each directory in both):
//! every entry is listed and stat'ed through the mount and every 50th file is read; then the
//! kernel's caches are dropped (the kernel forgets the nodes) and the daemon's open fds must
//! come back to where they started, and a second walk (over a third of the tree) must not grow
//! the RSS past the first one's (forgotten nodes are freed and their memory reused). The figures
//! (before / peak / after) are printed.
//!
//! That the RSS itself comes back near its start is the last test below.
//!
//! bounds.rs covers 100,000 create/delete cycles; this is the read-only walk.

#![deny(unsafe_code)]

use e2e::procfs::{alive, daemon_pid, drop_caches, fd_count, rss_kib};
use e2e::stratafs_bin;
use e2e::sys::kill;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIRS: usize = 3000;
/// Names f000..f054 in the top layer, f045..f099 in the bottom one: 100 per merged dir.
const TOP: std::ops::Range<usize> = 0..55;
const BOTTOM: std::ops::Range<usize> = 45..100;

struct Mount {
    root: PathBuf,
    mnt: PathBuf,
    pid: i32,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = e2e::unmount(&self.mnt);
        let t = Instant::now();
        while alive(self.pid) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive(self.pid) {
            let _ = kill(self.pid, libc::SIGKILL);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn content(d: usize, f: usize, layer: usize) -> String {
    format!("d{d:04}/f{f:03} from layer {layer}\n")
}

/// Builds the two lower layers with 2 threads (one per layer).
fn build(root: &Path) -> (PathBuf, PathBuf) {
    let (l0, l1) = (root.join("L0"), root.join("L1"));
    let hs: Vec<_> = [(l0.clone(), 0usize, TOP), (l1.clone(), 1, BOTTOM)]
        .into_iter()
        .map(|(l, layer, range)| {
            std::thread::spawn(move || {
                for d in 0..DIRS {
                    let dir = l.join(format!("g{}", d / 100)).join(format!("d{d:04}"));
                    fs::create_dir_all(&dir).unwrap();
                    for f in range.clone() {
                        fs::write(dir.join(format!("f{f:03}")), content(d, f, layer)).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (l0, l1)
}

/// Figures of one run, in fds and KiB.
#[derive(Debug, Default)]
struct Figures {
    fd0: usize,
    fd_peak: usize,
    fd1: usize,
    rss0: u64,
    rss_peak: u64,
    rss1: u64,
}

/// Walks the given dirs: lists and lstat's every entry, reads every 50th file.
fn walk(mnt: &Path, dirs: Vec<usize>) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let walkers: Vec<_> = (0..2)
        .map(|half| {
            let mnt = mnt.to_path_buf();
            let mine: Vec<usize> = dirs.iter().copied().skip(half).step_by(2).collect();
            std::thread::spawn(move || {
                let (mut entries, mut read) = (0usize, 0usize);
                for d in mine {
                    let dir = mnt.join(format!("g{}", d / 100)).join(format!("d{d:04}"));
                    let mut names = BTreeSet::new();
                    for e in fs::read_dir(&dir).unwrap() {
                        let e = e.unwrap();
                        let md = fs::symlink_metadata(e.path()).unwrap();
                        assert!(md.is_file());
                        names.insert(e.file_name().to_string_lossy().into_owned());
                        entries += 1;
                    }
                    assert_eq!(names.len(), BOTTOM.end, "{}", dir.display());
                    for f in (d % 50..BOTTOM.end).step_by(50) {
                        let layer = usize::from(!TOP.contains(&f));
                        let got = fs::read_to_string(dir.join(format!("f{f:03}"))).unwrap();
                        assert_eq!(got, content(d, f, layer));
                        read += 1;
                    }
                }
                (entries, read)
            })
        })
        .collect();
    let (mut entries, mut read) = (0, 0);
    for h in walkers {
        while !h.is_finished() {
            assert!(Instant::now() < deadline, "walk not done by the deadline");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (e, r) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        entries += e;
        read += r;
    }
    (entries, read)
}

/// Runs `f` while sampling the daemon's peak fds and RSS.
fn sampled<T>(pid: i32, f: impl FnOnce() -> T) -> (T, usize, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (pf, pr) = (
        Arc::new(AtomicUsize::new(fd_count(pid))),
        Arc::new(AtomicU64::new(rss_kib(pid))),
    );
    let sampler = {
        let (stop, pf, pr) = (stop.clone(), pf.clone(), pr.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pf.fetch_max(fd_count(pid), Ordering::Relaxed);
                pr.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    pf.fetch_max(fd_count(pid), Ordering::Relaxed);
    pr.fetch_max(rss_kib(pid), Ordering::Relaxed);
    (r, pf.load(Ordering::Relaxed), pr.load(Ordering::Relaxed))
}

/// How far above its start the daemon's RSS may stay once the kernel forgot the nodes.
const SETTLED_KIB: u64 = 16 * 1024;

/// Drops the kernel's caches until the daemon's fds are back to `fd0` (deadline 60 s), then
/// lets pending forgets settle.
fn forget_all(pid: i32, fd0: usize, settle_kib: u64) -> (usize, u64) {
    drop_caches();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fd_count(pid) > fd0 + 2 {
        assert!(
            Instant::now() < deadline,
            "daemon fds stay at {} (started at {fd0})",
            fd_count(pid)
        );
        drop_caches();
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kernel's forgets arrive in batches after the caches are dropped, later on a loaded
    // machine: keep dropping until the RSS is back within `settle_kib` (what the RSS test
    // expects) or 30 s have passed; the caller's assertions judge the figure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rss_kib(pid) > settle_kib && Instant::now() < deadline {
        drop_caches();
        std::thread::sleep(Duration::from_millis(500));
    }
    (fd_count(pid), rss_kib(pid))
}

/// Builds the layers, mounts, takes the baseline, walks everything, forgets: the figures.
/// `then` runs afterwards with the mount and the pid.
fn walk_300k(name: &str, then: impl FnOnce(&Path, i32, &Figures)) -> Figures {
    let root = std::env::temp_dir().join(format!("bounds-walk-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let t0 = Instant::now();
    let (l0, l1) = build(&root);
    let total = DIRS * (BOTTOM.end - TOP.start);
    eprintln!(
        "walk: {} files in the lower layers ({} merged) built in {:?}",
        DIRS * (TOP.len() + BOTTOM.len()),
        total,
        t0.elapsed()
    );
    let (u, w, mnt) = (root.join("u"), root.join("w"), root.join("m"));
    for d in [&u, &w, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "driver=fuse,lowerdir={}:{},upperdir={},workdir={}",
        l0.display(),
        l1.display(),
        u.display(),
        w.display()
    );
    let st = Command::new(stratafs_bin())
        .args(["-o", &opts])
        .arg(&mnt)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mount failed");
    let m = Mount {
        root: root.clone(),
        pid: daemon_pid(&mnt),
        mnt: mnt.clone(),
    };
    let pid = m.pid;
    // Baseline: after a small warm-up walk, with the caches dropped.
    walk(&mnt, vec![0, 1]);
    drop_caches();
    std::thread::sleep(Duration::from_millis(200));
    let mut fig = Figures {
        fd0: fd_count(pid),
        rss0: rss_kib(pid),
        ..Figures::default()
    };
    let t1 = Instant::now();
    let ((entries, read), fd_peak, rss_peak) = sampled(pid, || walk(&mnt, (0..DIRS).collect()));
    assert_eq!(entries, total);
    let walk_time = t1.elapsed();
    fig.fd_peak = fd_peak;
    fig.rss_peak = rss_peak;
    (fig.fd1, fig.rss1) = forget_all(pid, fig.fd0, fig.rss0 + SETTLED_KIB);
    eprintln!(
        "walk: {entries} entries stat'ed, {read} files read in {walk_time:?}; daemon {pid}: \
         fds {} / peak {} / after {}; RSS {} KiB / peak {} KiB / after {} KiB",
        fig.fd0, fig.fd_peak, fig.fd1, fig.rss0, fig.rss_peak, fig.rss1
    );
    assert!(fig.fd1 <= fig.fd0 + 2, "fds {} -> {}", fig.fd0, fig.fd1);
    then(&mnt, pid, &fig);
    // The daemon still serves; the walk wrote nothing to the upper layer.
    assert_eq!(
        fs::read_to_string(mnt.join("g0/d0000/f000")).unwrap(),
        content(0, 0, 0)
    );
    assert_eq!(
        fs::read_dir(&u).unwrap().count(),
        0,
        "the walk wrote nothing"
    );
    drop(m);
    eprintln!("walk: total {:?}", t0.elapsed());
    fig
}

#[test]
fn walk_over_300k_lower_files_returns_fds_and_reuses_memory() {
    walk_300k("reuse", |mnt, pid, fig| {
        // A second walk over a third of the tree: were the forgotten nodes kept, the RSS would
        // grow by about a third of the first walk's growth (~45 MiB); freed, it is reused.
        let dirs: Vec<usize> = (0..DIRS).step_by(3).collect();
        let (_, fd_peak2, rss_peak2) = sampled(pid, || walk(mnt, dirs));
        let (fd2, rss2) = forget_all(pid, fig.fd0, fig.rss0 + SETTLED_KIB);
        eprintln!(
            "walk: second walk (1/3): fds peak {fd_peak2} / after {fd2}; RSS peak {rss_peak2} \
             KiB / after {rss2} KiB"
        );
        assert!(fd2 <= fig.fd0 + 2, "fds {} -> {fd2}", fig.fd0);
        let slack = 16 * 1024;
        assert!(
            rss_peak2 <= fig.rss_peak.max(fig.rss1) + slack,
            "RSS grew on a second walk: {} KiB after the first, {rss_peak2} KiB at the second's \
             peak: forgotten nodes not freed?",
            fig.rss1
        );
    });
}

/// The issue asks for the RSS to return near its start once the kernel forgot the nodes.
#[test]
fn walk_over_300k_lower_files_returns_rss() {
    let fig = walk_300k("rss", |_, _, _| {});
    assert!(
        fig.rss1 <= fig.rss0 + SETTLED_KIB,
        "daemon RSS {} KiB before, {} KiB at the peak, {} KiB after the kernel forgot the nodes",
        fig.rss0,
        fig.rss_peak,
        fig.rss1
    );
}

//! `strata run` killed with SIGKILL at random moments (start-up, mount, running) leaves
//! something behind that the next start, or `strata gc`, removes entirely: no state directory,
//! temporary upper, lock, mount, cgroup, stratafs daemon or container process stays.
//!
//! One test in this binary, so nothing else creates strata cgroups while it compares them.
//! The seed is printed; STRATA_CRASH_SEED replays one.

#![deny(unsafe_code)]

mod runtime_common;

use e2e::random::Rng;
use runtime_common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The strata cgroup directories on this host (v2 and every v1 hierarchy).
fn strata_cgroups() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mountinfo.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        if !(post.starts_with("cgroup ") || post.starts_with("cgroup2 ")) {
            continue;
        }
        let mnt = Path::new(pre.split(' ').nth(4).unwrap()).join("strata");
        if let Ok(rd) = fs::read_dir(&mnt) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

/// The processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Everything a run of this test could have left, described.
fn leftovers(r: &Rootfs, cgroups_before: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut left = Vec::new();
    for e in fs::read_dir(&r.state).unwrap().flatten() {
        left.push(format!("state: {}", e.path().display()));
    }
    let state = r.state.display().to_string();
    for l in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if l.contains(&state) {
            left.push(format!("mount: {l}"));
        }
    }
    for p in processes_mentioning(&state) {
        left.push(format!("process: {p}"));
    }
    for p in processes_mentioning("sleep 4321") {
        left.push(format!("container process: {p}"));
    }
    for cg in strata_cgroups().difference(cgroups_before) {
        left.push(format!("cgroup: {}", cg.display()));
    }
    left
}

/// Waits until only what `state::collect` must remove is left (the processes the kernel
/// kills through parent-death signals may take a moment).
fn settle() {
    let t = Instant::now();
    while !processes_mentioning("sleep 4321").is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_at_random(r: &Rootfs, rng: &mut Rng, rounds: usize) -> usize {
    let mut killed_running = 0;
    for i in 0..rounds {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(r.layer_args());
        match i % 3 {
            0 => args.extend(["--driver".into(), "fuse".into()]),
            1 => args.extend(["--driver".into(), "kernel".into()]),
            _ => args.extend([
                "--driver".into(),
                "fuse".into(),
                "--cgroup-v1-fallback".into(),
                "--pids".into(),
                "100".into(),
            ]),
        }
        args.extend(
            ["--", "sh", "-c", "echo data > /written; exec sleep 4321"]
                .iter()
                .map(|s| s.to_string()),
        );
        let mut child = Command::new(strata_bin())
            .args(&args)
            .env("STRATA_STATE_DIR", &r.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Start-up takes some tens of ms (kernel driver) to a few hundred (FUSE): short
        // delays kill it there, long ones while the command runs.
        let delay = rng.below(if i % 2 == 0 { 80 } else { 400 });
        std::thread::sleep(Duration::from_millis(delay));
        if !processes_mentioning("sleep 4321").is_empty() {
            killed_running += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    killed_running
}

#[test]
fn sigkill_at_random_moments_then_nothing_stays() {
    assert_root();
    assert_stratafs();
    let seed = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("STRATA_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let r = Rootfs::new("crash");
    let before = strata_cgroups();

    // 1. Kills, then the next start collects (each start of the loop also collects what the
    //    round before it left).
    let running = kill_at_random(&r, &mut rng, 12);
    settle();
    let left = leftovers(&r, &before);
    assert!(
        !left.is_empty(),
        "the kills left nothing to collect: the test proves nothing (seed {seed})"
    );
    eprintln!(
        "{running}/12 killed while running; left before the next start:\n  {}",
        left.join("\n  ")
    );
    r.run(&[], &["true"]).ok();
    let left = leftovers(&r, &before);
    assert!(
        left.is_empty(),
        "after the next start (seed {seed}):\n  {}",
        left.join("\n  ")
    );

    // 2. Kills, then `strata gc`, which names what it removed.
    kill_at_random(&r, &mut rng, 9);
    settle();
    let dead: BTreeSet<String> = fs::read_dir(&r.state)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".lock"))
                .map(String::from)
        })
        .collect();
    let gc = Command::new(strata_bin())
        .args(["gc"])
        .env("STRATA_STATE_DIR", &r.state)
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let named: BTreeSet<String> = String::from_utf8_lossy(&gc.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(named, dead, "strata gc names the dead containers");
    let left = leftovers(&r, &before);
    assert!(
        left.is_empty(),
        "after strata gc (seed {seed}):\n  {}",
        left.join("\n  ")
    );
}

//! FUSE over io_uring (`-o uring`, Linux >= 6.14 with the fuse module's `enable_uring` set):
//! the daemon serves requests from one ring per CPU. Checked here: the rings and their threads
//! exist, a workload through them gives the right results and upper layer (reads and writes
//! larger than one ring buffer included), and the daemon ends with its mount. The semantics
//! suite runs over io_uring too in `.ci/run` (E2E_STRATA_OPTS=uring).
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use e2e::procfs::{alive, daemon_pid, wait_until};
use e2e::{stratafs_bin, unmount};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Sets `enable_uring` (it only changes mounts that ask for io_uring); false where the kernel
/// has no FUSE over io_uring.
fn enable() -> bool {
    match fs::read_to_string(PARAM) {
        Ok(v) if v.trim() == "Y" => true,
        Ok(_) => fs::write(PARAM, "Y").is_ok(),
        Err(_) => false,
    }
}

fn threads(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn ring_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("io_uring"))
        .count()
}

#[test]
fn requests_are_served_through_io_uring() {
    if !enable() {
        eprintln!("skipped: this kernel has no FUSE over io_uring ({PARAM})");
        return;
    }
    let root = std::env::temp_dir().join(format!("e2e-uring-{}", std::process::id()));
    let (l, u, w, m) = (
        root.join("l"),
        root.join("u"),
        root.join("w"),
        root.join("m"),
    );
    for d in [&l, &u, &w, &m] {
        fs::create_dir_all(d).unwrap();
    }
    fs::create_dir(l.join("d")).unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    fs::write(l.join("d/big"), &big).unwrap();
    fs::write(l.join("d/small"), b"lower").unwrap();
    let st = Command::new(stratafs_bin())
        .arg("-o")
        .arg(format!(
            "driver=fuse,uring,lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        ))
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success());
    let pid = daemon_pid(&m);
    let cpus = fs::read_dir("/sys/devices/system/cpu")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("cpu")
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    // Rings are set up once INIT is answered: wait for them.
    wait_until(
        "the io_uring queues",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || ring_fds(pid) >= cpus,
    );
    let names = threads(pid);
    let queues = names
        .iter()
        .filter(|n| n.starts_with("fuser-uring-"))
        .count();
    assert!(queues >= cpus, "queue threads {names:?}, {cpus} CPUs");
    assert!(ring_fds(pid) >= cpus, "io_uring fds");

    // A workload through the rings.
    assert_eq!(fs::read(m.join("d/big")).unwrap(), big);
    let mut big2 = big.clone();
    big2.reverse();
    fs::write(m.join("d/big2"), &big2).unwrap();
    assert_eq!(fs::read(m.join("d/big2")).unwrap(), big2);
    for i in 0..200 {
        fs::write(m.join(format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    fs::rename(m.join("d/f0"), m.join("d/renamed")).unwrap();
    fs::remove_file(m.join("d/small")).unwrap();
    std::os::unix::fs::symlink("big", m.join("d/link")).unwrap();
    let mut names: Vec<String> = fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 1 + 1 + 199 + 1 + 1, "{names:?}");
    assert!(names.contains(&"renamed".to_string()));
    assert!(!names.contains(&"small".to_string()));
    assert_eq!(fs::read_link(m.join("d/link")).unwrap(), Path::new("big"));
    assert_eq!(fs::read(m.join("d/f7")).unwrap(), b"file 7");

    unmount(&m).unwrap();
    wait_until(
        "the daemon to exit",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || !alive(pid),
    );
    assert!(!alive(pid), "daemon {pid} still alive after unmount");
    assert_eq!(fs::read(u.join("d/big2")).unwrap(), big2);
    assert_eq!(fs::read(u.join("d/renamed")).unwrap(), b"file 0");
    assert_eq!(fs::read(l.join("d/small")).unwrap(), b"lower");
    let _ = fs::remove_dir_all(&root);
}

//! Resource bounds of the daemon: fds and memory come back down after 100,000 files are created
//! and deleted through the mount (the kernel forgets unlinked inodes, and the daemon must drop
//! what it held for them).

#![deny(unsafe_code)]

use e2e::procfs::{daemon_pid, drop_caches, fd_count, rss_kib, wait_until};
use e2e::stratafs_bin;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mount {
    root: PathBuf,
    mnt: PathBuf,
}

impl Mount {
    fn new(name: &str) -> Mount {
        let root = std::env::temp_dir().join(format!("e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["l", "u", "w", "m"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::create_dir_all(root.join("l/dir")).unwrap();
        fs::write(root.join("l/dir/lowerfile"), "x").unwrap();
        let mnt = root.join("m");
        let o = format!(
            "driver=fuse,lowerdir={},upperdir={},workdir={}",
            root.join("l").display(),
            root.join("u").display(),
            root.join("w").display()
        );
        let st = Command::new(stratafs_bin())
            .args(["-o", &o])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "stratafs mount failed");
        Mount { root, mnt }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn churn(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        fs::write(&p, b"data").unwrap();
        fs::remove_file(&p).unwrap();
    }
}

#[test]
fn create_delete_100k_files_returns_fds_and_memory() {
    let m = Mount::new("bounds");
    let pid = daemon_pid(&m.mnt);
    // Warm up the paths used, so that the baseline includes steady-state allocations.
    churn(&m.mnt.join("dir"), 1_000);
    drop_caches();
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));
    churn(&m.mnt.join("dir"), 100_000);
    // Also files kept open while deleted, then closed.
    let held: Vec<fs::File> = (0..1000)
        .map(|i| {
            let p = m.mnt.join(format!("dir/held{i}"));
            fs::write(&p, b"x").unwrap();
            let f = fs::File::open(&p).unwrap();
            fs::remove_file(&p).unwrap();
            f
        })
        .collect();
    assert!(
        fd_count(pid) >= fd0 + 1000,
        "open files hold a daemon fd each"
    );
    drop(held);
    drop_caches();
    wait_until(
        "the daemon's fds to come back down",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || fd_count(pid) <= fd0 + 2,
    );
    let rss1 = rss_kib(pid);
    eprintln!(
        "daemon {pid}: fds {fd0} -> {}, RSS {rss0} KiB -> {rss1} KiB",
        fd_count(pid)
    );
    // Near the start: what 100,000 nodes would cost if they were kept is far more than this.
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "daemon RSS grew from {rss0} KiB to {rss1} KiB"
    );
    // The directory is empty again and the lower file untouched.
    assert_eq!(
        fs::read_dir(m.mnt.join("dir")).unwrap().count(),
        1,
        "only lowerfile is left"
    );
    assert_eq!(fs::read(m.root.join("l/dir/lowerfile")).unwrap(), b"x");
}

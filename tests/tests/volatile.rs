//! The `volatile` option, side by side with the kernel's: the same layers mounted by the kernel
//! overlay with `-o volatile` and by stratafs with `-o volatile,driver=fuse` must copy up the
//! same data, leave the same `workdir/work/incompat/volatile` mark (kept after a clean unmount),
//! refuse the same later mounts of that upper/workdir (EINVAL) and accept them again once the
//! user removed the mark. No timing is measured: that volatile skips syncs is in the bench.
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use e2e::procfs::{alive, daemon_pid, wait_until};
use e2e::{assert_root, kernel_mount_with, stratafs_bin, unmount, Scratch};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LOWER_DATA: &[u8] = &[b'l'; 1024];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Imp {
    Kernel,
    Strata,
}

/// One layer set (lower, upper, work) and two mountpoints, for one implementation.
struct Stack {
    imp: Imp,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    mnt2: PathBuf,
}

impl Stack {
    fn new(root: &Path, imp: Imp) -> Stack {
        let base = root.join(format!("{imp:?}").to_lowercase());
        let s = Stack {
            imp,
            lower: base.join("l"),
            upper: base.join("u"),
            work: base.join("w"),
            mnt: base.join("m"),
            mnt2: base.join("m2"),
        };
        for d in [&s.lower, &s.upper, &s.work, &s.mnt, &s.mnt2] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(s.lower.join("d")).unwrap();
        fs::write(s.lower.join("f"), LOWER_DATA).unwrap();
        fs::write(s.lower.join("d/g"), LOWER_DATA).unwrap();
        s
    }

    /// Mounts the stack on `mnt`; `Err` is the refusal's text (kernel: the errno; stratafs:
    /// its one stderr line, after checking it exited 2 with exactly one line).
    fn mount(&self, mnt: &Path, volatile: bool) -> Result<(), String> {
        match self.imp {
            Imp::Kernel => kernel_mount_with(
                std::slice::from_ref(&self.lower),
                Some((&self.upper, &self.work)),
                if volatile { &["volatile"] } else { &[] },
                mnt,
            ),
            Imp::Strata => {
                let opts = format!(
                    "driver=fuse,lowerdir={},upperdir={},workdir={}{}",
                    self.lower.display(),
                    self.upper.display(),
                    self.work.display(),
                    if volatile { ",volatile" } else { "" }
                );
                let out = Command::new(stratafs_bin())
                    .arg("-o")
                    .arg(&opts)
                    .arg(mnt)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.status.success() {
                    return Ok(());
                }
                assert_eq!(out.status.code(), Some(2), "stratafs status: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
                Err(stderr)
            }
        }
    }

    fn umount(&self, mnt: &Path) {
        let pid = (self.imp == Imp::Strata).then(|| daemon_pid(mnt));
        unmount(mnt).unwrap();
        if let Some(pid) = pid {
            wait_until(
                "the daemon exits",
                Duration::from_secs(10),
                Duration::from_millis(10),
                || !alive(pid),
            );
        }
    }

    fn mark(&self) -> PathBuf {
        self.work.join("work/incompat/volatile")
    }
}

/// Both implementations' stacks under one temp root; unmounts and removes on drop.
struct Both {
    k: Stack,
    s: Stack,
    /// Removes the directories on drop (after `Both`'s own drop has unmounted).
    _scratch: Scratch,
}

impl Both {
    fn new(name: &str) -> Both {
        assert_root();
        let scratch = Scratch::new("stratafs-volatile", name);
        let k = Stack::new(&scratch.root, Imp::Kernel);
        let s = Stack::new(&scratch.root, Imp::Strata);
        Both {
            k,
            s,
            _scratch: scratch,
        }
    }

    fn stacks(&self) -> [&Stack; 2] {
        [&self.k, &self.s]
    }

    /// Mounts both; both must succeed or both be refused. A refusal must be the kernel's
    /// EINVAL, and stratafs's line must say so and name the directory to remove.
    fn mount_both(&self, second: bool, volatile: bool) -> bool {
        let mnt = |st: &Stack| {
            if second {
                st.mnt2.clone()
            } else {
                st.mnt.clone()
            }
        };
        let k = self.k.mount(&mnt(&self.k), volatile);
        let s = self.s.mount(&mnt(&self.s), volatile);
        match (&k, &s) {
            (Ok(()), Ok(())) => true,
            (Err(ke), Err(se)) => {
                assert!(ke.contains("EINVAL"), "the kernel refuses with EINVAL: {ke}");
                for needle in [
                    "incompat feature 'volatile'",
                    "Invalid argument",
                    &self.s.mark().display().to_string(),
                ] {
                    assert!(se.contains(needle), "{se:?} should mention {needle:?}");
                }
                false
            }
            _ => panic!(
                "kernel and stratafs disagree (second={second}, volatile={volatile}): kernel {k:?}, stratafs {s:?}"
            ),
        }
    }

    fn umount_both(&self) {
        for st in self.stacks() {
            st.umount(&st.mnt);
        }
    }
}

impl Drop for Both {
    fn drop(&mut self) {
        for st in [&self.k, &self.s] {
            for m in [&st.mnt2, &st.mnt] {
                let _ = unmount(m);
            }
        }
    }
}

fn expected(append: &[u8]) -> Vec<u8> {
    [LOWER_DATA, append].concat()
}

/// `f` and `d/g` below `dir` hold what the test appended to them.
fn assert_appended(dir: &Path, who: &str) {
    assert_eq!(
        fs::read(dir.join("f")).unwrap(),
        expected(b"appended\n"),
        "{who}"
    );
    assert_eq!(
        fs::read(dir.join("d/g")).unwrap(),
        expected(b"more\n"),
        "{who}"
    );
}

/// Appends as the bench does (open O_WRONLY|O_APPEND, write, close), with an fsync between.
fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
}

#[test]
fn volatile_as_the_kernel() {
    let b = Both::new("same");
    assert!(b.mount_both(false, true), "a fresh volatile mount works");
    for st in b.stacks() {
        let who = format!("{:?}", st.imp);
        // Copy-up of a top-level file and of one in a lower-only directory; fsync answers.
        append(&st.mnt.join("f"), b"appended\n");
        append(&st.mnt.join("d/g"), b"more\n");
        // O_SYNC writes work too (volatile drops the sync, not the write).
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_SYNC)
            .create_new(true)
            .open(st.mnt.join("new"))
            .unwrap();
        f.write_all(b"new\n").unwrap();
        drop(f);
        let dir = fs::File::open(st.mnt.join("d")).unwrap();
        dir.sync_all().unwrap();
        assert_eq!(
            fs::read(st.mnt.join("f")).unwrap(),
            expected(b"appended\n"),
            "{who}"
        );
        assert_appended(&st.upper, &who);
        assert_eq!(fs::read(st.upper.join("new")).unwrap(), b"new\n", "{who}");
        assert_eq!(fs::read(st.lower.join("f")).unwrap(), LOWER_DATA, "{who}");
        assert!(
            st.mark().is_dir(),
            "{who}: {} after mount",
            st.mark().display()
        );
        assert!(st.mark().join("dirty").is_file(), "{who}: the dirty file");
    }

    // A second mount of the same upper/workdir while the first is mounted: refused by both,
    // volatile or not.
    assert!(!b.mount_both(true, true));
    assert!(!b.mount_both(true, false));

    // A clean unmount keeps the mark (the kernel cannot tell it from a crash), so a later
    // mount is refused as well.
    b.umount_both();
    for st in b.stacks() {
        assert!(st.mark().is_dir(), "{:?}: mark kept after unmount", st.imp);
    }
    assert!(!b.mount_both(false, false));
    assert!(!b.mount_both(false, true));

    // Once the user removes the mark, the layers mount again, with the data written before;
    // the empty `incompat` directory is cleaned away with the rest of work/.
    for st in b.stacks() {
        fs::remove_dir_all(st.mark()).unwrap();
    }
    assert!(b.mount_both(false, false));
    for st in b.stacks() {
        let who = format!("{:?}", st.imp);
        assert_appended(&st.mnt, &who);
        assert!(
            !st.work.join("work/incompat").exists(),
            "{who}: incompat left"
        );
    }
    b.umount_both();
    // A non-volatile mount leaves no mark: a volatile one works again.
    assert!(b.mount_both(false, true));
    b.umount_both();
}

#[test]
fn any_incompat_feature_refuses() {
    let b = Both::new("feature");
    for st in b.stacks() {
        fs::create_dir_all(st.work.join("work/incompat/frob")).unwrap();
    }
    let k = b.k.mount(&b.k.mnt, false).unwrap_err();
    assert!(k.contains("EINVAL"), "{k}");
    let s = b.s.mount(&b.s.mnt, true).unwrap_err();
    let dir = b.s.work.join("work/incompat/frob").display().to_string();
    assert!(
        s.contains("incompat feature 'frob'") && s.contains(&dir),
        "{s}"
    );
    // An empty incompat directory is no feature: both mount and remove it.
    for st in b.stacks() {
        fs::remove_dir(st.work.join("work/incompat/frob")).unwrap();
    }
    assert!(b.mount_both(false, false));
    for st in b.stacks() {
        assert!(!st.work.join("work/incompat").exists(), "{:?}", st.imp);
    }
    b.umount_both();
}

/// `driver=kernel` hands `volatile` to the kernel; a refusal is stratafs's one clear line.
#[test]
fn driver_kernel_passes_volatile() {
    let b = Both::new("kdriver");
    let st = &b.s;
    let opts = format!(
        "driver=kernel,volatile,lowerdir={},upperdir={},workdir={}",
        st.lower.display(),
        st.upper.display(),
        st.work.display()
    );
    let run = |mnt: &Path| {
        Command::new(stratafs_bin())
            .arg("-o")
            .arg(&opts)
            .arg(mnt)
            .output()
    };
    let out = run(&st.mnt).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == st.mnt.to_str())
        .expect("mounted");
    assert!(line.contains(" overlay "), "{line}");
    assert!(st.mark().is_dir());
    let out = run(&st.mnt2).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&st.mark().display().to_string()),
        "{stderr}"
    );
    unmount(&st.mnt).unwrap();
}

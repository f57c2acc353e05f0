//! Mounting: the kernel overlay (new mount API), the stratafs binary, unmounting, and one
//! side of a pair.

use crate::*;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Extra stratafs options for a whole run, with a leading comma (`E2E_STRATA_OPTS=uring`: the
/// io_uring transport), or nothing.
pub fn extra_strata_opts() -> String {
    match std::env::var("E2E_STRATA_OPTS") {
        Ok(extra) if !extra.is_empty() => format!(",{extra}"),
        _ => String::new(),
    }
}

/// Location of the stratafs binary: $STRATAFS_BIN, else target/debug/stratafs next to the
/// test binary's deps directory.
pub fn stratafs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is expected in target/<profile>/deps");
    let bin = dir.join("stratafs");
    if !bin.exists() {
        panic!(
            "stratafs binary not found at {} (set STRATAFS_BIN or run `cargo build --workspace` first)",
            bin.display()
        );
    }
    bin
}

fn fsconfig_str(fd: RawFd, key: &str, val: &str) -> R<()> {
    let (k, v) = (cstr(key), cstr(val));
    cvt_l(unsafe { libc::syscall(libc::SYS_fsconfig, fd, 1u32, k.as_ptr(), v.as_ptr(), 0) })
        .map(drop)
}

/// Mounts a kernel overlay through the new mount API (fsopen/fsconfig "lowerdir+"/fsmount/
/// move_mount), which has no option-string length limit (100 layers work).
pub fn kernel_mount(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    mnt: &Path,
) -> Result<(), String> {
    kernel_mount_with(lowers, upper_work, &[], mnt)
}

/// `kernel_mount` with flag options (`volatile`, `userxattr`...). The error text names the
/// failing step and its errno (`fsconfig create: EINVAL: ...`).
pub fn kernel_mount_with(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    flags: &[&str],
    mnt: &Path,
) -> Result<(), String> {
    let name = cstr("overlay");
    let fsfd = cvt_l(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), 1u32) })
        .map_err(|e| format!("fsopen overlay: {e}"))?;
    let fsfd = unsafe { OwnedFd::from_raw_fd(fsfd as RawFd) };
    let f = fsfd.as_raw_fd();
    let msgs = || {
        let mut s = String::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = unsafe { libc::read(f, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            s.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
            s.push(' ');
        }
        s
    };
    for l in lowers {
        fsconfig_str(f, "lowerdir+", l.to_str().unwrap())
            .map_err(|e| format!("fsconfig lowerdir+={}: {e} {}", l.display(), msgs()))?;
    }
    if let Some((u, w)) = upper_work {
        fsconfig_str(f, "upperdir", u.to_str().unwrap())
            .map_err(|e| format!("fsconfig upperdir: {e} {}", msgs()))?;
        fsconfig_str(f, "workdir", w.to_str().unwrap())
            .map_err(|e| format!("fsconfig workdir: {e} {}", msgs()))?;
    }
    for flag in flags {
        let k = cstr(flag);
        // FSCONFIG_SET_FLAG = 0
        cvt_l(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                f,
                0u32,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })
        .map_err(|e| format!("fsconfig {flag}: {e} {}", msgs()))?;
    }
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            f,
            6u32,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map_err(|e| format!("fsconfig create: {e} {} (see dmesg)", msgs()))?;
    let mfd = cvt_l(unsafe { libc::syscall(libc::SYS_fsmount, f, 1u32, 0u32) })
        .map_err(|e| format!("fsmount: {e}"))?;
    let mfd = unsafe { OwnedFd::from_raw_fd(mfd as RawFd) };
    let (empty, target) = (cstr(""), cpath(mnt));
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            4u32, // MOVE_MOUNT_F_EMPTY_PATH
        )
    })
    .map_err(|e| format!("move_mount {}: {e}", mnt.display()))?;
    Ok(())
}

fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}

/// Unmounts (retrying on EBUSY, then lazily). Returns an error description if even the lazy
/// unmount failed.
pub fn unmount(mnt: &Path) -> Result<(), String> {
    let c = cpath(mnt);
    for _ in 0..50 {
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EBUSY => std::thread::sleep(Duration::from_millis(20)),
            Errno::EINVAL if !is_mountpoint(mnt) => return Ok(()),
            e => return Err(format!("umount {}: {e}", mnt.display())),
        }
    }
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(format!("umount -l {}: {}", mnt.display(), Errno::last()))
    }
}

/// Which implementation serves a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Strata,
}

/// One side of a pair: its directory set and mount.
#[derive(Debug)]
pub struct Side {
    /// "kernel" or "stratafs" (the latter is a kernel overlay too under E2E_SELFTEST=1).
    pub label: &'static str,
    pub imp: Impl,
    /// Root of this side's directory set.
    pub set: PathBuf,
    pub mnt: PathBuf,
    /// Lower layer dirs, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub(crate) mounted: bool,
    pub(crate) pids: Vec<i32>,
    pub(crate) mounts: usize,
}

impl Side {
    /// Replaces this side's set root by "{SET}" (for comparing absolute paths).
    pub fn norm(&self, s: &str) -> String {
        s.replace(self.set.to_str().unwrap(), "{SET}")
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        let u = self
            .upper
            .as_ref()
            .expect("read-only pair has no upper layer");
        if rel.is_empty() {
            u.clone()
        } else {
            u.join(rel)
        }
    }

    /// Path inside lower layer i (0 = top).
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.lowers[i].clone()
        } else {
            self.lowers[i].join(rel)
        }
    }

    pub(crate) fn mount(&mut self) {
        assert!(!self.mounted);
        self.mounts += 1;
        match self.imp {
            Impl::Kernel => {
                let uw = self.upper.as_deref().zip(self.work.as_deref());
                kernel_mount(&self.lowers, uw, &self.mnt).unwrap_or_else(|e| {
                    panic!("[{}] kernel overlay mount failed: {e}", self.label)
                });
            }
            Impl::Strata => self.mount_strata(),
        }
        self.mounted = true;
        let magic = statfs(&self.mnt).map(|s| s.ftype).unwrap_or(0);
        let strata_kernel = std::env::var("E2E_DRIVER").is_ok_and(|d| d != "fuse");
        let want = match self.imp {
            Impl::Kernel => OVERLAYFS_SUPER_MAGIC,
            // With E2E_DRIVER=auto|kernel stratafs may hand the stack to the kernel's overlay.
            Impl::Strata if strata_kernel && magic == OVERLAYFS_SUPER_MAGIC => magic,
            Impl::Strata => FUSE_SUPER_MAGIC,
        };
        assert_eq!(
            magic,
            want,
            "[{}] {} is not the expected mount after mounting (f_type {magic:#x})",
            self.label,
            self.mnt.display()
        );
    }

    fn mount_strata(&mut self) {
        // The FUSE driver unless E2E_DRIVER says otherwise (auto/kernel: the cross-driver run).
        let driver = std::env::var("E2E_DRIVER").unwrap_or_else(|_| "fuse".to_string());
        self.mount_strata_with(&driver);
    }

    pub(crate) fn mount_strata_with(&mut self, driver: &str) {
        let bin = stratafs_bin();
        let lowers: Vec<&str> = self.lowers.iter().map(|p| p.to_str().unwrap()).collect();
        let mut opts = format!("driver={driver},lowerdir={}", lowers.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        opts.push_str(&extra_strata_opts());
        let log_path = self.set.join(format!("log{}", self.mounts));
        let log = fs::File::create(&log_path).expect("create daemon log");
        let status = Command::new(&bin)
            .arg("-o")
            .arg(&opts)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        if !status.success() {
            let mut s = String::new();
            let _ = fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut s));
            panic!(
                "stratafs mount failed ({status}): {} -o {opts} {}\n--- output ---\n{s}",
                bin.display(),
                self.mnt.display()
            );
        }
        self.pids = daemon_pids(&self.mnt);
    }

    pub(crate) fn umount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let r = unmount(&self.mnt);
        self.mounted = false;
        // Wait for the daemon to exit (cleanup only; the lifecycle tests check it properly).
        for pid in std::mem::take(&mut self.pids) {
            let mut n = 0;
            while alive(pid) && n < 500 {
                std::thread::sleep(Duration::from_millis(20));
                n += 1;
            }
            if alive(pid) {
                eprintln!(
                    "[{}] stratafs daemon {pid} still alive after unmount: killing it",
                    self.label
                );
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        r
    }

    pub(crate) fn merged_opts(&self, roots: &[String]) -> SnapOpts {
        SnapOpts {
            roots: roots.to_vec(),
            ..SnapOpts::default()
        }
    }
}

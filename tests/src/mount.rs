//! Mounting: the kernel overlay (new mount API), the stratafs binary, unmounting, and one
//! side of a pair.

use crate::*;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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

/// Location of the stratafs binary: $STRATAFS_BIN, else target/<profile>/stratafs next to the
/// test binary's deps directory.
pub fn stratafs_bin() -> PathBuf {
    target_bin("stratafs", "STRATAFS_BIN", "cargo build --workspace")
}

/// A binary of the workspace: $`env`, else target/<profile>/`name` next to the test binary's
/// deps directory, which must exist (else the panic says to run `build`).
pub fn target_bin(name: &str, env: &str, build: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is expected in target/<profile>/deps");
    let bin = dir.join(name);
    if !bin.is_file() {
        panic!(
            "{name} binary not found at {} (set {env} or run `{build}` first)",
            bin.display()
        );
    }
    bin
}

/// Runs `stratafs -o OPTS MNT` (which returns once the mount is ready, leaving the daemon
/// behind) with stdin from /dev/null, stdout and stderr into the new file `log`.
pub fn run_stratafs_logged(opts: &str, mnt: &Path, log: &Path) -> ExitStatus {
    let bin = stratafs_bin();
    let out = fs::File::create(log).expect("create daemon log");
    Command::new(&bin)
        .arg("-o")
        .arg(opts)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
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
    let fsfd = fsopen("overlay").map_err(|e| format!("fsopen overlay: {e}"))?;
    let f = fsfd.as_raw_fd();
    let msgs = || {
        let mut s = String::new();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = read_buf(f, &mut buf) {
            s.push_str(&String::from_utf8_lossy(&buf[..n]));
            s.push(' ');
        }
        s
    };
    for l in lowers {
        fsconfig_string(f, "lowerdir+", l.to_str().unwrap())
            .map_err(|e| format!("fsconfig lowerdir+={}: {e} {}", l.display(), msgs()))?;
    }
    if let Some((u, w)) = upper_work {
        fsconfig_string(f, "upperdir", u.to_str().unwrap())
            .map_err(|e| format!("fsconfig upperdir: {e} {}", msgs()))?;
        fsconfig_string(f, "workdir", w.to_str().unwrap())
            .map_err(|e| format!("fsconfig workdir: {e} {}", msgs()))?;
    }
    for flag in flags {
        fsconfig_flag(f, flag).map_err(|e| format!("fsconfig {flag}: {e} {}", msgs()))?;
    }
    fsconfig_create(f).map_err(|e| format!("fsconfig create: {e} {} (see dmesg)", msgs()))?;
    let mfd = fsmount(f).map_err(|e| format!("fsmount: {e}"))?;
    move_mount(&mfd, mnt).map_err(|e| format!("move_mount {}: {e}", mnt.display()))?;
    Ok(())
}

/// Unmounts (retrying on EBUSY, then lazily). Returns an error description if even the lazy
/// unmount failed.
pub fn unmount(mnt: &Path) -> Result<(), String> {
    for _ in 0..50 {
        match umount2(mnt, 0) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
            Err(Errno::EINVAL) if !procfs::mounted_at(mnt) => return Ok(()),
            Err(e) => return Err(format!("umount {}: {e}", mnt.display())),
        }
    }
    umount2(mnt, libc::MNT_DETACH).map_err(|e| format!("umount -l {}: {e}", mnt.display()))
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
        let status = run_stratafs_logged(&opts, &self.mnt, &log_path);
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
                let _ = kill(pid, libc::SIGKILL);
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

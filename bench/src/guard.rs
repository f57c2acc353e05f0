//! Drop guards: every mount, loop device and scratch directory the instrument makes is undone
//! on every path out (normal return, error, panic, Ctrl-C via `sys::check_interrupt`).

use crate::sys::{self, ctx, Result};
use nix::mount::{umount2, MntFlags};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A scratch directory, removed on drop unless something is still mounted below it.
pub struct Scratch {
    root: PathBuf,
}

impl Scratch {
    /// Creates `root` (which must not exist yet, or be empty).
    pub fn new(root: &Path) -> Result<Scratch> {
        if root.exists() {
            if sys::is_mounted(root) || mounts_below(root).next().is_some() {
                return Err(format!(
                    "{} has mounts below it (a previous run killed with SIGKILL?); unmount them first",
                    root.display()
                ));
            }
            ctx(
                format!("removing stale {}", root.display()),
                fs::remove_dir_all(root),
            )?;
        }
        ctx(
            format!("creating {}", root.display()),
            fs::create_dir_all(root),
        )?;
        Ok(Scratch {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let left: Vec<String> = mounts_below(&self.root).collect();
        if !left.is_empty() {
            eprintln!(
                "bench: not removing {}: still mounted below it: {}",
                self.root.display(),
                left.join(", ")
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("bench: removing {}: {e}", self.root.display());
        }
    }
}

/// Mountpoints at or below `root`, from /proc/self/mountinfo.
fn mounts_below(root: &Path) -> impl Iterator<Item = String> {
    let prefix = root.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|mp| mp == &prefix || mp.starts_with(&format!("{prefix}/")))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Unmounts `path`: plain first (retrying while busy), lazily as a last resort.
pub fn unmount(path: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match umount2(path, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) if !sys::is_mounted(path) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                last = Some(nix::errno::Errno::EBUSY);
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    umount2(path, MntFlags::MNT_DETACH).map_err(|e| {
        format!(
            "unmounting {}: {} then {e}",
            path.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    })
}

/// A mounted filesystem (kernel overlay or a FUSE daemon) on a mountpoint it owns.
pub struct Mount {
    mountpoint: PathBuf,
    /// The FUSE daemon serving it, if any.
    pub daemon: Option<i32>,
    mounted: bool,
}

impl Mount {
    /// Wraps an existing mount at `mountpoint` (a directory the guard removes afterwards).
    pub fn adopt(mountpoint: &Path, daemon: Option<i32>) -> Mount {
        Mount {
            mountpoint: mountpoint.to_path_buf(),
            daemon,
            mounted: true,
        }
    }

    /// A non-mount (the plain-directory target): dropping it does nothing.
    pub fn none(dir: &Path) -> Mount {
        Mount {
            mountpoint: dir.to_path_buf(),
            daemon: None,
            mounted: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts, waits for the daemon to exit and removes the mountpoint directory.
    pub fn release(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        unmount(&self.mountpoint)?;
        if let Some(pid) = self.daemon {
            if !sys::wait_gone(pid, Duration::from_secs(20)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                if !sys::wait_gone(pid, Duration::from_secs(5)) {
                    return Err(format!(
                        "daemon {pid} of {} did not exit after unmount",
                        self.mountpoint.display()
                    ));
                }
            }
        }
        let _ = fs::remove_dir(&self.mountpoint);
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: {e}");
        }
    }
}

/// A sparse ext4 image attached to a loop device and mounted. With `ram`, the image file lives
/// in a tmpfs of its own, so that "cold" runs (caches dropped) measure the filesystems rather
/// than this VM's shared disk; otherwise on the work dir's disk, with direct I/O so the image's
/// own page cache does not double the caching.
pub struct LoopFs {
    tmpfs: Option<PathBuf>,
    image: PathBuf,
    device: Option<String>,
    mountpoint: PathBuf,
    mounted: bool,
}

impl LoopFs {
    pub fn create(dir: &Path, size_gib: u64, mountpoint: &Path, ram: bool) -> Result<LoopFs> {
        let mut guard = LoopFs {
            tmpfs: None,
            image: dir.join("ext4.img"),
            device: None,
            mountpoint: mountpoint.to_path_buf(),
            mounted: false,
        };
        ctx(dir.display(), fs::create_dir_all(dir))?;
        if ram {
            nix::mount::mount(
                Some("strata-bench"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={}g,mode=0700", size_gib + 1).as_str()),
            )
            .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))?;
            guard.tmpfs = Some(dir.to_path_buf());
        }
        let file = ctx(
            format!("creating {}", guard.image.display()),
            fs::File::create(&guard.image),
        )?;
        ctx("sizing the image", file.set_len(size_gib << 30))?;
        drop(file);
        sys::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&guard.image),
        )?;
        let direct = if ram {
            "--direct-io=off"
        } else {
            "--direct-io=on"
        };
        let dev = sys::run(
            Command::new("losetup")
                .args(["--find", "--show", direct])
                .arg(&guard.image),
        )?;
        guard.device = Some(dev.trim().to_string());
        ctx(
            "creating the image mountpoint",
            fs::create_dir_all(mountpoint),
        )?;
        sys::run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "noatime"])
                .arg(dev.trim())
                .arg(mountpoint),
        )?;
        guard.mounted = true;
        Ok(guard)
    }

    /// Where the image is, for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.device(),
            self.image.display(),
            if self.tmpfs.is_some() {
                "in RAM: a tmpfs of its own"
            } else {
                "on disk, direct I/O"
            }
        )
    }

    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("")
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.mountpoint) {
                eprintln!("bench: {e}");
            }
        }
        if let Some(dev) = &self.device {
            // A lazily detached mount keeps the device busy; autoclear frees it later.
            if let Err(e) = sys::run(Command::new("losetup").args(["-d", dev])) {
                eprintln!("bench: {e}");
            }
        }
        let _ = fs::remove_file(&self.image);
        if let Some(t) = &self.tmpfs {
            if let Err(e) = unmount(t) {
                eprintln!("bench: {e}");
            }
        }
    }
}

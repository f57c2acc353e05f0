//! The layer stack: the per-container state directory (mount point, temporary upper; its
//! place and lock are `state`'s), the
//! choice of driver, and the stratafs daemon of the FUSE driver.
//!
//! * kernel driver: the overlay is mounted by the container's init, inside the container's
//!   mount namespace (with `userxattr` in a user namespace), so it disappears with the
//!   namespace whatever happens;
//! * FUSE driver: `stratafs -f` runs as a child of the runtime, in the runtime's own mount
//!   namespace and process group (so a terminal's Ctrl-C does not reach it), with a
//!   parent-death signal; the container's mount namespace is created after the mount is up and
//!   so starts with a copy of it. At exit the runtime unmounts it and reaps the daemon.
//! * auto: the kernel's overlay when a throw-away process in the same kind of namespaces can
//!   mount it (as root, or in a user namespace on Linux >= 5.11); otherwise stratafs.

use crate::config::{Config, Driver};
use crate::error::{Error, StackError};
use crate::state::{self, create_private_dir, force_remove, io_err};
use crate::{idmap, sys};
use log::{debug, info, warn};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The per-container directory and the layer directories derived from the configuration.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    /// Mount point of the stack.
    pub root: PathBuf,
    pub layers: Vec<PathBuf>,
    /// The upper directory in use (`--upper` or a temporary one); None when read-only.
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// A work directory created next to `--upper` (another filesystem than `dir`).
    sibling_work: Option<PathBuf>,
    removed: bool,
    /// Held while the runtime lives (see `state`); released last.
    lock: Option<state::Lock>,
}

fn dev_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.dev())
}

impl Workspace {
    pub fn create(id: &str, cfg: &Config) -> Result<Workspace, Error> {
        let base = state::base()?;
        create_private_dir(&base)?;
        // What runtimes killed before they could clean up left behind (logged there).
        state::collect(&base);
        let lock = state::Lock::create(&base, id)?;
        let dir = base.join(id);
        fs::create_dir(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let mut ws = Workspace {
            root: dir.join("root"),
            dir,
            layers: cfg.layers.clone(),
            upper: None,
            work: None,
            sibling_work: None,
            removed: false,
            lock: Some(lock),
        };
        if let Err(e) = ws.fill(id, cfg) {
            let _ = ws.remove();
            return Err(e);
        }
        info!("state directory: {}", ws.dir.display());
        Ok(ws)
    }

    /// An OCI container's: `dir` (`<--root>/<id>`, made by the caller) without a lock (the
    /// container outlives the runtime; `strata delete` removes it).
    pub fn create_oci(dir: PathBuf, id: &str, cfg: &Config) -> Result<Workspace, Error> {
        let mut ws = Workspace {
            root: dir.join("root"),
            dir,
            layers: cfg.layers.clone(),
            upper: None,
            work: None,
            sibling_work: None,
            removed: false,
            lock: None,
        };
        let bind_root = cfg.oci.as_ref().is_some_and(|o| o.bind_root);
        let r = if bind_root {
            // Bound onto itself inside the container's mount namespace, as runc does: a
            // user namespace's root (a host uid without access to --root) reaches it there.
            ws.root = ws.layers[0].clone();
            Ok(())
        } else {
            ws.fill(id, cfg)
        };
        if let Err(e) = r {
            let _ = ws.remove();
            return Err(e);
        }
        Ok(ws)
    }

    /// Leaves the directory in place (an OCI container that `strata create` made).
    pub fn keep(mut self) {
        self.removed = true;
    }

    fn fill(&mut self, id: &str, cfg: &Config) -> Result<(), Error> {
        let mk = |p: &Path| fs::create_dir(p).map_err(|e| io_err("creating", p, e));
        mk(&self.root)?;
        if cfg.read_only {
            return Ok(());
        }
        match &cfg.upper {
            None => {
                let (u, w) = (self.dir.join("upper"), self.dir.join("work"));
                mk(&u)?;
                mk(&w)?;
                self.upper = Some(u);
                self.work = Some(w);
            }
            Some(u) => {
                self.upper = Some(u.clone());
                let w = if dev_of(u) == dev_of(&self.dir) {
                    self.dir.join("work")
                } else {
                    // The work directory must be on the upper's filesystem.
                    let parent = u.parent().unwrap_or(Path::new("/"));
                    let w = parent.join(format!(".strata-work-{id}"));
                    // Recorded first, for `state::collect` after a kill.
                    let record = self.dir.join("sibling-work");
                    fs::write(&record, w.as_os_str().as_bytes())
                        .map_err(|e| io_err("writing", &record, e))?;
                    self.sibling_work = Some(w.clone());
                    w
                };
                mk(&w)?;
                self.work = Some(w);
            }
        }
        Ok(())
    }

    /// The descriptor of the runtime's lock (see `state::Lock`).
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        self.lock.as_ref().map(state::Lock::raw_fd)
    }

    /// True while something is mounted on the stack's mount point (in this namespace).
    pub fn root_is_mounted(&self) -> bool {
        match (dev_of(&self.root), dev_of(&self.dir)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }

    /// Removes the state directory (with the temporary upper) and any sibling work
    /// directory. Refuses while the stack is still mounted, not to delete through it.
    pub fn remove(&mut self) -> Result<(), Error> {
        if self.removed {
            return Ok(());
        }
        if self.root_is_mounted() {
            return Err(io_err(
                "not removing",
                &self.dir,
                io::Error::other("the layer stack is still mounted there"),
            ));
        }
        if let Some(w) = &self.sibling_work {
            force_remove(w).map_err(|e| io_err("removing", w, e))?;
        }
        force_remove(&self.dir).map_err(|e| io_err("removing", &self.dir, e))?;
        debug!("removed {}", self.dir.display());
        self.removed = true;
        if let Some(lock) = self.lock.take() {
            lock.release();
        }
        Ok(())
    }
}

/// Escapes a path for a `lowerdir=`/`upperdir=` option (':', ',' and '\\' are special), byte
/// for byte so that a non-UTF-8 path survives. The owner of this syntax is stratafs's
/// `cli::escape_path` (the runtime does not link the unionfs crate): keep the two alike.
fn escape(p: &Path) -> OsString {
    let mut out = Vec::with_capacity(p.as_os_str().len());
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

impl Workspace {
    /// The `lowerdir=...[,upperdir=...,workdir=...]` options.
    pub fn overlay_options(&self) -> OsString {
        let mut o = OsString::from("lowerdir=");
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                o.push(":");
            }
            o.push(escape(l));
        }
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            o.push(",upperdir=");
            o.push(escape(u));
            o.push(",workdir=");
            o.push(escape(w));
        }
        o
    }
}

/// How the container's init mounts the stack on the workspace's mount point.
#[derive(Clone, Debug)]
pub enum StackMount {
    /// mount -t overlay with these options.
    Overlay { options: OsString },
    /// A read-only single layer: a bind mount of it.
    Bind { layer: PathBuf },
    /// stratafs already mounted it (before the namespaces were created).
    Fuse,
}

impl StackMount {
    /// Mounts the stack on `root` (in the current mount namespace).
    pub fn mount(&self, root: &Path) -> Result<(), nix::errno::Errno> {
        match self {
            StackMount::Overlay { options } => {
                debug!(
                    "mount -t overlay -o {} overlay {}",
                    options.to_string_lossy(),
                    root.display()
                );
                // nix's own mount: the options are bytes, which the runtime's `sys::mount`
                // (str data) cannot carry.
                nix::mount::mount(
                    Some(Path::new("overlay")),
                    root,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(options.as_os_str()),
                )
            }
            StackMount::Bind { layer } => sys::mount(
                Some(layer),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
            // stratafs mounted it from outside this namespace: in a user namespace the copy
            // is locked, and pivot_root refuses a locked mount; a bind of it made here is not.
            StackMount::Fuse => sys::mount(
                Some(root),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            ),
        }
    }
}

/// Decides the driver and returns how init mounts the stack.
pub fn plan(cfg: &Config, ws: &Workspace, rootless: bool) -> StackMount {
    if cfg.oci.as_ref().is_some_and(|o| o.bind_root) {
        return StackMount::Bind {
            layer: ws.layers[0].clone(),
        };
    }
    let kernel = || {
        if ws.upper.is_none() && ws.layers.len() == 1 {
            // overlayfs wants two lower layers when it has no upper.
            return StackMount::Bind {
                layer: ws.layers[0].clone(),
            };
        }
        let mut options = ws.overlay_options();
        if rootless {
            options.push(",userxattr");
        }
        StackMount::Overlay { options }
    };
    match cfg.driver {
        Driver::Kernel => kernel(),
        Driver::Fuse => StackMount::Fuse,
        Driver::Auto => {
            let m = kernel();
            match probe(&m, ws, rootless) {
                Ok(()) => {
                    info!("driver: kernel overlay (auto)");
                    m
                }
                Err(e) => {
                    info!("driver: FUSE (auto: the kernel overlay cannot be mounted here: {e})");
                    StackMount::Fuse
                }
            }
        }
    }
}

/// Mounts `m` in a throw-away process with its own mount (and user) namespace.
fn probe(m: &StackMount, ws: &Workspace, rootless: bool) -> Result<(), String> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    match sys::fork().map_err(|e| e.desc().to_string())? {
        sys::Fork::Child => {
            let r = (|| -> Result<(), i32> {
                if rootless {
                    sys::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
                        .map_err(|e| e as i32)?;
                    idmap::map_self_as_root(uid, gid).map_err(|_| libc::EPERM)?;
                } else {
                    sys::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| e as i32)?;
                }
                sys::mount(
                    None,
                    Path::new("/"),
                    None,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None,
                )
                .map_err(|e| e as i32)?;
                m.mount(&ws.root).map_err(|e| e as i32)
            })();
            sys::exit_now(match r {
                Ok(()) => 0,
                Err(e) => e.clamp(1, 255),
            })
        }
        sys::Fork::Parent(pid) => match nix::sys::wait::waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, code)) => {
                Err(nix::errno::Errno::from_raw(code).desc().to_string())
            }
            other => Err(format!("probe ended with {other:?}")),
        },
    }
}

/// Unmounts the FUSE mount on `mountpoint` (lazily: MNT_DETACH / `fusermount3 -z`): umount(2)
/// as root, fusermount3 otherwise. Best effort: callers check what is left.
pub fn unmount_fuse(mountpoint: &Path, lazy: bool) {
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        if let Err(e) = sys::umount(mountpoint, flags) {
            debug!("umount {}: {e}", mountpoint.display());
        }
    } else {
        let mut c = Command::new("fusermount3");
        c.arg(if lazy { "-uz" } else { "-u" }).arg(mountpoint);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Locates stratafs: $STRATAFS_BIN, else next to this executable, else in PATH.
pub fn stratafs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join("stratafs");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join("stratafs"))
        .find(|p| p.is_file())
}

/// A running `stratafs -f` serving the stack.
#[derive(Debug)]
pub struct FuseDaemon {
    child: Child,
    mountpoint: PathBuf,
    done: bool,
}

impl FuseDaemon {
    pub fn start(ws: &Workspace) -> Result<FuseDaemon, StackError> {
        let bin = stratafs_bin().ok_or(StackError::NoStratafs)?;
        // driver=fuse: stratafs would otherwise mount the kernel's overlay where it can.
        let mut opts = ws.overlay_options();
        opts.push(",driver=fuse");
        info!(
            "driver: FUSE: {} -f -o {} {}",
            bin.display(),
            opts.to_string_lossy(),
            ws.root.display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("-f")
            .arg("-o")
            .arg(&opts)
            .arg(&ws.root)
            .stdin(Stdio::null())
            .process_group(0);
        use std::os::unix::process::CommandExt;
        let child = sys::spawn_with_parent_death_signal(&mut cmd, Signal::SIGTERM)
            .map_err(|err| StackError::Spawn { bin, err })?;
        let mut d = FuseDaemon {
            child,
            mountpoint: ws.root.clone(),
            done: false,
        };
        let parent_dev = dev_of(&ws.dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                d.done = true;
                if d.mounted() {
                    // It mounted something and left (not the FUSE daemon we expect).
                    d.unmount(true);
                }
                return Err(StackError::DaemonFailed {
                    status: status.to_string(),
                });
            }
            if dev_of(&ws.root) != parent_dev {
                info!("driver: stratafs (pid {}) mounted the stack", d.child.id());
                return Ok(d);
            }
            if Instant::now() > deadline {
                let _ = d.stop();
                return Err(StackError::DaemonTimeout);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn mounted(&self) -> bool {
        let parent = self.mountpoint.parent().unwrap_or(Path::new("/"));
        dev_of(&self.mountpoint) != dev_of(parent)
    }

    fn unmount(&self, lazy: bool) {
        unmount_fuse(&self.mountpoint, lazy);
    }

    /// Unmounts the stack and waits for the daemon to end (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) -> Result<(), StackError> {
        if self.done && !self.mounted() {
            return Ok(());
        }
        if self.mounted() {
            self.unmount(false);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        for (after, sig) in [
            (Duration::from_secs(5), Some(Signal::SIGTERM)),
            (Duration::from_secs(5), Some(Signal::SIGKILL)),
            (Duration::from_secs(5), None),
        ] {
            if self.done {
                break;
            }
            let deadline = Instant::now() + after;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    self.done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if self.done {
                break;
            }
            if let Some(sig) = sig {
                warn!("stratafs (pid {pid}) still running: sending {sig}");
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
        if self.mounted() {
            self.unmount(true);
        }
        if !self.done || self.mounted() {
            return Err(StackError::Io {
                what: "stopping stratafs on".into(),
                path: self.mountpoint.clone(),
                err: io::Error::other("the daemon did not end"),
            });
        }
        debug!("driver: stratafs unmounted and ended");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn escape_keeps_non_utf8_bytes() {
        let p = Path::new(OsStr::from_bytes(b"/l/a\xff:b,c\\d"));
        assert_eq!(escape(p).as_bytes(), b"/l/a\xff\\:b\\,c\\\\d");
    }
}

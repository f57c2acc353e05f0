//! Containers' state on disk, and the collection of what dead ones left behind.
//!
//! Under the state base (`$STRATA_STATE_DIR`, else /run/strata as root, else
//! `$XDG_RUNTIME_DIR/strata` or /tmp/strata-UID) a container has:
//! * `<id>.lock`, created before anything else and held with `flock(LOCK_EX)` by the runtime
//!   for its whole life, by the runtime alone: the forked container side closes its copy at
//!   once, so that a container left alive by a race is still collected (its cgroup killed);
//! * `<id>/`: the stack's mount point `root`, the temporary `upper` and `work`, and
//!   `sibling-work`, the path of a work directory made next to `--upper` (written before it
//!   is made).
//!
//! A lock file that nobody holds belongs to a runtime that died without cleaning up (SIGKILL,
//! a crash). [`collect`], run at every start and by `strata gc`, takes the lock and removes
//! what is left: a stratafs daemon still serving the root, the cgroups named after the id,
//! the FUSE mount, the directories, and last the lock file itself.

use crate::cgroups;
use crate::error::Error;
use crate::stack::unmount_fuse;
use log::{debug, info, warn};
use nix::fcntl::{Flock, FlockArg};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) fn io_err(what: &str, path: &Path, err: io::Error) -> Error {
    Error::Io {
        what: what.to_string(),
        path: path.to_path_buf(),
        err,
    }
}

/// Where state directories go (see the module's documentation).
pub fn base() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("STRATA_STATE_DIR") {
        return Ok(PathBuf::from(p));
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(PathBuf::from("/run/strata"));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        let x = PathBuf::from(x);
        if nix::unistd::access(&x, nix::unistd::AccessFlags::W_OK).is_ok() {
            return Ok(x.join("strata"));
        }
    }
    Ok(PathBuf::from(format!("/tmp/strata-{uid}")))
}

/// Creates `path` (0700) or checks that it is a directory of ours.
pub fn create_private_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))?;
    let md = fs::symlink_metadata(path).map_err(|e| io_err("checking", path, e))?;
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io_err(
            "refusing to use",
            path,
            io::Error::other("not a directory owned by this user"),
        ));
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    Ok(())
}

/// remove_dir_all that also removes directories without permissions (the overlay's
/// `work/work` is mode 000 and owned by the mapped root in a user namespace).
pub fn force_remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn chmod_dirs(p: &Path) {
        if let Ok(md) = fs::symlink_metadata(p) {
            if md.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        chmod_dirs(&e.path());
                    }
                }
            }
        }
    }
    chmod_dirs(path);
    fs::remove_dir_all(path)
}

/// The lock that says a container's runtime is alive.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    _file: Flock<fs::File>,
}

impl Lock {
    /// Creates and takes `<base>/<id>.lock` (a new file: ids are random).
    pub fn create(base: &Path, id: &str) -> Result<Lock, Error> {
        let path = base.join(format!("{id}.lock"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io_err("creating", &path, e))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io_err("locking", &path, io::Error::from(e)))?;
        Ok(Lock { path, _file: file })
    }

    /// The descriptor holding the lock, for children to close after fork.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self._file.as_raw_fd()
    }

    /// Removes the lock file; the lock itself goes with `self`.
    pub fn release(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            debug!("removing {}: {e}", self.path.display());
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Removes what dead containers under `base` left; returns their ids. Best effort: what
/// cannot be removed is logged and kept for the next time (the lock file stays).
pub fn collect(base: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(base) else {
        return done;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if !valid_id(id) {
            continue;
        }
        let path = e.path();
        let Ok(file) = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        // Held: that runtime is alive.
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        // Unlinked since we opened it: its owner (or another collector) has finished.
        let same = match (lock.metadata(), fs::symlink_metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            continue;
        }
        match clean(base, id) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                info!("removed what the dead container {id} left");
                done.push(id.to_string());
            }
            Err(e) => warn!("cleaning up after container {id}: {e}"),
        }
    }
    done
}

/// Whether some process has `arg` as one of its arguments.
fn processes_with_arg(arg: &Path) -> Vec<i32> {
    let want = arg.as_os_str().as_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            cmdline.split(|b| *b == 0).any(|a| a == want).then_some(pid)
        })
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::symlink_metadata(path), fs::symlink_metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        // A dead FUSE connection answers ENOTCONN: still a mount.
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

fn clean(base: &Path, id: &str) -> Result<(), Error> {
    let dir = base.join(id);
    let root = dir.join("root");
    // A stratafs daemon that outlived its runtime serves `root` (its last argument).
    for pid in processes_with_arg(&root) {
        debug!("killing stratafs (pid {pid}) of {id}");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for cg in cgroups::leftovers(id) {
        cgroups::remove_dir(&cg).map_err(Error::from)?;
        debug!("removed the cgroup {}", cg.display());
    }
    if is_mount_point(&root) {
        unmount_fuse(&root, true);
    }
    if is_mount_point(&root) {
        return Err(io_err(
            "not removing",
            &dir,
            io::Error::other("the layer stack is still mounted there"),
        ));
    }
    if let Ok(w) = fs::read(dir.join("sibling-work")) {
        let w = PathBuf::from(std::ffi::OsStr::from_bytes(&w));
        // Only what Workspace made: `<upper's parent>/.strata-work-<id>`.
        if w.file_name().and_then(|n| n.to_str()) == Some(&format!(".strata-work-{id}")) {
            force_remove(&w).map_err(|e| io_err("removing", &w, e))?;
        }
    }
    force_remove(&dir).map_err(|e| io_err("removing", &dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("0a1b2c3d4e5f"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
    }

    #[test]
    fn a_held_lock_is_left_alone_and_a_free_one_collected() {
        let base = std::env::temp_dir().join(format!("strata-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let live = Lock::create(&base, "aaaaaaaaaaaa").unwrap();
        fs::create_dir_all(base.join("aaaaaaaaaaaa/upper")).unwrap();
        // A dead one: its lock file exists, nobody holds it.
        drop(Lock::create(&base, "bbbbbbbbbbbb").unwrap());
        fs::create_dir_all(base.join("bbbbbbbbbbbb/upper/data")).unwrap();
        assert_eq!(collect(&base), vec!["bbbbbbbbbbbb".to_string()]);
        assert!(!base.join("bbbbbbbbbbbb").exists());
        assert!(!base.join("bbbbbbbbbbbb.lock").exists());
        assert!(base.join("aaaaaaaaaaaa/upper").exists());
        live.release();
        assert!(!base.join("aaaaaaaaaaaa.lock").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}

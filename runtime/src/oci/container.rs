//! An OCI container's state on disk: `<root>/<id>/` holds `state.json` (what `create`
//! made: the container process's pid and start time, the bundle, the cgroups), `exec.fifo`
//! (present from `create` until `start`), and the stack's mount point and upper directory.
//!
//! The status is derived, never stored: `stopped` once the process is gone, a zombie, or a
//! new process under a reused pid (its start time differs); else `created` while the fifo
//! exists and `running` after.

use crate::cgroups;
use crate::error::{Error, ProcessError};
use crate::state::{force_remove, io_err};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The spec version strata implements.
pub const OCI_VERSION: &str = "1.2.0";

/// Where containers' directories go without `--root`.
pub fn default_root() -> PathBuf {
    crate::state::base()
        .unwrap_or_else(|_| PathBuf::from("/run/strata"))
        .join("oci")
}

/// What `create` recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// Field 22 of /proc/PID/stat when created: tells a reused pid from ours.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub annotations: HashMap<String, String>,
    pub created: String,
    pub owner: u32,
    pub cgroups: Vec<PathBuf>,
    pub rootfs: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// One container under a root.
pub struct Container {
    pub dir: PathBuf,
    pub saved: Saved,
}

fn bad_id(id: &str) -> bool {
    id.is_empty()
        || id.len() > 1024
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
}

/// Checks a container id: it names a directory under the root.
pub fn check_id(id: &str) -> Result<(), Error> {
    if bad_id(id) {
        return Err(crate::error::ConfigError::BadValue {
            option: "container id",
            value: id.to_string(),
            reason: "expected letters, digits, '_', '+', '-' and '.' (not first)".into(),
        }
        .into());
    }
    Ok(())
}

/// `(state, start time)` of process `pid` from /proc/PID/stat; `None` if there is none.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Now, as RFC 3339 in UTC (the spec's `created`), without a date crate.
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Waits up to 100 ms for `file` (non-blocking) to be readable, then reads it.
fn read_within(file: &fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(file),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
    io::Read::read(&mut &*file, buf)
}

impl Container {
    fn state_file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Makes `<root>/<id>/` (the id must be new).
    pub fn make_dir(root: &Path, id: &str) -> Result<PathBuf, Error> {
        check_id(id)?;
        crate::state::create_private_dir(root)?;
        let dir = root.join(id);
        fs::create_dir(&dir).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Config(crate::error::ConfigError::Conflict(format!(
                    "container {id} exists already"
                )))
            } else {
                io_err("creating", &dir, e)
            }
        })?;
        Ok(dir)
    }

    /// Records a container `create` made.
    pub fn save(
        dir: &Path,
        id: &str,
        pid: i32,
        bundle: &Path,
        annotations: HashMap<String, String>,
        cgroups: Vec<PathBuf>,
    ) -> Result<Container, Error> {
        let saved = Saved {
            id: id.to_string(),
            pid,
            start_time: proc_stat(pid).map(|(_, t)| t).unwrap_or(0),
            bundle: bundle.to_path_buf(),
            annotations,
            created: now_rfc3339(),
            owner: nix::unistd::geteuid().as_raw(),
            cgroups,
            rootfs: dir.join("root"),
        };
        let file = Self::state_file(dir);
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(&saved)
            .map_err(|e| io_err("writing", &file, io::Error::other(e.to_string())))?;
        fs::write(&tmp, text).map_err(|e| io_err("writing", &tmp, e))?;
        fs::rename(&tmp, &file).map_err(|e| io_err("writing", &file, e))?;
        Ok(Container {
            dir: dir.to_path_buf(),
            saved,
        })
    }

    pub fn load(root: &Path, id: &str) -> Result<Container, Error> {
        check_id(id)?;
        let dir = root.join(id);
        let file = Self::state_file(&dir);
        let text = fs::read(&file).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Config(crate::error::ConfigError::Conflict(format!(
                    "container {id} does not exist"
                )))
            } else {
                io_err("reading", &file, e)
            }
        })?;
        let saved = serde_json::from_slice(&text)
            .map_err(|e| io_err("reading", &file, io::Error::other(e.to_string())))?;
        Ok(Container { dir, saved })
    }

    /// Every container under `root`, by id.
    pub fn list(root: &Path) -> Vec<Container> {
        let mut out: Vec<Container> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Container::load(root, e.file_name().to_str()?).ok())
            .collect();
        out.sort_by(|a, b| a.saved.id.cmp(&b.saved.id));
        out
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    /// Whether the recorded process is still ours and not a zombie.
    pub fn alive(&self) -> bool {
        match proc_stat(self.saved.pid) {
            Some((state, start)) => state != 'Z' && state != 'X' && start == self.saved.start_time,
            None => false,
        }
    }

    pub fn status(&self) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The state document of `strata state` (and of hooks' stdin): the spec's fields, plus
    /// runc's `rootfs`, `created` and `owner`.
    pub fn state_json(&self) -> serde_json::Value {
        let status = self.status();
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.saved.id,
            "status": status.name(),
            "pid": if status == Status::Stopped { 0 } else { self.saved.pid },
            "bundle": self.saved.bundle,
            "rootfs": self.saved.rootfs,
            "created": self.saved.created,
            "owner": "",
        });
        if !self.saved.annotations.is_empty() {
            v["annotations"] = serde_json::json!(self.saved.annotations);
        }
        v
    }

    /// `strata start`: lets the waiting process go on to its execve.
    pub fn start(&self) -> Result<(), Error> {
        match self.status() {
            Status::Created => {}
            s => {
                return Err(crate::error::ConfigError::Conflict(format!(
                    "container {} is {}, not created: it cannot be started",
                    self.saved.id,
                    s.name()
                ))
                .into())
            }
        }
        let fifo = self.fifo();
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| io_err("opening", &fifo, e))?;
        // The writer opens its end as soon as a reader exists; wait for its byte while the
        // process lives.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut b = [0u8; 1];
            if let Ok(1) = read_within(&file, &mut b) {
                break;
            }
            if !self.alive() {
                let _ = fs::remove_file(&fifo);
                return Err(ProcessError::Setup {
                    what: "starting: the container process ended",
                    errno: nix::errno::Errno::ESRCH,
                }
                .into());
            }
            if Instant::now() > deadline {
                return Err(ProcessError::Setup {
                    what: "starting: the container process does not answer on exec.fifo",
                    errno: nix::errno::Errno::ETIMEDOUT,
                }
                .into());
            }
        }
        // Then EOF: the process closed its end at execve (or died), so what `start`
        // runs next (poststart hooks) comes after the user's process is executed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut b = [0u8; 16];
            match read_within(&file, &mut b) {
                Ok(0) => break,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => break,
                _ => {}
            }
            if !self.alive() {
                break;
            }
        }
        let _ = fs::remove_file(&fifo);
        Ok(())
    }

    /// Sends `sig` to the container process, or with `all` to every process of its cgroups.
    pub fn kill(&self, sig: Signal, all: bool) -> Result<(), Error> {
        if self.status() == Status::Stopped {
            return Err(crate::error::ConfigError::Conflict(format!(
                "container {} is not running",
                self.saved.id
            ))
            .into());
        }
        if all {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        nix::sys::signal::kill(Pid::from_raw(self.saved.pid), sig).map_err(|errno| {
            ProcessError::Setup {
                what: "sending the signal",
                errno,
            }
            .into()
        })
    }

    /// The processes of the container (its cgroups' members; the process alone without).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .saved
            .cgroups
            .iter()
            .flat_map(|c| {
                fs::read_to_string(c.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() && self.alive() {
            pids.push(self.saved.pid);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// `strata delete`: refuses a live container unless `force` (then kills it), removes its
    /// cgroups and directory. Returns the state as it was, for poststop hooks.
    pub fn delete(&self, force: bool) -> Result<(), Error> {
        match self.status() {
            Status::Stopped => {}
            _ if force => {}
            s => {
                return Err(crate::error::ConfigError::Conflict(format!(
                    "container {} is {}: stop it first, or delete --force",
                    self.saved.id,
                    s.name()
                ))
                .into())
            }
        }
        if self.alive() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.saved.pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for cg in &self.saved.cgroups {
            cgroups::remove_dir(cg)?;
        }
        for cg in cgroups::leftovers(&self.saved.id) {
            cgroups::remove_dir(&cg)?;
        }
        force_remove(&self.dir).map_err(|e| io_err("removing", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_x+y").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id(".x").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
    }

    #[test]
    fn own_stat() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(start > 0);
    }

    #[test]
    fn rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

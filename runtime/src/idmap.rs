//! uid/gid maps of the user namespace of a rootless container.
//!
//! The caller becomes root inside (`0 <uid> 1`). When `/etc/subuid` and `/etc/subgid` give the
//! caller a range and the setuid helpers `newuidmap`/`newgidmap` exist, the range is mapped
//! too, from 1 up, so that `--user` may pick other ids. Without them, the process writes the
//! one-line maps itself (after `deny` in `/proc/PID/setgroups`, as the kernel requires), and
//! only uid/gid 0 exist inside.

use crate::error::IdmapError;
use log::{info, warn};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A subordinate id range from /etc/subuid or /etc/subgid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// What to map for one user.
#[derive(Clone, Debug)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub subuid: Option<Range>,
    pub subgid: Option<Range>,
    newuidmap: Option<PathBuf>,
    newgidmap: Option<PathBuf>,
}

/// The first range of `user` (by name or number) in a subid file's text.
pub fn parse_subid(text: &str, name: Option<&str>, id: u32) -> Option<Range> {
    text.lines().find_map(|l| {
        let mut it = l.trim().split(':');
        let (who, start, count) = (it.next()?, it.next()?, it.next()?);
        if Some(who) != name && who != id.to_string() {
            return None;
        }
        let r = Range {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let found = path
        .split(':')
        .chain(["/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

impl IdMap {
    /// The plan for the calling user.
    pub fn for_current_user() -> IdMap {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
        let subuid = parse_subid(&read("/etc/subuid"), name.as_deref(), uid);
        let subgid = parse_subid(&read("/etc/subgid"), name.as_deref(), uid);
        IdMap {
            uid,
            gid,
            subuid,
            subgid,
            newuidmap: subuid.and(find_helper("newuidmap")),
            newgidmap: subgid.and(find_helper("newgidmap")),
        }
    }

    /// Whether `uid` (inside) will exist in the namespace.
    pub fn maps_uid(&self, uid: u32) -> bool {
        uid == 0 || (self.newuidmap.is_some() && self.subuid.is_some_and(|r| uid <= r.count))
    }

    pub fn maps_gid(&self, gid: u32) -> bool {
        gid == 0 || (self.newgidmap.is_some() && self.subgid.is_some_and(|r| gid <= r.count))
    }

    /// Writes the maps of the user namespace of process `pid` (from the parent namespace).
    pub fn apply(&self, pid: i32) -> Result<(), IdmapError> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let gid_done = match (&self.newgidmap, self.subgid) {
            (Some(helper), Some(r)) => run_helper(helper, pid, self.gid, r),
            _ => false,
        };
        if !gid_done {
            write_file(&proc.join("setgroups"), "deny")?;
            write_file(&proc.join("gid_map"), &format!("0 {} 1\n", self.gid))?;
        }
        let uid_done = match (&self.newuidmap, self.subuid) {
            (Some(helper), Some(r)) => run_helper(helper, pid, self.uid, r),
            _ => false,
        };
        if !uid_done {
            write_file(&proc.join("uid_map"), &format!("0 {} 1\n", self.uid))?;
        }
        info!(
            "user namespace: root inside is uid {} gid {}{}",
            self.uid,
            self.gid,
            if uid_done {
                " (plus the /etc/subuid range)"
            } else {
                ""
            }
        );
        Ok(())
    }
}

fn run_helper(helper: &Path, pid: i32, id: u32, r: Range) -> bool {
    let args = [
        pid.to_string(),
        "0".into(),
        id.to_string(),
        "1".into(),
        "1".into(),
        r.start.to_string(),
        r.count.to_string(),
    ];
    match Command::new(helper).args(&args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            warn!(
                "{} failed ({}): {}; mapping only root",
                helper.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            warn!("{}: {e}; mapping only root", helper.display());
            false
        }
    }
}

fn write_file(file: &Path, text: &str) -> Result<(), IdmapError> {
    fs::write(file, text).map_err(|err| IdmapError::Write {
        file: file.to_path_buf(),
        err,
    })
}

/// Writes the one-line maps of the calling process's own (just created) user namespace.
pub fn map_self_as_root(uid: u32, gid: u32) -> Result<(), IdmapError> {
    let proc = Path::new("/proc/self");
    write_file(&proc.join("setgroups"), "deny")?;
    write_file(&proc.join("gid_map"), &format!("0 {gid} 1\n"))?;
    write_file(&proc.join("uid_map"), &format!("0 {uid} 1\n"))
}

/// Writes an OCI bundle's maps (container, host, size) for the user namespace of `pid`, as
/// root does it: directly, in one write per file.
pub fn write_maps(
    pid: i32,
    uid_map: &[(u32, u32, u32)],
    gid_map: &[(u32, u32, u32)],
) -> Result<(), IdmapError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let text = |m: &[(u32, u32, u32)]| {
        m.iter()
            .map(|(c, h, n)| format!("{c} {h} {n}\n"))
            .collect::<String>()
    };
    write_file(&proc.join("gid_map"), &text(gid_map))?;
    write_file(&proc.join("uid_map"), &text(uid_map))?;
    info!("user namespace: the bundle's uid/gid maps");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines() {
        let text = "alice:100000:65536\n1000:200000:10\nbob:0:0\n";
        assert_eq!(
            parse_subid(text, Some("alice"), 1),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            parse_subid(text, Some("carol"), 1000),
            Some(Range {
                start: 200000,
                count: 10
            })
        );
        assert_eq!(parse_subid(text, Some("bob"), 5), None);
        assert_eq!(parse_subid(text, None, 7), None);
    }
}

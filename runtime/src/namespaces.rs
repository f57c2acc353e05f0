//! The container's namespaces.
//!
//! Always new: mount, pid, uts, ipc and cgroup namespaces; a network namespace unless
//! `--net host`; a user namespace when the caller is not root (created first, on its own, so
//! the parent can write its uid/gid maps before the other namespaces are created inside it and
//! owned by it). See `process` for who creates which and when.

use crate::error::NamespaceError;
use crate::sys;
use log::info;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

/// Which optional namespaces to create.
#[derive(Clone, Copy, Debug)]
pub struct Namespaces {
    pub user: bool,
    pub net: bool,
}

impl Namespaces {
    pub fn unshare_user(&self) -> Result<(), NamespaceError> {
        sys::unshare(CloneFlags::CLONE_NEWUSER).map_err(|errno| NamespaceError::Unshare {
            what: "user".into(),
            errno,
        })?;
        info!("namespaces: new user namespace");
        Ok(())
    }

    /// In a new user namespace whose maps are written: become its root.
    pub fn become_root(&self) -> Result<(), NamespaceError> {
        sys::set_ids(Uid::from_raw(0), Gid::from_raw(0), false).map_err(NamespaceError::BecomeRoot)
    }

    /// Creates the mount, uts, ipc, cgroup, pid and (unless --net host) network namespaces.
    /// The pid namespace applies to the children created afterwards.
    pub fn unshare_container(&self) -> Result<(), NamespaceError> {
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID;
        let mut names = "mount, uts, ipc, cgroup, pid".to_string();
        if self.net {
            flags |= CloneFlags::CLONE_NEWNET;
            names.push_str(", net");
        }
        sys::unshare(flags).map_err(|errno| NamespaceError::Unshare {
            what: names.clone(),
            errno,
        })?;
        info!("namespaces: new {names}");
        Ok(())
    }
}

pub fn set_hostname(name: &str) -> Result<(), NamespaceError> {
    nix::unistd::sethostname(name).map_err(|errno| NamespaceError::Hostname {
        name: name.to_string(),
        errno,
    })?;
    info!("hostname: {name}");
    Ok(())
}

/// Brings `lo` up in the (new) network namespace.
pub fn loopback_up() -> Result<(), NamespaceError> {
    sys::loopback_up().map_err(NamespaceError::Loopback)?;
    info!("network: lo up, no other interface");
    Ok(())
}

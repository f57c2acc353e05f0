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
use std::path::PathBuf;

/// Which namespaces to create and join.
#[derive(Clone, Debug)]
pub struct Namespaces {
    pub user: bool,
    pub net: bool,
    /// The others to create (CLONE_NEW* besides user and net): `strata run` creates mount,
    /// uts, ipc, cgroup and pid; an OCI bundle names its own.
    pub others: CloneFlags,
    /// An OCI bundle's namespaces to join (setns) instead of creating them.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

impl Namespaces {
    /// `strata run`'s: everything new, the network unless `--net host`.
    pub fn all(user: bool, net: bool) -> Namespaces {
        Namespaces {
            user,
            net,
            others: CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWCGROUP
                | CloneFlags::CLONE_NEWPID,
            join: Vec::new(),
        }
    }

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

    /// Joins the namespaces of `join` whose flag is (`user`) or is not (`!user`) the user
    /// namespace's: a joined user namespace comes first, the rest after it.
    pub fn join(&self, user: bool) -> Result<(), NamespaceError> {
        for (flag, path) in &self.join {
            if (*flag == CloneFlags::CLONE_NEWUSER) != user {
                continue;
            }
            let err = |errno| NamespaceError::Join {
                path: path.clone(),
                errno,
            };
            let fd = nix::fcntl::open(
                path.as_path(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(err)?;
            nix::sched::setns(&fd, *flag).map_err(err)?;
            info!("namespaces: joined {}", path.display());
        }
        Ok(())
    }

    /// Creates the namespaces of `others` and (unless --net host) the network's. A pid
    /// namespace applies to the children created afterwards.
    pub fn unshare_container(&self) -> Result<(), NamespaceError> {
        let mut flags = self.others;
        if self.net {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        let names: Vec<&str> = [
            (CloneFlags::CLONE_NEWNS, "mount"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
            (CloneFlags::CLONE_NEWPID, "pid"),
            (CloneFlags::CLONE_NEWNET, "net"),
        ]
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
        let names = names.join(", ");
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

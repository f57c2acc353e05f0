//! Extended attributes, with the layers' private names escaped and hidden.

use super::{Res, StrataFs};
use crate::inodes::NodeId;
use crate::sys;
use fuser::Errno;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};

impl StrataFs {
    fn xattr_target(&self, ino: NodeId) -> Res<OwnedFd> {
        Ok(self.node_fd(ino)?.0)
    }

    pub(super) fn do_setxattr(
        &self,
        ino: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let name = self.layers.escape_xattr(name);
        self.check_writable()?;
        self.copy_up(ino)?;
        let fd = self.xattr_target(ino)?;
        Ok(sys::fsetxattr(fd.as_fd(), &name, value, flags)?)
    }

    pub(super) fn do_getxattr(&self, ino: NodeId, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let name = self.layers.escape_xattr(name);
        let fd = self.xattr_target(ino)?;
        Ok(sys::fgetxattr(fd.as_fd(), &name)?)
    }

    pub(super) fn do_listxattr(&self, ino: NodeId, size: u32) -> Result<Vec<u8>, Errno> {
        let fd = self.xattr_target(ino)?;
        let raw = sys::flistxattr(fd.as_fd())?;
        // The kernel's overlay answers a size query with the real list's length, private
        // names included (it filters only when it copies names out).
        if size == 0 {
            return Ok(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        for n in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(shown) = self.layers.unescape_xattr(n) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub(super) fn do_removexattr(&self, ino: NodeId, name: &OsStr) -> Result<(), Errno> {
        let name = self.layers.escape_xattr(name);
        self.check_writable()?;
        // Removing an xattr the file does not have changes nothing: no copy-up for it.
        let fd = self.xattr_target(ino)?;
        sys::fgetxattr(fd.as_fd(), &name)?;
        self.copy_up(ino)?;
        let fd = self.xattr_target(ino)?;
        Ok(sys::fremovexattr(fd.as_fd(), &name)?)
    }
}

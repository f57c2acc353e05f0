//! Rename and removal (unlink, rmdir): both leave whiteouts where a lower layer has the name.

use super::{Res, StrataFs};
use crate::inodes::NodeId;
use crate::layers::join;
use crate::layers::UPPER;
use crate::readdir;
use crate::sys;
use crate::whiteout;
use fuser::Errno;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

impl StrataFs {
    /// The node of `name` in `parent` as found by a lookup, made if the kernel never looked it up.
    fn node_of(&self, parent: NodeId, name: &OsStr, f: &crate::layers::Found) -> NodeId {
        self.inodes.child(parent, name).unwrap_or_else(|| {
            self.inodes
                .insert(parent, name, f.layers.clone(), f.is_dir(), f.origin_ino)
        })
    }

    /// Removes `name` from `parent` (a directory if `dir`), leaving a whiteout where a lower
    /// layer has the name.
    pub(super) fn do_remove(&self, parent: NodeId, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.changing(|| {
            self.check_writable()?;
            let (ppath, pinfo) = self.node(parent)?;
            let found = self
                .layers
                .lookup(&ppath, &pinfo.layers, name)?
                .ok_or_else(|| sys::err(libc::ENOENT))?;
            match (dir, found.is_dir()) {
                (true, false) => return Err(sys::err(libc::ENOTDIR)),
                (false, true) => return Err(sys::err(libc::EISDIR)),
                _ => {}
            }
            if dir && !readdir::is_empty(&self.layers, &join(&ppath, name), &found.layers)? {
                return Err(sys::err(libc::ENOTEMPTY));
            }
            self.copy_up(parent)?;
            let (ppath, pinfo) = self.node(parent)?;
            let udir = self.layers.dir(UPPER, &ppath)?;
            let lower_pos = self.layers.lower_positive(&ppath, &pinfo.layers, name)?;
            self.keep_orphan(parent, name);
            if self.layers.is_upper(found.layers[0]) {
                if lower_pos {
                    self.replace_with_whiteout(udir.fd(), name)?;
                } else if dir {
                    match sys::unlinkat(udir.fd(), name, true) {
                        // Only whiteouts are left inside: move it away whole, then empty it.
                        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                            let work = self.layers.work()?;
                            let tmp = self.copy.temp_name();
                            sys::renameat2(udir.fd(), name, work, &tmp, sys::RENAME_NOREPLACE)?;
                            crate::layers::remove_tree(work, &tmp)?;
                        }
                        r => r?,
                    }
                } else {
                    sys::unlinkat(udir.fd(), name, false)?;
                }
            } else {
                self.layers.make_whiteout(udir.fd(), name)?;
            }
            self.layers.note_whiteout(udir.fd())?;
            self.inodes.unlink(parent, name);
            Ok(())
        })
    }

    /// Atomically swaps the upper entry `name` in `udir` for a whiteout, then deletes the entry.
    pub(super) fn replace_with_whiteout(&self, udir: BorrowedFd, name: &OsStr) -> Res<()> {
        let work = self.layers.work()?;
        let tmp = self.copy.temp_name();
        let swapped = if self.layers.xwhiteouts() {
            Err(sys::err(libc::EPERM))
        } else {
            sys::renameat2(udir, name, work, &tmp, sys::RENAME_WHITEOUT)
        };
        match swapped {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) => {
                self.layers.make_whiteout(work, &tmp)?;
                sys::renameat2(work, &tmp, udir, name, sys::RENAME_EXCHANGE)?;
            }
            Err(e) => return Err(e),
        }
        self.layers.note_whiteout(udir)?;
        crate::layers::remove_tree(work, &tmp)
    }

    pub(super) fn do_rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        self.changing(|| {
            self.check_writable()?;
            if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0 {
                return Err(sys::err(libc::EINVAL));
            }
            let exchange = flags & sys::RENAME_EXCHANGE != 0;
            if newname.len() > 255 {
                return Err(sys::err(libc::ENAMETOOLONG));
            }
            let (ppath, pinfo) = self.node(parent)?;
            let (nppath, npinfo) = self.node(newparent)?;
            let src = self
                .layers
                .lookup(&ppath, &pinfo.layers, name)?
                .ok_or_else(|| sys::err(libc::ENOENT))?;
            let dst = self.layers.lookup(&nppath, &npinfo.layers, newname)?;
            let pure_upper =
                |f: &crate::layers::Found| f.layers.len() == 1 && self.layers.is_upper(f.layers[0]);
            if src.is_dir() && !pure_upper(&src) {
                return Err(sys::err(libc::EXDEV));
            }
            if parent == newparent && name == newname {
                return Ok(());
            }
            if let Some(d) = &dst {
                if flags & sys::RENAME_NOREPLACE != 0 {
                    return Err(sys::err(libc::EEXIST));
                }
                if exchange && d.is_dir() && !pure_upper(d) {
                    return Err(sys::err(libc::EXDEV));
                }
                if !exchange {
                    match (src.is_dir(), d.is_dir()) {
                        (true, false) => return Err(sys::err(libc::ENOTDIR)),
                        (false, true) => return Err(sys::err(libc::EISDIR)),
                        (true, true)
                            if !readdir::is_empty(
                                &self.layers,
                                &join(&nppath, newname),
                                &d.layers,
                            )? =>
                        {
                            // The kernel marks the moving directory opaque before the upper
                            // filesystem refuses to replace a non-empty upper directory: the marker
                            // stays. Do the same, so the upper layers stay identical.
                            if pure_upper(d) && npinfo.layers.len() > 1 {
                                let sdir = self.layers.dir(UPPER, &ppath)?;
                                let fd = sys::openat(
                                    sdir.fd(),
                                    name,
                                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                                    0,
                                )?;
                                whiteout::set_opaque(fd.as_fd(), &self.layers.opaque_xattr())?;
                            }
                            return Err(sys::err(libc::ENOTEMPTY));
                        }
                        _ => {}
                    }
                }
            } else if exchange {
                return Err(sys::err(libc::ENOENT));
            }
            let src_ino = self.node_of(parent, name, &src);
            self.copy_up(src_ino)?;
            self.copy_up(newparent)?;
            if let (Some(d), true) = (&dst, exchange) {
                self.copy_up(self.node_of(newparent, newname, d))?;
            }
            let (ppath, pinfo) = self.node(parent)?;
            let (nppath, npinfo) = self.node(newparent)?;
            let sdir = self.layers.dir(UPPER, &ppath)?;
            let ddir = self.layers.dir(UPPER, &nppath)?;
            let src_lower = self.layers.lower_positive(&ppath, &pinfo.layers, name)?;
            let dst_lower = self
                .layers
                .lower_positive(&nppath, &npinfo.layers, newname)?;
            let opaque = self.layers.opaque_xattr();
            let set_opaque = |dir: BorrowedFd, n: &OsStr| -> Res<()> {
                let fd = sys::openat(
                    dir,
                    n,
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                    0,
                )?;
                whiteout::set_opaque(fd.as_fd(), &opaque)
            };
            // A directory moved into a merged directory is made opaque, so that no lower
            // directory of its new name can merge into it (the kernel's rule, samedir included).
            if src.is_dir() && (npinfo.layers.len() > 1 || dst_lower) {
                set_opaque(sdir.fd(), name)?;
            }
            if exchange {
                if let Some(d) = &dst {
                    if d.is_dir() && (pinfo.layers.len() > 1 || src_lower) {
                        set_opaque(ddir.fd(), newname)?;
                    }
                }
                sys::renameat2(sdir.fd(), name, ddir.fd(), newname, sys::RENAME_EXCHANGE)?;
                self.inodes.exchange(parent, name, newparent, newname);
                return Ok(());
            }
            if dst.as_ref().is_some_and(|d| !d.is_dir()) {
                self.keep_orphan(newparent, newname);
            }
            let dst_upper = match sys::fstatat(ddir.fd(), newname) {
                Ok(st) => Some(st),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
                Err(e) => return Err(e),
            };
            match dst_upper {
                Some(dst_st) if src.is_dir() => {
                    // A directory cannot be renamed over a whiteout or over a directory holding
                    // whiteouts: swap them, then deal with what is left at the source.
                    sys::renameat2(sdir.fd(), name, ddir.fd(), newname, sys::RENAME_EXCHANGE)?;
                    if self.layers.is_whiteout_at(sdir.fd(), name, &dst_st) {
                        if !src_lower {
                            sys::unlinkat(sdir.fd(), name, false)?;
                        }
                    } else if src_lower {
                        self.replace_with_whiteout(sdir.fd(), name)?;
                    } else {
                        let work = self.layers.work()?;
                        let tmp = self.copy.temp_name();
                        sys::renameat2(sdir.fd(), name, work, &tmp, sys::RENAME_NOREPLACE)?;
                        crate::layers::remove_tree(work, &tmp)?;
                    }
                }
                _ => {
                    if src_lower {
                        let moved = if self.layers.xwhiteouts() {
                            Err(sys::err(libc::EPERM))
                        } else {
                            sys::renameat2(
                                sdir.fd(),
                                name,
                                ddir.fd(),
                                newname,
                                sys::RENAME_WHITEOUT,
                            )
                        };
                        match moved {
                            Ok(()) => {}
                            Err(e)
                                if matches!(
                                    e.raw_os_error(),
                                    Some(libc::EINVAL) | Some(libc::EPERM)
                                ) =>
                            {
                                sys::renameat2(sdir.fd(), name, ddir.fd(), newname, 0)?;
                                self.layers.make_whiteout(sdir.fd(), name)?;
                                self.layers.note_whiteout(sdir.fd())?;
                            }
                            Err(e) => return Err(e),
                        }
                    } else {
                        sys::renameat2(sdir.fd(), name, ddir.fd(), newname, 0)?;
                    }
                }
            }
            self.inodes.rename(parent, name, newparent, newname);
            Ok(())
        })
    }
}

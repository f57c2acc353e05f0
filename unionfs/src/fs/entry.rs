//! Names: lookup and forget, and new entries (mknod, mkdir, symlink, create, link) made in
//! the upper layer.

use super::attr::attr;
use super::{Res, StrataFs};
use crate::copy_up::parent_of;
use crate::inodes::NodeId;
use crate::layers::is_dir;
use crate::layers::UPPER;
use crate::sys;
use crate::whiteout;
use fuser::{Errno, FileAttr, INodeNo, Request};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// What to create in the upper layer.
pub(super) enum NewKind<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
}

impl StrataFs {
    pub(super) fn do_lookup(
        &self,
        parent: NodeId,
        name: &OsStr,
    ) -> Result<(NodeId, FileAttr), Errno> {
        let (ppath, pinfo) = self.node(parent)?;
        if !pinfo.is_dir {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let found = self
            .layers
            .lookup(&ppath, &pinfo.layers, name)?
            .ok_or(Errno::ENOENT)?;
        let merged = found.layers.len() > 1;
        let mut a = attr(&found.stat, merged);
        let d = found.is_dir();
        let ino = self
            .inodes
            .insert(parent, name, found.layers, d, found.origin_ino);
        if let Some(keep) = self.inodes.get(ino).and_then(|i| i.ino) {
            a.ino = INodeNo(keep);
        }
        Ok((ino, a))
    }

    /// Where a new entry goes: the parent is copied up first; a whiteout at the name is
    /// replaced atomically.
    pub(super) fn create_entry(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        kind: NewKind,
    ) -> Result<(NodeId, FileAttr, Option<OwnedFd>), Errno> {
        self.changing(|| {
            self.check_writable()?;
            if name.len() > 255 {
                return Err(sys::err(libc::ENAMETOOLONG));
            }
            self.copy_up(parent)?;
            let (ppath, _pinfo) = self.node(parent)?;
            let udir = self.layers.dir(UPPER, &ppath)?;
            let over_whiteout = match sys::fstatat(udir.fd(), name) {
                Ok(st) if self.layers.is_whiteout_at(udir.fd(), name, &st) => true,
                Ok(_) => return Err(sys::err(libc::EEXIST)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
                Err(e) => return Err(e),
            };
            let pst = sys::fstat(udir.fd())?;
            // A set-group-id directory hands its group down (the real mkdir/open does that).
            let gid = if pst.st_mode & libc::S_ISGID != 0 {
                None
            } else {
                Some(req.gid())
            };
            let uid = Some(req.uid());
            let work = if over_whiteout {
                Some(self.layers.work()?)
            } else {
                None
            };
            let tmp = self.copy.temp_name();
            let (dir, cname): (BorrowedFd, &OsStr) = match work {
                Some(w) => (w, &tmp),
                None => (udir.fd(), name),
            };
            let mut file = None;
            let is_directory = matches!(kind, NewKind::Dir { .. });
            let setid_mode = match &kind {
                NewKind::File { mode, .. } | NewKind::Dir { mode } | NewKind::Node { mode, .. } => {
                    Some(*mode)
                }
                NewKind::Symlink { .. } => None,
            };
            match kind {
                NewKind::File { mode, flags } => {
                    let f = sys::openat(
                        dir,
                        cname,
                        self.open_flags(flags) | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        mode & 0o7777,
                    )?;
                    file = Some(f);
                }
                NewKind::Dir { mode } => sys::mkdirat(dir, cname, mode & 0o7777)?,
                NewKind::Node { mode, rdev } => sys::mknodat(dir, cname, mode, rdev)?,
                NewKind::Symlink { target } => sys::symlinkat(target, dir, cname)?,
            }
            let finish = || -> Res<()> {
                let fd = sys::openat(dir, cname, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                sys::fchown(fd.as_fd(), uid, gid)?;
                // chown clears set-id bits; the mode asked for (already vetted by the kernel) stands.
                if let Some(m) = setid_mode {
                    if m & (libc::S_ISUID | libc::S_ISGID) != 0 {
                        let st = sys::fstat(fd.as_fd())?;
                        sys::fchmod_path(fd.as_fd(), (st.st_mode & !0o7777) | (m & 0o7777))?;
                    }
                }
                if let Some(w) = work {
                    if is_directory {
                        whiteout::set_opaque(fd.as_fd(), &self.layers.opaque_xattr())?;
                        sys::renameat2(w, &tmp, udir.fd(), name, sys::RENAME_EXCHANGE)?;
                        sys::unlinkat(w, &tmp, false)?;
                    } else {
                        sys::renameat2(w, &tmp, udir.fd(), name, 0)?;
                    }
                }
                Ok(())
            };
            if let Err(e) = finish() {
                let _ = crate::layers::remove_tree(dir, cname);
                return Err(e);
            }
            let st = sys::fstatat(udir.fd(), name)?;
            let ino = self
                .inodes
                .insert(parent, name, vec![UPPER], is_dir(&st), None);
            Ok((ino, attr(&st, false), file))
        })
    }

    pub(super) fn do_link(
        &self,
        ino: NodeId,
        newparent: NodeId,
        newname: &OsStr,
    ) -> Result<(NodeId, FileAttr), Errno> {
        self.changing(|| {
            self.check_writable()?;
            if newname.len() > 255 {
                return Err(sys::err(libc::ENAMETOOLONG));
            }
            self.copy_up(ino)?;
            self.copy_up(newparent)?;
            let (path, info) = self.node(ino)?;
            if info.unlinked {
                return Err(sys::err(libc::ENOENT));
            }
            let (nppath, _) = self.node(newparent)?;
            let sdir = self.layers.dir(UPPER, parent_of(&path))?;
            let ddir = self.layers.dir(UPPER, &nppath)?;
            match sys::fstatat(ddir.fd(), newname) {
                Ok(st) if self.layers.is_whiteout_at(ddir.fd(), newname, &st) => {
                    let work = self.layers.work()?;
                    let tmp = self.copy.temp_name();
                    sys::linkat(sdir.fd(), &info.name, work, &tmp)?;
                    if let Err(e) = sys::renameat2(work, &tmp, ddir.fd(), newname, 0) {
                        let _ = sys::unlinkat(work, &tmp, false);
                        return Err(e);
                    }
                }
                Ok(_) => return Err(sys::err(libc::EEXIST)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    sys::linkat(sdir.fd(), &info.name, ddir.fd(), newname)?
                }
                Err(e) => return Err(e),
            }
            let st = sys::fstatat(ddir.fd(), newname)?;
            // The new name shares the node, as it shares the kernel's inode.
            self.inodes.link(ino, newparent, newname);
            Ok((ino, attr(&st, false)))
        })
    }

    /// The kernel dropped `nlookup` references to node `ino`.
    pub(super) fn do_forget(&self, ino: NodeId, nlookup: u64) {
        let shrunk = self.inodes.forget(ino, nlookup);
        if self.inodes.get(ino).is_none() {
            self.orphans.lock().remove(&ino);
            self.listings.lock().pop(&ino);
        }
        if shrunk {
            // Most of a large tree is forgotten: its cached listings go too, and the allocator
            // gives the freed memory back.
            self.listings.lock().clear();
            self.layers.drop_lower_dirs();
            sys::malloc_trim();
        }
    }

    pub(super) fn do_readlink(&self, ino: NodeId) -> Result<OsString, Errno> {
        let (path, info) = self.node(ino)?;
        let dir = self.layers.dir(info.layers[0], parent_of(&path))?;
        Ok(sys::readlinkat(dir.fd(), &info.name)?)
    }
}

//! Attributes: getattr/setattr and the conversions from `stat` to FUSE attributes.

use super::{kill_suidgid, Res, StrataFs};
use crate::copy_up::parent_of;
use crate::inodes::{NodeId, NodeInfo, ROOT};
use crate::layers::is_dir;
use crate::layers::UPPER;
use crate::sys;
use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, Request, TimeOrNow};
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one `setattr` changes; `None` leaves that attribute as it is.
pub(super) struct SetAttr {
    pub(super) mode: Option<u32>,
    /// (uid, gid)
    pub(super) owner: (Option<u32>, Option<u32>),
    pub(super) size: Option<u64>,
    /// (atime, mtime)
    pub(super) times: (Option<TimeOrNow>, Option<TimeOrNow>),
}

fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The attributes overlay reports: the real file's, but a merged directory has nlink 1 (as the
/// kernel's overlay: counting subdirectories across layers is not worth it).
pub(super) fn attr(st: &sys::Stat, merged: bool) -> FileAttr {
    let nlink = if merged && is_dir(st) {
        1
    } else {
        st.st_nlink as u32
    };
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: systime(st.st_atime, st.st_atime_nsec),
        mtime: systime(st.st_mtime, st.st_mtime_nsec),
        ctime: systime(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

pub(super) fn time_of(t: Option<TimeOrNow>) -> sys::Time {
    match t {
        None => sys::Time::Omit,
        Some(TimeOrNow::Now) => sys::Time::Now,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => sys::Time::Set(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if ns == 0 {
                    sys::Time::Set(-s, 0)
                } else {
                    sys::Time::Set(-s - 1, 1_000_000_000 - ns)
                }
            }
        },
    }
}

impl StrataFs {
    /// changes; its copy-up drops the kernel's attributes itself (`copy_up_with`).
    pub(super) fn attr_ttl(&self, ino: NodeId, a: &FileAttr) -> Duration {
        let shared = a.nlink > 1 && a.kind != FileType::Directory;
        if shared
            && self
                .inodes
                .top_layer(ino)
                .is_none_or(|l| self.layers.is_upper(l))
        {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    pub(super) fn stat_node(&self, ino: NodeId) -> Res<(sys::Stat, NodeInfo)> {
        let (path, info) = self.node(ino)?;
        if info.unlinked {
            let fd = self.any_fd_of(ino).ok_or_else(|| sys::err(libc::ENOENT))?;
            return Ok((sys::fstat(fd.as_fd())?, info));
        }
        let l = info.layers[0];
        let st = if ino == ROOT {
            sys::fstat(self.layers.root(l))?
        } else {
            let dir = self.layers.dir(l, parent_of(&path))?;
            sys::fstatat(dir.fd(), &info.name)?
        };
        Ok((st, info))
    }

    pub(super) fn reply_attr_of(&self, ino: NodeId) -> Res<FileAttr> {
        let (st, info) = self.stat_node(ino)?;
        let mut a = attr(&st, info.layers.len() > 1);
        if let Some(keep) = info.ino {
            a.ino = INodeNo(keep);
        }
        Ok(a)
    }

    pub(super) fn do_setattr(
        &self,
        req: &Request,
        ino: NodeId,
        change: SetAttr,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let SetAttr {
            mode,
            owner: (uid, gid),
            size,
            times: (atime, mtime),
        } = change;
        self.check_writable()?;
        let info = self.inodes.get(ino).ok_or_else(|| sys::err(libc::ESTALE))?;
        if size.is_some() {
            self.passthrough.check_writable(ino)?;
        }
        if !info.unlinked {
            let keep_data = size != Some(0);
            self.copy_up_with(ino, keep_data)?;
        }
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        if let Some(size) = size {
            match &handle {
                Some(h) if h.flags & libc::O_ACCMODE != libc::O_RDONLY => {
                    self.with_fd(h, |fd| sys::ftruncate(fd, size))?
                }
                _ => {
                    let (path, info) = self.node(ino)?;
                    let fd = if info.unlinked {
                        self.any_fd_of(ino).ok_or_else(|| sys::err(libc::ENOENT))?
                    } else {
                        self.layers.open(UPPER, &path, libc::O_WRONLY)?
                    };
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        let (fd, _) = self.node_fd(ino)?;
        // Truncation by a caller without CAP_FSETID (approximated: not root) drops set-id bits.
        if size.is_some() && mode.is_none() && req.uid() != 0 {
            kill_suidgid(req, fd.as_fd())?;
        }
        if uid.is_some() || gid.is_some() {
            sys::fchown(fd.as_fd(), uid, gid)?;
            // The real chown by us (root) keeps a setgid bit the caller's own chown would drop.
            if mode.is_none() && req.uid() != 0 && !is_dir(&sys::fstat(fd.as_fd())?) {
                kill_suidgid(req, fd.as_fd())?;
            }
        }
        if let Some(mode) = mode {
            sys::fchmod_path(fd.as_fd(), mode & 0o7777)?;
        }
        if atime.is_some() || mtime.is_some() {
            sys::futimens_path(fd.as_fd(), time_of(atime), time_of(mtime))?;
        }
        Ok(self.reply_attr_of(ino)?)
    }

    /// The attributes of node `ino`, through the open file `fh` if one is given.
    pub(super) fn do_getattr(
        &self,
        ino: NodeId,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let r = match fh.and_then(|fh| self.handle(fh).ok()) {
            Some(h) => self.with_fd(&h, sys::fstat).map(|st| attr(&st, false)),
            None => self.reply_attr_of(ino),
        };
        Ok(r?)
    }

    pub(super) fn do_statfs(&self) -> Result<libc::statvfs, Errno> {
        Ok(sys::fstatvfs(self.layers.root(UPPER))?)
    }

    pub(super) fn do_access(&self, mask: i32) -> Result<(), Errno> {
        if mask & libc::W_OK != 0 && !self.writable {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

//! Open files: open, create's handle, read, write, release, fsync, fallocate, lseek, and the
//! hand-off of an open file to the kernel (passthrough).

use super::entry::NewKind;
use super::{kill_suidgid, Handle, Res, StrataFs};
use crate::inodes::NodeId;
use crate::layers::LayerIdx;
use crate::layers::UPPER;
use crate::passthrough::Open;
use crate::sys;
use fuser::{Errno, FileAttr, FileHandle, FopenFlags, Request};
use parking_lot::RwLock;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A file made by CREATE, open.
pub(super) struct Created {
    pub ino: NodeId,
    pub attr: FileAttr,
    pub fh: u64,
    pub backing: Option<Arc<fuser::BackingId>>,
}

impl StrataFs {
    pub(super) fn add_file(&self, ino: NodeId, flags: i32, fd: OwnedFd, layer: LayerIdx) -> u64 {
        let fh = self.new_fh();
        self.files.write().insert(
            fh,
            Arc::new(Handle {
                ino,
                flags,
                file: RwLock::new((fd, layer)),
                registered: AtomicBool::new(false),
            }),
        );
        fh
    }

    /// Registers `h` with the passthrough table (when passthrough is on): the backing file the
    /// kernel is to serve it from, if any.
    pub(super) fn pass_through(
        &self,
        h: &Handle,
        write: bool,
        register: impl FnOnce(BorrowedFd) -> io::Result<fuser::BackingId>,
    ) -> Res<Option<Arc<fuser::BackingId>>> {
        if !self.passthrough.active() {
            return Ok(None);
        }
        let g = h.file.read();
        let st = sys::fstat(g.0.as_fd())?;
        let open = Open {
            ino: h.ino,
            fd: g.0.as_fd(),
            upper: self.layers.is_upper(g.1),
            write,
            st_mode: st.st_mode,
        };
        let backing = self.passthrough.open(&open, register)?;
        h.registered.store(true, Ordering::Release);
        Ok(backing)
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Res<Arc<Handle>> {
        self.files
            .read()
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| sys::err(libc::EBADF))
    }

    /// Runs `f` with the handle's current fd, first reopening a lower fd whose file has since
    /// been copied up (so readers see the copy, and its later changes).
    pub(super) fn with_fd<T>(&self, h: &Handle, f: impl FnOnce(BorrowedFd) -> Res<T>) -> Res<T> {
        {
            let g = h.file.read();
            if self.layers.is_upper(g.1) {
                return f(g.0.as_fd());
            }
        }
        let mut g = h.file.write();
        if !self.layers.is_upper(g.1) {
            if let Some((path, info)) = self.inodes.path(h.ino) {
                if !info.unlinked && self.layers.is_upper(info.layers[0]) {
                    let fd = self.layers.open(UPPER, &path, self.open_flags(h.flags))?;
                    *g = (fd, 0);
                }
            }
        }
        f(g.0.as_fd())
    }

    fn open_file(&self, ino: NodeId, flags: i32) -> Res<u64> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            self.check_writable()?;
            self.passthrough.check_writable(ino)?;
            let keep_data = flags & libc::O_TRUNC == 0;
            self.copy_up_with(ino, keep_data)?;
        }
        let (path, info) = self.node(ino)?;
        if info.unlinked {
            return Err(sys::err(libc::ENOENT));
        }
        let l = info.layers[0];
        let fd = self.layers.open(l, &path, self.open_flags(flags))?;
        Ok(self.add_file(ino, flags, fd, l))
    }

    /// Opens node `ino`: its handle, the caching flags, and the backing file when the kernel
    /// is to serve it.
    pub(super) fn do_open(
        &self,
        req: &Request,
        ino: NodeId,
        flags: i32,
        register: impl FnOnce(BorrowedFd) -> io::Result<fuser::BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<fuser::BackingId>>), Errno> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let fh = self.open_file(ino, flags)?;
        let opened = (|| {
            let h = self.handle(FileHandle(fh))?;
            if flags & libc::O_TRUNC != 0 && req.uid() != 0 {
                self.with_fd(&h, |fd| kill_suidgid(req, fd))?;
            }
            // The file changes only through this node (a lower file never changes; an
            // upper one with a single link, not written through passthrough meanwhile):
            // the kernel may keep its pages from one open to the next.
            let lower = !self.layers.is_upper(h.file.read().1);
            let single = lower
                || (!self.passthrough.active()
                    && self.with_fd(&h, sys::fstat).map(|st| st.st_nlink <= 1)?);
            let flags = if single {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            let backing = self.pass_through(&h, write, register)?;
            Ok::<_, io::Error>((flags, backing))
        })();
        if opened.is_err() {
            self.files.write().remove(&fh);
        }
        let (flags, backing) = opened?;
        Ok((fh, flags, backing))
    }

    /// Creates and opens a file; where passthrough fails, the daemon serves it.
    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        flags: i32,
        register: impl FnOnce(BorrowedFd) -> io::Result<fuser::BackingId>,
    ) -> Result<Created, Errno> {
        let (ino, attr, fd) =
            self.create_entry(req, parent, name, NewKind::File { mode, flags })?;
        let fd = fd.ok_or(Errno::EIO)?;
        let fh = self.add_file(ino, flags, fd, UPPER);
        // The file exists now: where passthrough fails, the daemon serves it.
        let backing = self
            .handle(FileHandle(fh))
            .and_then(|h| self.pass_through(&h, true, register))
            .unwrap_or(None);
        Ok(Created {
            ino,
            attr,
            fh,
            backing,
        })
    }

    pub(super) fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handle(fh)?;
        let r = self.with_fd(&h, |fd| {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                let n = sys::pread(fd, &mut buf[got..], offset + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        });
        Ok(r?)
    }

    pub(super) fn do_write(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill: bool,
    ) -> Result<usize, Errno> {
        let h = self.handle(fh)?;
        let r = self.with_fd(&h, |fd| {
            if kill {
                kill_suidgid(req, fd)?;
            }
            let mut done = 0;
            while done < data.len() {
                done += sys::pwrite(fd, &data[done..], offset + done as u64)?;
            }
            Ok(done)
        });
        Ok(r?)
    }

    pub(super) fn do_release(&self, fh: FileHandle) {
        let h = self.files.write().remove(&fh.0);
        if let Some(h) = h.filter(|h| h.registered.load(Ordering::Acquire)) {
            self.passthrough.release(h.ino);
        }
    }

    pub(super) fn do_fsync(&self, fh: FileHandle, datasync: bool) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        // Volatile: answered without syncing, as the kernel's overlay answers it.
        if self.volatile {
            return Ok(());
        }
        Ok(self.with_fd(&h, |fd| sys::fsync(fd, datasync))?)
    }

    pub(super) fn do_fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        Ok(self.with_fd(&h, |fd| sys::fallocate(fd, mode, offset, length))?)
    }

    pub(super) fn do_lseek(&self, fh: FileHandle, offset: i64, whence: i32) -> Result<i64, Errno> {
        let h = self.handle(fh)?;
        Ok(self.with_fd(&h, |fd| sys::lseek(fd, offset, whence))?)
    }
}

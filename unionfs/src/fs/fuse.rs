//! The FUSE server side: only `impl fuser::Filesystem for StrataFs`. Each handler decodes its
//! arguments, calls a `StrataFs` method answering `Result<T, Errno>`, and replies (the split
//! virtiofsd makes between `filesystem` and `server`).

use super::attr::{attr, SetAttr};
use super::entry::NewKind;
use super::file::Created;
use super::StrataFs;
use crate::inodes::NodeId;
use crate::sys;
use fuser::{
    Errno, FileAttr, FileHandle, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

impl StrataFs {
    /// `reply_entry` for mknod/mkdir/symlink, whose entry's third part only CREATE uses.
    fn reply_new_entry<T>(&self, reply: ReplyEntry, r: Result<(NodeId, FileAttr, T), Errno>) {
        self.reply_entry(reply, r.map(|(i, a, _)| (i, a)));
    }

    fn reply_entry(&self, reply: ReplyEntry, r: Result<(NodeId, FileAttr), Errno>) {
        match r {
            Ok((ino, a)) => reply.entry_node(
                ino.into(),
                &self.attr_ttl(ino, &a),
                &self.ttl,
                &a,
                Generation(0),
            ),
            Err(e) => reply.error(e),
        }
    }
}

impl fuser::Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // O_TRUNC arrives with open, so a truncating open copies up no data.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        // We clear set-id bits on write/truncate ourselves, by the caller's rights, as the
        // kernel's overlay does (the kernel's own FUSE rule keeps setgid without group-exec).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // FUSE over io_uring (offered when the fuse module's enable_uring is set): a queue per
        // CPU, answered on the caller's CPU. Its buffers are max_write each: 1 MiB.
        if self.uring
            && config
                .add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            let _ = config.set_max_write(1 << 20);
            log::info!("FUSE over io_uring on");
        }
        // Backing files need CAP_SYS_ADMIN; stack depth 1 keeps layers on a plain filesystem
        // (one on an overlay is refused and served by the daemon) and lets an overlay stack
        // on this mount.
        if self.passthrough.wanted()
            && sys::mount::in_initial_userns()
            && sys::mount::has_cap_sys_admin()
            && config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
            log::info!("FUSE passthrough on");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(NodeId::from(parent), name) {
            // A negative entry (node id 0) lets the kernel cache the miss; creating the name
            // through the mount replaces it.
            Err(Errno::ENOENT) => {
                let none = FileAttr {
                    ino: INodeNo(0),
                    ..attr(&sys::zeroed_stat(), false)
                };
                reply.entry_node(INodeNo(0), &self.ttl, &self.ttl, &none, Generation(0));
            }
            r => self.reply_entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.do_forget(NodeId::from(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(NodeId::from(ino), fh) {
            Ok(a) => reply.attr(&self.attr_ttl(NodeId::from(ino), &a), &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            owner: (uid, gid),
            size,
            times: (atime, mtime),
        };
        match self.do_setattr(req, NodeId::from(ino), change, fh) {
            Ok(a) => reply.attr(&self.attr_ttl(NodeId::from(ino), &a), &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(NodeId::from(ino)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // A 0/0 character device is a whiteout on disk: the kernel's overlay refuses it.
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            reply.error(Errno::EPERM);
            return;
        }
        let kind = NewKind::Node {
            mode,
            rdev: rdev as u64,
        };
        self.reply_new_entry(
            reply,
            self.create_entry(req, NodeId::from(parent), name, kind),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.create_entry(req, NodeId::from(parent), name, NewKind::Dir { mode });
        self.reply_new_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(NodeId::from(parent), name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(NodeId::from(parent), name, true))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let kind = NewKind::Symlink {
            target: target.as_os_str(),
        };
        self.reply_new_entry(
            reply,
            self.create_entry(req, NodeId::from(parent), link_name, kind),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(
                NodeId::from(parent),
                name,
                NodeId::from(newparent),
                newname,
                flags.bits(),
            ),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.do_link(NodeId::from(ino), NodeId::from(newparent), newname);
        self.reply_entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(req, NodeId::from(ino), flags.0, |fd| reply.open_backing(fd)) {
            // The page cache is the backing file's: no FUSE caching flag applies.
            Ok((fh, _, Some(b))) => {
                reply.opened_passthrough(FileHandle(fh), fuser::FopenFlags::empty(), &b)
            }
            Ok((fh, flags, None)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.do_write(req, fh, offset, data, kill) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the layer before they are answered: nothing is left to flush, and
        // ENOSYS tells the kernel never to send FLUSH again (one round trip less per close).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_fsync(fh, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(NodeId::from(ino)) {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.do_readdir(fh, offset, |ino, off, kind, name| {
            reply.add(ino, off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.do_releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_fsyncdir(NodeId::from(ino), datasync))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_setxattr(NodeId::from(ino), name, value, flags),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_getxattr(NodeId::from(ino), name))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_listxattr(NodeId::from(ino), size))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_removexattr(NodeId::from(ino), name))
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.do_access(mask.bits()))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.do_create(req, NodeId::from(parent), name, mode, flags, |fd| {
            reply.open_backing(fd)
        });
        match r {
            Ok(Created {
                ino,
                attr,
                fh,
                backing,
            }) => reply.created_node(
                ino.into(),
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                fuser::FopenFlags::empty(),
                backing.as_deref(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_fallocate(fh, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.do_lseek(fh, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }
}

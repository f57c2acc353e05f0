//! The FUSE glue: `StrataFs` implements `fuser::Filesystem` over the layer stack. Every request
//! turns into `*at()` calls on layer directory fds; every error becomes an errno reply.

use crate::copy_up::{parent_of, CopyUp};
use crate::inodes::{Inodes, NodeInfo, ROOT};
use crate::layers::{is_dir, join, LayerIdx, Layers};
use crate::options::Options;
use crate::passthrough::{self, Open};
use crate::readdir::{self, MergedEntry};
use crate::sys;
use crate::whiteout;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, io::Error>;

type Listing = Arc<Vec<MergedEntry>>;

/// How many merged directory listings are kept.
const LISTINGS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(1024) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

/// An open file: the real fd and the layer it was opened in. A read-only fd of a lower file is
/// reopened from the upper layer once the file has been copied up, as the kernel's overlay does.
struct Handle {
    ino: u64,
    flags: i32,
    file: RwLock<(OwnedFd, LayerIdx)>,
    /// Counted in `StrataFs::passthrough` (to be released there).
    registered: AtomicBool,
}

/// An open directory of one layer, read with the layer's offsets.
struct RealDir {
    fd: OwnedFd,
    lower: bool,
    /// Marked as holding xattr whiteouts: empty files must be checked.
    xwhiteouts: bool,
}

struct DirHandle {
    ino: u64,
    /// A merged directory's listing, taken at offset 0.
    entries: Mutex<Option<Arc<Vec<MergedEntry>>>>,
    /// A directory of a single layer: the real directory, read with its own offsets.
    real: Option<Mutex<RealDir>>,
    /// A merged directory of lower layers only, as it was at open (its path and layers): the
    /// kernel caches such a listing, and a handle that falls back to READDIR after a copy-up
    /// must find the same entries at the same offsets.
    frozen: Option<(OsString, Vec<LayerIdx>)>,
}

pub struct StrataFs {
    layers: Layers,
    inodes: Inodes,
    copy: CopyUp,
    files: RwLock<HashMap<u64, Arc<Handle>>>,
    /// `O_PATH` fds of nodes removed from the tree while the kernel still holds them (a fifo
    /// open elsewhere, a file being unlinked): their attributes stay reachable until forgotten.
    orphans: Mutex<HashMap<u64, OwnedFd>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    writable: bool,
    /// `volatile`: nothing is synced to the upper layer (copy-up, fsync, O_SYNC), as the kernel.
    volatile: bool,
    ttl: Duration,
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Bumped by every change to the tree made through the mount (the layers change no other
    /// way): a cached merged listing is valid while the generation it was taken at is current.
    generation: AtomicU64,
    /// Merged listings by directory node, with their generation; a warm `find` reuses them as
    /// the kernel's overlay reuses its cached listings.
    listings: Mutex<lru::LruCache<u64, (u64, Listing)>>,
    passthrough: passthrough::Table,
    uring: bool,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(sys::errno(&e))
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

fn dt_type(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The attributes overlay reports: the real file's, but a merged directory has nlink 1 (as the
/// kernel's overlay: counting subdirectories across layers is not worth it).
fn attr(st: &sys::Stat, merged: bool) -> FileAttr {
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

fn time_of(t: Option<TimeOrNow>) -> sys::Time {
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

/// What to create in the upper layer.
enum NewKind<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
}

impl StrataFs {
    /// Opens the layers named in `opts` and prepares the workdir. Errors name the problem.
    pub fn new(opts: &Options) -> Result<StrataFs, crate::layers::LayerError> {
        let layers = Layers::open_stack(opts)?;
        // Modes of new files come from the kernel already masked; ours must not mask them again.
        sys::umask(0);
        sys::single_arena();
        let root_layers: Vec<LayerIdx> = (0..layers.layers.len()).collect();
        Ok(StrataFs {
            writable: opts.writable(),
            volatile: opts.volatile,
            inodes: Inodes::new(root_layers),
            layers,
            copy: CopyUp::new(opts.volatile),
            files: RwLock::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ttl: Duration::from_secs(opts.timeout_secs),
            notifier: Arc::new(OnceLock::new()),
            generation: AtomicU64::new(0),
            listings: Mutex::new(lru::LruCache::new(LISTINGS)),
            passthrough: passthrough::Table::new(opts.passthrough),
            uring: opts.uring,
        })
    }

    /// The tree changed through the mount: cached merged listings are stale.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Copies node `ino` (and missing parents) up; see `copy_up_with`.
    fn copy_up(&self, ino: u64) -> Res<()> {
        self.copy_up_with(ino, true)
    }

    /// Copies node `ino` (and missing parents) up. A copied directory's listing (the kernel's
    /// merged order puts upper entries apart) and link count change: the kernel's cached pages
    /// and attributes of those directories are dropped (attributes and pages only, which no
    /// lock of ours guards). The directory above the topmost copy was in the upper layer
    /// already: its listing is not cached by the kernel, and the copy-up restores its times, so
    /// it keeps its attributes (saving the GETATTR that would follow every copy-up).
    fn copy_up_with(&self, ino: u64, data: bool) -> Res<()> {
        let copied = self
            .copy
            .ensure_upper_with(&self.layers, &self.inodes, ino, data)?;
        if !copied.is_empty() {
            self.changed();
        }
        if let (false, Some(n)) = (copied.is_empty(), self.notifier.get()) {
            let mut dirs: Vec<u64> = Vec::new();
            for &c in &copied {
                if self.inodes.get(c).is_some_and(|info| info.is_dir) {
                    dirs.push(c);
                }
            }
            dirs.sort_unstable();
            dirs.dedup();
            for d in dirs {
                if let Err(e) = n.inval_inode(INodeNo(d), 0, 0) {
                    log::debug!("inval_inode({d}): {e}");
                }
            }
            // The copied file's attributes (attributes only: no page, no lock of ours): a
            // hard-linked lower file becomes a file of one link.
            for &c in &copied {
                if self.inodes.get(c).is_some_and(|i| !i.is_dir) {
                    if let Err(e) = n.inval_inode(INodeNo(c), -1, 0) {
                        log::debug!("inval_inode({c}): {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the mount puts its notifier, for invalidating the kernel's caches.
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// How long the kernel may keep the attributes of node `ino`: not at all for an upper file
    /// with several links, which its other names (other nodes) may change. A lower file never
    /// changes; its copy-up drops the kernel's attributes itself (`copy_up_with`).
    fn attr_ttl(&self, ino: u64, a: &FileAttr) -> Duration {
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

    fn node(&self, ino: u64) -> Res<(OsString, NodeInfo)> {
        self.inodes.path(ino).ok_or_else(|| sys::err(libc::ESTALE))
    }

    fn check_writable(&self) -> Res<()> {
        if self.writable {
            Ok(())
        } else {
            Err(sys::err(libc::EROFS))
        }
    }

    /// The fd kept when node `ino` was removed (its last state: a copy-up after a read-only
    /// open included), else any open fd of it (for a node no longer reachable by name).
    fn any_fd_of(&self, ino: u64) -> Option<OwnedFd> {
        if let Some(fd) = self.orphans.lock().get(&ino) {
            return sys::dup(fd.as_fd()).ok();
        }
        let files = self.files.read();
        files
            .values()
            .find(|h| h.ino == ino)
            .and_then(|h| sys::dup(h.file.read().0.as_fd()).ok())
    }

    /// Before `name` in `parent` leaves the tree: keep an fd of the entry the kernel may still
    /// hold a node for.
    fn keep_orphan(&self, parent: u64, name: &OsStr) {
        let Some(ino) = self.inodes.child(parent, name) else {
            return;
        };
        if let Ok((path, info)) = self.node(ino) {
            if let Ok(fd) = self.layers.open(info.layers[0], &path, libc::O_PATH) {
                self.orphans.lock().insert(ino, fd);
            }
        }
    }

    /// An `O_PATH` fd of the node's topmost entry, or of an open fd if it was unlinked.
    fn node_fd(&self, ino: u64) -> Res<(OwnedFd, NodeInfo)> {
        let (path, info) = self.node(ino)?;
        if info.unlinked {
            let fd = self.any_fd_of(ino).ok_or_else(|| sys::err(libc::ENOENT))?;
            return Ok((fd, info));
        }
        let fd = self.layers.open(info.layers[0], &path, libc::O_PATH)?;
        Ok((fd, info))
    }

    fn stat_node(&self, ino: u64) -> Res<(sys::Stat, NodeInfo)> {
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

    fn reply_attr_of(&self, ino: u64) -> Res<FileAttr> {
        let (st, info) = self.stat_node(ino)?;
        let mut a = attr(&st, info.layers.len() > 1);
        if let Some(keep) = info.ino {
            a.ino = INodeNo(keep);
        }
        Ok(a)
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> Res<(u64, FileAttr)> {
        let (ppath, pinfo) = self.node(parent)?;
        if !pinfo.is_dir {
            return Err(sys::err(libc::ENOTDIR));
        }
        if name.len() > 255 {
            return Err(sys::err(libc::ENAMETOOLONG));
        }
        let found = self
            .layers
            .lookup(&ppath, &pinfo.layers, name)?
            .ok_or_else(|| sys::err(libc::ENOENT))?;
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

    fn reply_entry(&self, reply: ReplyEntry, r: Res<(u64, FileAttr)>) {
        match r {
            Ok((ino, a)) => reply.entry_node(
                INodeNo(ino),
                &self.attr_ttl(ino, &a),
                &self.ttl,
                &a,
                Generation(0),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Where a new entry goes: the parent is copied up first; a whiteout at the name is
    /// replaced atomically.
    fn create_entry(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: NewKind,
    ) -> Res<(u64, FileAttr, Option<OwnedFd>)> {
        let r = self.create_entry_inner(req, parent, name, kind);
        self.changed();
        r
    }

    fn create_entry_inner(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: NewKind,
    ) -> Res<(u64, FileAttr, Option<OwnedFd>)> {
        self.check_writable()?;
        if name.len() > 255 {
            return Err(sys::err(libc::ENAMETOOLONG));
        }
        self.copy_up(parent)?;
        let (ppath, _pinfo) = self.node(parent)?;
        let udir = self.layers.dir(0, &ppath)?;
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
        let ino = self.inodes.insert(parent, name, vec![0], is_dir(&st), None);
        Ok((ino, attr(&st, false), file))
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn add_file(&self, ino: u64, flags: i32, fd: OwnedFd, layer: LayerIdx) -> u64 {
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
    fn pass_through(
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

    fn handle(&self, fh: FileHandle) -> Res<Arc<Handle>> {
        self.files
            .read()
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| sys::err(libc::EBADF))
    }

    /// Runs `f` with the handle's current fd, first reopening a lower fd whose file has since
    /// been copied up (so readers see the copy, and its later changes).
    fn with_fd<T>(&self, h: &Handle, f: impl FnOnce(BorrowedFd) -> Res<T>) -> Res<T> {
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
                    let fd = self.layers.open(0, &path, self.open_flags(h.flags))?;
                    *g = (fd, 0);
                }
            }
        }
        f(g.0.as_fd())
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        req: &Request,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Res<FileAttr> {
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
                        self.layers.open(0, &path, libc::O_WRONLY)?
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
        self.reply_attr_of(ino)
    }

    /// Removes `name` from `parent` (a directory if `dir`), leaving a whiteout where a lower
    /// layer has the name.
    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let r = self.do_remove_inner(parent, name, dir);
        self.changed();
        r
    }

    fn do_remove_inner(&self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
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
        let udir = self.layers.dir(0, &ppath)?;
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
    }

    /// Atomically swaps the upper entry `name` in `udir` for a whiteout, then deletes the entry.
    fn replace_with_whiteout(&self, udir: BorrowedFd, name: &OsStr) -> Res<()> {
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

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        let r = self.do_rename_inner(parent, name, newparent, newname, flags);
        self.changed();
        r
    }

    fn do_rename_inner(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
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
                            let sdir = self.layers.dir(0, &ppath)?;
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
        let src_ino = self.inodes.child(parent, name).unwrap_or_else(|| {
            self.inodes.insert(
                parent,
                name,
                src.layers.clone(),
                src.is_dir(),
                src.origin_ino,
            )
        });
        self.copy_up(src_ino)?;
        self.copy_up(newparent)?;
        if let (Some(d), true) = (&dst, exchange) {
            let i = self.inodes.child(newparent, newname).unwrap_or_else(|| {
                self.inodes.insert(
                    newparent,
                    newname,
                    d.layers.clone(),
                    d.is_dir(),
                    d.origin_ino,
                )
            });
            self.copy_up(i)?;
        }
        let (ppath, pinfo) = self.node(parent)?;
        let (nppath, npinfo) = self.node(newparent)?;
        let sdir = self.layers.dir(0, &ppath)?;
        let ddir = self.layers.dir(0, &nppath)?;
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
                        sys::renameat2(sdir.fd(), name, ddir.fd(), newname, sys::RENAME_WHITEOUT)
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
    }

    fn do_link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Res<(u64, FileAttr)> {
        let r = self.do_link_inner(ino, newparent, newname);
        self.changed();
        r
    }

    fn do_link_inner(&self, ino: u64, newparent: u64, newname: &OsStr) -> Res<(u64, FileAttr)> {
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
        let sdir = self.layers.dir(0, parent_of(&path))?;
        let ddir = self.layers.dir(0, &nppath)?;
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
    }

    fn do_open(&self, ino: u64, flags: i32) -> Res<u64> {
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

    fn listing(&self, dh: &DirHandle, offset: u64) -> Res<Arc<Vec<MergedEntry>>> {
        let mut g = dh.entries.lock();
        if offset == 0 || g.is_none() {
            let (path, info) = self.node(dh.ino)?;
            let (st, _) = self.stat_node(dh.ino)?;
            let mut v = vec![
                MergedEntry {
                    name: OsString::from("."),
                    ino: st.st_ino,
                    kind: libc::DT_DIR,
                },
                MergedEntry {
                    name: OsString::from(".."),
                    // glibc drops entries with d_ino 0.
                    ino: self
                        .stat_node(info.parent)
                        .map(|(p, _)| p.st_ino)
                        .unwrap_or(st.st_ino),
                    kind: libc::DT_DIR,
                },
            ];
            if let Some((path, layers)) = &dh.frozen {
                v.extend(readdir::merged_list(&self.layers, path, layers)?);
            } else if !info.unlinked {
                // Read before listing: a change made meanwhile makes the result stale at once.
                let generation = self.generation.load(Ordering::Acquire);
                let cached = self
                    .listings
                    .lock()
                    .get(&dh.ino)
                    .filter(|(g, _)| *g == generation)
                    .map(|(_, l)| l.clone());
                let list = match cached {
                    Some(l) => l,
                    None => {
                        let l = Arc::new(readdir::merged_list(&self.layers, &path, &info.layers)?);
                        self.listings.lock().put(dh.ino, (generation, l.clone()));
                        l
                    }
                };
                v.extend(list.iter().cloned());
            }
            *g = Some(Arc::new(v));
        }
        g.clone().ok_or_else(|| sys::err(libc::EIO))
    }

    fn xattr_target(&self, ino: u64) -> Res<OwnedFd> {
        Ok(self.node_fd(ino)?.0)
    }

    /// The flags a real file is opened with: access mode and the flags that change I/O
    /// behaviour. Not O_APPEND: the kernel sends appends at the end offset itself, and a real
    /// O_APPEND fd would also append the pages an mmap writes back to their own offsets. Not
    /// O_SYNC/O_DSYNC on a volatile mount, whose writes the kernel's overlay never syncs.
    fn open_flags(&self, flags: i32) -> i32 {
        let sync = if self.volatile {
            0
        } else {
            libc::O_SYNC | libc::O_DSYNC
        };
        flags & (libc::O_ACCMODE | libc::O_TRUNC | libc::O_NOATIME | sync)
    }
}

/// Whether the caller of `req` is in group `gid` (its fsgid or a supplementary group).
fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().any(|x| x.parse::<u32>() == Ok(gid)))
        .unwrap_or(false)
}

/// Clears set-user-id, and set-group-id where the kernel would (group-executable, or the
/// caller not in the file's group), on a file the caller is writing or truncating.
fn kill_suidgid(req: &Request, fd: BorrowedFd) -> Res<()> {
    let st = sys::fstat(fd)?;
    let mut mode = st.st_mode & 0o7777;
    if mode & libc::S_ISUID != 0 {
        mode &= !libc::S_ISUID;
    }
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller_in_group(req, st.st_gid))
    {
        mode &= !libc::S_ISGID;
    }
    if mode != st.st_mode & 0o7777 {
        sys::fchmod_path(fd, mode)?;
    }
    Ok(())
}

fn reply_empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
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
                .add_capabilities(fuser::InitFlags::from_bits_retain(1 << 41))
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
        match self.do_lookup(parent.0, name) {
            // A negative entry (node id 0) lets the kernel cache the miss; creating the name
            // through the mount replaces it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
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
        let shrunk = self.inodes.forget(ino.0, nlookup);
        if self.inodes.get(ino.0).is_none() {
            self.orphans.lock().remove(&ino.0);
            self.listings.lock().pop(&ino.0);
        }
        if shrunk {
            // Most of a large tree is forgotten: its cached listings go too, and the allocator
            // gives the freed memory back.
            self.listings.lock().clear();
            self.layers.drop_lower_dirs();
            sys::malloc_trim();
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = match fh.and_then(|fh| self.handle(fh).ok()) {
            Some(h) => self.with_fd(&h, sys::fstat).map(|st| attr(&st, false)),
            None => self.reply_attr_of(ino.0),
        };
        match r {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0, &a), &a),
            Err(e) => reply.error(errno(e)),
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
        match self.do_setattr(req, ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0, &a), &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.node(ino.0).and_then(|(path, info)| {
            let dir = self.layers.dir(info.layers[0], parent_of(&path))?;
            sys::readlinkat(dir.fd(), &info.name)
        });
        match r {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(e)),
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
        let r = self
            .create_entry(
                req,
                parent.0,
                name,
                NewKind::Node {
                    mode,
                    rdev: rdev as u64,
                },
            )
            .map(|(i, a, _)| (i, a));
        self.reply_entry(reply, r);
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
        let r = self
            .create_entry(req, parent.0, name, NewKind::Dir { mode })
            .map(|(i, a, _)| (i, a));
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, true))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self
            .create_entry(
                req,
                parent.0,
                link_name,
                NewKind::Symlink {
                    target: target.as_os_str(),
                },
            )
            .map(|(i, a, _)| (i, a));
        self.reply_entry(reply, r);
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
            self.do_rename(parent.0, name, newparent.0, newname, flags.bits()),
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
        let r = self.do_link(ino.0, newparent.0, newname);
        self.reply_entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let r = self.do_open(ino.0, flags.0).and_then(|fh| {
            let opened = (|| {
                let h = self.handle(FileHandle(fh))?;
                if flags.0 & libc::O_TRUNC != 0 && req.uid() != 0 {
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
                let backing = self.pass_through(&h, write, |fd| reply.open_backing(fd))?;
                Ok((flags, backing))
            })();
            if opened.is_err() {
                self.files.write().remove(&fh);
            }
            opened.map(|(flags, backing)| (fh, flags, backing))
        });
        match r {
            // The page cache is the backing file's: no FUSE caching flag applies.
            Ok((fh, _, Some(b))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b)
            }
            Ok((fh, flags, None)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(e)),
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
        let r = self.handle(fh).and_then(|h| {
            self.with_fd(&h, |fd| {
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
            })
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(errno(e)),
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
        let r = self.handle(fh).and_then(|h| {
            self.with_fd(&h, |fd| {
                if kill {
                    kill_suidgid(req, fd)?;
                }
                let mut done = 0;
                while done < data.len() {
                    done += sys::pwrite(fd, &data[done..], offset + done as u64)?;
                }
                Ok(done)
            })
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
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
        let h = self.files.write().remove(&fh.0);
        if let Some(h) = h.filter(|h| h.registered.load(Ordering::Acquire)) {
            self.passthrough.release(h.ino);
        }
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
        // Volatile: answered without syncing, as the kernel's overlay answers it.
        if self.volatile {
            return reply_empty(reply, self.handle(fh).map(drop));
        }
        let r = self
            .handle(fh)
            .and_then(|h| self.with_fd(&h, |fd| sys::fsync(fd, datasync)));
        reply_empty(reply, r)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.node(ino.0).and_then(|(path, info)| {
            if !info.is_dir {
                return Err(sys::err(libc::ENOTDIR));
            }
            let real = if info.layers.len() == 1 && !info.unlinked {
                let l = info.layers[0];
                let fd = self
                    .layers
                    .open(l, &path, libc::O_RDONLY | libc::O_DIRECTORY)?;
                let xwhiteouts = self.layers.has_xwhiteouts(fd.as_fd());
                Some(Mutex::new(RealDir {
                    fd,
                    lower: !self.layers.is_upper(l),
                    xwhiteouts,
                }))
            } else {
                None
            };
            // A directory of lower layers only changes by being copied up first, and we drop
            // the kernel's pages then: the kernel may cache its listing. One with an upper
            // layer is not cached: a reader racing a change could see a name twice when the
            // kernel falls back from its cache in the middle of a listing.
            let lower_only =
                !info.unlinked && !info.layers.iter().any(|&l| self.layers.is_upper(l));
            let frozen = (lower_only && real.is_none()).then(|| (path, info.layers.clone()));
            let flags = if lower_only {
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            let fh = self.new_fh();
            self.dirs.write().insert(
                fh,
                Arc::new(DirHandle {
                    ino: ino.0,
                    entries: Mutex::new(None),
                    real,
                    frozen,
                }),
            );
            Ok((fh, flags))
        });
        match r {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(e)),
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
        let Some(dh) = self.dirs.read().get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        if let Some(real) = &dh.real {
            let g = real.lock();
            let fd = &g.fd;
            let r = (|| -> Res<()> {
                sys::lseek(fd.as_fd(), offset as i64, libc::SEEK_SET)?;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let batch = sys::getdents(fd.as_fd(), &mut buf)?;
                    if batch.is_empty() {
                        return Ok(());
                    }
                    for e in batch {
                        if !readdir::shown(&self.layers, fd.as_fd(), g.lower, g.xwhiteouts, &e) {
                            continue;
                        }
                        if reply.add(INodeNo(e.ino), e.next_off as u64, dt_type(e.kind), &e.name) {
                            return Ok(());
                        }
                    }
                }
            })();
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
            return;
        }
        let list = match self.listing(&dh, offset) {
            Ok(l) => l,
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, dt_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.write().remove(&fh.0);
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
        if self.volatile {
            return reply_empty(reply, self.node(ino.0).map(drop));
        }
        let r = self.node(ino.0).and_then(|(path, info)| {
            let fd = self
                .layers
                .open(info.layers[0], &path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            sys::fsync(fd.as_fd(), datasync)
        });
        reply_empty(reply, r)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::fstatvfs(self.layers.root(0)) {
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
            Err(e) => reply.error(errno(e)),
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
        let r = (|| {
            let name = self.layers.escape_xattr(name);
            self.check_writable()?;
            self.copy_up(ino.0)?;
            let fd = self.xattr_target(ino.0)?;
            sys::fsetxattr(fd.as_fd(), &name, value, flags)
        })();
        reply_empty(reply, r)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = (|| {
            let name = self.layers.escape_xattr(name);
            let fd = self.xattr_target(ino.0)?;
            sys::fgetxattr(fd.as_fd(), &name)
        })();
        match r {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = (|| {
            let fd = self.xattr_target(ino.0)?;
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
            Ok::<_, io::Error>(out)
        })();
        match r {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let name = self.layers.escape_xattr(name);
            self.check_writable()?;
            // Removing an xattr the file does not have changes nothing: no copy-up for it.
            let fd = self.xattr_target(ino.0)?;
            sys::fgetxattr(fd.as_fd(), &name)?;
            self.copy_up(ino.0)?;
            let fd = self.xattr_target(ino.0)?;
            sys::fremovexattr(fd.as_fd(), &name)
        })();
        reply_empty(reply, r)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 && !self.writable {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
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
        match self.create_entry(req, parent.0, name, NewKind::File { mode, flags }) {
            Ok((ino, a, Some(fd))) => {
                let fh = self.add_file(ino, flags, fd, 0);
                // The file exists now: where passthrough fails, the daemon serves it.
                let backing = self
                    .handle(FileHandle(fh))
                    .and_then(|h| self.pass_through(&h, true, |fd| reply.open_backing(fd)))
                    .unwrap_or(None);
                reply.created_node(
                    INodeNo(ino),
                    &self.ttl,
                    &a,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    backing.as_deref(),
                );
            }
            Ok((_, _, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(errno(e)),
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
        let r = self
            .handle(fh)
            .and_then(|h| self.with_fd(&h, |fd| sys::fallocate(fd, mode, offset, length)));
        reply_empty(reply, r)
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
        let r = self
            .handle(fh)
            .and_then(|h| self.with_fd(&h, |fd| sys::lseek(fd, offset, whence)));
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }
}

//! The FUSE glue: `StrataFs` over the layer stack. Every request turns into `*at()` calls on
//! layer directory fds; every error becomes an errno reply.
//!
//! `mod.rs` holds the state and shared helpers; `entry` lookup, forget and new entries
//! (mknod, mkdir, symlink, create, link); `attr` attributes; `file` open files; `dir` open
//! directories and listings; `xattr`; `rename` rename and removal (unlink, rmdir), which share
//! the whiteout handling; `fuse` only the `fuser::Filesystem` impl that decodes and replies.

mod attr;
mod dir;
mod entry;
mod file;
mod fuse;
mod rename;
mod xattr;

use crate::copy_up::CopyUp;
use crate::inodes::{Inodes, NodeId, NodeInfo};
use crate::layers::{LayerIdx, Layers};
use crate::options::Options;
use crate::passthrough;
use crate::readdir::MergedEntry;
use crate::sys;
use fuser::{Errno, Request};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    ino: NodeId,
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
    ino: NodeId,
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
    orphans: Mutex<HashMap<NodeId, OwnedFd>>,
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
    listings: Mutex<lru::LruCache<NodeId, (u64, Listing)>>,
    passthrough: passthrough::Table,
    uring: bool,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(sys::errno(&e))
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

    /// Runs a change to the tree: whether it succeeds or not, part of it may have happened, so
    /// cached listings are dropped either way.
    fn changing<T>(&self, f: impl FnOnce() -> Res<T>) -> Result<T, Errno> {
        let r = f();
        self.changed();
        r.map_err(errno)
    }

    /// Copies node `ino` (and missing parents) up; see `copy_up_with`.
    fn copy_up(&self, ino: NodeId) -> Res<()> {
        self.copy_up_with(ino, true)
    }

    /// Copies node `ino` (and missing parents) up. A copied directory's listing (the kernel's
    /// merged order puts upper entries apart) and link count change: the kernel's cached pages
    /// and attributes of those directories are dropped (attributes and pages only, which no
    /// lock of ours guards). The directory above the topmost copy was in the upper layer
    /// already: its listing is not cached by the kernel, and the copy-up restores its times, so
    /// it keeps its attributes (saving the GETATTR that would follow every copy-up).
    fn copy_up_with(&self, ino: NodeId, data: bool) -> Res<()> {
        let copied = self
            .copy
            .ensure_upper_with(&self.layers, &self.inodes, ino, data)?;
        if !copied.is_empty() {
            self.changed();
        }
        if let (false, Some(n)) = (copied.is_empty(), self.notifier.get()) {
            let mut dirs: Vec<NodeId> = Vec::new();
            for &c in &copied {
                if self.inodes.get(c).is_some_and(|info| info.is_dir) {
                    dirs.push(c);
                }
            }
            dirs.sort_unstable();
            dirs.dedup();
            for d in dirs {
                if let Err(e) = n.inval_inode(d.into(), 0, 0) {
                    log::debug!("inval_inode({d}): {e}");
                }
            }
            // The copied file's attributes (attributes only: no page, no lock of ours): a
            // hard-linked lower file becomes a file of one link.
            for &c in &copied {
                if self.inodes.get(c).is_some_and(|i| !i.is_dir) {
                    if let Err(e) = n.inval_inode(c.into(), -1, 0) {
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
    fn node(&self, ino: NodeId) -> Res<(OsString, NodeInfo)> {
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
    fn any_fd_of(&self, ino: NodeId) -> Option<OwnedFd> {
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
    fn keep_orphan(&self, parent: NodeId, name: &OsStr) {
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
    fn node_fd(&self, ino: NodeId) -> Res<(OwnedFd, NodeInfo)> {
        let (path, info) = self.node(ino)?;
        if info.unlinked {
            let fd = self.any_fd_of(ino).ok_or_else(|| sys::err(libc::ENOENT))?;
            return Ok((fd, info));
        }
        let fd = self.layers.open(info.layers[0], &path, libc::O_PATH)?;
        Ok((fd, info))
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
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

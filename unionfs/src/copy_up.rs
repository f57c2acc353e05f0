//! Copy-up: the first change to a lower entry copies it (and any missing parent directory) to
//! the upper layer. The copy is built in `workdir/work` under a temporary name, complete with
//! data, xattrs, owner, mode and times, then renamed into place: no reader and no crash ever sees
//! a half-copied file.

use crate::inodes::{Inodes, NodeId, ROOT};
use crate::layers::UPPER;
use crate::layers::{is_dir, join, Layers};
use crate::sys;
use parking_lot::Mutex;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const STRIPES: usize = 64;

pub struct CopyUp {
    /// Serialises copy-ups of one node (striped by node id); never two held at once.
    locks: Vec<Mutex<()>>,
    counter: AtomicU64,
    /// Our pid, for temporary names (taken once: the daemon does not fork after this).
    pid: u32,
    /// FICLONE was refused (the upper cannot reflink): not tried again.
    no_clone: AtomicBool,
    /// Skip the fsync of copied data (the `volatile` option).
    pub volatile: bool,
}

impl Default for CopyUp {
    fn default() -> Self {
        Self::new(false)
    }
}

impl CopyUp {
    pub fn new(volatile: bool) -> Self {
        CopyUp {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            no_clone: AtomicBool::new(false),
            volatile,
        }
    }

    /// A fresh name for a temporary entry in the work directory.
    pub fn temp_name(&self) -> OsString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#s{:x}.{:x}", self.pid, n))
    }

    /// Makes sure node `ino` exists in the upper layer, copying it and its parents up as needed.
    /// Returns the nodes copied, topmost first.
    pub fn ensure_upper(
        &self,
        layers: &Layers,
        inodes: &Inodes,
        ino: NodeId,
    ) -> io::Result<Vec<NodeId>> {
        self.ensure_upper_with(layers, inodes, ino, true)
    }

    /// `ensure_upper`, but a regular file about to be truncated to zero is copied without its
    /// data (as the kernel does for `O_TRUNC`).
    pub fn ensure_upper_with(
        &self,
        layers: &Layers,
        inodes: &Inodes,
        ino: NodeId,
        data: bool,
    ) -> io::Result<Vec<NodeId>> {
        if !layers.has_upper {
            return Err(sys::err(libc::EROFS));
        }
        // Parents first, top-down, each under its own lock.
        let mut chain = Vec::new();
        let mut cur = ino;
        loop {
            let info = inodes.get(cur).ok_or_else(|| sys::err(libc::ESTALE))?;
            if layers.is_upper(info.layers[0]) {
                break;
            }
            if cur == ROOT {
                return Err(sys::err(libc::EROFS));
            }
            chain.push(cur);
            cur = info.parent;
        }
        chain.reverse();
        for &n in &chain {
            self.copy_up_one(layers, inodes, n, data || n != ino)?;
        }
        Ok(chain)
    }

    fn copy_up_one(
        &self,
        layers: &Layers,
        inodes: &Inodes,
        ino: NodeId,
        data: bool,
    ) -> io::Result<()> {
        let _guard = self.locks[(ino.get() as usize) % STRIPES].lock();
        let (path, info) = inodes.path(ino).ok_or_else(|| sys::err(libc::ESTALE))?;
        if layers.is_upper(info.layers[0]) {
            return Ok(());
        }
        if info.unlinked {
            return Err(sys::err(libc::ENOENT));
        }
        let parent_rel = parent_of(&path);
        let src_layer = info.layers[0];
        let src_dir = layers.dir(src_layer, parent_rel)?;
        // A regular file whose data is copied is opened once for reading, both for its data
        // and its xattrs; anything else by O_PATH (opening a device or fifo has effects). The
        // lower layers do not change under the mount, so the stat still describes it.
        let st = sys::fstatat(src_dir.fd(), &info.name)?;
        let src_flags = if data && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            libc::O_RDONLY | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_NOFOLLOW
        };
        let src = sys::openat(src_dir.fd(), &info.name, src_flags, 0)?;
        let upper_dir = layers.dir(UPPER, parent_rel)?;
        let parent_st = sys::fstat(upper_dir.fd())?;
        let work = layers.work()?;
        let tmp = self.temp_name();
        let res = self.build_copy(
            layers,
            src_dir.fd(),
            &info.name,
            &src,
            &st,
            work,
            &tmp,
            data,
        );
        let res = res.and_then(|_| {
            sys::renameat2(
                work,
                &tmp,
                upper_dir.fd(),
                &info.name,
                sys::RENAME_NOREPLACE,
            )
        });
        if let Err(e) = res {
            let _ = crate::layers::remove_tree(work, &tmp);
            // Our view was stale: the entry already made it to the upper layer.
            let upper_has_it = e.raw_os_error() == Some(libc::EEXIST)
                && sys::fstatat(upper_dir.fd(), &info.name)
                    .map(|st| !crate::whiteout::is_whiteout(&st))
                    .unwrap_or(false);
            if !upper_has_it {
                return Err(e);
            }
        }
        // Adding an entry to the upper parent is not a change the user made to it.
        restore_times(upper_dir.fd(), &parent_st);
        let mut new_layers = vec![UPPER];
        if is_dir(&st) {
            new_layers.extend(info.layers.iter().copied());
        }
        let keep_ino = if keeps_origin(layers, &st) {
            Some(info.ino.unwrap_or(st.st_ino))
        } else {
            None
        };
        inodes.set_layers(ino, new_layers, keep_ino);
        log::debug!("copied up {:?}", join(parent_rel, &info.name));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn build_copy(
        &self,
        layers: &Layers,
        src_dir: BorrowedFd,
        name: &OsStr,
        src: &OwnedFd,
        st: &sys::Stat,
        work: BorrowedFd,
        tmp: &OsStr,
        with_data: bool,
    ) -> io::Result<()> {
        let fmt = st.st_mode & libc::S_IFMT;
        // A regular file's metadata is set through the fd it was written by; other kinds are
        // reached by O_PATH.
        let dst = match fmt {
            libc::S_IFREG => {
                let dst = sys::openat(
                    work,
                    tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )?;
                if with_data {
                    self.copy_data(src.as_fd(), dst.as_fd(), st)?;
                    // The kernel's copy-up syncs the copied file, and only it (not the work
                    // or upper directories), before the rename makes it visible.
                    if !self.volatile {
                        sys::fsync(dst.as_fd(), false)?;
                    }
                }
                dst
            }
            _ => {
                match fmt {
                    libc::S_IFDIR => sys::mkdirat(work, tmp, 0o700)?,
                    libc::S_IFLNK => {
                        let target = sys::readlinkat(src_dir, name)?;
                        sys::symlinkat(&target, work, tmp)?;
                    }
                    _ => sys::mknodat(work, tmp, st.st_mode, st.st_rdev)?,
                }
                sys::openat(work, tmp, libc::O_PATH | libc::O_NOFOLLOW, 0)?
            }
        };
        // Owner first: a chown drops security.capability, which the xattrs then bring along.
        copy_owner(dst.as_fd(), st)?;
        copy_xattrs(layers, src.as_fd(), dst.as_fd())?;
        if keeps_origin(layers, st) {
            layers.set_origin(src.as_fd(), dst.as_fd());
        }
        copy_mode_times(dst.as_fd(), st)
    }
}

/// Whether a copy-up of `st` records its origin and keeps its inode number: as the kernel with
/// `index=off`, not for a hard-linked non-directory (its links would disagree).
fn keeps_origin(layers: &Layers, st: &sys::Stat) -> bool {
    layers.same_fs && (is_dir(st) || st.st_nlink == 1)
}

fn copy_owner(dst: BorrowedFd, st: &sys::Stat) -> io::Result<()> {
    match sys::fchown(dst, Some(st.st_uid), Some(st.st_gid)) {
        // Rootless: a file of another owner cannot keep its owner; the copy is ours, as with
        // fuse-overlayfs without an id mapping.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && sys::geteuid() != 0 => {
            log::debug!("copy-up: owner {}:{} not kept: {e}", st.st_uid, st.st_gid);
            Ok(())
        }
        r => r,
    }
}

/// Mode (after the owner: chown clears set-id bits), then times, last of all.
fn copy_mode_times(dst: BorrowedFd, st: &sys::Stat) -> io::Result<()> {
    let symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if !symlink {
        sys::fchmod_path(dst, st.st_mode & 0o7777)?;
    }
    sys::futimens_kind(
        dst,
        symlink,
        sys::Time::Set(st.st_atime, st.st_atime_nsec),
        sys::Time::Set(st.st_mtime, st.st_mtime_nsec),
    )
}

/// Puts back the times `st` of the directory `dir`.
pub fn restore_times(dir: BorrowedFd, st: &sys::Stat) {
    let _ = sys::futimens_kind(
        dir,
        false,
        sys::Time::Set(st.st_atime, st.st_atime_nsec),
        sys::Time::Set(st.st_mtime, st.st_mtime_nsec),
    );
}

/// The parent part of a relative path ("" for a top-level name).
pub fn parent_of(path: &OsStr) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    let b = path.as_bytes();
    match b.iter().rposition(|&c| c == b'/') {
        Some(i) => OsStr::from_bytes(&b[..i]),
        None => OsStr::new(""),
    }
}

/// Copies every xattr but overlay's private ones. Namespaces the upper filesystem or our
/// privileges refuse (e.g. `security.*` without CAP_SYS_ADMIN) are skipped, as the kernel does.
fn copy_xattrs(layers: &Layers, src: BorrowedFd, dst: BorrowedFd) -> io::Result<()> {
    let list = match sys::flistxattr(src) {
        Ok(l) => l,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    for raw in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        use std::os::unix::ffi::OsStrExt;
        let name = OsStr::from_bytes(raw);
        if layers.is_private_xattr(name) {
            continue;
        }
        let value = match sys::fgetxattr(src, name) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match sys::fsetxattr(dst, name, &value, 0) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                log::debug!("copy-up: xattr {:?} not copied: {}", name, e);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl CopyUp {
    /// Copies the data of `src` (of stat `st`): a reflink where the upper offers it, else
    /// `copy_file_range`, over the data extents only where the file has holes, else read/write.
    fn copy_data(&self, src: BorrowedFd, dst: BorrowedFd, st: &sys::Stat) -> io::Result<()> {
        let size = st.st_size as u64;
        if size == 0 {
            return Ok(());
        }
        if !self.no_clone.load(Ordering::Relaxed) {
            match sys::ficlone(dst, src) {
                Ok(()) => return Ok(()),
                // The upper's filesystem cannot reflink at all: stop asking. (EXDEV is about
                // one lower on another mount; others may still share the upper's.)
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
                    ) =>
                {
                    self.no_clone.store(true, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        // As many blocks as bytes: no hole to find, so no SEEK_DATA/SEEK_HOLE walk.
        if (st.st_blocks as u64).saturating_mul(512) >= size {
            let copied = copy_range(src, dst, 0, size)?;
            return if copied < size {
                sys::ftruncate(dst, size)
            } else {
                Ok(())
            };
        }
        copy_sparse(src, dst, size)
    }
}

/// Copies `size` bytes over the data extents only (holes stay holes).
fn copy_sparse(src: BorrowedFd, dst: BorrowedFd, size: u64) -> io::Result<()> {
    let mut off: u64 = 0;
    while off < size {
        let data = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(_) => off,
        };
        let end = match sys::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        copy_range(src, dst, data, end)?;
        off = end;
    }
    sys::ftruncate(dst, size)
}

/// Copies `[off, end)` at the same offsets; returns where it stopped (`end`, or the end of
/// `src` if it was shorter).
fn copy_range(src: BorrowedFd, dst: BorrowedFd, mut off: u64, end: u64) -> io::Result<u64> {
    let mut fallback = false;
    let mut buf = Vec::new();
    while off < end {
        let len = ((end - off) as usize).min(1 << 30);
        if !fallback {
            match sys::copy_file_range(src, off, dst, len) {
                Ok(0) => return Ok(off),
                Ok(n) => {
                    off += n as u64;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV)
                            | Some(libc::EINVAL)
                            | Some(libc::ENOSYS)
                            | Some(libc::EOPNOTSUPP)
                    ) =>
                {
                    fallback = true;
                    buf.resize(1 << 20, 0);
                }
                Err(e) => return Err(e),
            }
        }
        let n = sys::pread(src, &mut buf[..len.min(1 << 20)], off)?;
        if n == 0 {
            return Ok(off);
        }
        let mut w = 0;
        while w < n {
            w += sys::pwrite(dst, &buf[w..n], off + w as u64)?;
        }
        off += n as u64;
    }
    Ok(off)
}

//! Open directories: opendir, readdir (of one real directory, or a merged listing),
//! releasedir, fsyncdir.

use super::{DirHandle, RealDir, Res, StrataFs};
use crate::inodes::NodeId;
use crate::readdir::{self, MergedEntry};
use crate::sys;
use fuser::{Errno, FileHandle, FileType, FopenFlags, INodeNo};
use parking_lot::Mutex;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

impl StrataFs {
    pub(super) fn listing(&self, dh: &DirHandle, offset: u64) -> Res<Arc<Vec<MergedEntry>>> {
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

    pub(super) fn do_opendir(&self, ino: NodeId) -> Result<(u64, FopenFlags), Errno> {
        let (path, info) = self.node(ino)?;
        if !info.is_dir {
            return Err(Errno::ENOTDIR);
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
        let lower_only = !info.unlinked && !info.layers.iter().any(|&l| self.layers.is_upper(l));
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
                ino,
                entries: Mutex::new(None),
                real,
                frozen,
            }),
        );
        Ok((fh, flags))
    }

    /// Hands the entries from `offset` on to `add` (node, next offset, type, name) until it
    /// answers that the reply is full.
    pub(super) fn do_readdir(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(INodeNo, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        let Some(dh) = self.dirs.read().get(&fh.0).cloned() else {
            return Err(Errno::EBADF);
        };
        if let Some(real) = &dh.real {
            let g = real.lock();
            let fd = &g.fd;
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
                    if add(INodeNo(e.ino), e.next_off as u64, dt_type(e.kind), &e.name) {
                        return Ok(());
                    }
                }
            }
        }
        let list = self.listing(&dh, offset)?;
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            if add(INodeNo(e.ino), (i + 1) as u64, dt_type(e.kind), &e.name) {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn do_releasedir(&self, fh: FileHandle) {
        self.dirs.write().remove(&fh.0);
    }

    pub(super) fn do_fsyncdir(&self, ino: NodeId, datasync: bool) -> Result<(), Errno> {
        let (path, info) = self.node(ino)?;
        if self.volatile {
            return Ok(());
        }
        let fd = self
            .layers
            .open(info.layers[0], &path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(sys::fsync(fd.as_fd(), datasync)?)
    }
}

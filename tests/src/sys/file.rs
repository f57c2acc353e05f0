//! Paths and file descriptors: stat, open, read/write, directories, links, xattrs, statfs.

use crate::*;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn stat_raw(p: impl AsRef<Path>) -> R<libc::stat> {
    let c = cpath(p.as_ref());
    let mut st = zeroed_stat();
    // SAFETY: a NUL-terminated path and a writable stat buffer.
    cvt(unsafe { libc::stat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn lstat_raw(p: impl AsRef<Path>) -> R<libc::stat> {
    let c = cpath(p.as_ref());
    let mut st = zeroed_stat();
    // SAFETY: a NUL-terminated path and a writable stat buffer.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn fstat_raw(fd: &OwnedFd) -> R<libc::stat> {
    let mut st = zeroed_stat();
    // SAFETY: an open fd and a writable stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn fstatat_raw(dirfd: RawFd, name: &str, flags: i32) -> R<libc::stat> {
    let c = cstr(name);
    let mut st = zeroed_stat();
    // SAFETY: a NUL-terminated name and a writable stat buffer; a bad dirfd is EBADF.
    cvt(unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// Takes ownership of a descriptor a syscall just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn open(p: impl AsRef<Path>, flags: i32, mode: u32) -> R<OwnedFd> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(owned(fd))
}

pub fn openat(dirfd: RawFd, name: &str, flags: i32, mode: u32) -> R<OwnedFd> {
    let c = cstr(name);
    // SAFETY: a NUL-terminated name; a bad dirfd is EBADF.
    let fd = cvt(unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(owned(fd))
}

/// pread(2) into `buf`: the number of bytes read.
pub fn pread_buf(fd: RawFd, buf: &mut [u8], off: i64) -> R<usize> {
    // SAFETY: `buf` is writable for its whole length.
    cvt_s(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) }).map(|n| n as usize)
}

/// read(2) into `buf`: the number of bytes read.
pub fn read_buf(fd: RawFd, buf: &mut [u8]) -> R<usize> {
    // SAFETY: `buf` is writable for its whole length.
    cvt_s(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }).map(|n| n as usize)
}

pub fn pwrite(fd: &OwnedFd, off: u64, data: &[u8]) -> R<usize> {
    // SAFETY: `data` is readable for its whole length.
    let n = cvt_s(unsafe {
        libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off as i64)
    })?;
    Ok(n as usize)
}

pub fn write_fd(fd: &OwnedFd, data: &[u8]) -> R<usize> {
    // SAFETY: `data` is readable for its whole length.
    let n = cvt_s(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
    Ok(n as usize)
}

pub fn fsync_fd(fd: &OwnedFd) -> R<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

pub fn fdatasync_fd(fd: &OwnedFd) -> R<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(drop)
}

pub fn ftruncate(fd: &OwnedFd, len: u64) -> R<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }).map(drop)
}

pub fn truncate(p: impl AsRef<Path>, len: u64) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::truncate(c.as_ptr(), len as i64) }).map(drop)
}

/// lseek(2): the new offset.
pub fn lseek(fd: RawFd, off: i64, whence: i32) -> R<i64> {
    // SAFETY: no pointers.
    cvt_l(unsafe { libc::lseek(fd, off, whence) })
}

/// One getdents64(2) call into `buf`: the number of bytes of records.
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> R<usize> {
    // SAFETY: `buf` is writable for its whole length.
    cvt_l(unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) })
        .map(|n| n as usize)
}

pub fn mkdir(p: impl AsRef<Path>, mode: u32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
}

pub fn mkdirat(dirfd: RawFd, name: &str, mode: u32) -> R<()> {
    let c = cstr(name);
    // SAFETY: a NUL-terminated name; a bad dirfd is EBADF.
    cvt(unsafe { libc::mkdirat(dirfd, c.as_ptr(), mode) }).map(drop)
}

pub fn rmdir(p: impl AsRef<Path>) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(drop)
}

pub fn unlink(p: impl AsRef<Path>) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
}

pub fn unlinkat(dirfd: RawFd, name: &str, flags: i32) -> R<()> {
    let c = cstr(name);
    // SAFETY: a NUL-terminated name; a bad dirfd is EBADF.
    cvt(unsafe { libc::unlinkat(dirfd, c.as_ptr(), flags) }).map(drop)
}

pub fn rename(a: impl AsRef<Path>, b: impl AsRef<Path>) -> R<()> {
    let (ca, cb) = (cpath(a.as_ref()), cpath(b.as_ref()));
    // SAFETY: NUL-terminated paths.
    cvt(unsafe { libc::rename(ca.as_ptr(), cb.as_ptr()) }).map(drop)
}

/// renameat2(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
pub fn rename2(a: impl AsRef<Path>, b: impl AsRef<Path>, flags: u32) -> R<()> {
    let (ca, cb) = (cpath(a.as_ref()), cpath(b.as_ref()));
    // SAFETY: NUL-terminated paths.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// link(existing, new)
pub fn link(existing: impl AsRef<Path>, new: impl AsRef<Path>) -> R<()> {
    let (ca, cb) = (cpath(existing.as_ref()), cpath(new.as_ref()));
    // SAFETY: NUL-terminated paths.
    cvt(unsafe { libc::link(ca.as_ptr(), cb.as_ptr()) }).map(drop)
}

/// symlink(target, linkpath)
pub fn symlink(target: &str, p: impl AsRef<Path>) -> R<()> {
    let (ct, cp) = (cstr(target), cpath(p.as_ref()));
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::symlink(ct.as_ptr(), cp.as_ptr()) }).map(drop)
}

pub fn readlink(p: impl AsRef<Path>) -> R<String> {
    let c = cpath(p.as_ref());
    let mut buf = vec![0u8; 8192];
    // SAFETY: a NUL-terminated path; `buf` is writable for its whole length.
    let n = cvt_s(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// readlinkat(2) into `buf`: the length of the target.
pub fn readlinkat(dirfd: RawFd, name: &str, buf: &mut [u8]) -> R<usize> {
    let c = cstr(name);
    // SAFETY: a NUL-terminated name; `buf` is writable for its whole length.
    cvt_s(unsafe { libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
        .map(|n| n as usize)
}

/// mknod with full mode (type bits included) and device numbers.
pub fn mknod(p: impl AsRef<Path>, mode: u32, major: u32, minor: u32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) }).map(drop)
}

/// Binds a new unix stream socket (close-on-exec) to `path`, then closes the socket; the
/// socket file stays.
pub fn bind_unix(path: &str) -> R<()> {
    // SAFETY: no pointers.
    let sock =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let sock = owned(sock);
    // SAFETY: sockaddr_un is plain old data; all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    assert!(
        bytes.len() < addr.sun_path.len(),
        "socket path too long: {path}"
    );
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes (NUL-terminated path).
    cvt(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .map(drop)
}

pub fn chmod(p: impl AsRef<Path>, mode: u32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
}

pub fn chown(p: impl AsRef<Path>, uid: u32, gid: u32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) }).map(drop)
}

pub fn lchown(p: impl AsRef<Path>, uid: u32, gid: u32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(drop)
}

/// utimensat(2) with (atime, mtime).
pub fn utimensat(dirfd: RawFd, name: &CStr, times: &[libc::timespec; 2], flags: i32) -> R<()> {
    // SAFETY: a NUL-terminated name and two timespecs.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn setxattr(p: impl AsRef<Path>, name: &str, val: impl AsRef<[u8]>, flags: i32) -> R<()> {
    let (c, n, v) = (cpath(p.as_ref()), cstr(name), val.as_ref());
    // SAFETY: NUL-terminated path and name; `v` is readable for its whole length.
    cvt(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) })
        .map(drop)
}

pub fn lsetxattr(p: impl AsRef<Path>, name: &str, val: impl AsRef<[u8]>, flags: i32) -> R<()> {
    let (c, n, v) = (cpath(p.as_ref()), cstr(name), val.as_ref());
    // SAFETY: NUL-terminated path and name; `v` is readable for its whole length.
    cvt(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) })
        .map(drop)
}

/// getxattr(2) (`follow`) or lgetxattr(2) into `buf`: the value's length.
pub(crate) fn getxattr_buf(p: &Path, name: &str, follow: bool, buf: &mut [u8]) -> R<usize> {
    let (c, n) = (cpath(p), cstr(name));
    // SAFETY: NUL-terminated path and name; `buf` is writable for its whole length.
    let r = unsafe {
        if follow {
            libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    cvt_s(r).map(|n| n as usize)
}

/// listxattr(2) (`follow`) or llistxattr(2) into `buf`: the length of the name list.
pub(crate) fn listxattr_buf(p: &Path, follow: bool, buf: &mut [u8]) -> R<usize> {
    let c = cpath(p);
    // SAFETY: a NUL-terminated path; `buf` is writable for its whole length.
    let r = unsafe {
        if follow {
            libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    cvt_s(r).map(|n| n as usize)
}

/// Size reported by listxattr(path, NULL, 0).
pub fn listxattr_size(p: impl AsRef<Path>) -> R<usize> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path; a NULL buffer of size 0 asks for the size only.
    cvt_s(unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) }).map(|n| n as usize)
}

pub fn removexattr(p: impl AsRef<Path>, name: &str) -> R<()> {
    let (c, n) = (cpath(p.as_ref()), cstr(name));
    // SAFETY: NUL-terminated path and name.
    cvt(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
}

pub fn lremovexattr(p: impl AsRef<Path>, name: &str) -> R<()> {
    let (c, n) = (cpath(p.as_ref()), cstr(name));
    // SAFETY: NUL-terminated path and name.
    cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
}

pub fn statfs_raw(p: impl AsRef<Path>) -> R<libc::statfs> {
    let c = cpath(p.as_ref());
    // SAFETY: libc::statfs is plain old data; all-zero bytes are a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs buffer.
    cvt(unsafe { libc::statfs(c.as_ptr(), &mut s) })?;
    Ok(s)
}

pub fn access(p: impl AsRef<Path>, mode: i32) -> R<()> {
    let c = cpath(p.as_ref());
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::access(c.as_ptr(), mode) }).map(drop)
}

/// Maps `map_len` bytes of `fd` shared and writable, copies `data` to offset `off` of the
/// mapping, msyncs (MS_SYNC) and unmaps. The errno of mmap or msync on failure.
pub fn mmap_shared_write(fd: RawFd, map_len: usize, off: usize, data: &[u8]) -> R<()> {
    assert!(
        off.checked_add(data.len())
            .is_some_and(|end| end <= map_len),
        "mmap write of {} bytes at {off} beyond the mapping ({map_len})",
        data.len()
    );
    // SAFETY: a fresh shared mapping chosen by the kernel; it aliases no Rust memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the mapping is map_len bytes, writable, and off + data.len() <= map_len
    // (asserted above); it is unmapped here and not used afterwards.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off), data.len());
        let r = libc::msync(p, map_len, libc::MS_SYNC);
        let e = Errno::last();
        libc::munmap(p, map_len);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}

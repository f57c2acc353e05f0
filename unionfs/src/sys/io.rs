//! File data: reads, writes, syncs, sizes, seeks and in-kernel copies.

use super::{cvt, cvt_ssize};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub fn ftruncate(fd: BorrowedFd, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd; no memory is passed.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
    Ok(())
}

pub fn pread(fd: BorrowedFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is live and that long.
    cvt_ssize(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            off as libc::off_t,
        )
    })
}

pub fn pwrite(fd: BorrowedFd, buf: &[u8], off: u64) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`, which is live and that long.
    cvt_ssize(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            off as libc::off_t,
        )
    })
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> io::Result<()> {
    if datasync {
        // SAFETY: plain syscall on a live fd; no memory is passed.
        cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) })?;
    } else {
        // SAFETY: plain syscall on a live fd; no memory is passed.
        cvt(unsafe { libc::fsync(fd.as_raw_fd()) })?;
    }
    Ok(())
}

pub fn fallocate(fd: BorrowedFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd; no memory is passed.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })?;
    Ok(())
}

pub fn lseek(fd: BorrowedFd, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a live fd; no memory is passed.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Clones the extents of `src` into `dst` (same filesystem, reflink-capable).
pub fn ficlone(dst: BorrowedFd, src: BorrowedFd) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as an integer argument; no memory is passed.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) })?;
    Ok(())
}

pub fn copy_file_range(
    src: BorrowedFd,
    off_in: u64,
    dst: BorrowedFd,
    len: usize,
) -> io::Result<usize> {
    let mut i = off_in as libc::loff_t;
    let mut o = off_in as libc::loff_t;
    // SAFETY: `i` and `o` are valid out-pointers to offsets; both fds are live.
    cvt_ssize(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, len, 0)
    } as libc::ssize_t)
}

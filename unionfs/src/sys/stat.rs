//! File attributes: stat, ownership, mode, timestamps, filesystem statistics, device numbers.

use super::{cstr, cvt, proc_path};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub use libc::stat as Stat;

pub fn fstatat(dir: BorrowedFd, name: &OsStr) -> io::Result<Stat> {
    let c = cstr(name)?;
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: AT_EMPTY_PATH with "" stats the fd itself, O_PATH fds included.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn fchown(fd: BorrowedFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: `""` is NUL-terminated and, with AT_EMPTY_PATH, names the live fd itself.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// chmod of the file behind an `O_PATH` fd (not valid for symlinks, whose mode is fixed).
pub fn fchmod_path(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is a NUL-terminated path that outlives the call.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) })?;
    Ok(())
}

/// A timestamp for `utimens`: a value, the current time, or "leave as is".
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Set(i64, i64),
    Now,
    Omit,
}

fn timespec(t: Time) -> libc::timespec {
    match t {
        Time::Set(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        Time::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// utimensat on the file behind an fd (any kind, symlinks included).
pub fn futimens_path(fd: BorrowedFd, atime: Time, mtime: Time) -> io::Result<()> {
    let st = fstat(fd)?;
    futimens_kind(fd, st.st_mode & libc::S_IFMT == libc::S_IFLNK, atime, mtime)
}

/// `futimens_path` for a caller that knows whether `fd` is a symlink (saves an fstat).
pub fn futimens_kind(fd: BorrowedFd, symlink: bool, atime: Time, mtime: Time) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // AT_EMPTY_PATH works with utimensat only through the proc path for O_PATH fds; a symlink
    // held by O_PATH is reached through its proc link, which lutimes-like semantics apply to.
    if symlink {
        // The proc magic link would be followed to the link itself only with AT_SYMLINK_NOFOLLOW
        // unset; utimensat on a symlink via proc needs the fd-relative empty path form.
        // SAFETY: `ts` holds the two timespecs utimensat reads; the empty path is NUL-terminated.
        cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                ts.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .or_else(|_| {
            let p = proc_path(fd);
            // SAFETY: `p` is a NUL-terminated path and `ts` the two timespecs utimensat reads.
            cvt(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        })?;
        return Ok(());
    }
    let p = proc_path(fd);
    // SAFETY: `p` is a NUL-terminated path and `ts` the two timespecs utimensat reads.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) })?;
    Ok(())
}

pub fn fstatvfs(fd: BorrowedFd) -> io::Result<libc::statvfs> {
    // SAFETY: `statvfs` is plain data; all-zero is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a valid out-pointer to a statvfs for the duration of the call.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
}

/// A stat with every field zero.
pub fn zeroed_stat() -> Stat {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

pub fn major(dev: u64) -> u32 {
    libc::major(dev)
}

pub fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

//! Extended attributes, on the file behind an fd (O_PATH fds included).

use super::{cstr, cvt, proc_path};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::BorrowedFd;

pub fn fgetxattr(fd: BorrowedFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let p = xattr_target(fd);
    let n = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `p` and `n` are NUL-terminated; the kernel writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 20 {
            // SAFETY: a NULL buffer of size 0 only asks for the value's size; `p` and `n` are NUL-terminated.
            let want = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            let want = if want > 0 {
                want as usize
            } else {
                buf.len() * 4
            };
            buf.resize(want.max(buf.len() * 2), 0);
            continue;
        }
        return Err(e);
    }
}

/// The proc magic link is itself a symlink: the `l*xattr` calls would act on it, so these use
/// the following variants, which land on the file the fd refers to (even a symlink's own inode).
fn xattr_target(fd: BorrowedFd) -> CString {
    proc_path(fd)
}

pub fn fsetxattr(fd: BorrowedFd, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = xattr_target(fd);
    let n = cstr(name)?;
    // SAFETY: `p` and `n` are NUL-terminated; the kernel reads `value.len()` bytes from `value`.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub fn fremovexattr(fd: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let p = xattr_target(fd);
    let n = cstr(name)?;
    // SAFETY: `p` and `n` are NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) })?;
    Ok(())
}

/// Raw listxattr output: NUL-separated names.
pub fn flistxattr(fd: BorrowedFd) -> io::Result<Vec<u8>> {
    let p = xattr_target(fd);
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `p` is NUL-terminated; the kernel writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 24 {
            let new_len = buf.len() * 4;
            buf.resize(new_len, 0);
            continue;
        }
        return Err(e);
    }
}

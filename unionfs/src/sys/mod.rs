//! Every raw syscall and every `unsafe` block of stratafs lives under this module, behind safe
//! functions that return `io::Result`. Paths given to these functions are always relative to a
//! directory fd, and symlinks are never followed unless the caller says so.

pub mod mount;

// One file a syscall family; callers keep using the flat `sys::` names re-exported below.
mod dir;
mod fd;
mod io;
mod process;
mod stat;
mod xattr;

pub use dir::{
    getdents, linkat, mkdirat, mknodat, read_dir, readlinkat, renameat2, symlinkat, unlinkat,
    DirEntry, RawDirent, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
};
pub use fd::{dup, name_to_handle, open_beneath, open_by_handle, openat};
pub use io::{copy_file_range, fallocate, ficlone, fsync, ftruncate, lseek, pread, pwrite};
pub use process::{geteuid, malloc_trim, single_arena, umask};
pub use stat::{
    fchmod_path, fchown, fstat, fstatat, fstatvfs, futimens_kind, futimens_path, major, makedev,
    minor, zeroed_stat, Stat, Time,
};
pub use xattr::{fgetxattr, flistxattr, fremovexattr, fsetxattr};

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_ssize(r: libc::ssize_t) -> std::io::Result<usize> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Turns a name or relative path into a C string; a NUL byte inside is EINVAL.
pub fn cstr(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn err(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

/// The `/proc/self/fd/N` name of an fd: the one way to chmod, utime or touch xattrs of a file
/// held only by an `O_PATH` fd without following a symlink on a path.
fn proc_path(fd: BorrowedFd) -> CString {
    // A formatted integer never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

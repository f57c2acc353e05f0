//! Directory entries: creating, linking, renaming and removing names, and listing directories.

use super::{cstr, cvt, cvt_ssize};
use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

pub fn mkdirat(dir: BorrowedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is a live fd.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is a live fd.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) })?;
    Ok(())
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: `t` and `c` are NUL-terminated strings that outlive the call; `dir` is a live fd.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
    Ok(())
}

pub fn readlinkat(dir: BorrowedFd, name: &OsStr) -> io::Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is live and that long.
    let n = cvt_ssize(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

pub fn unlinkat(dir: BorrowedFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is a live fd.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    Ok(())
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

pub fn renameat2(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
    flags: u32,
) -> io::Result<()> {
    from_to((olddir, oldname), (newdir, newname), FromTo::Rename(flags))
}

pub fn linkat(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
) -> io::Result<()> {
    from_to((olddir, oldname), (newdir, newname), FromTo::Link)
}

/// The syscalls that take an old and a new name, each relative to its own directory fd.
enum FromTo {
    Rename(u32),
    Link,
}

fn from_to(old: (BorrowedFd, &OsStr), new: (BorrowedFd, &OsStr), call: FromTo) -> io::Result<()> {
    let o = cstr(old.1)?;
    let n = cstr(new.1)?;
    let (od, nd) = (old.0.as_raw_fd(), new.0.as_raw_fd());
    // SAFETY: `o` and `n` are NUL-terminated strings that outlive the call; both dir fds are live.
    cvt(unsafe {
        match call {
            FromTo::Rename(flags) => libc::renameat2(od, o.as_ptr(), nd, n.as_ptr(), flags),
            FromTo::Link => libc::linkat(od, o.as_ptr(), nd, n.as_ptr(), 0),
        }
    })?;
    Ok(())
}

/// One entry of a real directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: u8,
}

/// Reads every entry (but `.` and `..`) of the directory `fd` (opened `O_RDONLY|O_DIRECTORY`).
pub fn read_dir(fd: OwnedFd) -> io::Result<Vec<DirEntry>> {
    let raw = fd.as_raw_fd();
    // SAFETY: fdopendir takes ownership of the fd on success; on failure we still own it.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(fd);
    let mut out = Vec::new();
    let res = loop {
        // SAFETY: readdir's errno protocol: reset errno, NULL with errno 0 is end of stream.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is the open stream from fdopendir, not closed until after the loop.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned a valid entry that lives until the next call.
        let ent = unsafe { &*ent };
        // SAFETY: the kernel NUL-terminates d_name, and `ent` is valid until the next readdir.
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(DirEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: ent.d_ino,
            kind: ent.d_type,
        });
    };
    // SAFETY: `dirp` is open and closed exactly once; it also closes the fd it took over.
    unsafe { libc::closedir(dirp) };
    res.map(|_| out)
}

/// One record of `getdents64`, with the offset at which the listing continues after it.
#[derive(Debug, Clone)]
pub struct RawDirent {
    pub ino: u64,
    pub next_off: i64,
    pub kind: u8,
    pub name: OsString,
}

/// Reads the next batch of entries of the directory `fd` from its current position.
pub fn getdents(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<Vec<RawDirent>> {
    // SAFETY: the kernel writes at most buf.len() bytes of linux_dirent64 records.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut out = Vec::new();
    let mut pos = 0;
    // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL terminated).
    while pos + 19 <= n {
        let rec = &buf[pos..n];
        let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or([0; 8]));
        let off = i64::from_ne_bytes(rec[8..16].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap_or([0; 2])) as usize;
        if reclen < 19 || reclen > rec.len() {
            break;
        }
        let kind = rec[18];
        let name_bytes = &rec[19..reclen];
        let end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        out.push(RawDirent {
            ino,
            next_off: off,
            kind,
            name: OsString::from_vec(name_bytes[..end].to_vec()),
        });
        pos += reclen;
    }
    Ok(out)
}

//! Every raw syscall and every `unsafe` block of stratafs lives under this module, behind safe
//! functions that return `io::Result`. Paths given to these functions are always relative to a
//! directory fd, and symlinks are never followed unless the caller says so.

pub mod mount;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

pub use libc::stat as Stat;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_ssize(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Turns a name or relative path into a C string; a NUL byte inside is EINVAL.
pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The longest relative path handed to one `openat2` call; longer ones are walked in pieces so
/// that paths of any depth resolve.
const CHUNK: usize = 2048;

/// Opens `path` beneath `dir`: no `..` escape, no symlink in any component (the final one too:
/// with `O_NOFOLLOW` it fails, with `O_PATH|O_NOFOLLOW` it yields the link itself).
pub fn open_beneath(dir: BorrowedFd, path: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let bytes = path.as_bytes();
    if bytes.len() <= CHUNK {
        return openat2_beneath(dir, &cstr(path)?, flags, mode);
    }
    // Walk the directories in chunks that end at a '/', then open the rest.
    let mut owned: Option<OwnedFd> = None;
    let mut rest = bytes;
    while rest.len() > CHUNK {
        let cut = rest[..CHUNK]
            .iter()
            .rposition(|&b| b == b'/')
            .ok_or_else(|| err(libc::ENAMETOOLONG))?;
        let head = &rest[..cut];
        let base = owned.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let next = openat2_beneath(
            base,
            &cstr(OsStr::from_bytes(head))?,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        owned = Some(next);
        rest = &rest[cut + 1..];
    }
    let base = owned.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
    openat2_beneath(base, &cstr(OsStr::from_bytes(rest))?, flags, mode)
}

fn openat2_beneath(dir: BorrowedFd, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `open_how` is plain integers; all-zero is a valid value (and what the kernel expects for unused fields).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    // The kernel rejects a mode with O_PATH or without O_CREAT/O_TMPFILE.
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = mode as u64;
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `how` is a valid open_how and its size is passed; the path is NUL terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ELOOP from RESOLVE_NO_SYMLINKS on the final component is what O_NOFOLLOW gives.
        return Err(e);
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `openat(dir, name)` for a single component (no '/'), never following a final symlink unless
/// `flags` asks for it by omitting `O_NOFOLLOW`.
pub fn openat(dir: BorrowedFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid NUL-terminated path; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `openat` succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: `o` and `n` are NUL-terminated strings that outlive the call; both dir fds are live.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

pub fn linkat(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
) -> io::Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: `o` and `n` are NUL-terminated strings that outlive the call; both dir fds are live.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

/// The `/proc/self/fd/N` name of an fd: the one way to chmod, utime or touch xattrs of a file
/// held only by an `O_PATH` fd without following a symlink on a path.
fn proc_path(fd: BorrowedFd) -> CString {
    // A formatted integer never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
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

pub fn fstatvfs(fd: BorrowedFd) -> io::Result<libc::statvfs> {
    // SAFETY: `statvfs` is plain data; all-zero is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a valid out-pointer to a statvfs for the duration of the call.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
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

// ---- extended attributes, on the file behind an fd (O_PATH fds included) ----

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

// ---- directories ----

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

/// A stat with every field zero.
pub fn zeroed_stat() -> Stat {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// One malloc arena for all threads: per-thread arenas keep the memory of a large forgotten
/// tree out of reach of `malloc_trim`.
pub fn single_arena() {
    // SAFETY: mallopt only tunes the allocator; M_ARENA_MAX is -8 in glibc.
    unsafe {
        libc::mallopt(-8, 1);
    }
}

/// Returns the allocator's free memory to the system.
pub fn malloc_trim() {
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask) }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

pub fn dup(fd: BorrowedFd) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
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

// ---- file handles (for overlay's "origin" of a copied-up file) ----

const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct FileHandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The file handle of the file behind `fd`: (type, opaque bytes).
pub fn name_to_handle(fd: BorrowedFd) -> io::Result<(i32, Vec<u8>)> {
    let mut h = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a file_handle with room for MAX_HANDLE_SZ bytes, as handle_bytes says.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h as *mut FileHandleBuf,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        ) as libc::c_int
    })?;
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.handle_type, h.f_handle[..n].to_vec()))
}

/// Opens a file by handle on the filesystem of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: BorrowedFd,
    htype: i32,
    bytes: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_HANDLE_SZ {
        return Err(err(libc::EINVAL));
    }
    let mut h = FileHandleBuf {
        handle_bytes: bytes.len() as u32,
        handle_type: htype,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    h.f_handle[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a well-formed file_handle; the returned fd is new and ours.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut h as *mut FileHandleBuf,
            flags | libc::O_CLOEXEC,
        ) as libc::c_int
    })?;
    // SAFETY: `open_by_handle_at` succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

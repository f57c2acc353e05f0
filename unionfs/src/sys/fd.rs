//! Opening files: beneath a layer root, by single name, by file handle; and duplicating fds.

use super::{cstr, cvt, err};
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

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

pub fn dup(fd: BorrowedFd) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
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

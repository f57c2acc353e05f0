//! The new mount API (fsopen/fsconfig/fsmount/move_mount) and umount2.

use crate::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

// fsconfig commands and flags (linux/mount.h).
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;

/// fsopen(2) with FSOPEN_CLOEXEC: the filesystem context.
pub fn fsopen(fstype: &str) -> R<OwnedFd> {
    let name = cstr(fstype);
    // SAFETY: a NUL-terminated name.
    let fd = cvt_l(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fsconfig(FSCONFIG_SET_STRING, key, val).
pub fn fsconfig_string(fd: RawFd, key: &str, val: &str) -> R<()> {
    let (k, v) = (cstr(key), cstr(val));
    // SAFETY: NUL-terminated key and value.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// fsconfig(FSCONFIG_SET_FLAG, key).
pub fn fsconfig_flag(fd: RawFd, key: &str) -> R<()> {
    let k = cstr(key);
    // SAFETY: a NUL-terminated key; the value is NULL as the command requires.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_SET_FLAG,
            k.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })
    .map(drop)
}

/// fsconfig(FSCONFIG_CMD_CREATE).
pub fn fsconfig_create(fd: RawFd) -> R<()> {
    // SAFETY: key and value are NULL as the command requires.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map(drop)
}

/// fsmount(2) with FSMOUNT_CLOEXEC and no attributes: the detached mount.
pub fn fsmount(fd: RawFd) -> R<OwnedFd> {
    // SAFETY: no pointers.
    let mfd = cvt_l(unsafe { libc::syscall(libc::SYS_fsmount, fd, FSMOUNT_CLOEXEC, 0u32) })?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(mfd as RawFd) })
}

/// move_mount(2) of a detached mount onto `target` (MOVE_MOUNT_F_EMPTY_PATH).
pub fn move_mount(mfd: &OwnedFd, target: &Path) -> R<()> {
    let (empty, target) = (cstr(""), cpath(target));
    // SAFETY: NUL-terminated (empty) source path and target path.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// umount2(2) with `flags` (0, MNT_DETACH...).
pub fn umount2(mnt: &Path, flags: i32) -> R<()> {
    let c = cpath(mnt);
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) }).map(drop)
}

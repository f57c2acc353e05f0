//! Signals, per-thread credentials and inotify.

use crate::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// kill(2).
pub fn kill(pid: i32, sig: i32) -> R<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sets the calling thread's credentials to (uid, gid) with no supplementary groups, through
/// the raw syscalls (glibc's wrappers would change every thread). Panics on failure.
pub fn set_thread_creds(uid: u32, gid: u32) {
    // SAFETY: an empty group list (size 0, NULL); the others take integers only.
    unsafe {
        let r = libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
        assert_eq!(r, 0, "setgroups: {}", Errno::last());
        let r = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
        assert_eq!(r, 0, "setresgid: {}", Errno::last());
        let r = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
        assert_eq!(r, 0, "setresuid: {}", Errno::last());
    }
}

/// A non-blocking, close-on-exec inotify instance.
pub struct Inotify(OwnedFd);

/// One inotify event: watch descriptor, mask and the (NUL-trimmed) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InotifyEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: String,
}

impl Inotify {
    pub fn new() -> R<Inotify> {
        // SAFETY: no pointers.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: a descriptor the kernel just returned, owned by nobody else.
        Ok(Inotify(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// inotify_add_watch(2): the watch descriptor.
    pub fn add_watch(&self, p: &Path, mask: u32) -> R<i32> {
        let c = cpath(p);
        // SAFETY: a NUL-terminated path.
        cvt(unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), mask) })
    }

    /// Drains the pending events (reads until the queue is empty or a read fails).
    pub fn events(&self) -> Vec<InotifyEvent> {
        const HDR: usize = std::mem::size_of::<libc::inotify_event>();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match read_buf(self.0.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            // The kernel returns whole records: header (wd, mask, cookie, len), then len bytes
            // of NUL-padded name. Decoded field by field, no pointer casts.
            let mut off = 0usize;
            while off < n {
                let field = |i: usize| {
                    let at = off + 4 * i;
                    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
                };
                let wd = i32::from_ne_bytes(field(0));
                let mask = u32::from_ne_bytes(field(1));
                let name_len = u32::from_ne_bytes(field(3)) as usize;
                let name_bytes = &buf[off + HDR..][..name_len];
                let name = String::from_utf8_lossy(name_bytes)
                    .trim_end_matches('\0')
                    .to_string();
                out.push(InotifyEvent { wd, mask, name });
                off += HDR + name_len;
            }
        }
        out
    }
}

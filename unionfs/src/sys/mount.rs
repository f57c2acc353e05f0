//! Raw syscalls for mounting, unmounting and daemonizing (owned by the mount lifecycle).
//!
//! Thin safe wrappers returning `io::Result`; the only `unsafe` of the lifecycle lives here.

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

fn nix_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Lowest fd number we hand to the kernel or to helpers: 0-2 get redirected when daemonizing.
const FIRST_NON_STDIO_FD: RawFd = 3;

/// Moves `fd` above the stdio range if it landed there (possible when the caller closed stdio).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_NON_STDIO_FD {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FIRST_NON_STDIO_FD),
    )
    .map_err(nix_err)?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens `/dev/fuse` read-write and close-on-exec, at an fd number above stdio.
pub fn open_fuse_device() -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    above_stdio(OwnedFd::from(file))
}

/// mount(2). `data` is bytes: the options name layer paths, which need not be UTF-8.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &[u8],
) -> io::Result<()> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, Some(data)).map_err(nix_err)
}

/// umount2(MNT_DETACH | UMOUNT_NOFOLLOW): lazy unmount of whatever is mounted on `target`.
pub fn detach(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(nix_err)
}

/// umount2(UMOUNT_NOFOLLOW): plain unmount, fails with EBUSY while the mount is in use.
pub fn unmount(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW).map_err(nix_err)
}

/// mknod(2) of a 0/0 character device: the whiteout format of overlayfs.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(nix_err)
}

fn get_nofile() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// The soft RLIMIT_NOFILE.
pub fn nofile_limit() -> io::Result<u64> {
    Ok(get_nofile()?.rlim_cur)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: the filesystem holds one fd per open
/// layer file.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = get_nofile()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Number of threads of this process, from /proc/self/task.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

pub enum Forked {
    Parent,
    Child,
}

/// fork(2), refusing to run once the process has more than one thread (a forked child of a
/// threaded process may only call async-signal-safe functions, which a daemon cannot live with).
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot daemonize: the process already runs {threads} threads"
        )));
    }
    // SAFETY: the process is single-threaded (checked above), so the child inherits a
    // consistent address space (no lock can be held by a thread that does not exist there).
    match unsafe { nix::unistd::fork() }.map_err(nix_err)? {
        nix::unistd::ForkResult::Parent { .. } => Ok(Forked::Parent),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_err)?;
    Ok((File::from(r), File::from(w)))
}

/// setsid(2): leave the caller's session and controlling terminal.
pub fn setsid() -> io::Result<()> {
    nix::unistd::setsid().map(drop).map_err(nix_err)
}

/// Points stdin, stdout and stderr at /dev/null.
pub fn stdio_to_dev_null() -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null).map_err(nix_err)?;
    nix::unistd::dup2_stdout(&null).map_err(nix_err)?;
    nix::unistd::dup2_stderr(&null).map_err(nix_err)?;
    Ok(())
}

/// The signals that stop the daemon.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Blocks `set` in the calling thread; threads spawned afterwards inherit the mask, so the
/// signals stay pending until a dedicated thread collects them with `wait_signal`.
pub fn block_signals(set: &SigSet) -> io::Result<()> {
    set.thread_block().map_err(nix_err)
}

/// sigwait(3) on a blocked set.
pub fn wait_signal(set: &SigSet) -> io::Result<Signal> {
    set.wait().map_err(nix_err)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn uid_gid() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

/// Duplicates `fd` without close-on-exec so a helper program can inherit it. Only call this
/// while the process is single-threaded, and drop the copy right after spawning the helper.
pub fn dup_inheritable(fd: impl AsFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD(FIRST_NON_STDIO_FD))
        .map_err(nix_err)?;
    // SAFETY: F_DUPFD just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Receives one file descriptor sent with SCM_RIGHTS (what fusermount3 does with the
/// /dev/fuse fd). `Ok(None)` when the peer closed the socket without sending one.
pub fn recv_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(nix_err(e)),
        }
    };
    let mut received = None;
    for c in msg.cmsgs().map_err(nix_err)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed these descriptors in our table for us;
                // wrapping each exactly once makes them owned (and closed if unused).
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if received.is_none() {
                    received = Some(fd);
                }
            }
        }
    }
    match received {
        Some(fd) => above_stdio(fd).map(Some),
        None => Ok(None),
    }
}

// ---- the new mount API, for the kernel overlay driver ----

pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
pub const MOUNT_ATTR_NODEV: u64 = 0x04;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x08;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;

fn cstring(s: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// fsopen(2): a filesystem context for `fstype`.
pub fn fsopen(fstype: &str) -> io::Result<OwnedFd> {
    let t = cstring(fstype.as_bytes())?;
    // SAFETY: valid C string; FSOPEN_CLOEXEC = 1; the returned fd is ours.
    let fd = check(unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), 1 as libc::c_uint) })?;
    // SAFETY: the syscall succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fsconfig(FSCONFIG_SET_STRING, key, value).
pub fn fsconfig_string(fs: &OwnedFd, key: &str, value: &[u8]) -> io::Result<()> {
    let k = cstring(key.as_bytes())?;
    let v = cstring(value)?;
    // SAFETY: valid C strings; FSCONFIG_SET_STRING = 1.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            1 as libc::c_uint,
            k.as_ptr(),
            v.as_ptr(),
            0 as libc::c_int,
        )
    })?;
    Ok(())
}

/// fsconfig(FSCONFIG_SET_FLAG, key).
pub fn fsconfig_flag(fs: &OwnedFd, key: &str) -> io::Result<()> {
    let k = cstring(key.as_bytes())?;
    // SAFETY: valid C string; FSCONFIG_SET_FLAG = 0.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            0 as libc::c_uint,
            k.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_int,
        )
    })?;
    Ok(())
}

/// fsconfig(FSCONFIG_CMD_CREATE): make the superblock.
pub fn fsconfig_create(fs: &OwnedFd) -> io::Result<()> {
    // SAFETY: FSCONFIG_CMD_CREATE = 6 takes no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            6 as libc::c_uint,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_int,
        )
    })?;
    Ok(())
}

/// The messages the kernel left on a filesystem context (read after a failed fsconfig).
pub fn fs_messages(fs: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: reading into a valid buffer of its length.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push(
            String::from_utf8_lossy(&buf[..n as usize])
                .trim()
                .to_string(),
        );
    }
    out
}

/// fsmount(2) then move_mount(2) onto `target`.
pub fn fsmount_at(fs: &OwnedFd, attrs: u64, target: &Path) -> io::Result<()> {
    // SAFETY: FSMOUNT_CLOEXEC = 1; the returned fd is ours.
    let m = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            1 as libc::c_uint,
            attrs as libc::c_uint,
        )
    })?;
    // SAFETY: the syscall succeeded, so `m` is a new descriptor that nothing else owns.
    let m = unsafe { OwnedFd::from_raw_fd(m as RawFd) };
    let t = cstring(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: MOVE_MOUNT_F_EMPTY_PATH = 4 moves the mount behind `m` to `t`.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            4 as libc::c_uint,
        )
    })?;
    Ok(())
}

/// Whether this process is in the initial user namespace.
pub fn in_initial_userns() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        Err(_) => true,
    }
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: `utsname` is plain data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: `release` is NUL-terminated: uname fills it, and the zeroed buffer ends in NUL anyway.
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the process has CAP_SYS_ADMIN in its user namespace.
pub fn has_cap_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map(|caps| caps & (1 << 21) != 0)
        .unwrap_or(false)
}

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

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
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

/// Raises the soft RLIMIT_NOFILE to the hard limit: the filesystem holds one fd per open
/// layer file.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
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

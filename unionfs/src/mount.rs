//! Mounting, daemonizing and unmounting.
//!
//! Lifecycle of `stratafs ... MOUNTPOINT`:
//! 1. Unless `-f`, fork while still single-threaded. The parent waits on a pipe for one line
//!    from the child: `ok` (exit 0) or the error (printed, exit 2).
//! 2. The child (or the foreground process) blocks SIGTERM/SIGINT/SIGHUP, builds the
//!    filesystem, mounts it (mount(2) on /dev/fuse as root, fusermount3 otherwise), records the
//!    device number of the new mount, and completes the FUSE INIT handshake. Only then is the
//!    mount usable, so only then is `ok` sent; the request loop starts right after.
//! 3. An unmount (`umount`, `fusermount3 -u`) makes /dev/fuse reads fail with ENODEV and the
//!    loop ends: the daemon exits 0 without touching the mountpoint path again, because by then
//!    a new mount may live there.
//! 4. A stop signal is collected by a dedicated thread, which lazily unmounts the path only if
//!    the topmost mount there is still ours (same device number).

use crate::cli::io_error_text;
use crate::fs::StrataFs;
use crate::layers::LayerError;
use crate::options::Options;
use crate::sys::mount as sys;
use log::{debug, error, info, warn};
use nix::mount::MsFlags;
use nix::sys::signal::SigSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Filesystem type in /proc/mounts; FUSE shows `fuse.<subtype>`.
const FSTYPE: &str = "fuse.stratafs";
const FUSERMOUNT: &str = "fusermount3";

/// Why a mount could not be started or served. `Display` is one line.
#[derive(Debug)]
pub enum MountError {
    /// `StrataFs::new` could not open a layer; the error names it.
    Fs(LayerError),
    Device(io::Error),
    Mount {
        mountpoint: PathBuf,
        err: io::Error,
    },
    Fusermount(String),
    Handshake(io::Error),
    /// A failed step of the lifecycle, with what was being done.
    Io(&'static str, io::Error),
    /// The daemon child failed; this is its message.
    Daemon(String),
    Serve(io::Error),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // one_line drops the " (os error N)" that the layer error's io text ends with.
            MountError::Fs(err) => write!(f, "{}", one_line(&err.to_string())),
            MountError::Device(err) => write!(f, "/dev/fuse: {}", io_error_text(err)),
            MountError::Mount { mountpoint, err } => {
                write!(f, "mount {}: {}", mountpoint.display(), io_error_text(err))
            }
            MountError::Fusermount(msg) => {
                // fusermount3 prefixes its own name already; keep one.
                let msg = one_line(msg);
                let msg = msg.strip_prefix("fusermount3: ").unwrap_or(&msg);
                write!(f, "{FUSERMOUNT}: {msg}")
            }
            MountError::Handshake(err) => {
                write!(f, "FUSE handshake failed: {}", io_error_text(err))
            }
            MountError::Io(what, err) => write!(f, "{what}: {}", io_error_text(err)),
            MountError::Daemon(msg) => write!(f, "{}", one_line(msg)),
            MountError::Serve(err) => write!(f, "serving the mount: {}", io_error_text(err)),
        }
    }
}

impl std::error::Error for MountError {}

/// Joins lines and drops std's " (os error N)" suffix, which repeats the text before it.
fn one_line(msg: &str) -> String {
    let msg = msg.trim().lines().collect::<Vec<_>>().join("; ");
    match msg.rfind(" (os error ") {
        Some(i) if msg.ends_with(')') => msg[..i].to_string(),
        _ => msg,
    }
}

/// Mounts `opts` (already validated) and serves it. In the background mode the calling
/// process returns `Ok` as soon as the mount serves requests, while a daemon child keeps
/// serving; in the foreground mode this returns once the filesystem is unmounted.
pub fn run(opts: &Options) -> Result<(), MountError> {
    match sys::raise_nofile_limit() {
        Ok(n) => debug!("RLIMIT_NOFILE soft limit: {n}"),
        Err(e) => warn!("cannot raise RLIMIT_NOFILE: {}", io_error_text(&e)),
    }
    if opts.foreground {
        let mounted = start(opts)?;
        return serve(mounted);
    }
    let (mut status_rd, status_wr) = sys::pipe().map_err(|e| MountError::Io("pipe", e))?;
    match sys::fork().map_err(|e| MountError::Io("fork", e))? {
        sys::Forked::Parent => {
            drop(status_wr);
            wait_for_daemon(&mut status_rd)
        }
        sys::Forked::Child => {
            drop(status_rd);
            daemon(opts, status_wr)
        }
    }
}

/// Parent side: the daemon writes `ok` or its error, then closes the pipe.
fn wait_for_daemon(status: &mut File) -> Result<(), MountError> {
    let mut msg = String::new();
    status
        .read_to_string(&mut msg)
        .map_err(|e| MountError::Io("reading the daemon status", e))?;
    match msg.trim() {
        "ok" => Ok(()),
        "" => Err(MountError::Daemon(
            "the daemon exited before the mount was ready".to_string(),
        )),
        err => Err(MountError::Daemon(err.to_string())),
    }
}

/// Child side: detach from the caller, start the mount, report, serve.
fn daemon(opts: &Options, mut status: File) -> Result<(), MountError> {
    // Own session: no SIGHUP/SIGINT from the caller's terminal. Stdio to /dev/null so that
    // whoever captured our output (a shell pipe, mount(8)) sees EOF once the parent exits.
    let started = sys::setsid()
        .map_err(|e| MountError::Io("setsid", e))
        .and_then(|()| sys::stdio_to_dev_null().map_err(|e| MountError::Io("redirecting stdio", e)))
        .and_then(|()| start(opts));
    match started {
        Ok(mounted) => {
            // If the parent is gone nobody waits for the answer; serving is still right.
            let _ = status.write_all(b"ok\n");
            drop(status);
            serve(mounted)
        }
        Err(e) => {
            let _ = writeln!(status, "{e}");
            Err(e)
        }
    }
}

/// Our mount: where it is and the device number it got (unique per FUSE connection).
#[derive(Debug, Clone)]
struct OurMount {
    mountpoint: PathBuf,
    dev: (u32, u32),
    /// Mounted through fusermount3, so unmount through it too.
    unprivileged: bool,
}

impl OurMount {
    /// True while the topmost mount at the path is still ours.
    fn is_visible(&self) -> io::Result<bool> {
        Ok(topmost_mount_dev(&self.mountpoint)? == Some(self.dev))
    }

    /// Lazily unmounts the path if (and only if) the topmost mount there is ours. Returns
    /// whether it did.
    fn detach_if_ours(&self) -> io::Result<bool> {
        if !self.is_visible()? {
            return Ok(false);
        }
        if self.unprivileged {
            fusermount_unmount(&self.mountpoint)?;
        } else {
            sys::detach(&self.mountpoint)?;
        }
        info!("unmounted {}", self.mountpoint.display());
        Ok(true)
    }
}

/// Undoes the mount on error paths until `disarm`.
struct MountGuard {
    mount: OurMount,
    armed: bool,
}

impl MountGuard {
    fn disarm(mut self) -> OurMount {
        self.armed = false;
        self.mount.clone()
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.mount.detach_if_ours() {
                warn!(
                    "cannot unmount {}: {}",
                    self.mount.mountpoint.display(),
                    io_error_text(&e)
                );
            }
        }
    }
}

struct Mounted {
    session: fuser::Session<StrataFs>,
    guard: MountGuard,
    signals: SigSet,
}

/// Builds the filesystem, mounts it and completes the INIT handshake.
fn start(opts: &Options) -> Result<Mounted, MountError> {
    // Before any thread exists, so that every thread inherits the mask and only the
    // signal thread ever sees these signals.
    let signals = sys::stop_signals();
    sys::block_signals(&signals).map_err(|e| MountError::Io("blocking signals", e))?;

    let fs = StrataFs::new(opts).map_err(MountError::Fs)?;
    let (fd, guard) = mount_device(opts)?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    config.acl = if sys::is_root() || opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let acl = config.acl;
    // The kernel queued INIT when the mount was made; from_fd reads and answers it. On error
    // the guard drops and takes the (dead) mount away.
    let notifier = fs.notifier_slot();
    let session = fuser::Session::from_fd(fs, fd, acl, config).map_err(MountError::Handshake)?;
    let _ = notifier.set(session.notifier());
    info!(
        "mounted {} on {} (device {}:{})",
        opts.fsname,
        guard.mount.mountpoint.display(),
        guard.mount.dev.0,
        guard.mount.dev.1
    );
    Ok(Mounted {
        session,
        guard,
        signals,
    })
}

/// Runs the request loop until the filesystem is unmounted.
fn serve(mounted: Mounted) -> Result<(), MountError> {
    let Mounted {
        session,
        guard,
        signals,
    } = mounted;
    let watcher = guard.mount.clone();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || signal_thread(&signals, &watcher))
        .map_err(|e| MountError::Io("spawning the signal thread", e))?; // the guard unmounts
                                                                        // From here on only an ENODEV (unmounted) or a signal ends the mount.
    let our = guard.disarm();
    match session.run() {
        Ok(()) => {
            info!("{} was unmounted; exiting", our.mountpoint.display());
            Ok(())
        }
        Err(e) => {
            error!("request loop failed: {e}");
            // Do not leave a mount without a server behind.
            if let Err(e) = our.detach_if_ours() {
                warn!(
                    "cannot unmount {}: {}",
                    our.mountpoint.display(),
                    io_error_text(&e)
                );
            }
            Err(MountError::Serve(e))
        }
    }
}

/// Collects the stop signals. The first one detaches our mount, after which the request loop
/// ends by itself once the kernel releases the connection (at once unless files are still
/// open in the detached mount). A signal that finds no mount of ours at the path (already
/// unmounted, or another mount on top) ends the process directly.
fn signal_thread(signals: &SigSet, our: &OurMount) {
    loop {
        let sig = match sys::wait_signal(signals) {
            Ok(sig) => sig,
            Err(e) => {
                error!("waiting for signals: {}", io_error_text(&e));
                return;
            }
        };
        info!("{sig:?}: unmounting {}", our.mountpoint.display());
        match our.detach_if_ours() {
            Ok(true) => {}
            Ok(false) => {
                info!(
                    "{} no longer shows our mount; exiting",
                    our.mountpoint.display()
                );
                std::process::exit(0);
            }
            Err(e) => {
                error!(
                    "cannot unmount {}: {}",
                    our.mountpoint.display(),
                    io_error_text(&e)
                );
                std::process::exit(2);
            }
        }
    }
}

/// The generic VFS options of `opts`: whether each is set, with its mount(2) flag and its
/// `MOUNT_ATTR_*` for fsmount. One table, so that both mount APIs apply the same options.
fn vfs_options(opts: &Options) -> [(bool, MsFlags, u64); 5] {
    [
        (!opts.writable(), MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        (opts.nodev, MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        (opts.nosuid, MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        (opts.noexec, MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        (opts.noatime, MsFlags::MS_NOATIME, sys::MOUNT_ATTR_NOATIME),
    ]
}

/// The generic VFS flags of `opts` as mount(2) flags (for both drivers' mount(2) calls).
pub(crate) fn ms_flags(opts: &Options) -> MsFlags {
    vfs_options(opts)
        .into_iter()
        .filter(|(on, _, _)| *on)
        .fold(MsFlags::empty(), |flags, (_, flag, _)| flags | flag)
}

/// The same flags as `MOUNT_ATTR_*` bits, for fsmount (the kernel driver's new mount API).
pub(crate) fn mount_attrs(opts: &Options) -> u64 {
    vfs_options(opts)
        .into_iter()
        .filter(|(on, _, _)| *on)
        .fold(0, |attrs, (_, _, attr)| attrs | attr)
}

/// Mounts a fresh FUSE connection on the mountpoint; returns the /dev/fuse fd (INIT pending
/// on it) and a guard that unmounts on error paths.
fn mount_device(opts: &Options) -> Result<(OwnedFd, MountGuard), MountError> {
    let (fd, unprivileged) = if sys::is_root() {
        match mount_direct(opts) {
            Ok(fd) => (fd, false),
            // Root without CAP_SYS_ADMIN (a user namespace): do what fuser does.
            Err(MountError::Mount { err, .. }) if err.raw_os_error() == Some(libc::EPERM) => {
                (mount_fusermount(opts)?, true)
            }
            Err(e) => return Err(e),
        }
    } else {
        (mount_fusermount(opts)?, true)
    };
    let mountpoint = opts.mountpoint.clone();
    match topmost_mount_dev(&mountpoint) {
        Ok(Some(dev)) => Ok((
            fd,
            MountGuard {
                mount: OurMount {
                    mountpoint,
                    dev,
                    unprivileged,
                },
                armed: true,
            },
        )),
        // We just mounted there; whatever is on top is ours, so take it away.
        lookup => {
            let err = match lookup {
                Err(e) => e,
                _ => io::Error::other("the new mount is missing from /proc/self/mountinfo"),
            };
            let undo = if unprivileged {
                fusermount_unmount(&mountpoint)
            } else {
                sys::detach(&mountpoint)
            };
            if let Err(e) = undo {
                warn!("cannot unmount {}: {}", mountpoint.display(), e);
            }
            Err(MountError::Io("finding the new mount", err))
        }
    }
}

/// mount(2) of `fuse.stratafs` on an fd of our own (needs CAP_SYS_ADMIN).
fn mount_direct(opts: &Options) -> Result<OwnedFd, MountError> {
    let fd = sys::open_fuse_device().map_err(MountError::Device)?;
    let (uid, gid) = sys::uid_gid();
    // rootmode only gives the file type of the root until the first GETATTR. Permission
    // checks are the kernel's (default_permissions), as with overlayfs.
    let data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions,allow_other",
        fd.as_raw_fd()
    );
    let flags = ms_flags(opts);
    debug!(
        "mount({}, {}, {FSTYPE}, {flags:?}, {data})",
        opts.fsname,
        opts.mountpoint.display()
    );
    sys::mount(
        &opts.fsname,
        &opts.mountpoint,
        FSTYPE,
        flags,
        data.as_bytes(),
    )
    .map_err(|err| MountError::Mount {
        mountpoint: opts.mountpoint.clone(),
        err,
    })?;
    Ok(fd)
}

/// Escapes `\` and `,` for fusermount3's option list (it honours escapes in fsname).
fn fusermount_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c == ',' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Mounts through the setuid fusermount3, which sends back the /dev/fuse fd over a socket
/// named by `_FUSE_COMMFD` (the protocol libfuse and fuser use).
fn mount_fusermount(opts: &Options) -> Result<OwnedFd, MountError> {
    let io_err = |e| MountError::Io("running fusermount3", e);
    let (ours, theirs) = UnixStream::pair().map_err(io_err)?;
    let inherited = sys::dup_inheritable(&theirs).map_err(io_err)?;
    drop(theirs);
    let mut options = vec![
        "default_permissions".to_string(),
        format!("fsname={}", fusermount_escape(&opts.fsname)),
        "subtype=stratafs".to_string(),
    ];
    for (on, name) in [
        (opts.allow_other, "allow_other"),
        (!opts.writable(), "ro"),
        (opts.nodev, "nodev"),
        (opts.nosuid, "nosuid"),
        (opts.noexec, "noexec"),
        (opts.noatime, "noatime"),
    ] {
        if on {
            options.push(name.to_string());
        }
    }
    let child = Command::new(FUSERMOUNT)
        .arg("-o")
        .arg(options.join(","))
        .arg("--")
        .arg(&opts.mountpoint)
        .env("_FUSE_COMMFD", inherited.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    drop(inherited); // the socket then closes as soon as fusermount3 exits
    let received = sys::recv_fd(&ours);
    let output = child.wait_with_output().map_err(io_err)?;
    match received {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(MountError::Fusermount(if stderr.trim().is_empty() {
                format!("failed ({})", output.status)
            } else {
                stderr.into_owned()
            }))
        }
        Err(e) => Err(io_err(e)),
    }
}

fn fusermount_unmount(mountpoint: &Path) -> io::Result<()> {
    let out = Command::new(FUSERMOUNT)
        .args(["-u", "-z", "-q", "--"])
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(one_line(&String::from_utf8_lossy(
            &out.stderr,
        ))))
    }
}

/// Device number (major, minor) of the topmost mount at `path` (an absolute, canonical path),
/// from /proc/self/mountinfo. Mounts are listed oldest first, so the last match is on top.
/// Reading mountinfo never sends a request to any filesystem, unlike stat(2).
fn topmost_mount_dev(path: &Path) -> io::Result<Option<(u32, u32)>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo_dev(&info, path.as_os_str().as_bytes()))
}

fn parse_mountinfo_dev(info: &[u8], path: &[u8]) -> Option<(u32, u32)> {
    let mut found = None;
    for line in info.split(|&b| b == b'\n') {
        // ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...
        let mut fields = line.split(|&b| b == b' ');
        let (Some(dev), Some(mnt)) = (fields.nth(2), fields.nth(1)) else {
            continue;
        };
        if unescape_octal(mnt) != path {
            continue;
        }
        let dev = std::str::from_utf8(dev).ok()?;
        let (major, minor) = dev.split_once(':')?;
        found = Some((major.parse().ok()?, minor.parse().ok()?));
    }
    found
}

/// Undoes mountinfo's `\ooo` escaping of space, tab, newline and backslash.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfs_flags_of_both_apis() {
        let mut opts = Options::new(vec![PathBuf::from("/l")], PathBuf::from("/m"));
        opts.upperdir = Some(PathBuf::from("/u"));
        assert_eq!(ms_flags(&opts), MsFlags::empty());
        assert_eq!(mount_attrs(&opts), 0);
        opts.nodev = true;
        opts.noatime = true;
        assert_eq!(ms_flags(&opts), MsFlags::MS_NODEV | MsFlags::MS_NOATIME);
        assert_eq!(
            mount_attrs(&opts),
            sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOATIME
        );
        opts.read_only = true;
        opts.nosuid = true;
        opts.noexec = true;
        assert_eq!(ms_flags(&opts).bits().count_ones(), 5);
        assert_eq!(mount_attrs(&opts), 0x1f);
    }

    #[test]
    fn mountinfo_topmost_wins() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            40 22 0:50 / /tmp/a\\040b rw - fuse.stratafs s rw,user_id=0\n\
            41 40 0:51 / /tmp/a\\040b rw - fuse.stratafs s rw,user_id=0\n\
            42 22 0:52 / /tmp/c rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mountinfo_dev(info, b"/tmp/a b"), Some((0, 51)));
        assert_eq!(parse_mountinfo_dev(info, b"/"), Some((8, 1)));
        assert_eq!(parse_mountinfo_dev(info, b"/tmp/a"), None);
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            one_line("workdir /w: Not a directory (os error 20)\n"),
            "workdir /w: Not a directory"
        );
        assert_eq!(one_line("a\nb"), "a; b");
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape_octal(b"a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape_octal(b"a\\9"), b"a\\9");
    }

    #[test]
    fn flags_follow_options() {
        let mut o = Options::new(vec![PathBuf::from("/l")], PathBuf::from("/m"));
        // No upper layer: the stack is read-only.
        assert_eq!(ms_flags(&o), MsFlags::MS_RDONLY);
        o.upperdir = Some(PathBuf::from("/u"));
        o.workdir = Some(PathBuf::from("/w"));
        assert_eq!(ms_flags(&o), MsFlags::empty());
        o.read_only = true;
        o.nosuid = true;
        assert_eq!(ms_flags(&o), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
    }
}

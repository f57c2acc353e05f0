//! The kernel's overlayfs as a second driver for the same stack and the same on-disk format.
//! `driver=auto` picks it where the kernel permits the mount and can honour the stack, FUSE
//! otherwise; `driver=kernel` insists on it and says why it cannot.

use crate::options::{Driver, Options, XattrNamespace};
use crate::sys;
use crate::sys::mount as msys;
use crate::whiteout;
use log::info;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The driver that will serve a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The kernel's overlay; `userxattr` keeps markers in `user.overlay.*`.
    Kernel {
        userxattr: bool,
    },
    Fuse,
}

/// Why the kernel driver cannot serve a stack, in words for the user.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn overlay_available() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Whether this process may mount the kernel's overlay; `Ok(true)` when it must use
/// `userxattr` (inside a user namespace).
pub fn permitted() -> Result<bool, Refusal> {
    if !overlay_available() {
        return Err(Refusal(
            "overlay not available: the kernel has no overlay filesystem (modprobe overlay)"
                .to_string(),
        ));
    }
    let initial = msys::in_initial_userns();
    if !msys::has_cap_sys_admin() {
        return Err(Refusal(if initial {
            "not root: mounting the kernel overlay needs CAP_SYS_ADMIN (or a user namespace on Linux >= 5.11)".to_string()
        } else {
            "no CAP_SYS_ADMIN in this user namespace".to_string()
        }));
    }
    if initial {
        return Ok(false);
    }
    match msys::kernel_version() {
        Some(v) if v >= (5, 11) => Ok(true),
        Some((a, b)) => Err(Refusal(format!(
            "kernel too old: overlay in a user namespace needs Linux >= 5.11, this is {a}.{b}"
        ))),
        None => Err(Refusal("cannot tell the kernel version".to_string())),
    }
}

/// Whether the kernel accepts the stack's shape: an upper layer, or at least two lowers.
fn mountable(opts: &Options) -> Result<(), Refusal> {
    if opts.upperdir.is_none() && opts.lowerdirs.len() < 2 {
        return Err(Refusal(
            "the kernel overlay needs an upper layer or at least two lower layers".to_string(),
        ));
    }
    Ok(())
}

/// Whether the kernel would show the stack as stratafs does: it ignores OCI `.wh.` markers.
pub fn can_honour(opts: &Options) -> Result<(), Refusal> {
    mountable(opts)?;
    for l in &opts.lowerdirs {
        let dir = std::fs::File::open(l)
            .map_err(|e| Refusal(format!("lowerdir {}: {e}", l.display())))?;
        if has_oci_marker(dir.as_fd(), 0) {
            return Err(Refusal(format!(
                "lowerdir {} holds OCI whiteout markers (.wh.*), which the kernel would show as files",
                l.display()
            )));
        }
    }
    Ok(())
}

/// Walks a layer (by directory fds, never following symlinks) for a `.wh.` name.
fn has_oci_marker(dir: BorrowedFd, depth: usize) -> bool {
    if depth > 4096 {
        return false;
    }
    let Ok(listing) = sys::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
    else {
        return false;
    };
    let Ok(entries) = sys::read_dir(listing) else {
        return false;
    };
    for e in &entries {
        if whiteout::is_oci_marker(&e.name) {
            return true;
        }
    }
    entries.iter().filter(|e| e.kind == libc::DT_DIR).any(|e| {
        sys::openat(
            dir,
            &e.name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map(|sub| has_oci_marker(sub.as_fd(), depth + 1))
        .unwrap_or(false)
    })
}

/// Picks the driver for `opts`, with the reason (printed with `-v`).
pub fn choose(opts: &Options) -> Result<(Chosen, String), Refusal> {
    let wants_user = opts.xattr_ns == Some(XattrNamespace::User);
    match opts.driver {
        Driver::Fuse => Ok((Chosen::Fuse, "driver=fuse".to_string())),
        Driver::Kernel => {
            let userns = permitted()?;
            mountable(opts)?;
            Ok((
                Chosen::Kernel {
                    userxattr: userns || wants_user,
                },
                "driver=kernel".to_string(),
            ))
        }
        Driver::Auto => match permitted().and_then(|u| can_honour(opts).map(|_| u)) {
            Ok(userns) => Ok((
                Chosen::Kernel {
                    userxattr: userns || wants_user,
                },
                if userns {
                    "the kernel permits overlay in this user namespace (userxattr)".to_string()
                } else {
                    "running with CAP_SYS_ADMIN and the kernel has overlay".to_string()
                },
            )),
            Err(why) => Ok((Chosen::Fuse, why.0)),
        },
    }
}

/// Escapes a path for the comma-separated overlay options of mount(2): the same syntax as
/// `-o`, so `cli::escape_path` owns it.
fn escape(p: &Path) -> Vec<u8> {
    std::os::unix::ffi::OsStringExt::into_vec(crate::cli::escape_path(p.as_os_str()))
}

/// Why the kernel driver did not mount the stack. `Display` is one line.
#[derive(Debug)]
pub enum KernelError {
    /// `driver=kernel` and the kernel cannot serve the stack here.
    Refused(Refusal),
    /// The kernel refused the mount, with what it logged through fsopen's channel.
    Mount {
        err: io::Error,
        messages: Vec<String>,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            KernelError::Refused(r) => write!(f, "driver=kernel: {r}"),
            KernelError::Mount { err, messages } if messages.is_empty() => {
                write!(f, "kernel overlay mount: {err}")
            }
            KernelError::Mount { err, messages } => {
                write!(f, "kernel overlay mount: {err} ({})", messages.join("; "))
            }
        }
    }
}

impl std::error::Error for KernelError {}

fn mount_failed(err: io::Error) -> KernelError {
    KernelError::Mount {
        err,
        messages: vec![],
    }
}

/// Mounts the stack with the kernel's overlay. The error says what the kernel said.
pub fn mount(opts: &Options, userxattr: bool) -> Result<(), KernelError> {
    // Before 6.8 overlay has no `lowerdir+`, and before 6.5 no fs_context parser: fsconfig
    // would take any key and fail only at create. Pick by version, then by what the kernel says.
    if msys::kernel_version().is_some_and(|v| v < (6, 8)) {
        return mount_old_api(opts, userxattr).map_err(mount_failed);
    }
    match mount_new_api(opts, userxattr) {
        Ok(()) => Ok(()),
        // Kernels before 6.8 have no `lowerdir+` (before 5.2, no fsopen): one option string.
        Err(NewApi::Unsupported(e)) => {
            info!("kernel overlay: no lowerdir+ ({e}); using mount(2)");
            mount_old_api(opts, userxattr).map_err(mount_failed)
        }
        Err(NewApi::Failed(err, messages)) => Err(KernelError::Mount { err, messages }),
    }
}

enum NewApi {
    Unsupported(io::Error),
    Failed(io::Error, Vec<String>),
}

fn mount_new_api(opts: &Options, userxattr: bool) -> Result<(), NewApi> {
    let fs = msys::fsopen("overlay").map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => NewApi::Unsupported(e),
        _ => NewApi::Failed(e, vec![]),
    })?;
    let fail = |e: io::Error| NewApi::Failed(e, msys::fs_messages(&fs));
    msys::fsconfig_string(&fs, "source", opts.fsname.as_bytes()).map_err(fail)?;
    for l in &opts.lowerdirs {
        msys::fsconfig_string(&fs, "lowerdir+", l.as_os_str().as_bytes()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                NewApi::Unsupported(e)
            } else {
                fail(e)
            }
        })?;
    }
    if let (Some(u), Some(w)) = (&opts.upperdir, &opts.workdir) {
        msys::fsconfig_string(&fs, "upperdir", u.as_os_str().as_bytes()).map_err(fail)?;
        msys::fsconfig_string(&fs, "workdir", w.as_os_str().as_bytes()).map_err(fail)?;
    }
    if userxattr {
        msys::fsconfig_flag(&fs, "userxattr").map_err(fail)?;
    }
    if opts.volatile {
        msys::fsconfig_flag(&fs, "volatile").map_err(fail)?;
    }
    msys::fsconfig_create(&fs).map_err(fail)?;
    // The same flags as the classic mount(2) calls: one table, in `mount`.
    msys::fsmount_at(&fs, crate::mount::mount_attrs(opts), &opts.mountpoint).map_err(fail)
}

fn mount_old_api(opts: &Options, userxattr: bool) -> io::Result<()> {
    let mut data = b"lowerdir=".to_vec();
    for (i, l) in opts.lowerdirs.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend(escape(l));
    }
    if let (Some(u), Some(w)) = (&opts.upperdir, &opts.workdir) {
        data.extend_from_slice(b",upperdir=");
        data.extend(escape(u));
        data.extend_from_slice(b",workdir=");
        data.extend(escape(w));
    }
    if userxattr {
        data.extend_from_slice(b",userxattr");
    }
    if opts.volatile {
        data.extend_from_slice(b",volatile");
    }
    // The same flags as the FUSE mount: one mapping from the options, in `mount`.
    let flags = crate::mount::ms_flags(opts);
    msys::mount(&opts.fsname, &opts.mountpoint, "overlay", flags, &data)
}

/// What `try_kernel` did with the stack.
#[derive(Debug)]
pub enum KernelMount {
    /// The kernel's overlay mounted it: nothing is left to do.
    Mounted,
    /// The caller must serve it with FUSE, for this reason.
    UseFuse { why: String },
}

/// Mounts `opts` with the driver `choose` picks; `auto` falls back to FUSE when the kernel
/// refuses the mount.
pub fn try_kernel(opts: &Options) -> Result<KernelMount, KernelError> {
    let (chosen, why) = choose(opts).map_err(KernelError::Refused)?;
    match chosen {
        Chosen::Fuse => {
            info!("driver: fuse ({why})");
            Ok(KernelMount::UseFuse { why })
        }
        Chosen::Kernel { userxattr } => {
            info!("driver: kernel ({why})");
            match mount(opts, userxattr) {
                Ok(()) => Ok(KernelMount::Mounted),
                Err(e) if opts.driver == Driver::Auto => {
                    info!("driver: fuse (the kernel refused: {e})");
                    Ok(KernelMount::UseFuse { why: e.to_string() })
                }
                Err(e) => Err(e),
            }
        }
    }
}

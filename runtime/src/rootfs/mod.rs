//! The container's root filesystem, set up by its init process inside the new mount
//! namespace:
//!
//! 1. `/` is made recursively private, so nothing propagates back to the host;
//! 2. the layer stack is mounted on a private directory (kernel driver; the FUSE driver's
//!    mount is already there) and made `nodev`, as is every mount under it but /dev; what
//!    must come from the host later (bind sources, the /dev nodes) is taken now as detached
//!    mount trees (`open_tree`);
//! 3. under the new root: `/proc` (a new instance), a minimal `/dev` (tmpfs with null, zero,
//!    full, random, urandom, tty, pts, shm and the
//!    fd/stdin/stdout/stderr links), `/sys` read-only (with the container's cgroup v2 at
//!    /sys/fs/cgroup when the host is pure cgroup v2), `/tmp` tmpfs, `--tmpfs` and `--bind`
//!    mounts, the paths runc masks or makes read-only, the working directory, and the
//!    read-only remount of the root if asked (all before pivot_root: in a user namespace
//!    proc and sysfs may be mounted only while the host's instance is visible);
//! 4. `pivot_root` makes the stack the root and the old root is detached (not chroot).
//!
//! With an OCI spec ([`RootfsSpec::oci`], see [`oci`]) step 3 is the spec's instead: its
//! mounts in order, the default devices and links, `linux.devices`, `linux.sysctl`, the masked
//! and read-only paths; `linux.rootfsPropagation` is applied after pivot_root.
//!
//! Every mount target inside the new root is resolved component by component with
//! `O_PATH|O_NOFOLLOW` from the new root: a symlink on the way is refused, so a crafted image
//! cannot redirect a mount elsewhere. Missing targets are created.

use crate::config::Bind;
use crate::error::RootfsError;
use crate::stack::StackMount;
use crate::sys::{self, TreeAttrs};
use log::{debug, info};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use std::ffi::OsStr;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

pub mod oci;
pub use oci::OciRootfs;

/// Paths runc hides (a tmpfs on directories, /dev/null on files).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths runc makes read-only.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What the init process needs to build the root filesystem.
pub struct RootfsSpec<'a> {
    /// Mount point of the stack (a directory of the state directory).
    pub root: &'a Path,
    pub stack: &'a StackMount,
    pub binds: &'a [Bind],
    pub tmpfs: &'a [PathBuf],
    pub read_only: bool,
    pub rootless: bool,
    pub net_none: bool,
    /// Mount the (namespaced) cgroup v2 hierarchy at /sys/fs/cgroup.
    pub cgroup2: bool,
    pub workdir: &'a Path,
    /// The layout of an OCI bundle's config.json, instead of `strata run`'s fixed one (/proc,
    /// /dev, /sys, /tmp, `tmpfs`, `binds`, the paths runc masks); `tmpfs` and `binds` are then
    /// unused.
    pub oci: Option<&'a OciRootfs>,
}

fn mount_err(what: impl Into<String>, target: &Path, errno: Errno) -> RootfsError {
    RootfsError::Mount {
        what: what.into(),
        target: target.to_path_buf(),
        errno,
    }
}

fn io_err(what: impl Into<String>, path: &Path, errno: Errno) -> RootfsError {
    RootfsError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        errno,
    }
}

/// What to create at a missing mount target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    Nothing,
    Dir,
    File,
}

/// Opens `target` (absolute, in the new root `base`) with O_PATH, walking from `base` without
/// following any symlink, creating what is missing as asked.
fn resolve(base: &Path, target: &Path, create: Create) -> Result<OwnedFd, RootfsError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open(base, flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| io_err("opening", base, e))?;
    let comps: Vec<&OsStr> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let next = match nix::fcntl::openat(&fd, *name, flags, Mode::empty()) {
            Ok(f) => f,
            Err(Errno::ENOENT) if create != Create::Nothing => {
                let made = if !last || create == Create::Dir {
                    nix::sys::stat::mkdirat(&fd, *name, Mode::from_bits_truncate(0o755))
                } else {
                    nix::fcntl::openat(
                        &fd,
                        *name,
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_WRONLY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err("creating the mount target", target, e)),
                }
                nix::fcntl::openat(&fd, *name, flags, Mode::empty())
                    .map_err(|e| io_err("opening", target, e))?
            }
            Err(e) => return Err(io_err("opening", target, e)),
        };
        let st = nix::sys::stat::fstat(&next).map_err(|e| io_err("stat", target, e))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFLNK {
            let component: PathBuf = comps[..=i].iter().collect();
            return Err(RootfsError::Symlink {
                target: target.to_path_buf(),
                component: format!("/{}", component.display()),
            });
        }
        if !last && kind != SFlag::S_IFDIR {
            return Err(io_err("resolving", target, Errno::ENOTDIR));
        }
        fd = next;
    }
    Ok(fd)
}

/// Mounts a filesystem on the directory open as `dir` (fchdir, then mount on ".").
fn mount_fs_on(
    dir: &OwnedFd,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount_src_on(dir, target, fstype, fstype, flags, data)
}

/// [`mount_fs_on`] with a source other than the type's name (an OCI mount's `source`).
fn mount_src_on(
    dir: &OwnedFd,
    target: &Path,
    source: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    nix::unistd::fchdir(dir).map_err(|e| io_err("entering", target, e))?;
    let r = sys::mount(
        Some(Path::new(source)),
        Path::new("."),
        Some(fstype),
        flags,
        data,
    );
    let _ = nix::unistd::chdir("/");
    r.map_err(|e| mount_err(format!("mounting {fstype}"), target, e))?;
    debug!("mounted {fstype} on {}", target.display());
    Ok(())
}

/// Mounts a filesystem on `target` inside the new root, creating the directory.
fn mount_fs(
    base: &Path,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    let t = Path::new(target);
    let fd = resolve(base, t, Create::Dir)?;
    mount_fs_on(&fd, t, fstype, flags, data)
}

/// Attaches a detached tree on `target`, created as a directory or file.
fn attach(base: &Path, tree: &OwnedFd, target: &Path, create: Create) -> Result<(), RootfsError> {
    let fd = resolve(base, target, create)?;
    sys::move_mount(tree, &fd).map_err(|e| mount_err("attaching a bind mount", target, e))
}

/// Trees taken from the host before pivot_root.
struct HostTrees {
    binds: Vec<(OwnedFd, bool)>,
    dev: Vec<(&'static str, OwnedFd)>,
    sys: Option<OwnedFd>,
}

fn take_host_trees(spec: &RootfsSpec) -> Result<HostTrees, RootfsError> {
    let mut binds = Vec::new();
    for b in spec.binds {
        let tree = sys::open_tree(&b.source, true)
            .map_err(|e| mount_err(format!("bind {}", b.source.display()), &b.target, e))?;
        // nodev: a bind of the host's /dev (or of a disk image's nodes) opens no device.
        let attrs = TreeAttrs {
            read_only: b.read_only,
            nodev: true,
        };
        sys::set_tree_attrs(&tree, attrs)
            .map_err(|e| mount_err("setting a bind mount's flags", &b.target, e))?;
        binds.push((tree, b.source.is_dir()));
    }
    let mut dev = Vec::new();
    for name in DEV_NODES {
        let p = Path::new("/dev").join(name);
        if p.exists() {
            let tree = sys::open_tree(&p, false).map_err(|e| mount_err("bind", &p, e))?;
            dev.push((*name, tree));
        }
    }
    // Without a network namespace of its own, a user namespace cannot mount sysfs: keep a
    // read-only copy of the host's instead (as rootless podman does).
    let sys_tree = if spec.rootless && !spec.net_none {
        let t = sys::open_tree(Path::new("/sys"), true)
            .map_err(|e| mount_err("bind", Path::new("/sys"), e))?;
        let attrs = TreeAttrs {
            read_only: true,
            nodev: true,
        };
        sys::set_tree_attrs(&t, attrs)
            .map_err(|e| mount_err("read-only bind", Path::new("/sys"), e))?;
        Some(t)
    } else {
        None
    };
    Ok(HostTrees {
        binds,
        dev,
        sys: sys_tree,
    })
}

/// Builds the root filesystem and enters it. Runs in the container's init, in its new mount
/// namespace, before the command starts.
pub fn setup(spec: &RootfsSpec) -> Result<(), RootfsError> {
    let slash = Path::new("/");
    sys::mount(
        None,
        slash,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| mount_err("making / private", slash, e))?;
    spec.stack
        .mount(spec.root)
        .map_err(|e| mount_err("mounting the layer stack", spec.root, e))?;
    // No device node of a layer (or made later outside /dev) can be opened.
    let root_fd = nix::fcntl::open(
        spec.root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("opening", spec.root, e))?;
    let nodev = TreeAttrs {
        read_only: false,
        nodev: true,
    };
    sys::set_tree_attrs(&root_fd, nodev)
        .map_err(|e| mount_err("making the layer stack nodev", spec.root, e))?;
    drop(root_fd);
    info!("rootfs: layer stack on {} (nodev)", spec.root.display());
    // Everything is mounted under the new root before pivot_root: in a user namespace the
    // kernel lets proc and sysfs be mounted only while an instance is visible (the host's).
    let base = spec.root;
    match spec.oci {
        Some(o) => oci::mount_all(base, spec, o)?,
        None => fixed_layout(base, spec)?,
    }
    // The working directory exists before / may become read-only.
    if spec.workdir != Path::new("/") {
        resolve(base, spec.workdir, Create::Dir)?;
    }
    if spec.read_only {
        let flags = sys::mount_flags_of(base).unwrap_or(MsFlags::empty())
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY;
        sys::mount(None, base, None, flags, None)
            .map_err(|e| mount_err("remounting read-only", slash, e))?;
        info!("rootfs: / is read-only");
    }

    nix::unistd::chdir(base).map_err(|e| io_err("entering", base, e))?;
    sys::pivot_to_cwd().map_err(|e| mount_err("pivot_root", base, e))?;
    info!("rootfs: pivot_root done, old root detached");
    // After pivot_root, which refuses a shared new root (as runc does).
    if let Some(p) = spec.oci.and_then(|o| o.propagation) {
        sys::mount(None, slash, None, p, None)
            .map_err(|e| mount_err("setting the root's propagation", slash, e))?;
        debug!("rootfs: / propagation {p:?}");
    }
    Ok(())
}

/// `strata run`'s layout: /proc, /dev, /sys, /tmp, `--tmpfs`, `--bind`, the masked and
/// read-only paths.
fn fixed_layout(base: &Path, spec: &RootfsSpec) -> Result<(), RootfsError> {
    let trees = take_host_trees(spec)?;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs(base, "/proc", "proc", nosuid_nodev_noexec, None)?;
    setup_dev(base, spec, &trees)?;
    let sys_dir = resolve(base, Path::new("/sys"), Create::Dir)?;
    match (
        &trees.sys,
        mount_fs_on(
            &sys_dir,
            Path::new("/sys"),
            "sysfs",
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None,
        ),
    ) {
        (_, Ok(())) => {}
        (Some(tree), Err(_)) => {
            sys::move_mount(tree, &sys_dir)
                .map_err(|e| mount_err("binding the host's /sys", Path::new("/sys"), e))?;
        }
        (None, Err(e)) => return Err(e),
    }
    if spec.cgroup2 {
        if let Err(e) = mount_fs(
            base,
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None,
        ) {
            debug!("{e} (left out)");
        }
    }
    mount_fs(
        base,
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for t in spec.tmpfs {
        let fd = resolve(base, t, Create::Dir)?;
        mount_fs_on(
            &fd,
            t,
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )?;
        info!("rootfs: tmpfs on {}", t.display());
    }
    for (b, (tree, is_dir)) in spec.binds.iter().zip(&trees.binds) {
        attach(
            base,
            tree,
            &b.target,
            if *is_dir { Create::Dir } else { Create::File },
        )?;
        info!(
            "rootfs: bind {} on {}{}",
            b.source.display(),
            b.target.display(),
            if b.read_only { " (read-only)" } else { "" }
        );
    }
    mask_paths(base)
}

fn setup_dev(base: &Path, spec: &RootfsSpec, trees: &HostTrees) -> Result<(), RootfsError> {
    mount_fs(
        base,
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // /dev is now our own tmpfs: plain paths below cannot meet a symlink we did not make.
    for (name, tree) in &trees.dev {
        attach(base, tree, &Path::new("/dev").join(name), Create::File)?;
    }
    let pts_opts = if spec.rootless {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    mount_fs(
        base,
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_opts),
    )?;
    mount_fs(
        base,
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, base.join(&link[1..])).map_err(|e| {
            io_err(
                "creating",
                Path::new(link),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    info!("rootfs: /proc, /dev ({})", DEV_NODES.join(", "));
    Ok(())
}

fn mask_paths(base: &Path) -> Result<(), RootfsError> {
    for p in MASKED {
        let path = &base.join(&p[1..]);
        let Ok(md) = fs::symlink_metadata(path) else {
            continue;
        };
        let r = if md.is_dir() {
            sys::mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            sys::mount(
                Some(base.join("dev/null").as_path()),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )
        };
        r.map_err(|e| mount_err("masking", path, e))?;
    }
    for p in READ_ONLY {
        let path = &base.join(&p[1..]);
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        sys::mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| mount_err("binding", path, e))?;
        let flags = sys::mount_flags_of(path).unwrap_or(MsFlags::empty())
            | MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY;
        sys::mount(None, path, None, flags, None)
            .map_err(|e| mount_err("making read-only", path, e))?;
    }
    info!(
        "rootfs: masked {} paths, {} read-only",
        MASKED.len(),
        READ_ONLY.len()
    );
    Ok(())
}

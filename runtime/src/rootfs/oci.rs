//! The root filesystem of an OCI bundle: what its config.json asks for, validated
//! ([`OciRootfs::from_spec`]), and built by [`mount_all`] in the container's init (in place of
//! `strata run`'s fixed layout; see the parent module for the steps around it).
//!
//! As runc: the spec's mounts in order (option names as runc's, unknown ones passed to the
//! filesystem as data), then, unless /dev is a bind mount, the default devices and the
//! /dev/ptmx, /dev/fd, /dev/std* links that are missing, `linux.devices`, `linux.sysctl`,
//! `linux.maskedPaths`, `linux.readonlyPaths`. Each bind source is taken as a detached tree
//! (`open_tree`) and given its flags (mount_setattr) before it is attached, so a bind is never
//! visible with looser flags than asked. Every target is resolved
//! as in the parent module (no symlink followed from the new root).
//!
//! Devices are made with mknod (mode, uid, gid of the spec); where that is not permitted
//! (a user namespace) or could not be opened (a `nodev` directory: /dev left on the stack),
//! the host's node at the same path is bound instead, as runc does rootless.

use super::{io_err, mount_err, mount_src_on, resolve, Create};
use crate::error::{ConfigError, RootfsError};
use crate::sys::{self, MountChange};
use log::{debug, info};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Spec};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// What the container's init needs from a spec to build its root filesystem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OciRootfs {
    /// `mounts`, in order.
    pub mounts: Vec<OciMount>,
    /// `linux.devices`.
    pub devices: Vec<OciDevice>,
    /// `linux.maskedPaths` (absolute, normalised).
    pub masked_paths: Vec<PathBuf>,
    /// `linux.readonlyPaths` (absolute, normalised).
    pub readonly_paths: Vec<PathBuf>,
    /// `linux.sysctl`, sorted by key (written in that order).
    pub sysctl: Vec<(String, String)>,
    /// `linux.rootfsPropagation` as mount flags (MS_SHARED... with MS_REC for the r-forms).
    pub propagation: Option<MsFlags>,
}

/// One entry of `mounts`.
#[derive(Clone, Debug, PartialEq)]
pub struct OciMount {
    /// Absolute and normalised (`..` resolved lexically, as runc's filepath.Clean).
    pub destination: PathBuf,
    pub kind: MountKind,
    pub options: MountOptions,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MountKind {
    /// `bind`/`rbind` of a host path (absolute; a relative source is the bundle's).
    Bind { source: PathBuf, recursive: bool },
    /// `cgroup` or `cgroup2`: the namespaced cgroup2 on a pure v2 host, else a read-only
    /// bind of the host's /sys/fs/cgroup.
    Cgroup,
    /// Any other filesystem, mounted with its type and source as given.
    Fs { fstype: String, source: String },
}

/// A mount's `options`, parsed as runc does.
#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    /// Flags for mount(2) (or, on a bind, added to the tree).
    pub flags: MsFlags,
    /// Flags the options remove (`rw`, `suid`, `dev`, `exec`, `atime`...): on a bind, taken
    /// off the tree; for mount(2) simply not set.
    pub clear: MsFlags,
    /// The recursive forms (`rro`, `rnosuid`...), applied to the whole tree.
    pub recursive: MountChange,
    /// `private`, `rshared`... in order (each MS_SHARED/SLAVE/PRIVATE/UNBINDABLE, with MS_REC
    /// for the r-forms).
    pub propagation: Vec<MsFlags>,
    /// The rest, comma-separated, for the filesystem (`mode=755,size=65536k`).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            recursive: MountChange::default(),
            propagation: Vec::new(),
            data: String::new(),
        }
    }
}

/// One entry of `linux.devices`.
#[derive(Clone, Debug, PartialEq)]
pub struct OciDevice {
    /// Absolute and normalised.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (default 0666).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

enum Opt {
    /// A flag set or (true) cleared.
    Flag(MsFlags, bool),
    /// A recursive flag (mount_setattr on the tree), set or (true) cleared.
    Rec(MsFlags, bool),
    Propagation(MsFlags),
}

/// runc's option names (libcontainer/specconv).
fn option(name: &str) -> Option<Opt> {
    use MsFlags as F;
    use Opt::*;
    Some(match name {
        "defaults" => Flag(F::empty(), false),
        "ro" => Flag(F::MS_RDONLY, false),
        "rw" => Flag(F::MS_RDONLY, true),
        "suid" => Flag(F::MS_NOSUID, true),
        "nosuid" => Flag(F::MS_NOSUID, false),
        "dev" => Flag(F::MS_NODEV, true),
        "nodev" => Flag(F::MS_NODEV, false),
        "exec" => Flag(F::MS_NOEXEC, true),
        "noexec" => Flag(F::MS_NOEXEC, false),
        "sync" => Flag(F::MS_SYNCHRONOUS, false),
        "async" => Flag(F::MS_SYNCHRONOUS, true),
        "dirsync" => Flag(F::MS_DIRSYNC, false),
        "remount" => Flag(F::MS_REMOUNT, false),
        "mand" => Flag(F::MS_MANDLOCK, false),
        "nomand" => Flag(F::MS_MANDLOCK, true),
        "atime" => Flag(F::MS_NOATIME, true),
        "noatime" => Flag(F::MS_NOATIME, false),
        "diratime" => Flag(F::MS_NODIRATIME, true),
        "nodiratime" => Flag(F::MS_NODIRATIME, false),
        "relatime" => Flag(F::MS_RELATIME, false),
        "norelatime" => Flag(F::MS_RELATIME, true),
        "strictatime" => Flag(F::MS_STRICTATIME, false),
        "nostrictatime" => Flag(F::MS_STRICTATIME, true),
        "lazytime" => Flag(F::MS_LAZYTIME, false),
        "nolazytime" => Flag(F::MS_LAZYTIME, true),
        "silent" => Flag(F::MS_SILENT, false),
        "loud" => Flag(F::MS_SILENT, true),
        "iversion" => Flag(F::MS_I_VERSION, false),
        "noiversion" => Flag(F::MS_I_VERSION, true),
        "acl" => Flag(F::MS_POSIXACL, false),
        "noacl" => Flag(F::MS_POSIXACL, true),
        "nosymfollow" => Flag(sys::MS_NOSYMFOLLOW, false),
        "symfollow" => Flag(sys::MS_NOSYMFOLLOW, true),
        "bind" => Flag(F::MS_BIND, false),
        "rbind" => Flag(F::MS_BIND | F::MS_REC, false),
        "rro" => Rec(F::MS_RDONLY, false),
        "rrw" => Rec(F::MS_RDONLY, true),
        "rnosuid" => Rec(F::MS_NOSUID, false),
        "rsuid" => Rec(F::MS_NOSUID, true),
        "rnodev" => Rec(F::MS_NODEV, false),
        "rdev" => Rec(F::MS_NODEV, true),
        "rnoexec" => Rec(F::MS_NOEXEC, false),
        "rexec" => Rec(F::MS_NOEXEC, true),
        "rnodiratime" => Rec(F::MS_NODIRATIME, false),
        "rdiratime" => Rec(F::MS_NODIRATIME, true),
        "rnoatime" => Rec(F::MS_NOATIME, false),
        "ratime" => Rec(F::MS_NOATIME, true),
        "rrelatime" => Rec(F::MS_RELATIME, false),
        "rnorelatime" => Rec(F::MS_RELATIME, true),
        "rstrictatime" => Rec(F::MS_STRICTATIME, false),
        "rnostrictatime" => Rec(F::MS_STRICTATIME, true),
        "rnosymfollow" => Rec(sys::MS_NOSYMFOLLOW, false),
        "rsymfollow" => Rec(sys::MS_NOSYMFOLLOW, true),
        "private" => Propagation(F::MS_PRIVATE),
        "rprivate" => Propagation(F::MS_PRIVATE | F::MS_REC),
        "shared" => Propagation(F::MS_SHARED),
        "rshared" => Propagation(F::MS_SHARED | F::MS_REC),
        "slave" => Propagation(F::MS_SLAVE),
        "rslave" => Propagation(F::MS_SLAVE | F::MS_REC),
        "unbindable" => Propagation(F::MS_UNBINDABLE),
        "runbindable" => Propagation(F::MS_UNBINDABLE | F::MS_REC),
        _ => return None,
    })
}

/// Parses a mount's `options`. Later options win over earlier ones (`ro,rw` is rw).
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for s in options {
        let s = s.as_ref();
        match option(s) {
            Some(Opt::Flag(f, clear)) if clear => {
                o.flags.remove(f);
                o.clear.insert(f);
            }
            Some(Opt::Flag(f, _)) => {
                o.clear.remove(f);
                o.flags.insert(f);
            }
            Some(Opt::Rec(f, clear)) if clear => {
                o.recursive.set.remove(f);
                o.recursive.clear.insert(f);
            }
            Some(Opt::Rec(f, _)) => {
                o.recursive.clear.remove(f);
                o.recursive.set.insert(f);
            }
            Some(Opt::Propagation(p)) => o.propagation.push(p),
            None if s == "idmap" || s == "ridmap" || s.starts_with("idmap=") => {
                return Err(format!("option {s}: id-mapped mounts are not supported"));
            }
            None if s.is_empty() => {}
            None => data.push(s),
        }
    }
    o.data = data.join(",");
    Ok(o)
}

/// Parses `linux.rootfsPropagation` (empty: none).
pub fn parse_propagation(s: &str) -> Result<Option<MsFlags>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match option(s) {
        Some(Opt::Propagation(p)) => Ok(Some(p)),
        _ => Err("expected shared, slave, private, unbindable or their r-forms".into()),
    }
}

/// `p` made absolute and lexically clean (`..` cannot climb above /); None for "" or "/".
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    (out != Path::new("/")).then_some(out)
}

fn bad(
    option: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::BadValue {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn paths(option: &'static str, list: &Option<Vec<String>>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    for p in list.iter().flatten() {
        if !p.starts_with('/') {
            return Err(bad(option, p, "not an absolute path"));
        }
        out.extend(clean(Path::new(p)));
    }
    Ok(out)
}

impl OciRootfs {
    /// Validates the root filesystem part of `spec` (a bundle's config.json); relative bind
    /// sources are taken relative to `bundle`. Nothing is checked on the host here (bind
    /// sources are opened by the container's init).
    pub fn from_spec(spec: &Spec, bundle: &Path) -> Result<OciRootfs, ConfigError> {
        let mut mounts = Vec::new();
        for m in spec.mounts().iter().flatten() {
            let dest = m.destination();
            let Some(destination) = clean(dest) else {
                return Err(bad("mounts", dest.display(), "cannot mount over /"));
            };
            let options = parse_options(m.options().as_deref().unwrap_or_default())
                .map_err(|r| bad("mounts", dest.display(), r))?;
            let typ = m.typ().as_deref().unwrap_or("");
            let kind = if options.flags.contains(MsFlags::MS_BIND) || typ == "bind" {
                let Some(src) = m.source().as_deref().filter(|s| !s.as_os_str().is_empty()) else {
                    return Err(bad("mounts", dest.display(), "a bind mount needs a source"));
                };
                MountKind::Bind {
                    source: bundle.join(src),
                    recursive: options.flags.contains(MsFlags::MS_REC),
                }
            } else if typ == "cgroup" || typ == "cgroup2" {
                MountKind::Cgroup
            } else if typ.is_empty() || typ == "none" {
                return Err(bad("mounts", dest.display(), "no filesystem type"));
            } else {
                let source = m
                    .source()
                    .as_deref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| typ.to_string());
                MountKind::Fs {
                    fstype: typ.to_string(),
                    source,
                }
            };
            mounts.push(OciMount {
                destination,
                kind,
                options,
            });
        }

        let linux = spec.linux().as_ref();
        let mut devices = Vec::new();
        for d in linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
        {
            let p = d.path();
            let Some(path) = clean(p).filter(|_| p.is_absolute()) else {
                return Err(bad("linux.devices", p.display(), "not an absolute path"));
            };
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                LinuxDeviceType::A => {
                    return Err(bad("linux.devices", p.display(), "type 'a' is not a node"))
                }
            };
            let num = |n: i64, what: &str| {
                u64::try_from(n)
                    .ok()
                    .filter(|&n| n <= u64::from(u32::MAX))
                    .ok_or_else(|| bad("linux.devices", p.display(), format!("{what} {n}")))
            };
            let (major, minor) = if kind == SFlag::S_IFIFO {
                (0, 0)
            } else {
                (num(d.major(), "major")?, num(d.minor(), "minor")?)
            };
            devices.push(OciDevice {
                path,
                kind,
                major,
                minor,
                mode: d.file_mode().unwrap_or(0o666) & 0o7777,
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            });
        }

        let mut sysctl: Vec<(String, String)> = Vec::new();
        for (k, v) in linux
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
        {
            let rel = k.replace('.', "/");
            let ok = !k.is_empty()
                && !k.contains('\0')
                && rel
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !ok {
                return Err(bad("linux.sysctl", k, "not a sysctl name"));
            }
            sysctl.push((k.clone(), v.clone()));
        }
        sysctl.sort();

        let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
            Some(s) => parse_propagation(s).map_err(|r| bad("linux.rootfsPropagation", s, r))?,
            None => None,
        };
        Ok(OciRootfs {
            mounts,
            devices,
            masked_paths: paths(
                "linux.maskedPaths",
                &linux.and_then(|l| l.masked_paths().clone()),
            )?,
            readonly_paths: paths(
                "linux.readonlyPaths",
                &linux.and_then(|l| l.readonly_paths().clone()),
            )?,
            sysctl,
            propagation,
        })
    }
}

/// The nodes runc always makes (unless the spec lists them): name, major, minor.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The path through the host's /proc of an open descriptor (to reopen an O_PATH one, or
/// name it to open_tree); the host's /proc is visible until pivot_root.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn is_dir(fd: &OwnedFd, path: &Path) -> Result<bool, RootfsError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| io_err("stat", path, e))?;
    Ok(st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits())
}

/// [`resolve`] of an existing target; None when it (or a directory on the way) is missing.
fn resolve_existing(base: &Path, target: &Path) -> Result<Option<OwnedFd>, RootfsError> {
    match resolve(base, target, Create::Nothing) {
        Ok(fd) => Ok(Some(fd)),
        Err(RootfsError::Io {
            errno: Errno::ENOENT | Errno::ENOTDIR,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Per-mount flags of `o` as a change of a bind's tree (its own mount only).
fn top_change(o: &MountOptions) -> MountChange {
    MountChange {
        set: o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT),
        clear: o.clear,
        propagation: MsFlags::empty(),
    }
}

/// Host trees taken before anything is mounted in the new root (not the binds': see
/// [`take_bind`]).
struct Trees {
    /// The host's /sys for a sysfs the user namespace may not mount (rootless).
    sys: Option<OwnedFd>,
    /// The host's /sys/fs/cgroup for a cgroup mount when the host is not pure cgroup v2.
    cgroup: Option<OwnedFd>,
}

/// A bind's source as a detached tree with its flags set, taken just before it is attached:
/// its mount is made in the spec's order (mountinfo lists mounts by creation since Linux
/// 6.8, and runtime-tools checks that order), and it sees the mounts made before it, as runc's.
fn take_bind(m: &OciMount) -> Result<Option<(OwnedFd, bool)>, RootfsError> {
    let MountKind::Bind { source, recursive } = &m.kind else {
        return Ok(None);
    };
    let what = || format!("bind {}", source.display());
    let tree =
        sys::open_tree(source, *recursive).map_err(|e| mount_err(what(), &m.destination, e))?;
    let top = top_change(&m.options);
    if !top.is_empty() {
        sys::mount_setattr(&tree, top, false)
            .map_err(|e| mount_err(format!("{}: setting its flags", what()), &m.destination, e))?;
    }
    if !m.options.recursive.is_empty() {
        sys::mount_setattr(&tree, m.options.recursive, true)
            .map_err(|e| mount_err(format!("{}: setting its flags", what()), &m.destination, e))?;
    }
    Ok(Some((tree, source.is_dir())))
}

fn take_trees(spec: &super::RootfsSpec, oci: &OciRootfs) -> Result<Trees, RootfsError> {
    let any = |f: &dyn Fn(&MountKind) -> bool| oci.mounts.iter().any(|m| f(&m.kind));
    let sys_tree = if spec.rootless
        && any(&|k| matches!(k, MountKind::Fs { fstype, .. } if fstype == "sysfs"))
    {
        sys::open_tree(Path::new("/sys"), true).ok()
    } else {
        None
    };
    // Read-only: the host's hierarchy is shown, not handed over.
    let cgroup = if !spec.cgroup2 && any(&|k| *k == MountKind::Cgroup) {
        let p = Path::new("/sys/fs/cgroup");
        match sys::open_tree(p, true) {
            Ok(t) => {
                let ro = MountChange {
                    set: MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    ..Default::default()
                };
                sys::mount_setattr(&t, ro, true).map_err(|e| mount_err("read-only bind", p, e))?;
                Some(t)
            }
            Err(e) => {
                debug!("no host cgroup tree to bind: {}", e.desc());
                None
            }
        }
    } else {
        None
    };
    Ok(Trees {
        sys: sys_tree,
        cgroup,
    })
}

/// Applies the recursive flags and the propagation of `m` once it is mounted.
fn after_mount(base: &Path, m: &OciMount) -> Result<(), RootfsError> {
    let o = &m.options;
    let recursive_fs = !matches!(m.kind, MountKind::Bind { .. }) && !o.recursive.is_empty();
    if !recursive_fs && o.propagation.is_empty() {
        return Ok(());
    }
    // Resolved again: the descriptor is now the new mount's root.
    let root = resolve(base, &m.destination, Create::Nothing)?;
    if recursive_fs {
        sys::mount_setattr(&root, o.recursive, true)
            .map_err(|e| mount_err("setting recursive flags", &m.destination, e))?;
    }
    for p in &o.propagation {
        let change = MountChange {
            propagation: *p - MsFlags::MS_REC,
            ..Default::default()
        };
        sys::mount_setattr(&root, change, p.contains(MsFlags::MS_REC))
            .map_err(|e| mount_err("setting the propagation", &m.destination, e))?;
    }
    Ok(())
}

fn mount_one(
    base: &Path,
    spec: &super::RootfsSpec,
    m: &OciMount,
    bind: Option<(OwnedFd, bool)>,
    trees: &mut Trees,
) -> Result<(), RootfsError> {
    let dest = &m.destination;
    let o = &m.options;
    let data = (!o.data.is_empty()).then_some(o.data.as_str());
    match &m.kind {
        MountKind::Bind { source, .. } => {
            let Some((tree, is_dir)) = bind else {
                return Ok(());
            };
            let create = if is_dir { Create::Dir } else { Create::File };
            let fd = resolve(base, dest, create)?;
            sys::move_mount(&tree, &fd)
                .map_err(|e| mount_err("attaching a bind mount", dest, e))?;
            info!("rootfs: bind {} on {}", source.display(), dest.display());
        }
        MountKind::Cgroup => {
            let fd = resolve(base, dest, Create::Dir)?;
            if spec.cgroup2 {
                // Options of a v1 spec (controller names) mean nothing to cgroup2.
                let flags = o.flags - MsFlags::MS_BIND - MsFlags::MS_REC;
                if let Err(e) = mount_src_on(&fd, dest, "cgroup2", "cgroup2", flags, None) {
                    debug!("{e} (left out)");
                    return Ok(());
                }
            } else if let Some(tree) = trees.cgroup.take() {
                sys::move_mount(&tree, &fd)
                    .map_err(|e| mount_err("binding the host's /sys/fs/cgroup", dest, e))?;
            } else {
                debug!(
                    "rootfs: no cgroup hierarchy for {} (left out)",
                    dest.display()
                );
                return Ok(());
            }
            info!("rootfs: cgroup on {}", dest.display());
        }
        MountKind::Fs { fstype, source } => {
            let fd = resolve(base, dest, Create::Dir)?;
            let mut r = mount_src_on(&fd, dest, source, fstype, o.flags, data);
            if let Err(RootfsError::Mount { errno, .. }) = &r {
                let errno = *errno;
                if fstype == "sysfs" && errno == Errno::EPERM && trees.sys.is_some() {
                    // A user namespace without its own network namespace may not mount
                    // sysfs: the host's, with the mount's flags (as runc rootless).
                    if let Some(tree) = trees.sys.take() {
                        let change = MountChange {
                            set: o.flags
                                & (MsFlags::MS_RDONLY
                                    | MsFlags::MS_NOSUID
                                    | MsFlags::MS_NODEV
                                    | MsFlags::MS_NOEXEC),
                            ..Default::default()
                        };
                        r = sys::mount_setattr(&tree, change, true)
                            .and_then(|()| sys::move_mount(&tree, &fd))
                            .map_err(|e| mount_err("binding the host's /sys", dest, e));
                    }
                } else if fstype == "devpts" && errno == Errno::EINVAL && o.data.contains("gid=") {
                    // gid=5 is refused when no such group is mapped (rootless), as crun.
                    let without: Vec<&str> = o
                        .data
                        .split(',')
                        .filter(|s| !s.starts_with("gid="))
                        .collect();
                    r = mount_src_on(&fd, dest, source, fstype, o.flags, Some(&without.join(",")));
                }
            }
            r?;
            info!("rootfs: {fstype} on {}", dest.display());
        }
    }
    after_mount(base, m)
}

/// Makes the node `d` in the new root: mknod, or a bind of the host's node where mknod is
/// not permitted or would give a node that cannot be opened (a nodev directory).
fn make_device(base: &Path, d: &OciDevice) -> Result<(), RootfsError> {
    let path = &d.path;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = resolve(base, parent, Create::Dir)?;
    let is_node = d.kind != SFlag::S_IFIFO;
    let nodev = nix::sys::statvfs::fstatvfs(&dir)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV))
        .unwrap_or(false);
    let made = if is_node && nodev {
        Err(Errno::EPERM)
    } else {
        nix::sys::stat::mknodat(
            &dir,
            name,
            d.kind,
            Mode::from_bits_truncate(d.mode),
            nix::sys::stat::makedev(d.major, d.minor),
        )
    };
    match made {
        Ok(()) => {
            // Not a symlink: just made, and nothing runs in the container yet.
            nix::sys::stat::fchmodat(
                &dir,
                name,
                Mode::from_bits_truncate(d.mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err("chmod", path, e))?;
            nix::unistd::fchownat(
                &dir,
                name,
                Some(nix::unistd::Uid::from_raw(d.uid)),
                Some(nix::unistd::Gid::from_raw(d.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("chown", path, e))?;
            debug!("rootfs: mknod {}", path.display());
        }
        // As runc: what the image (or a mount) already has there is kept.
        Err(Errno::EEXIST) => debug!("rootfs: {} exists, kept", path.display()),
        Err(Errno::EPERM) if is_node => bind_host_node(base, d)?,
        Err(e) => return Err(io_err("mknod", path, e)),
    }
    Ok(())
}

fn bind_host_node(base: &Path, d: &OciDevice) -> Result<(), RootfsError> {
    let path = &d.path;
    let what = || {
        format!(
            "binding the host's {} (mknod not permitted)",
            path.display()
        )
    };
    let st = nix::sys::stat::stat(path).map_err(|e| mount_err(what(), path, e))?;
    let same = st.st_mode & SFlag::S_IFMT.bits() == d.kind.bits()
        && st.st_rdev == nix::sys::stat::makedev(d.major, d.minor);
    if !same {
        return Err(RootfsError::Refused(format!(
            "device {}: mknod is not permitted and the host's {} is not the same node",
            path.display(),
            path.display()
        )));
    }
    let tree = sys::open_tree(path, false).map_err(|e| mount_err(what(), path, e))?;
    let fd = resolve(base, path, Create::File)?;
    sys::move_mount(&tree, &fd).map_err(|e| mount_err(what(), path, e))?;
    debug!("rootfs: bound the host's {}", path.display());
    Ok(())
}

/// The default nodes the spec does not list and the links of /dev, where missing.
fn default_dev(base: &Path, oci: &OciRootfs) -> Result<(), RootfsError> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = Path::new("/dev").join(name);
        if oci.devices.iter().any(|d| d.path == path) || resolve_existing(base, &path)?.is_some() {
            continue;
        }
        make_device(
            base,
            &OciDevice {
                path,
                kind: SFlag::S_IFCHR,
                major: *major,
                minor: *minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            },
        )?;
    }
    let dev = resolve(base, Path::new("/dev"), Create::Dir)?;
    for (name, to) in DEV_LINKS {
        match nix::unistd::symlinkat(*to, &dev, *name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("creating", &Path::new("/dev").join(name), e)),
        }
    }
    Ok(())
}

fn on_proc(fd: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Writes `linux.sysctl` under the container's /proc/sys (which must be a procfs).
fn write_sysctl(base: &Path, oci: &OciRootfs) -> Result<(), RootfsError> {
    if oci.sysctl.is_empty() {
        return Ok(());
    }
    let proc_sys = resolve_existing(base, Path::new("/proc/sys"))?;
    if !proc_sys.as_ref().is_some_and(on_proc) {
        return Err(RootfsError::Refused(
            "linux.sysctl: no proc is mounted on /proc (add it to mounts)".into(),
        ));
    }
    for (k, v) in &oci.sysctl {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        let fd = match resolve_existing(base, &path)? {
            Some(fd) if on_proc(&fd) => fd,
            Some(_) => {
                return Err(RootfsError::Refused(format!(
                    "sysctl {k}: {} is not on the proc mount",
                    path.display()
                )))
            }
            None => {
                return Err(RootfsError::Refused(format!(
                    "sysctl {k}: no such key ({} does not exist)",
                    path.display()
                )))
            }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(fd_path(&fd))
            .map_err(|e| io_err(format!("sysctl {k}: opening"), &path, errno_of(&e)))?;
        f.write_all(v.as_bytes())
            .map_err(|e| io_err(format!("sysctl {k}={v}: writing"), &path, errno_of(&e)))?;
        debug!("rootfs: sysctl {k}={v}");
    }
    Ok(())
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `linux.maskedPaths` (a read-only empty tmpfs on directories, the host's /dev/null on the
/// rest) and `linux.readonlyPaths` (a read-only bind on itself); missing paths are skipped.
fn mask_and_protect(base: &Path, oci: &OciRootfs) -> Result<(), RootfsError> {
    for p in &oci.masked_paths {
        let Some(fd) = resolve_existing(base, p)? else {
            continue;
        };
        if is_dir(&fd, p)? {
            mount_src_on(&fd, p, "tmpfs", "tmpfs", MsFlags::MS_RDONLY, Some("size=0")).map_err(
                |e| match e {
                    RootfsError::Mount { target, errno, .. } => {
                        mount_err("masking", &target, errno)
                    }
                    e => e,
                },
            )?;
        } else {
            let null = Path::new("/dev/null");
            let tree = sys::open_tree(null, false).map_err(|e| mount_err("masking", p, e))?;
            sys::move_mount(&tree, &fd).map_err(|e| mount_err("masking", p, e))?;
        }
    }
    for p in &oci.readonly_paths {
        let Some(fd) = resolve_existing(base, p)? else {
            continue;
        };
        let tree = sys::open_tree(&fd_path(&fd), true).map_err(|e| mount_err("binding", p, e))?;
        let ro = MountChange {
            set: MsFlags::MS_RDONLY,
            ..Default::default()
        };
        sys::mount_setattr(&tree, ro, true).map_err(|e| mount_err("making read-only", p, e))?;
        sys::move_mount(&tree, &fd).map_err(|e| mount_err("making read-only", p, e))?;
    }
    info!(
        "rootfs: masked {} paths, {} read-only",
        oci.masked_paths.len(),
        oci.readonly_paths.len()
    );
    Ok(())
}

/// Builds the spec's layout under the new root `base` (before pivot_root).
pub(super) fn mount_all(
    base: &Path,
    spec: &super::RootfsSpec,
    oci: &OciRootfs,
) -> Result<(), RootfsError> {
    let mut trees = take_trees(spec, oci)?;
    for m in &oci.mounts {
        let bind = take_bind(m)?;
        mount_one(base, spec, m, bind, &mut trees)?;
    }
    // As runc: a /dev bound from the host is left as it is.
    let dev_bound = oci
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && matches!(m.kind, MountKind::Bind { .. }));
    if !dev_bound {
        default_dev(base, oci)?;
    }
    for d in &oci.devices {
        make_device(base, d)?;
    }
    write_sysctl(base, oci)?;
    mask_and_protect(base, oci)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).expect("spec")
    }

    fn rootfs(json: &str) -> Result<OciRootfs, String> {
        OciRootfs::from_spec(&spec(json), Path::new("/b")).map_err(|e| e.to_string())
    }

    #[test]
    fn options() {
        let o = parse_options(&["nosuid", "strictatime", "mode=755", "size=65536k"]).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(o.clear.is_empty() && o.propagation.is_empty() && o.recursive.is_empty());

        let o = parse_options(&[
            "ro", "rw", "suid", "nodev", "dev", "rbind", "rprivate", "slave",
        ])
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(
            o.clear,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(
            o.propagation,
            vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC, MsFlags::MS_SLAVE]
        );
        assert_eq!(o.data, "");

        let o = parse_options(&["rro", "rnosuid", "rexec", "bind"]).unwrap();
        assert_eq!(o.recursive.set, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(o.recursive.clear, MsFlags::MS_NOEXEC);
        assert_eq!(o.flags, MsFlags::MS_BIND);

        for (name, f) in [
            ("sync", MsFlags::MS_SYNCHRONOUS),
            ("dirsync", MsFlags::MS_DIRSYNC),
            ("remount", MsFlags::MS_REMOUNT),
            ("mand", MsFlags::MS_MANDLOCK),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
            ("relatime", MsFlags::MS_RELATIME),
            ("noexec", MsFlags::MS_NOEXEC),
        ] {
            assert_eq!(parse_options(&[name]).unwrap().flags, f, "{name}");
        }
        for (name, f) in [
            ("async", MsFlags::MS_SYNCHRONOUS),
            ("nomand", MsFlags::MS_MANDLOCK),
            ("atime", MsFlags::MS_NOATIME),
            ("diratime", MsFlags::MS_NODIRATIME),
            ("norelatime", MsFlags::MS_RELATIME),
            ("nostrictatime", MsFlags::MS_STRICTATIME),
            ("exec", MsFlags::MS_NOEXEC),
        ] {
            assert_eq!(parse_options(&[name]).unwrap().clear, f, "{name}");
        }
        for (name, f) in [
            ("shared", MsFlags::MS_SHARED),
            ("rshared", MsFlags::MS_SHARED | MsFlags::MS_REC),
            ("rslave", MsFlags::MS_SLAVE | MsFlags::MS_REC),
            ("private", MsFlags::MS_PRIVATE),
            ("unbindable", MsFlags::MS_UNBINDABLE),
            ("runbindable", MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
        ] {
            assert_eq!(
                parse_options(&[name]).unwrap().propagation,
                vec![f],
                "{name}"
            );
            assert_eq!(parse_propagation(name), Ok(Some(f)));
        }
        assert!(parse_options(&["idmap"]).is_err());
        assert_eq!(parse_propagation(""), Ok(None));
        assert!(parse_propagation("ro").is_err());
        assert!(parse_propagation("sharde").is_err());
    }

    const HEAD: &str = r#""ociVersion": "1.0.2", "root": {"path": "rootfs"}"#;

    #[test]
    fn from_spec_mounts() {
        let r = rootfs(&format!(
            r#"{{ {HEAD}, "mounts": [
                {{"destination": "/proc", "type": "proc", "source": "proc"}},
                {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
                {{"destination": "/data/../etc/x", "type": "bind", "source": "data",
                  "options": ["rbind", "ro"]}},
                {{"destination": "/abs", "source": "/srv", "options": ["bind"]}},
                {{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}},
                {{"destination": "/dev/mqueue", "type": "mqueue"}}
            ]}}"#
        ))
        .unwrap();
        let m = &r.mounts;
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[0].kind,
            MountKind::Fs {
                fstype: "proc".into(),
                source: "proc".into()
            }
        );
        assert_eq!(m[1].options.data, "mode=755,size=65536k");
        assert_eq!(m[2].destination, Path::new("/etc/x"));
        assert_eq!(
            m[2].kind,
            MountKind::Bind {
                source: "/b/data".into(),
                recursive: true
            }
        );
        assert_eq!(
            top_change(&m[2].options).set,
            MsFlags::MS_RDONLY,
            "bind/rec are not tree flags"
        );
        assert_eq!(
            m[3].kind,
            MountKind::Bind {
                source: "/srv".into(),
                recursive: false
            }
        );
        assert_eq!(m[4].kind, MountKind::Cgroup);
        assert_eq!(
            m[5].kind,
            MountKind::Fs {
                fstype: "mqueue".into(),
                source: "mqueue".into()
            }
        );
        assert_eq!(r.devices, vec![]);
        assert_eq!(r.propagation, None);
    }

    #[test]
    fn from_spec_linux() {
        let r = rootfs(&format!(
            r#"{{ {HEAD}, "linux": {{
                "devices": [
                    {{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                      "fileMode": 8630, "uid": 0, "gid": 0}},
                    {{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}},
                    {{"path": "/dev/fifo", "type": "p"}}
                ],
                "sysctl": {{"net.ipv4.ip_forward": "1", "kernel.shmmax": "4096"}},
                "maskedPaths": ["/proc/kcore", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys"],
                "rootfsPropagation": "rslave",
                "mountLabel": "system_u:object_r:container_file_t:s0"
            }} }}"#
        ))
        .unwrap();
        assert_eq!(r.devices.len(), 3);
        let fuse = &r.devices[0];
        assert_eq!(fuse.kind, SFlag::S_IFCHR);
        assert_eq!((fuse.major, fuse.minor), (10, 229));
        assert_eq!(fuse.mode, 0o666, "type bits of fileMode dropped");
        assert_eq!(r.devices[1].kind, SFlag::S_IFBLK);
        assert_eq!(r.devices[1].mode, 0o666);
        assert_eq!(r.devices[2].kind, SFlag::S_IFIFO);
        assert_eq!(
            r.sysctl,
            vec![
                ("kernel.shmmax".to_string(), "4096".to_string()),
                ("net.ipv4.ip_forward".to_string(), "1".to_string())
            ]
        );
        assert_eq!(
            r.masked_paths,
            vec![PathBuf::from("/proc/kcore"), PathBuf::from("/sys/firmware")]
        );
        assert_eq!(r.readonly_paths, vec![PathBuf::from("/proc/sys")]);
        assert_eq!(r.propagation, Some(MsFlags::MS_SLAVE | MsFlags::MS_REC));
    }

    #[test]
    fn from_spec_errors() {
        let cases = [
            (
                r#""mounts": [{"destination": "/x", "type": "bind"}]"#,
                "invalid value '/x' for mounts: a bind mount needs a source",
            ),
            (
                r#""mounts": [{"destination": "/", "type": "tmpfs"}]"#,
                "invalid value '/' for mounts: cannot mount over /",
            ),
            (
                r#""mounts": [{"destination": "/x", "source": "s"}]"#,
                "invalid value '/x' for mounts: no filesystem type",
            ),
            (
                r#""mounts": [{"destination": "/x", "source": "/s", "options": ["rbind", "idmap"]}]"#,
                "invalid value '/x' for mounts: option idmap: id-mapped mounts are not supported",
            ),
            (
                r#""linux": {"devices": [{"path": "/dev/x", "type": "a"}]}"#,
                "invalid value '/dev/x' for linux.devices: type 'a' is not a node",
            ),
            (
                r#""linux": {"devices": [{"path": "dev/x", "type": "c", "major": 1, "minor": 3}]}"#,
                "invalid value 'dev/x' for linux.devices: not an absolute path",
            ),
            (
                r#""linux": {"devices": [{"path": "/dev/x", "type": "c", "major": -1, "minor": 3}]}"#,
                "invalid value '/dev/x' for linux.devices: major -1",
            ),
            (
                r#""linux": {"sysctl": {"net..x": "1"}}"#,
                "invalid value 'net..x' for linux.sysctl: not a sysctl name",
            ),
            (
                r#""linux": {"sysctl": {"kernel/../../etc": "1"}}"#,
                "invalid value 'kernel/../../etc' for linux.sysctl: not a sysctl name",
            ),
            (
                r#""linux": {"maskedPaths": ["proc/kcore"]}"#,
                "invalid value 'proc/kcore' for linux.maskedPaths: not an absolute path",
            ),
            (
                r#""linux": {"readonlyPaths": ["sys"]}"#,
                "invalid value 'sys' for linux.readonlyPaths: not an absolute path",
            ),
            (
                r#""linux": {"rootfsPropagation": "bogus"}"#,
                "invalid value 'bogus' for linux.rootfsPropagation: expected shared, slave, private, unbindable or their r-forms",
            ),
        ];
        for (body, want) in cases {
            let got = rootfs(&format!("{{ {HEAD}, {body} }}"));
            assert_eq!(got, Err(want.to_string()), "{body}");
        }
        assert_eq!(rootfs(&format!("{{ {HEAD} }}")), Ok(OciRootfs::default()));
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean(Path::new("/a/./b/../c")), Some("/a/c".into()));
        assert_eq!(clean(Path::new("../../x")), Some("/x".into()));
        assert_eq!(clean(Path::new("/..")), None);
        assert_eq!(clean(Path::new("")), None);
    }
}

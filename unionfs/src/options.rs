//! What the user asked for, once parsed. Produced by `cli`, consumed by `layers`, `fs` and `mount`.

use std::path::PathBuf;

/// Which xattr namespace carries overlay markers (opaque, whiteout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`, as the kernel without `userxattr`.
    Trusted,
    /// `user.overlay.*`, as the kernel with `userxattr` (rootless).
    User,
}

impl XattrNamespace {
    pub fn prefix(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.",
            XattrNamespace::User => "user.overlay.",
        }
    }
}

/// Which implementation serves the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The kernel's overlay where it is permitted and can honour the stack, else FUSE.
    Auto,
    Fuse,
    Kernel,
}

/// Which opened files the FUSE driver hands to the kernel (FUSE passthrough: reads and writes
/// go to the layer file without the daemon). Needs CAP_SYS_ADMIN; without it files are served
/// by the daemon whatever the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    Off,
    /// Files in the upper layer: exactly the kernel overlay's semantics.
    Upper,
    /// Also lower files opened read-only; while one is open, opening it for writing (or
    /// truncating it) fails with ETXTBSY, as the reader could not see the copy.
    All,
}

/// Everything needed to mount one stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lower layers, topmost first (as in `lowerdir=TOP:...:BOTTOM`).
    pub lowerdirs: Vec<PathBuf>,
    /// Writable layer; `None` mounts the stack read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem; present iff `upperdir` is.
    pub workdir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// Stay in the foreground (`-f`).
    pub foreground: bool,
    /// Log every request (`-d`).
    pub debug: bool,
    /// Verbosity from `-v` (repeatable).
    pub verbose: u8,
    /// `allow_other`: let other users see the mount (default when root).
    pub allow_other: bool,
    /// Mount read-only even with an upper layer (`ro`).
    pub read_only: bool,
    /// Generic VFS flags passed by `mount`: `nodev`, `nosuid`, `noexec`, `noatime`...
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// Marker namespace; `None` means decide at mount time (trusted when permitted).
    pub xattr_ns: Option<XattrNamespace>,
    /// Worker threads serving FUSE requests.
    pub threads: usize,
    /// How long the kernel may cache names and attributes (`timeout=SECS`): the layers change
    /// only through the mount, so long by default.
    pub timeout_secs: u64,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    pub driver: Driver,
    /// Write whiteouts as zero-size files with the `overlay.whiteout` xattr (what the FUSE
    /// driver falls back to where a 0/0 device cannot be made).
    pub xwhiteouts: bool,
    /// `volatile`, as the kernel's: no sync of the upper layer at all (copy-up, fsync,
    /// O_SYNC); the workdir is marked so that no later mount trusts it (see `layers`).
    pub volatile: bool,
    pub passthrough: Passthrough,
    /// `uring`: serve requests through FUSE over io_uring where the kernel offers it.
    pub uring: bool,
}

impl Options {
    pub fn new(lowerdirs: Vec<PathBuf>, mountpoint: PathBuf) -> Self {
        Options {
            lowerdirs,
            upperdir: None,
            workdir: None,
            mountpoint,
            foreground: false,
            debug: false,
            verbose: 0,
            allow_other: false,
            read_only: false,
            nodev: false,
            nosuid: false,
            noexec: false,
            noatime: false,
            xattr_ns: None,
            threads: 4,
            timeout_secs: 86400,
            fsname: "stratafs".to_string(),
            driver: Driver::Auto,
            xwhiteouts: false,
            volatile: false,
            passthrough: Passthrough::Upper,
            uring: false,
        }
    }

    pub fn writable(&self) -> bool {
        self.upperdir.is_some() && !self.read_only
    }
}

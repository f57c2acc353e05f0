//! Typed errors, one enum per module, and the top-level [`Error`] with the exit status each
//! kind maps to. Every `Display` is one line, printed after `strata: `.
//!
//! Exit statuses (as documented in `strata run --help`):
//! * 2: bad input (command line, a missing layer, a size with an unknown suffix...);
//! * 125: the runtime itself failed (a mount, a namespace, a cgroup controller missing...);
//! * 126: the command exists in the container but cannot be executed;
//! * 127: the command does not exist in the container.

use nix::errno::Errno;
use std::fmt;
use std::io;
use std::path::PathBuf;

pub const EXIT_USAGE: i32 = 2;
pub const EXIT_RUNTIME: i32 = 125;
pub const EXIT_CANNOT_EXEC: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// strerror text of an errno, without the errno name.
pub fn errno_text(e: Errno) -> &'static str {
    e.desc()
}

/// strerror text of an io::Error, without std's " (os error N)" suffix.
pub fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Bad input: detected before anything is created.
#[derive(Debug)]
pub enum ConfigError {
    /// An option value that cannot be parsed or is out of range.
    BadValue {
        option: &'static str,
        value: String,
        reason: String,
    },
    /// A path given on the command line that cannot be used.
    Path {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// Two options that do not go together, or one that needs another.
    Conflict(String),
    Seccomp(SeccompError),
}

/// A seccomp profile that cannot be used (see `seccomp`).
#[derive(Debug)]
pub enum SeccompError {
    /// `--seccomp FILE` that cannot be read, parsed or compiled: bad input.
    Profile { path: PathBuf, reason: String },
    /// The built-in default profile did not compile: the runtime's failure.
    Default(String),
}

impl fmt::Display for SeccompError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeccompError::Profile { path, reason } => {
                write!(f, "seccomp profile {}: {reason}", path.display())
            }
            SeccompError::Default(reason) => write!(f, "the default seccomp profile: {reason}"),
        }
    }
}

impl From<SeccompError> for ConfigError {
    fn from(e: SeccompError) -> ConfigError {
        ConfigError::Seccomp(e)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadValue {
                option,
                value,
                reason,
            } => write!(f, "invalid value '{value}' for {option}: {reason}"),
            ConfigError::Path { what, path, reason } => {
                write!(f, "{what} {}: {reason}", path.display())
            }
            ConfigError::Conflict(msg) => write!(f, "{msg}"),
            ConfigError::Seccomp(e) => e.fmt(f),
        }
    }
}

#[derive(Debug)]
pub enum CgroupError {
    /// A controller needed by a limit is not in the v2 hierarchy.
    ControllerUnavailable {
        controller: &'static str,
        option: &'static str,
        reason: String,
    },
    /// Limits were asked for but there is no cgroup we may create.
    NotDelegated { path: PathBuf },
    /// No cgroup v2 hierarchy is mounted and no fallback was asked for.
    NoHierarchy,
    Io {
        what: String,
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::ControllerUnavailable {
                controller,
                option,
                reason,
            } => write!(f, "{option} needs the cgroup '{controller}' controller: {reason}"),
            CgroupError::NotDelegated { path } => write!(
                f,
                "cannot apply limits: the cgroup {} is not delegated to this user (not writable); run as root or from a delegated cgroup",
                path.display()
            ),
            CgroupError::NoHierarchy => write!(
                f,
                "cannot apply limits: no cgroup v2 hierarchy is mounted (use --cgroup-v1-fallback on a cgroup v1 host)"
            ),
            CgroupError::Io { what, path, err } => {
                write!(f, "cgroup: {what} {}: {}", path.display(), io_text(err))
            }
        }
    }
}

#[derive(Debug)]
pub enum NamespaceError {
    Unshare {
        what: String,
        errno: Errno,
    },
    /// An OCI bundle's namespace path that cannot be joined.
    Join {
        path: PathBuf,
        errno: Errno,
    },
    Hostname {
        name: String,
        errno: Errno,
    },
    Loopback(Errno),
    BecomeRoot(Errno),
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceError::Unshare { what, errno } => {
                write!(
                    f,
                    "creating the {what} namespace(s): {}",
                    errno_text(*errno)
                )?;
                if *errno == Errno::EPERM || *errno == Errno::ENOSPC {
                    write!(f, " (are unprivileged user namespaces disabled? see sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)")?;
                }
                Ok(())
            }
            NamespaceError::Join { path, errno } => {
                write!(
                    f,
                    "joining the namespace {}: {}",
                    path.display(),
                    errno_text(*errno)
                )
            }
            NamespaceError::Hostname { name, errno } => {
                write!(f, "setting the hostname to {name}: {}", errno_text(*errno))
            }
            NamespaceError::Loopback(e) => write!(f, "bringing lo up: {}", errno_text(*e)),
            NamespaceError::BecomeRoot(e) => {
                write!(f, "becoming root in the user namespace: {}", errno_text(*e))
            }
        }
    }
}

#[derive(Debug)]
pub enum IdmapError {
    Write { file: PathBuf, err: io::Error },
    Helper { helper: String, output: String },
}

impl fmt::Display for IdmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdmapError::Write { file, err } => {
                write!(f, "writing {}: {}", file.display(), io_text(err))
            }
            IdmapError::Helper { helper, output } => write!(f, "{helper} failed: {output}"),
        }
    }
}

#[derive(Debug)]
pub enum RootfsError {
    /// A mount(2) (or open_tree/move_mount) that failed.
    Mount {
        what: String,
        target: PathBuf,
        errno: Errno,
    },
    /// A mount target that would leave the new root through a symlink.
    Symlink { target: PathBuf, component: String },
    Io {
        what: String,
        path: PathBuf,
        errno: Errno,
    },
    /// What an OCI spec asks for that cannot be done as asked (the line says why).
    Refused(String),
}

impl fmt::Display for RootfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootfsError::Mount {
                what,
                target,
                errno,
            } => write!(f, "{what} on {}: {}", target.display(), errno_text(*errno)),
            RootfsError::Symlink { target, component } => write!(
                f,
                "mount target {} goes through the symlink {component}: refused",
                target.display()
            ),
            RootfsError::Io { what, path, errno } => {
                write!(f, "{what} {}: {}", path.display(), errno_text(*errno))
            }
            RootfsError::Refused(line) => write!(f, "{line}"),
        }
    }
}

#[derive(Debug)]
pub enum StackError {
    /// The stratafs binary could not be found.
    NoStratafs,
    Spawn {
        bin: PathBuf,
        err: io::Error,
    },
    /// stratafs ended before the mount was ready.
    DaemonFailed {
        status: String,
    },
    DaemonTimeout,
    Io {
        what: String,
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackError::NoStratafs => write!(
                f,
                "the FUSE driver needs the stratafs binary: not found in $STRATAFS_BIN, next to strata, nor in PATH"
            ),
            StackError::Spawn { bin, err } => {
                write!(f, "starting {}: {}", bin.display(), io_text(err))
            }
            StackError::DaemonFailed { status } => {
                write!(f, "stratafs could not mount the layers ({status})")
            }
            StackError::DaemonTimeout => write!(f, "stratafs did not mount the layers within 20 s"),
            StackError::Io { what, path, err } => {
                write!(f, "{what} {}: {}", path.display(), io_text(err))
            }
        }
    }
}

#[derive(Debug)]
pub enum ProcessError {
    Fork(Errno),
    Channel(String),
    /// A failure reported by the container side (message and exit status chosen there).
    Child {
        code: i32,
        message: String,
    },
    Exec {
        command: String,
        errno: Errno,
    },
    NotFound {
        command: String,
    },
    Workdir {
        path: PathBuf,
        errno: Errno,
    },
    Setup {
        what: &'static str,
        errno: Errno,
    },
    /// The host refused a setting asked for (e.g. a `--ulimit`); the line says which.
    Refused(String),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::Fork(e) => write!(f, "fork: {}", errno_text(*e)),
            ProcessError::Channel(msg) => write!(f, "talking to the container process: {msg}"),
            ProcessError::Child { message, .. } => write!(f, "{message}"),
            ProcessError::Exec { command, errno } => {
                write!(f, "cannot execute {command}: {}", errno_text(*errno))
            }
            ProcessError::NotFound { command } => {
                write!(f, "{command}: command not found in the container")
            }
            ProcessError::Workdir { path, errno } => {
                write!(
                    f,
                    "working directory {}: {}",
                    path.display(),
                    errno_text(*errno)
                )
            }
            ProcessError::Setup { what, errno } => write!(f, "{what}: {}", errno_text(*errno)),
            ProcessError::Refused(line) => write!(f, "{line}"),
        }
    }
}

/// An OCI hook (config.json `hooks`) that failed (see `hooks`). Each line names the phase and
/// the hook's path.
#[derive(Debug)]
pub enum HookError {
    /// A hook the spec does not allow: a relative path, a timeout that is not positive.
    Invalid {
        phase: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The hook could not be started (or its stdin/output files made).
    Spawn {
        phase: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// The hook ended with a non-zero status or a signal; `output` is the tail of what it
    /// printed (stderr, else stdout), on one line.
    Failed {
        phase: &'static str,
        path: PathBuf,
        status: String,
        output: String,
    },
    /// The hook ran longer than its `timeout` and was killed.
    Timeout {
        phase: &'static str,
        path: PathBuf,
        secs: i64,
        output: String,
    },
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |f: &mut fmt::Formatter<'_>, output: &str| {
            if output.is_empty() {
                Ok(())
            } else {
                write!(f, ": {output}")
            }
        };
        match self {
            HookError::Invalid {
                phase,
                path,
                reason,
            } => write!(f, "{phase} hook {}: {reason}", path.display()),
            HookError::Spawn { phase, path, err } => {
                write!(f, "{phase} hook {}: {}", path.display(), io_text(err))
            }
            HookError::Failed {
                phase,
                path,
                status,
                output,
            } => {
                write!(f, "{phase} hook {} failed ({status})", path.display())?;
                tail(f, output)
            }
            HookError::Timeout {
                phase,
                path,
                secs,
                output,
            } => {
                write!(
                    f,
                    "{phase} hook {} timed out after {secs} s (killed)",
                    path.display()
                )?;
                tail(f, output)
            }
        }
    }
}

/// Any failure of `strata run`.
#[derive(Debug)]
pub enum Error {
    Config(ConfigError),
    Cgroup(CgroupError),
    Namespace(NamespaceError),
    Idmap(IdmapError),
    Rootfs(RootfsError),
    Stack(StackError),
    Process(ProcessError),
    Hook(HookError),
    /// Anything else of the runtime's own doing (state directory...).
    Io {
        what: String,
        path: PathBuf,
        err: io::Error,
    },
}

impl Error {
    /// The exit status `strata` ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(ConfigError::Seccomp(SeccompError::Default(_))) => EXIT_RUNTIME,
            Error::Config(_) => EXIT_USAGE,
            Error::Process(ProcessError::Child { code, .. }) => *code,
            Error::Process(ProcessError::NotFound { .. }) => EXIT_NOT_FOUND,
            Error::Process(ProcessError::Exec { .. }) => EXIT_CANNOT_EXEC,
            _ => EXIT_RUNTIME,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Cgroup(e) => e.fmt(f),
            Error::Namespace(e) => e.fmt(f),
            Error::Idmap(e) => e.fmt(f),
            Error::Rootfs(e) => e.fmt(f),
            Error::Stack(e) => e.fmt(f),
            Error::Process(e) => e.fmt(f),
            Error::Hook(e) => e.fmt(f),
            Error::Io { what, path, err } => {
                write!(f, "{what} {}: {}", path.display(), io_text(err))
            }
        }
    }
}

impl std::error::Error for Error {}

macro_rules! from_error {
    ($($t:ident => $v:ident),*) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::$v(e)
            }
        })*
    };
}

from_error!(
    ConfigError => Config,
    CgroupError => Cgroup,
    NamespaceError => Namespace,
    IdmapError => Idmap,
    RootfsError => Rootfs,
    StackError => Stack,
    ProcessError => Process,
    HookError => Hook
);

pub type Result<T, E = Error> = std::result::Result<T, E>;

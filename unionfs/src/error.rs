//! The top-level [`Error`] of `stratafs` and the exit status each kind maps to. Every
//! `Display` is one line, printed after `stratafs: `.
//!
//! Exit status (as documented in `stratafs --help`): 0 once the mount serves requests, 2 on
//! bad input or a failed mount.

use crate::cli::CliError;
use crate::kernel_overlay::KernelError;
use crate::mount::MountError;
use std::fmt;

/// Bad input: the command line or the layers it names.
pub const EXIT_USAGE: i32 = 2;
/// A mount that failed; the same status as bad input, as `--help` documents.
pub const EXIT_FAILURE: i32 = 2;

/// Any failure of `stratafs`.
#[derive(Debug)]
pub enum Error {
    Cli(CliError),
    Kernel(KernelError),
    Mount(MountError),
    /// `stratafs demo` failed; the message says at which step.
    Demo(String),
}

impl Error {
    /// The exit status `stratafs` ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) => EXIT_USAGE,
            Error::Kernel(_) | Error::Mount(_) | Error::Demo(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cli(e) => e.fmt(f),
            Error::Kernel(e) => e.fmt(f),
            Error::Mount(e) => e.fmt(f),
            Error::Demo(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl From<CliError> for Error {
    fn from(e: CliError) -> Error {
        Error::Cli(e)
    }
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        Error::Kernel(e)
    }
}

impl From<MountError> for Error {
    fn from(e: MountError) -> Error {
        Error::Mount(e)
    }
}

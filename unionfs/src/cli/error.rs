//! `CliError`: every way a command line or a layer setup is refused, as the one line printed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A bad command line or a bad layer setup; `Display` is the one line printed after `stratafs: `.
#[derive(Debug)]
pub enum CliError {
    /// Malformed command line (missing argument, stray argument, unknown flag).
    Usage(String),
    UnknownOption(String),
    /// A known option with a value it cannot take.
    BadValue {
        option: String,
        value: String,
        reason: &'static str,
    },
    MissingLowerdir,
    /// `upperdir` without `workdir`, or the reverse.
    UpperWorkPair {
        given: &'static str,
        missing: &'static str,
    },
    /// An empty path, or an empty component of a `lowerdir` list (`a::b`).
    EmptyPath {
        option: &'static str,
        value: String,
    },
    /// A path that cannot be used (missing, unreadable...).
    Path {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    NotADirectory {
        what: &'static str,
        path: PathBuf,
    },
    /// Two layers that are the same directory or nested in each other.
    Overlap {
        inner_what: &'static str,
        inner: PathBuf,
        outer_what: &'static str,
        outer: PathBuf,
    },
    CrossDevice {
        upper: PathBuf,
        work: PathBuf,
    },
    /// An option that only means something with an upper layer (`volatile`).
    NeedsUpper(&'static str),
    /// The workdir records a feature in `work/incompat` (a `volatile` mount used it).
    Incompat(crate::layers::Incompat),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(msg) => write!(f, "{msg} (see stratafs --help)"),
            CliError::UnknownOption(opt) => write!(f, "unknown option: {opt}"),
            CliError::BadValue {
                option,
                value,
                reason,
            } => write!(f, "bad value for {option}: '{value}': {reason}"),
            CliError::MissingLowerdir => {
                write!(f, "missing lowerdir= option (see stratafs --help)")
            }
            CliError::UpperWorkPair { given, missing } => {
                write!(f, "{given} needs {missing} as well")
            }
            CliError::EmptyPath { option, value } => {
                write!(f, "{option}: empty path in '{value}'")
            }
            CliError::Path { what, path, err } => {
                write!(f, "{what} {}: {}", path.display(), io_error_text(err))
            }
            CliError::NotADirectory { what, path } => {
                write!(f, "{what} {}: Not a directory", path.display())
            }
            CliError::Overlap {
                inner_what,
                inner,
                outer_what,
                outer,
            } => {
                if inner == outer {
                    write!(
                        f,
                        "{inner_what} and {outer_what} are the same directory: {}",
                        inner.display()
                    )
                } else {
                    write!(
                        f,
                        "{inner_what} {} is inside {outer_what} {}",
                        inner.display(),
                        outer.display()
                    )
                }
            }
            CliError::CrossDevice { upper, work } => write!(
                f,
                "workdir {} is not on the same filesystem as upperdir {}",
                work.display(),
                upper.display()
            ),
            CliError::NeedsUpper(option) => write!(
                f,
                "{option} needs upperdir and workdir: without an upper layer nothing is written"
            ),
            CliError::Incompat(inc) => write!(f, "workdir {}: {inc}", inc.workdir.display()),
        }
    }
}

impl std::error::Error for CliError {}

/// `strerror` text of an io::Error, without the " (os error N)" suffix std adds.
pub fn io_error_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_single_lines() {
        let e = CliError::Path {
            what: "lowerdir",
            path: PathBuf::from("/x"),
            err: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "lowerdir /x: No such file or directory");
        let e = CliError::Overlap {
            inner_what: "upperdir",
            inner: PathBuf::from("/l/u"),
            outer_what: "lowerdir",
            outer: PathBuf::from("/l"),
        };
        assert_eq!(e.to_string(), "upperdir /l/u is inside lowerdir /l");
    }
}

//! Command line parsing and validation.
//!
//! The syntax is the one of `mount -t overlay` (`-o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W`)
//! plus the calling convention of `mount.fuse3` (`stratafs SOURCE MOUNTPOINT -o OPTIONS`). This
//! mount-style syntax (options anywhere, comma lists with backslash escapes, generic options
//! injected by mount(8)) is parsed by hand: an argument-parsing crate would not help with it.
//!
//! `parse` is purely syntactic (no filesystem access) so it can be unit tested; `validate`
//! checks the paths and canonicalizes them. `options` is the table of `-o` items, `help` the
//! help and version texts, `error` the refusals.

mod error;
mod help;
mod options;
mod parse;
mod validate;

pub use error::{io_error_text, CliError};
pub use help::{help_text, version_text};
pub use options::escape_path;
pub use parse::parse;
pub use validate::validate;

use crate::options::Options;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    /// `stratafs demo`: build a throwaway stack and show it working.
    Demo {
        verbose: u8,
    },
    Mount(Options),
}

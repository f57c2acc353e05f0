//! End-to-end harness: drives the real `stratafs` binary on a real FUSE mount side by side
//! with the kernel overlay (the oracle) and compares results, errnos and on-disk contents.
//!
//! Overview:
//! * [`Layer`] / [`Layers`]: a declarative spec of lower layers (and an optional pre-populated
//!   upper layer), materialized twice (one set of directories per side) under a unique temp root.
//! * [`Pair`]: mounts the kernel overlay on one set and stratafs on the other. [`Pair::step`]
//!   runs the same closure on both mounts and asserts equal results. [`Pair::finish`] compares
//!   the merged views, the (normalised) upper layers, the lower layers (must be unchanged,
//!   including mtime/ctime/inode numbers) and mounts the kernel overlay over each side's layers
//!   ("kernel remount") and compares those views too. Drop unmounts and cleans up, even on panic.
//! * [`ops`]: filesystem operations returning comparable values (`Result<T, Errno>`).
//! * [`snapshot`]: a sorted tree map of a directory, fd-based (works beyond PATH_MAX).
//! * [`as_user`]: runs a closure with other credentials (per-thread setresuid).
//!
//! With `E2E_SELFTEST=1`, the "stratafs" side is a kernel overlay as well (kernel vs kernel),
//! which validates the harness and the scenarios independently of stratafs.
//!
//! Environment switches:
//! * `E2E_SELFTEST=1`: see above.
//! * `E2E_SOFT=1`: a mismatching step does not stop the test; all mismatches (steps, final
//!   checks) are reported together when the test ends.
//! * `E2E_TRACE=1`: prints every step's (kernel) result with its source location (use with
//!   `--nocapture`).
//! * `E2E_KEEP=1`: keep the temp directories (for post-mortem inspection).
//! * `STRATAFS_BIN`: the stratafs binary (default: target/<profile>/stratafs).
//!
//! Kernel facts the harness relies on: the overlay needs at least two lower layers without an
//! upper layer ([`Pair::ro`] adds an empty one); the kernel is mounted through the new mount API
//! with one `lowerdir+` per layer, so there is no option-length limit; lower snapshots exclude
//! atime (reads legitimately update it through both implementations).

#![deny(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

pub use nix::errno::Errno;
pub use ops::*;

// Randomized differential testing (generator, runner, shrinker): see tests/src/random/.
pub mod random;

// /proc helpers (daemon pids, fds, RSS, drop_caches, wait_until) shared by the test files.
pub mod procfs;
use procfs::{alive, daemon_pids};

/// Result of an operation: a comparable value or the errno.
pub type R<T> = Result<T, Errno>;

/// Fixed timestamp given to every entry of materialized layers (2001-01-01 + 123456789 ns), so
/// that "mtime preserved by copy-up" is distinguishable from "mtime = now".
pub const FIXED_TIME: (i64, i64) = (978_307_200, 123_456_789);

/// True when the "stratafs" side is a kernel overlay too (E2E_SELFTEST=1).
pub fn selftest() -> bool {
    std::env::var("E2E_SELFTEST")
        .map(|v| v == "1")
        .unwrap_or(false)
}

// The harness's sections, one module each (see their headers).
mod layers;
mod mount;
pub mod ops;
mod pair;
mod scratch;
mod snapshot;
// Safe wrappers of the raw syscalls: the only module allowed to contain `unsafe`.
#[allow(unsafe_code)]
pub mod sys;

pub use layers::*;
pub use mount::*;
pub(crate) use pair::panic_msg;
pub use pair::*;
pub use scratch::*;
pub use snapshot::*;
use sys::*;

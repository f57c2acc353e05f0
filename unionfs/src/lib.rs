//! stratafs: a union filesystem in userspace with the semantics and on-disk format of the
//! kernel's overlayfs.
//!
//! Module map: `options` (what the user asked for), `cli` (parsing and validating the command
//! line), `sys` (every raw syscall and `unsafe`), `layers` (the layer stack and path resolution
//! inside a layer), `whiteout` (whiteout and opaque markers), `inodes` (FUSE inode table), `kernel_overlay` (the kernel driver),
//! `readdir` (merged directory listings), `copy_up`, `passthrough` (which opens the kernel serves itself), `fs` (the FUSE glue) and `mount` (mounting,
//! daemonizing, unmounting).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod copy_up;
pub mod error;
pub mod fs;
pub mod inodes;
pub mod kernel_overlay;
pub mod layers;
pub mod mount;
pub mod options;
pub mod passthrough;
pub mod readdir;
// The one place `unsafe` is allowed: raw syscalls behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;
pub mod whiteout;

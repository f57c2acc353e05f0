//! `strata run`: a minimal container runtime. It runs a command in a container whose root
//! filesystem is a layer stack (the kernel's overlay or stratafs), inside new namespaces, with
//! cgroup v2 limits.
//!
//! Modules, one per concept (model: youki):
//! * [`config`]: the validated command line;
//! * [`process`]: the process sequence (parent, intermediate, init, command), documented there;
//! * [`namespaces`], [`idmap`]: the namespaces and the user namespace's uid/gid maps;
//! * [`stack`]: the layer stack, its driver and the per-container state directory;
//! * [`rootfs`]: the root filesystem (pivot_root, /proc, /dev, /sys, masks, binds);
//! * [`cgroups`]: cgroup v2 (and v1 fallback) limits;
//! * [`seccomp`]: the system call filter (Docker's default profile or an OCI one);
//! * [`error`]: typed errors and exit statuses;
//! * [`sys`]: every raw system call and `unsafe` block, behind safe wrappers.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cgroups;
pub mod config;
pub mod error;
pub mod idmap;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod stack;
// The one place `unsafe` is allowed: raw syscalls behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;

pub use config::Config;
pub use error::Error;
pub use process::run;

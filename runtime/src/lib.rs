//! `strata run`: a minimal container runtime. It runs a command in a container whose root
//! filesystem is a layer stack (the kernel's overlay or stratafs), inside new namespaces, with
//! cgroup v2 limits.
//!
//! Modules, one per concept (model: youki):
//! * [`config`]: the validated command line;
//! * [`capabilities`]: the container's capability set (`--cap-add`, `--cap-drop`);
//! * [`oci`]: the OCI runtime CLI (`create`, `start`, `state`…) over a bundle's config.json,
//!   and its documents (`spec`'s default config.json, `features`);
//! * [`process`]: the process sequence (parent, intermediate, init, command), documented there;
//! * [`namespaces`], [`idmap`]: the namespaces and the user namespace's uid/gid maps;
//! * [`stack`]: the layer stack, its driver and the per-container state directory;
//! * [`state`]: where state lives, the lock of a live runtime, and the collection of what dead
//!   ones left (`strata gc`);
//! * [`rootfs`]: the root filesystem (pivot_root, /proc, /dev, /sys, masks, binds);
//! * [`cgroups`]: cgroup v2 (and v1 fallback) limits;
//! * [`devices`]: the device allowlist (an eBPF program, or the v1 devices controller);
//! * [`ulimits`]: `--ulimit`, the command's resource limits;
//! * [`tty`]: `-t`, the container's own terminal and its relay to the caller's;
//! * [`seccomp`]: the system call filter (Docker's default profile or an OCI one);
//! * [`hooks`]: the OCI hooks of a config.json (prestart, createRuntime... poststop);
//! * [`error`]: typed errors and exit statuses;
//! * [`sys`]: every raw system call and `unsafe` block, behind safe wrappers.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod capabilities;
pub mod cgroups;
pub mod config;
pub mod devices;
pub mod error;
pub mod hooks;
pub mod idmap;
pub mod namespaces;
pub mod oci;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod stack;
pub mod state;
// The one place `unsafe` is allowed: raw syscalls behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;
pub mod tty;
pub mod ulimits;

pub use config::Config;
pub use error::Error;
pub use process::run;

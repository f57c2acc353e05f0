//! The measuring instrument of issue 6: stratafs side by side with the kernel overlay and its
//! peers. `bench compare` (src/main.rs) runs the workloads of the comparison and writes
//! `bench/RESULTS.md`; `cargo bench -p bench` runs the criterion benchmarks of the hot paths.
//! See bench/README.md.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod compare;
pub mod guard;
pub mod report;
pub mod stack;
pub mod startup;
// The one place `unsafe` is allowed: raw syscalls behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;
pub mod targets;
pub mod workloads;

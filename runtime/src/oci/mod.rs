//! The OCI runtime form of strata (`strata create|start|state|kill|delete|run|exec|ps|list`),
//! as runc and crun expose it, so that podman, containerd's runc shim and through them
//! Kubernetes can run containers with strata.
//!
//! * [`bundle`]: a bundle's `config.json` (read with the `oci-spec` crate) turned into the same
//!   [`Config`](crate::Config) that `strata run --layer …` builds, plus what only the OCI form
//!   has ([`bundle::OciSettings`]);
//! * [`container`]: a container's state on disk under `--root` (`state.json`, `exec.fifo`),
//!   its status, and `delete`'s cleanup;
//! * [`exec`]: a process started in a running container's namespaces;
//! * [`cli`]: the subcommands' work;
//! * [`spec_default`], [`features`]: `strata spec` and `strata features`.

pub mod bundle;
pub mod cli;
pub mod container;
pub mod exec;
pub mod features;
pub mod spec_default;

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

/// In the foreground of `strata run ID` and `strata exec`: forwards the signals blocked in
/// `forwarded` to `pid`, relays its terminal (`console`), and returns its exit status (128+N
/// when signal N killed it) once it ends. The caller is its parent or subreaper.
pub(crate) fn wait_foreground(
    pid: nix::unistd::Pid,
    forwarded: nix::sys::signal::SigSet,
    console: Option<std::os::fd::OwnedFd>,
) -> i32 {
    use nix::sys::wait::WaitStatus;
    std::thread::spawn(move || {
        while let Ok(info) = crate::sys::wait_signal(&forwarded) {
            let _ = nix::sys::signal::kill(pid, info.signal);
        }
    });
    let mut relay = None;
    let raw = console.map(|m| {
        let master = std::sync::Arc::new(std::fs::File::from(m));
        let raw = crate::tty::RawMode::enter();
        let _ = crate::sys::copy_window_size(&std::io::stdin(), &*master);
        relay = crate::tty::Relay::start(master).ok();
        raw
    });
    let code = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => break code,
            Ok(WaitStatus::Signaled(p, s, _)) if p == pid => break 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break crate::error::EXIT_RUNTIME,
        }
    };
    if let Some(r) = relay {
        r.finish(std::time::Duration::from_secs(2));
    }
    drop(raw);
    code
}

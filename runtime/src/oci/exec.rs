//! `strata exec`: a new process in a running container.
//!
//! ```text
//!  strata exec                         parent: reads the channel (T: terminal, I: pid, E: failure)
//!  │ fork ───────────┐
//!  │                 joiner: joins the container's cgroups, then its namespaces through
//!  │                 │ /proc/PID/ns/* (user first; the mount namespace's root becomes its root)
//!  │                 │ fork ──────────┐
//!  │                 │ says "I<pid>", process: pid in the container's pid namespace; the same
//!  │                 │ exits          │ last steps as the container's command (capabilities,
//!  │                 │                │ rlimits, user, cwd, no_new_privs, seccomp), execve
//! ```
//!
//! With `--detach` strata exec returns once the process runs (it goes to the nearest
//! subreaper, e.g. conmon); otherwise strata exec is its subreaper, relays its terminal and
//! signals, and exits with its status.

use super::bundle;
use super::container::{Container, Status};
use crate::error::{self, ConfigError, Error, ProcessError};
use crate::process::{exec_command, Channel};
use crate::{sys, tty};
use log::debug;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// `strata exec`'s options.
pub struct ExecArgs {
    pub root: PathBuf,
    pub id: String,
    /// `--process FILE`: the process (an OCI `process` object); else the bundle's with `args`.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub tty: bool,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The container's namespaces that differ from this process's, opened (user first, mount last).
fn open_namespaces(pid: i32) -> Result<Vec<(OwnedFd, CloneFlags)>, Error> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if same {
            continue;
        }
        let fd = nix::fcntl::open(
            &theirs,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| crate::error::NamespaceError::Join {
            path: theirs.clone(),
            errno,
        })?;
        out.push((fd, *flag));
    }
    Ok(out)
}

fn parse_user(s: &str) -> Result<(u32, u32), ConfigError> {
    crate::config::parse_user(s)
}

pub fn exec(a: &ExecArgs) -> Result<i32, Error> {
    let c = Container::load(&a.root, &a.id)?;
    if c.status() != Status::Running {
        return Err(ConfigError::Conflict(format!(
            "container {} is {}, not running",
            a.id,
            c.status().name()
        ))
        .into());
    }
    let mut spec = bundle::load(&c.saved.bundle)?;
    let mut process = match &a.process {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| ConfigError::Path {
                what: "--process",
                path: f.clone(),
                reason: crate::error::io_text(&e),
            })?;
            serde_json::from_str::<oci_spec::runtime::Process>(&text).map_err(|e| {
                ConfigError::Path {
                    what: "--process",
                    path: f.clone(),
                    reason: e.to_string(),
                }
            })?
        }
        None => {
            if a.args.is_empty() {
                return Err(ConfigError::Conflict(
                    "strata exec: no command given (ID CMD [ARGS...], or --process FILE)".into(),
                )
                .into());
            }
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(a.args.clone()));
            p.set_terminal(Some(false));
            p
        }
    };
    if a.tty {
        process.set_terminal(Some(true));
    }
    if let Some(cwd) = &a.cwd {
        process.set_cwd(cwd.clone());
    }
    if !a.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(a.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let (uid, gid) = parse_user(u)?;
        process.user_mut().set_uid(uid);
        process.user_mut().set_gid(gid);
    }
    spec.set_process(Some(process));
    let mut cfg = bundle::config_of(&a.id, &c.saved.bundle, &spec)?;
    if let Some(o) = cfg.oci.as_mut() {
        o.preserve_fds = a.preserve_fds;
    }
    let namespaces = open_namespaces(c.saved.pid)?;
    let procs: Vec<PathBuf> = c
        .saved
        .cgroups
        .iter()
        .map(|d| d.join("cgroup.procs"))
        .collect();

    let mut forwarded = SigSet::empty();
    for s in crate::process::FORWARDED {
        forwarded.add(*s);
    }
    if !a.detach {
        nix::sys::prctl::set_child_subreaper(true).map_err(|errno| ProcessError::Setup {
            what: "becoming a subreaper",
            errno,
        })?;
        sys::block_signals(&forwarded).map_err(|errno| ProcessError::Setup {
            what: "blocking signals",
            errno,
        })?;
    }
    let (parent_end, child_end) =
        Channel::pair().map_err(|e| ProcessError::Channel(e.desc().into()))?;
    let joiner = match sys::fork().map_err(ProcessError::Fork)? {
        sys::Fork::Child => {
            drop(parent_end);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                join_and_run(&cfg, &namespaces, &procs, &child_end)
            }))
            .unwrap_or(error::EXIT_RUNTIME);
            sys::exit_now(code)
        }
        sys::Fork::Parent(p) => p,
    };
    drop(child_end);
    drop(namespaces);

    let mut pid = 0;
    let mut console: Option<OwnedFd> = None;
    let mut failure: Option<(i32, String)> = None;
    loop {
        let (msg, fd) = match parent_end.recv_with_fd() {
            Ok((m, _)) if m.is_empty() => break,
            Ok(m) => m,
            Err(_) => break,
        };
        match msg[0] {
            b'I' => {
                pid = crate::process::parse_pid(&msg[1..]);
                debug!("exec: the process is pid {pid} on the host");
            }
            b'T' => match (fd, &a.console_socket) {
                (Some(m), Some(sock)) => {
                    if let Err(e) = tty::send_to_console_socket(sock, &m) {
                        failure.get_or_insert((
                            error::EXIT_RUNTIME,
                            format!("--console-socket {}: {e}", sock.display()),
                        ));
                    }
                }
                (m, None) => console = m,
                (None, _) => {}
            },
            b'E' => {
                failure.get_or_insert(crate::process::parse_failure(&msg[1..]));
            }
            _ => {}
        }
    }
    let _ = loop {
        match nix::sys::wait::waitpid(joiner, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    if let Some((code, message)) = failure {
        return Err(ProcessError::Child { code, message }.into());
    }
    if pid <= 0 {
        return Err(ProcessError::Child {
            code: error::EXIT_RUNTIME,
            message: "strata exec: the process was not started".into(),
        }
        .into());
    }
    if let Some(p) = &a.pid_file {
        let tmp = p.with_extension("strata-tmp");
        std::fs::write(&tmp, pid.to_string())
            .and_then(|()| std::fs::rename(&tmp, p))
            .map_err(|e| crate::state::io_err("writing", p, e))?;
    }
    if a.detach {
        return Ok(0);
    }
    Ok(super::wait_foreground(
        Pid::from_raw(pid),
        forwarded,
        console,
    ))
}

/// The joiner: cgroups, namespaces, then the process (forked: a pid namespace applies to
/// children). Returns its exit status.
fn join_and_run(
    cfg: &crate::Config,
    namespaces: &[(OwnedFd, CloneFlags)],
    procs: &[PathBuf],
    chan: &Channel,
) -> i32 {
    if nix::unistd::setsid().is_err() {
        return error::EXIT_RUNTIME;
    }
    for p in procs {
        if let Err(e) = std::fs::write(p, "0") {
            debug!("exec: joining {}: {e}", p.display());
        }
    }
    for (fd, flag) in namespaces {
        if let Err(errno) = nix::sched::setns(fd, *flag) {
            return chan.fail(
                error::EXIT_RUNTIME,
                &ProcessError::Setup {
                    what: "joining the container's namespaces",
                    errno,
                },
            );
        }
    }
    if namespaces
        .iter()
        .any(|(_, f)| *f == CloneFlags::CLONE_NEWUSER)
    {
        if let Err(e) = sys::set_ids(
            nix::unistd::Uid::from_raw(0),
            nix::unistd::Gid::from_raw(0),
            false,
        ) {
            return chan.fail(
                error::EXIT_RUNTIME,
                &ProcessError::Setup {
                    what: "becoming root in the container's user namespace",
                    errno: e,
                },
            );
        }
    }
    let _ = nix::unistd::chdir(Path::new("/"));
    match sys::fork() {
        Err(e) => chan.fail(error::EXIT_RUNTIME, &ProcessError::Fork(e)),
        Ok(sys::Fork::Child) => {
            let err = exec_command(cfg, None, false, chan);
            sys::exit_now(chan.fail(err.exit_code(), &err))
        }
        Ok(sys::Fork::Parent(p)) => {
            let _ = chan.send(format!("I{}", p.as_raw()).as_bytes());
            0
        }
    }
}

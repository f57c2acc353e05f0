//! The OCI subcommands' work, called by `main` once clap has parsed them. Each returns the
//! exit status or the error `main` prints (and logs to `--log`).

use super::bundle;
use super::container::{Container, Status};
use crate::error::{ConfigError, Error, ProcessError};
use crate::process::{self, CreateOptions};
use crate::sys;
use log::{debug, info};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// println! that ignores a closed stdout (`strata features | head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `create`'s and `run`'s options.
pub struct CreateArgs {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    let tmp = path.with_extension("strata-tmp");
    let err = |e| crate::state::io_err("writing", path, e);
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The hooks of the bundle in `c`'s state, run with its state on stdin.
fn hooks_of(
    c: &Container,
    pick: fn(&oci_spec::runtime::Hooks) -> &Option<Vec<oci_spec::runtime::Hook>>,
) -> Vec<oci_spec::runtime::Hook> {
    bundle::load(&c.saved.bundle)
        .ok()
        .and_then(|s| s.hooks().clone())
        .and_then(|h| pick(&h).clone())
        .unwrap_or_default()
}

fn state_bytes(c: &Container) -> Vec<u8> {
    serde_json::to_vec(&c.state_json()).unwrap_or_default()
}

/// `strata create`: the container waits for `start`. Returns it and the terminal's master
/// (when there is a terminal and no console socket).
pub fn create(a: &CreateArgs) -> Result<(Container, Option<std::os::fd::OwnedFd>), Error> {
    super::container::check_id(&a.id)?;
    let mut cfg = bundle::config(&a.id, &a.bundle)?;
    if let Some(o) = cfg.oci.as_mut() {
        o.preserve_fds = a.preserve_fds;
    }
    if cfg.tty && a.console_socket.is_none() && !sys::is_terminal(&std::io::stdin()) {
        debug!("process.terminal without --console-socket or a terminal here");
    }
    let dir = Container::make_dir(&a.root, &a.id)?;
    let opts = CreateOptions {
        dir: &dir,
        console_socket: a.console_socket.as_deref(),
    };
    let created = match process::create(&cfg, &opts) {
        Ok(c) => c,
        Err(e) => {
            let _ = crate::state::force_remove(&dir);
            return Err(e);
        }
    };
    let oci = cfg
        .oci
        .as_ref()
        .ok_or(ConfigError::Conflict("no bundle".into()))?;
    let c = Container::save(
        &dir,
        &a.id,
        created.pid,
        &oci.bundle,
        oci.annotations.clone(),
        created.cgroups,
    )?;
    let fail = |e: Error| {
        let _ = c.delete(true);
        e
    };
    if let Some(h) = &oci.hooks {
        // runtime-tools' hooks_stdin wants "created" here (runc passes "creating").
        let state = state_bytes(&c);
        for (phase, list) in [
            ("prestart", h.prestart()),
            ("createRuntime", h.create_runtime()),
        ] {
            if let Some(list) = list {
                crate::hooks::run_hooks(list, &state, phase).map_err(|e| fail(e.into()))?;
            }
        }
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, created.pid).map_err(fail)?;
    }
    info!("container {} created (pid {})", a.id, created.pid);
    Ok((c, created.console))
}

pub fn start(root: &Path, id: &str) -> Result<i32, Error> {
    let c = Container::load(root, id)?;
    c.start()?;
    let post = hooks_of(&c, |h| h.poststart());
    // The state as it was at the start, as runc passes it: a short process may have
    // ended by now.
    let mut st = c.state_json();
    st["status"] = serde_json::json!("running");
    st["pid"] = serde_json::json!(c.saved.pid);
    let state = serde_json::to_vec(&st).unwrap_or_default();
    crate::hooks::run_hooks_best_effort(&post, &state, "poststart");
    Ok(0)
}

pub fn state(root: &Path, id: &str) -> Result<i32, Error> {
    let c = Container::load(root, id)?;
    let text = serde_json::to_string_pretty(&c.state_json()).unwrap_or_default();
    outln!("{text}");
    Ok(0)
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub fn parse_signal(s: &str) -> Result<Signal, Error> {
    let bad = || {
        Error::Config(ConfigError::BadValue {
            option: "signal",
            value: s.to_string(),
            reason: "expected a signal name (TERM, SIGKILL...) or number".into(),
        })
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<i32, Error> {
    let sig = parse_signal(signal)?;
    let c = Container::load(root, id)?;
    c.kill(sig, all)?;
    Ok(0)
}

pub fn delete(root: &Path, id: &str, force: bool) -> Result<i32, Error> {
    let c = match Container::load(root, id) {
        Ok(c) => c,
        // runc: --force on a container that does not exist is not an error.
        Err(Error::Config(ConfigError::Conflict(_)))
            if force && !root.join(id).join("state.json").exists() =>
        {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let post = hooks_of(&c, |h| h.poststop());
    let state = state_bytes(&c);
    c.delete(force)?;
    crate::hooks::run_hooks_best_effort(&post, &state, "poststop");
    Ok(0)
}

pub fn list(root: &Path, format: &str, quiet: bool) -> Result<i32, Error> {
    let all = Container::list(root);
    let mut out = std::io::stdout().lock();
    if quiet {
        for c in &all {
            let _ = writeln!(out, "{}", c.saved.id);
        }
        return Ok(0);
    }
    match format {
        "json" => {
            let v: Vec<serde_json::Value> = all.iter().map(|c| c.state_json()).collect();
            let _ = writeln!(out, "{}", serde_json::Value::Array(v));
        }
        "table" => {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for c in &all {
                let st = c.status();
                let pid = if st == Status::Stopped {
                    0
                } else {
                    c.saved.pid
                };
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} {:<32} {}",
                    c.saved.id,
                    pid,
                    st.name(),
                    c.saved.bundle.display(),
                    c.saved.created,
                    c.saved.owner
                );
            }
        }
        other => {
            return Err(ConfigError::BadValue {
                option: "--format",
                value: other.into(),
                reason: "expected table or json".into(),
            }
            .into())
        }
    }
    Ok(0)
}

pub fn ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<i32, Error> {
    let c = Container::load(root, id)?;
    let pids = c.pids();
    match format {
        "json" => {
            outln!("{}", serde_json::json!(pids));
            Ok(0)
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .map_err(|e| crate::state::io_err("running", Path::new("ps"), e))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let Some(header) = lines.next() else {
                return Ok(1);
            };
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .ok_or_else(|| ConfigError::Conflict("ps printed no PID column".into()))?;
            outln!("{header}");
            for l in lines {
                let pid = l
                    .split_whitespace()
                    .nth(col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    outln!("{l}");
                }
            }
            Ok(0)
        }
        other => Err(ConfigError::BadValue {
            option: "--format",
            value: other.into(),
            reason: "expected table or json".into(),
        }
        .into()),
    }
}

/// `strata run ID` (OCI): create and start; in the foreground (no `--detach`), wait for the
/// container process (this process is its subreaper), forward signals to it, relay its
/// terminal, delete the container and exit with its status.
pub fn run(a: &CreateArgs, detach: bool) -> Result<i32, Error> {
    let mut forwarded = SigSet::empty();
    for s in crate::process::FORWARDED {
        forwarded.add(*s);
    }
    if !detach {
        nix::sys::prctl::set_child_subreaper(true).map_err(|errno| ProcessError::Setup {
            what: "becoming a subreaper",
            errno,
        })?;
        sys::block_signals(&forwarded).map_err(|errno| ProcessError::Setup {
            what: "blocking signals",
            errno,
        })?;
    }
    let (c, console) = create(a)?;
    if let Err(e) = start(&a.root, &a.id) {
        let _ = c.delete(true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = super::wait_foreground(Pid::from_raw(c.saved.pid), forwarded, console);
    let post = hooks_of(&c, |h| h.poststop());
    let state = state_bytes(&c);
    c.delete(true)?;
    crate::hooks::run_hooks_best_effort(&post, &state, "poststop");
    Ok(code)
}

pub fn spec(bundle: &Path, rootless: bool) -> Result<i32, Error> {
    let file = bundle.join("config.json");
    if file.exists() {
        return Err(ConfigError::Conflict(format!("{} exists already", file.display())).into());
    }
    let spec = super::spec_default::default_spec(rootless);
    let text = serde_json::to_string_pretty(&spec).unwrap_or_default();
    std::fs::write(&file, text + "\n").map_err(|e| crate::state::io_err("writing", &file, e))?;
    Ok(0)
}

pub fn features() -> Result<i32, Error> {
    outln!("{}", super::features::features_json());
    Ok(0)
}

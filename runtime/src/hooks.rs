//! OCI hooks (config.md, "POSIX-platform Hooks"): programs the runtime runs at points of the
//! container's lifecycle, each given the container's state JSON on its stdin.
//!
//! A hook runs as `path` with `args` (`args[0]` is its argv[0]) and exactly `env` as its
//! environment. Its stdin is a memfd holding the state JSON rather than a pipe: the hook reads
//! it to EOF as it would a closed pipe, and a hook that does not read it cannot make the write
//! fail (EPIPE) or block (a full pipe), whatever the SIGPIPE disposition of the caller. Its
//! stdout and stderr go to memfds as well, so a daemon the hook leaves behind holding them open
//! cannot make us wait for an EOF; their tail goes into the error of a failed hook.
//!
//! The hook gets a process group of its own, so that a timeout kills what it started too (a
//! shell's `sleep`).

use crate::error::HookError;
use log::{debug, warn};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Hook;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of a failed hook's output goes into the error line.
const TAIL: usize = 512;

/// Runs `hooks` in order, each with `state_json` on its stdin; stops at the first that fails
/// (for prestart, createRuntime, createContainer and startContainer, whose failure the spec
/// makes the operation's).
pub fn run_hooks(hooks: &[Hook], state_json: &[u8], phase: &'static str) -> Result<(), HookError> {
    for hook in hooks {
        run_hook(hook, state_json, phase)?;
    }
    Ok(())
}

/// Runs every one of `hooks`, logging a warning for each that fails (for poststart and
/// poststop: the spec says their failure must only be warned of, the others still run).
pub fn run_hooks_best_effort(hooks: &[Hook], state_json: &[u8], phase: &'static str) {
    for hook in hooks {
        if let Err(e) = run_hook(hook, state_json, phase) {
            warn!("{e}");
        }
    }
}

fn run_hook(hook: &Hook, state_json: &[u8], phase: &'static str) -> Result<(), HookError> {
    let path = hook.path();
    let invalid = |reason: &str| HookError::Invalid {
        phase,
        path: path.clone(),
        reason: reason.into(),
    };
    // The spec requires an absolute path; a bare name would be looked up in our own PATH.
    if !path.is_absolute() {
        return Err(invalid("the path must be absolute"));
    }
    let timeout = hook.timeout();
    if timeout.is_some_and(|secs| secs <= 0) {
        return Err(invalid("the timeout must be greater than zero"));
    }
    let spawn_err = |err: io::Error| HookError::Spawn {
        phase,
        path: path.clone(),
        err,
    };

    let stdin = memfd(c"strata-hook-stdin").map_err(spawn_err)?;
    (&stdin)
        .write_all(state_json)
        .and_then(|()| (&stdin).rewind())
        .map_err(spawn_err)?;
    let stdout = memfd(c"strata-hook-stdout").map_err(spawn_err)?;
    let stderr = memfd(c"strata-hook-stderr").map_err(spawn_err)?;

    let mut cmd = Command::new(path);
    // Without args, argv[0] is the path, as Command makes it.
    if let Some([argv0, rest @ ..]) = hook.args().as_deref() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for entry in hook.env().iter().flatten() {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                cmd.env(key, value);
            }
            // std passes only KEY=VALUE pairs; such an entry would be no variable anyway.
            _ => warn!(
                "{phase} hook {}: environment entry '{entry}' is not KEY=VALUE: left out",
                path.display()
            ),
        }
    }
    let out = |f: &File| f.try_clone().map(Stdio::from).map_err(spawn_err);
    cmd.stdin(out(&stdin)?)
        .stdout(out(&stdout)?)
        .stderr(out(&stderr)?)
        .process_group(0);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The copies of the memfds that Command keeps are of no more use.
    drop(cmd);
    drop(stdin);

    let status = wait(&mut child, timeout).map_err(spawn_err)?;
    let stdout_tail = tail(&stdout);
    if !stdout_tail.is_empty() {
        debug!("{phase} hook {} stdout: {stdout_tail}", path.display());
    }
    let output = || {
        let err = tail(&stderr);
        if err.is_empty() {
            stdout_tail.clone()
        } else {
            err
        }
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(HookError::Failed {
            phase,
            path: path.clone(),
            status: describe(s),
            output: output(),
        }),
        // wait() returns None only when there is a timeout.
        None => Err(HookError::Timeout {
            phase,
            path: path.clone(),
            secs: timeout.unwrap_or_default(),
            output: output(),
        }),
    }
}

fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    memfd_create(name, MFdFlags::MFD_CLOEXEC)
        .map(File::from)
        .map_err(io::Error::from)
}

/// The hook's exit status, or None if it outlived `timeout` seconds (it is then killed, with its
/// process group, and reaped).
fn wait(child: &mut Child, timeout: Option<i64>) -> io::Result<Option<ExitStatus>> {
    let Some(secs) = timeout else {
        return child.wait().map(Some);
    };
    let deadline = Instant::now() + Duration::from_secs(secs.unsigned_abs());
    // Polling: hooks are few and short, and a pidfd would need a newer kernel than we ask for.
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(50));
    }
    let pgid = Pid::from_raw(child.id() as i32);
    if let Err(e) = killpg(pgid, Signal::SIGKILL) {
        debug!("killing the hook's process group {pgid}: {e}");
        // At least the hook itself (the group cannot be gone while it is unreaped).
        let _ = child.kill();
    }
    child.wait()?;
    Ok(None)
}

/// "exit status 1", "killed by SIGTERM".
fn describe(s: ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit status {code}");
    }
    match s.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(name) => format!("killed by {name}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => s.to_string(),
    }
}

/// The last [`TAIL`] bytes of what was written to `f`, on one line.
fn tail(f: &File) -> String {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL as u64);
    let mut buf = vec![0; (len - start) as usize];
    let n = f.read_at(&mut buf, start).unwrap_or(0);
    buf.truncate(n);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let one = lines.join("; ");
    if start > 0 {
        format!("...{one}")
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn sh(script: &str, env: &[&str], timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".into(), script.into()])
            .env(env.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strata-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    const STATE: &[u8] =
        br#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#;

    #[test]
    fn state_on_stdin() {
        let out = tmp("stdin");
        let hook = sh(&format!("cat > {}", out.display()), &[], None);
        run_hooks(&[hook], STATE, "createRuntime").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), STATE);
    }

    #[test]
    fn env_exactly_as_given_and_argv() {
        let out = tmp("env");
        let cmdline = tmp("cmdline");
        let script = format!(
            "env > {}; cat /proc/$$/cmdline > {}",
            out.display(),
            cmdline.display()
        );
        let hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "myhook".to_string(),
                "-c".into(),
                script.clone(),
                "x".into(),
            ])
            .env(vec!["FOO=bar=baz".to_string(), "EMPTY=".into()])
            .build()
            .unwrap();
        run_hooks(&[hook], STATE, "prestart").unwrap();
        assert_eq!(
            std::fs::read(&cmdline).unwrap(),
            format!("myhook\0-c\0{script}\0x\0").as_bytes()
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        // What the shell itself exports (dash: PWD; bash: PWD, SHLVL, _); the rest is ours only.
        lines
            .retain(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="));
        lines.sort();
        assert_eq!(lines, vec!["EMPTY=", "FOO=bar=baz"]);
    }

    #[test]
    fn no_args_means_path_as_argv0() {
        let out = tmp("argv0");
        let script = tmp("argv0.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$0\" > {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let hook = HookBuilder::default().path(&script).build().unwrap();
        run_hooks(&[hook], STATE, "poststop").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            script.to_str().unwrap()
        );
    }

    #[test]
    fn non_zero_exit_fails_with_phase_path_status_and_stderr() {
        let hook = sh("echo first >&2; echo 'no network' >&2; exit 1", &[], None);
        let e = run_hooks(&[hook], STATE, "createRuntime").unwrap_err();
        assert_eq!(
            e.to_string(),
            "createRuntime hook /bin/sh failed (exit status 1): first; no network"
        );
    }

    #[test]
    fn not_reading_stdin_is_fine() {
        // Larger than a pipe's buffer: a pipe would block or fail with EPIPE.
        let big = vec![b' '; 1 << 20];
        run_hooks(&[sh("exit 0", &[], None)], &big, "prestart").unwrap();
    }

    #[test]
    fn stops_at_first_failure_best_effort_does_not() {
        let out = tmp("order");
        let _ = std::fs::remove_file(&out);
        let mark = |m: &str| sh(&format!("echo {m} >> {}", out.display()), &[], None);
        let hooks = [mark("a"), sh("exit 3", &[], None), mark("b")];
        assert!(run_hooks(&hooks, STATE, "createContainer").is_err());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\n");
        run_hooks_best_effort(&hooks, STATE, "poststart");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\na\nb\n");
    }

    #[test]
    fn timeout_kills() {
        let start = Instant::now();
        let e = run_hooks(&[sh("sleep 5", &[], Some(1))], STATE, "startContainer").unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            e.to_string(),
            "startContainer hook /bin/sh timed out after 1 s (killed)"
        );
        // Within the timeout: fine.
        run_hooks(&[sh("exit 0", &[], Some(5))], STATE, "startContainer").unwrap();
    }

    #[test]
    fn invalid_hooks() {
        let rel = HookBuilder::default().path("sh").build().unwrap();
        assert_eq!(
            run_hooks(&[rel], STATE, "prestart")
                .unwrap_err()
                .to_string(),
            "prestart hook sh: the path must be absolute"
        );
        let zero = sh("exit 0", &[], Some(0));
        assert!(run_hooks(&[zero], STATE, "prestart")
            .unwrap_err()
            .to_string()
            .ends_with("the timeout must be greater than zero"));
        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        assert_eq!(
            run_hooks(&[missing], STATE, "poststop")
                .unwrap_err()
                .to_string(),
            "poststop hook /nonexistent/hook: No such file or directory"
        );
    }

    #[test]
    fn killed_by_signal() {
        let e = run_hooks(&[sh("kill -TERM $$", &[], None)], STATE, "prestart").unwrap_err();
        assert_eq!(
            e.to_string(),
            "prestart hook /bin/sh failed (killed by SIGTERM)"
        );
    }
}

//! `strata run -t`: the container's own terminal, relayed to the caller's (which util-linux
//! `script` provides here, as an interactive user's terminal would): the command sees a
//! controlling tty in its own devpts with the caller's window size, keys typed reach it
//! (Ctrl-C included), the exit status comes through, and the caller's terminal settings are
//! back as they were. Without `-t` the command has no controlling terminal.

#![deny(unsafe_code)]

mod runtime_common;

use runtime_common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rootfs(name: &str) -> Rootfs {
    assert_root();
    Rootfs::new(name)
}

#[test]
fn tty_gives_a_controlling_terminal_with_the_callers_size() {
    let r = rootfs("tty");
    let (shown, _) = on_a_terminal(
        &r,
        "stty rows 33 cols 101; $STRATA run -t $LAYERS -- sh -c 'tty; stty size; ls -l /dev/console; cut -d\" \" -f7 /proc/self/stat; [ -t 0 ] && [ -t 1 ] && echo stdio-tty'; echo \"strata: $?\"",
        &[],
        Duration::ZERO,
    );
    assert!(shown.contains("/dev/pts/0\n"), "{shown}");
    assert!(shown.contains("33 101\n"), "window size: {shown}");
    assert!(
        shown.contains("136,   0 "),
        "/dev/console is the pty: {shown}"
    );
    assert!(shown.contains("stdio-tty"), "{shown}");
    assert!(shown.contains("strata: 0"), "{shown}");
    // tty_nr (field 7): 34816 is 136:0, the container's pts/0.
    assert!(shown.contains("\n34816\n"), "controlling tty: {shown}");
}

#[test]
fn typed_keys_and_ctrl_c_reach_the_command_and_the_terminal_is_restored() {
    let r = rootfs("tty-keys");
    let t = Instant::now();
    let (shown, code) = on_a_terminal(
        &r,
        "stty -g > /tmp/strata-tty-$$-before; $STRATA run -t $LAYERS -- sh; rc=$?; stty -g | cmp -s - /tmp/strata-tty-$$-before && echo terminal-restored; rm -f /tmp/strata-tty-$$-before; exit $rc",
        &[
            b"sleep 100; echo not-interrupted\n",
            b"\x03",
            b"echo after-$((40+2))\n",
            b"exit 3\n",
        ],
        Duration::from_millis(700),
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "Ctrl-C did not interrupt sleep"
    );
    assert!(shown.contains("after-42"), "typed input: {shown}");
    // (The typed line itself is echoed; its output would be a line of its own.)
    assert!(!shown.lines().any(|l| l == "not-interrupted"), "{shown}");
    assert!(shown.contains("terminal-restored"), "{shown}");
    assert_eq!(code, 3, "exit status through -t: {shown}");
}

#[test]
fn without_tty_there_is_no_controlling_terminal_nor_console() {
    let r = rootfs("notty");
    let (shown, _) = on_a_terminal(
        &r,
        "$STRATA run $LAYERS -- sh -c 'echo \"tty_nr=$(cut -d\" \" -f7 /proc/self/stat)\"; [ -e /dev/console ] && echo console || echo no-console'",
        &[],
        Duration::ZERO,
    );
    assert!(shown.contains("tty_nr=0\n"), "{shown}");
    assert!(shown.contains("no-console"), "{shown}");
}

#[test]
fn tty_without_a_terminal_on_stdin_still_runs() {
    // As `docker run -t` from a script: output comes through the pty, stdin's end is an EOF.
    let r = rootfs("tty-pipe");
    let mut args: Vec<String> = vec!["run".into(), "-t".into()];
    args.extend(r.layer_args());
    args.extend([
        "--".into(),
        "sh".into(),
        "-c".into(),
        "cat; echo done".into(),
    ]);
    let mut child = Command::new(strata_bin())
        .args(&args)
        .env("STRATA_STATE_DIR", &r.state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"line\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("line\r\n") && stdout.contains("done"),
        "{stdout:?}"
    );
}

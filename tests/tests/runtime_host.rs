//! `strata run` on the host, as root, with real namespaces and mounts: isolation, the layer
//! stack, exit statuses and signals, environment, mounts, hardening, cleanup, and bad input.
//! The rootfs is a two-layer busybox stack (Debian's busybox-static).
//!
//! `cargo build -p runtime -p unionfs && cargo test -p e2e --test runtime_host`

#![deny(unsafe_code)]
mod runtime_common;

use runtime_common::*;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rootfs(name: &str) -> Rootfs {
    assert_root();
    Rootfs::new(name)
}

#[test]
fn command_runs_under_init_in_a_new_pid_namespace() {
    let r = rootfs("pid");
    let run = r.run(
        &[],
        &[
            "sh",
            "-c",
            "echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'",
        ],
    );
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0], "2",
        "the command is pid 2, under the tiny init (pid 1)"
    );
    assert_eq!(lines[1], "strata", "pid 1 is strata's init");
    let n: u32 = lines[2].parse().unwrap();
    assert!(
        n <= 4,
        "only the container's processes are visible in /proc, saw {n}"
    );
}

#[test]
fn hostname_is_set_in_a_new_uts_namespace() {
    let r = rootfs("hostname");
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let run = r.run(&["--hostname", "box-1"], &["hostname"]);
    assert_eq!(run.ok().stdout.trim(), "box-1");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host
    );
}

#[test]
fn no_host_mount_is_visible() {
    let r = rootfs("mounts");
    let run = r.run(&[], &["cat", "/proc/self/mountinfo"]);
    run.ok();
    for line in run.stdout.lines() {
        let mountpoint = line.split(' ').nth(4).unwrap();
        let fstype = line.split(" - ").nth(1).unwrap().split(' ').next().unwrap();
        let allowed = mountpoint == "/"
            || ["/proc", "/dev", "/sys", "/tmp"]
                .iter()
                .any(|p| mountpoint == *p || mountpoint.starts_with(&format!("{p}/")));
        assert!(allowed, "unexpected mount in the container: {line}");
        assert!(
            !matches!(fstype, "ext4" | "xfs" | "btrfs" | "cgroup" | "9p"),
            "a host filesystem is visible in the container: {line}"
        );
    }
    assert!(
        !run.stdout.contains(r.dir.to_str().unwrap()) || run.stdout.contains("lowerdir="),
        "host paths leak"
    );
}

#[test]
fn net_none_has_only_lo_up() {
    let r = rootfs("net");
    let run = r.run(&["--net", "none"], &["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/flags; tail -n +3 /proc/net/dev | cut -d: -f1"]);
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    assert_eq!(lines[0], "lo", "only lo in /sys/class/net: {:?}", lines);
    assert_eq!(lines[1], "0x9", "lo is UP (flags UP|LOOPBACK)");
    assert_eq!(&lines[2..], &["lo"], "only lo in /proc/net/dev");
}

#[test]
fn net_host_shares_the_hosts_interfaces() {
    let r = rootfs("nethost");
    let host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let run = r.run(&["--net", "host"], &["ls", "/sys/class/net"]);
    let mut inside: Vec<String> = run
        .ok()
        .stdout
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut host = host;
    inside.sort();
    host.sort();
    assert_eq!(inside, host);
}

#[test]
fn rootfs_is_the_merge_of_the_layers_and_writes_land_in_upper() {
    let r = rootfs("merge");
    let upper = r.mkdir("upper");
    let run = r.run(
        &["--upper", upper.to_str().unwrap()],
        &["sh", "-c", "cat /etc/who /etc/base-only; /app/hello.sh; echo new > /etc/new; rm /etc/base-only; echo changed > /etc/who"],
    );
    assert_eq!(run.ok().stdout, "app\nb\nhello from the app layer\n");
    assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/who")).unwrap(),
        "changed\n"
    );
    let wh = fs::symlink_metadata(upper.join("etc/base-only")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "a whiteout in upper for the removed file"
    );
    // The layers are untouched.
    assert_eq!(fs::read_to_string(r.app.join("etc/who")).unwrap(), "app\n");
    assert_eq!(
        fs::read_to_string(r.base.join("etc/base-only")).unwrap(),
        "b\n"
    );
    // A second run over the same upper sees the changes.
    let again = r.run(
        &["--upper", upper.to_str().unwrap()],
        &[
            "sh",
            "-c",
            "cat /etc/new /etc/who; ls /etc/base-only 2>&1 || true",
        ],
    );
    assert!(
        again.ok().stdout.starts_with("new\nchanged\n"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("No such file"));
    // No work directory left next to the upper (it was in the state directory or removed).
    let siblings: Vec<_> = fs::read_dir(&r.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        siblings
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".strata-work")),
        "{siblings:?}"
    );
}

#[test]
fn without_upper_writes_are_temporary() {
    let r = rootfs("tempupper");
    let first = r.run(
        &["-v"],
        &["sh", "-c", "echo x > /etc/tmpfile && cat /etc/tmpfile"],
    );
    assert_eq!(first.ok().stdout, "x\n");
    assert_no_leftovers(&r, &first);
    let second = r.run(
        &[],
        &[
            "sh",
            "-c",
            "test -e /etc/tmpfile && echo present || echo absent",
        ],
    );
    assert_eq!(second.ok().stdout, "absent\n");
    assert!(!r.app.join("etc/tmpfile").exists() && !r.base.join("etc/tmpfile").exists());
}

#[test]
fn read_only_root() {
    let r = rootfs("ro");
    let run = r.run(
        &["--read-only"],
        &[
            "sh",
            "-c",
            "touch /etc/x 2>&1; echo ok > /tmp/y && cat /tmp/y",
        ],
    );
    assert!(
        run.ok().stdout.contains("Read-only file system"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("ok\n"), "/tmp stays writable");
}

#[test]
fn exit_statuses_and_signals() {
    let r = rootfs("exit");
    r.run(&[], &["true"]).expect(0);
    r.run(&[], &["sh", "-c", "exit 7"]).expect(7);
    r.run(&[], &["sh", "-c", "kill -TERM $$"]).expect(143);
    r.run(&[], &["sh", "-c", "kill -KILL $$"]).expect(137);
}

#[test]
fn missing_or_unexecutable_command() {
    let r = rootfs("enoent");
    let run = r.run(&["-v"], &["no-such-command"]);
    run.expect(127);
    assert!(
        run.stderr
            .contains("strata: no-such-command: command not found in the container"),
        "{}",
        run.stderr
    );
    assert_no_leftovers(&r, &run);
    let run = r.run(&[], &["/bin/no-such"]);
    run.expect(127);
    let run = r.run(&[], &["/app/notexec"]);
    run.expect(126);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn environment_and_workdir() {
    let r = rootfs("env");
    let run = r.run(
        &[
            "--env",
            "FOO=bar baz",
            "-e",
            "PATH=/bin",
            "--workdir",
            "/srv/app",
        ],
        &[
            "sh",
            "-c",
            "echo \"$FOO\"; echo $PATH; pwd; echo ${STRATA_TEST_SECRET:-clean}; echo $HOME",
        ],
    );
    assert_eq!(run.ok().stdout, "bar baz\n/bin\n/srv/app\nclean\n/root\n");
    let run = r.run(&[], &["sh", "-c", "echo $PATH; pwd"]);
    assert_eq!(
        run.ok().stdout,
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/\n"
    );
}

#[test]
fn user_switch() {
    let r = rootfs("user");
    let run = r.run(
        &["--user", "1000:1000"],
        &[
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/status | grep ^CapEff",
        ],
    );
    let out = run.ok().stdout.clone();
    assert!(out.starts_with("1000\n1000\n"), "{out}");
    assert!(
        out.contains("0000000000000000"),
        "no effective capability as uid 1000: {out}"
    );
}

#[test]
fn bind_mounts_and_tmpfs() {
    let r = rootfs("bind");
    let data = r.mkdir("data");
    fs::write(data.join("in"), "from host\n").unwrap();
    let rw = format!("{}:/mnt/data", data.display());
    let ro = format!("{}:/mnt/ro:ro", data.display());
    let run = r.run(
        &["--bind", &rw, "--bind", &ro, "--tmpfs", "/scratch"],
        &["sh", "-c", "cat /mnt/data/in; echo out > /mnt/data/out; touch /mnt/ro/x 2>&1; grep ' /scratch ' /proc/mounts | cut -d' ' -f3"],
    );
    run.ok();
    assert!(run.stdout.starts_with("from host\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Read-only file system"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("tmpfs\n"), "{}", run.stdout);
    assert_eq!(fs::read_to_string(data.join("out")).unwrap(), "out\n");
    assert!(!data.join("x").exists());
}

#[test]
fn hardening() {
    let r = rootfs("hardening");
    let run = r.run(
        &[],
        &["sh", "-c", "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; readlink /proc/1/exe >/dev/null 2>&1 && echo exe-visible || echo exe-hidden; if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo 0; fi; echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo sys-writable || echo sys-ro; ls /sys/firmware | wc -l; ls /proc/self/fd | wc -l"],
    );
    let out = run.ok().stdout.clone();
    assert!(
        out.contains("CapBnd:\t00000000a00425fb"),
        "Docker's default bounding set without CAP_MKNOD: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("exe-hidden"),
        "/proc/1/exe must not be reachable: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[3].trim(), "0", "/proc/kcore masked");
    assert_eq!(lines[4], "sys-ro");
    assert_eq!(lines[5].trim(), "0", "/sys/firmware masked");
    // ls's own fds: 0, 1, 2 and the directory it reads (3): nothing inherited.
    assert!(lines[6].trim().parse::<u32>().unwrap() <= 4, "{out}");
}

#[test]
fn mount_target_through_a_symlink_is_refused() {
    let r = rootfs("symlink");
    std::os::unix::fs::symlink("/proc/sys", r.app.join("evil")).unwrap();
    let run = r.run(&["--tmpfs", "/evil/x", "-v"], &["true"]);
    run.expect(125);
    assert!(run.stderr.contains("symlink"), "{}", run.stderr);
    assert_no_leftovers(&r, &run);
}

#[test]
fn fuse_driver_merges_and_cleans_up() {
    assert_stratafs();
    let r = rootfs("fuse");
    let upper = r.mkdir("upper");
    let run = r.run(
        &["--driver", "fuse", "--upper", upper.to_str().unwrap(), "-v"],
        &[
            "sh",
            "-c",
            "grep ' / ' /proc/mounts | cut -d' ' -f3; cat /etc/who; echo w > /written",
        ],
    );
    assert_eq!(run.ok().stdout, "fuse.stratafs\napp\n");
    assert_eq!(fs::read_to_string(upper.join("written")).unwrap(), "w\n");
    assert_no_leftovers(&r, &run);
    // A failing command with the FUSE driver leaves nothing either.
    let run = r.run(&["--driver", "fuse", "-v"], &["no-such-command"]);
    run.expect(127);
    assert_no_leftovers(&r, &run);
}

#[test]
fn kernel_driver_is_the_kernel_overlay() {
    let r = rootfs("kernel");
    let run = r.run(
        &["--driver", "kernel"],
        &["sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f3"],
    );
    assert_eq!(run.ok().stdout, "overlay\n");
}

#[test]
fn cleanup_after_success_failure_and_sigkill() {
    let r = rootfs("cleanup");
    for cmd in [
        vec!["true"],
        vec!["sh", "-c", "exit 3"],
        vec!["sh", "-c", "sleep 100 & kill -KILL $$"],
    ] {
        let run = r.run(&["-v"], &cmd);
        assert!([0, 3, 137].contains(&run.code), "{}", run.stderr);
        assert_no_leftovers(&r, &run);
    }
    // A mount failure inside the container (bind onto a file over a directory).
    let file = r.dir.join("afile");
    fs::write(&file, "x").unwrap();
    let bad = format!("{}:/etc", file.display());
    let run = r.run(&["-v", "--bind", &bad], &["true"]);
    run.expect(125);
    assert_no_leftovers(&r, &run);
}

/// Starts `strata run` in the background; returns the child once `/out/ready` exists.
fn start_background(r: &Rootfs, out: &Path, opts: &[&str], script: &str) -> std::process::Child {
    let mut args: Vec<String> = vec!["run".into(), "-v".into()];
    args.extend(r.layer_args());
    args.push("--bind".into());
    args.push(format!("{}:/out", out.display()));
    args.extend(opts.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    let child = Command::new(strata_bin())
        .args(&args)
        .env("STRATA_STATE_DIR", &r.state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the container did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn stop_signals_are_forwarded_and_everything_stops() {
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
        // Signals whose default would end strata itself without cleaning up.
        (nix::sys::signal::Signal::SIGQUIT, 131),
        (nix::sys::signal::Signal::SIGUSR1, 138),
    ] {
        let r = rootfs("signals");
        let out = r.mkdir("out");
        let child = start_background(
            &r,
            &out,
            &[],
            // Ready once the shell has become `sleep`: busybox sh ignores SIGQUIT, so a
            // signal that came between the touch and the exec would be lost.
            "sleep 100 & (while [ \"$(cat /proc/$$/comm)\" != sleep ]; do sleep 0.01; done; \
             touch /out/ready) & exec sleep 100",
        );
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let output = wait_with_timeout(child, Duration::from_secs(20));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{sig} took {:?}",
            t.elapsed()
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(code), "{sig}: {stderr}");
        let run = Run {
            code,
            stdout: String::new(),
            stderr,
            args: vec![],
        };
        assert_no_leftovers(&r, &run);
    }
}

#[test]
fn sigkill_of_the_command_from_outside_cleans_up() {
    assert_stratafs();
    let r = rootfs("sigkill");
    let out = r.mkdir("out");
    let child = start_background(
        &r,
        &out,
        &["--driver", "fuse"],
        "echo $$ > /out/pid; touch /out/ready; exec sleep 100",
    );
    // Find the command on the host: the `sleep 100` whose parent is the init of this run.
    let strata_pid = child.id();
    let mut victim = None;
    for _ in 0..100 {
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline == b"sleep\x00100\x00" {
                let status = fs::read_to_string(e.path().join("status")).unwrap_or_default();
                // NSpid: host pid then pid in the container (2).
                if status
                    .lines()
                    .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t2"))
                    && is_descendant(e.file_name().to_str().unwrap().parse().unwrap(), strata_pid)
                {
                    victim = e.file_name().to_str().unwrap().parse::<i32>().ok();
                }
            }
        }
        if victim.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = victim.expect("the container's command on the host");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = wait_with_timeout(child, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(137), "{stderr}");
    let run = Run {
        code: 137,
        stdout: String::new(),
        stderr,
        args: vec![],
    };
    assert_no_leftovers(&r, &run);
}

fn is_descendant(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..10 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a.to_string()) else {
            return false;
        };
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let r = rootfs("badinput");
    let long = "h".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--memory", "12XB"], "unknown size suffix 'XB'"),
        (vec!["--memory", "0"], "greater than zero"),
        (vec!["--memory", "-64M"], "positive"),
        (vec!["--pids", "0"], "greater than zero"),
        (vec!["--pids", "-1"], "positive"),
        (vec!["--cpus", "0"], "greater than zero"),
        (vec!["--cpus", "-0.5"], "greater than zero"),
        (vec!["--cpu-weight", "0"], "greater than zero"),
        (vec!["--hostname", &long], "longer than 64"),
        (vec!["--driver", "zfs"], "auto, fuse or kernel"),
        (vec!["--net", "bridge"], "none or host"),
        (
            vec!["--layer", "/no/such/layer"],
            "layer /no/such/layer: No such file or directory",
        ),
        (vec!["--bind", "/no/such:/x"], "bind source /no/such"),
        (vec!["--user", "bob"], "UID"),
        (vec!["--workdir", "relative"], "absolute"),
        (vec!["--io-max", "8:0 bogus=1"], "unknown key"),
        (vec!["--bogus-option"], "unexpected argument"),
    ];
    for (opts, needle) in cases {
        let run = r.run(&opts, &["true"]);
        run.expect(2);
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "one line for {opts:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.starts_with("strata: ") && run.stderr.contains(needle),
            "{opts:?}: {}",
            run.stderr
        );
    }
    assert_eq!(
        fs::read_dir(&r.state).unwrap().count(),
        0,
        "bad input creates nothing"
    );
}

/// On hybrid hosts (v1 controllers, a v2 hierarchy without them) a limit fails with one line
/// naming the controller, and --cgroup-v1-fallback applies it through cgroup v1.
#[test]
fn limits_on_a_hybrid_host() {
    let v2_has_memory = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|c| c.contains("memory"))
        .unwrap_or(false)
        || fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .map(|c| c.contains("memory"))
            .unwrap_or(false);
    let v1_memory = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
    if v2_has_memory || !v1_memory {
        eprintln!("not a hybrid host: the cgroup tests run in the VM (tests/vm/cgroup-tests.sh)");
        return;
    }
    let r = rootfs("hybrid");
    let run = r.run(&["--memory", "64M"], &["true"]);
    run.expect(125);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("'memory' controller") && run.stderr.contains("--cgroup-v1-fallback"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_dir(&r.state).unwrap().count(), 0);

    let run = r.run(
        &[
            "-v",
            "--cgroup-v1-fallback",
            "--memory",
            "16M",
            "--memory-swap",
            "16M",
            "--pids",
            "30",
        ],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    run.expect(137);
    assert!(run.stderr.contains("OOM killer"), "{}", run.stderr);
    assert_no_leftovers(&r, &run);
}

/// Rootless on the host: uid 1000 gets a user namespace and the kernel's overlay (userxattr).
#[test]
fn rootless_with_the_kernel_overlay() {
    let r = rootfs("rootless");
    std::os::unix::fs::chown(&r.state, Some(1000), Some(1000)).unwrap();
    let mut args: Vec<String> = vec![
        "run".into(),
        "-v".into(),
        "--driver".into(),
        "kernel".into(),
    ];
    args.extend(r.layer_args());
    args.extend(
        ["--", "sh", "-c", "id -u; cat /etc/who; echo $$; echo x > /f; cat /f; grep ' / ' /proc/mounts | grep -c userxattr"]
            .map(String::from),
    );
    let run = r.run_raw(
        &args,
        Some(&["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]),
    );
    assert_eq!(run.ok().stdout, "0\napp\n2\nx\n1\n", "{}", run.stderr);
    assert_no_leftovers(&r, &run);
}

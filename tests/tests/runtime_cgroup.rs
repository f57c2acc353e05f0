//! cgroup v2 limits of `strata run`, observed for real. They need a pure cgroup v2 hierarchy
//! with the cpu, memory, pids and io controllers, which hybrid hosts (like the development and
//! CI machines) do not have: every test is `#[ignore]`d and runs in the VM of
//! `tests/vm/run-in-vm.sh` through `tests/vm/cgroup-tests.sh` (which passes `--ignored`).
//! Run with `--ignored` elsewhere, a test fails loudly unless the hierarchy is there.
//!
//! Also here, because the VM has what it needs (/dev/fuse 0666, unprivileged user
//! namespaces): the same container run by an unprivileged user (uid 1000, rootless).

#![deny(unsafe_code)]
mod runtime_common;

use runtime_common::*;
use std::fs;
use std::os::unix::fs::chown;
use std::path::Path;

fn rootfs(name: &str) -> Rootfs {
    assert_root();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let pure = mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "));
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let missing: Vec<&str> = ["cpu", "memory", "pids", "io"]
        .into_iter()
        .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
        .collect();
    assert!(
        pure && missing.is_empty(),
        "these tests need /sys/fs/cgroup to be cgroup2 with cpu, memory, pids and io (pure: {pure}, missing: {missing:?}); run them with tests/vm/cgroup-tests.sh"
    );
    if std::env::var("STRATA_VM").as_deref() != Ok("1") {
        eprintln!("note: STRATA_VM is not set; running on this host's pure cgroup v2 hierarchy");
    }
    Rootfs::new(name)
}

/// The run's cgroup was under /sys/fs/cgroup/strata and is gone.
fn assert_cgroup_gone(run: &Run) {
    let cg = run.cgroup().expect("-v names the cgroup");
    assert!(cg.starts_with("/sys/fs/cgroup/strata/"), "{}", cg.display());
    assert!(!cg.exists(), "{} left behind", cg.display());
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn memory_limit_oom_kill_is_reported() {
    let r = rootfs("oom");
    let run = r.run(
        &["-v", "--memory", "32M"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"],
    );
    run.expect(137);
    assert!(
        run.stderr.contains("OOM killer") && run.stderr.contains("memory limit 32M"),
        "{}",
        run.stderr
    );
    assert_cgroup_gone(&run);
    assert_no_leftovers(&r, &run);
    // Under the limit, the same command succeeds.
    r.run(
        &["--memory", "128M"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"],
    )
    .ok();
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn pids_limit_makes_the_21st_process_fail() {
    let r = rootfs("pids");
    // init (1) + sh (1) + 18 background sleeps = 20 processes; the next fork fails.
    let run = r.run(
        &["-v", "--pids", "20"],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids.max; i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); echo $i; done",
        ],
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"20"), "pids.max: {}", run.stdout);
    assert_eq!(
        lines.last(),
        Some(&"18"),
        "18 sleeps started, the 19th (21st process) failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.contains("can't fork"), "{}", run.stderr);
    assert_ne!(run.code, 0);
    assert_cgroup_gone(&run);
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn cpus_limit_throttles() {
    let r = rootfs("cpus");
    let run = r.run(
        &["-v", "--cpus", "0.2"],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu.max; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; cat /sys/fs/cgroup/cpu.stat",
        ],
    );
    run.ok();
    assert!(run.stdout.starts_with("20000 100000\n"), "{}", run.stdout);
    let throttled: u64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_throttled in cpu.stat:\n{}", run.stdout));
    assert!(throttled > 0, "nr_throttled = 0:\n{}", run.stdout);
    assert_cgroup_gone(&run);
}

/// The first block device of the VM (the scratch disk of run-in-vm.sh).
fn block_device() -> (String, String) {
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = fs::read_to_string(e.path().join("dev"))
            .unwrap()
            .trim()
            .to_string();
        return (format!("/dev/{name}"), dev);
    }
    panic!("no block device in /sys/block (tests/vm/run-in-vm.sh attaches /dev/vda)");
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn io_max_and_other_limits_are_written() {
    let r = rootfs("io");
    let (path, majmin) = block_device();
    let spec = format!("{majmin} wbps=1M riops=100");
    let by_path = format!("{path} rbps=2M");
    let run = r.run(
        &[
            "-v", "--io-max", &spec, "--io-max", &by_path, "--cpu-weight", "50", "--memory", "64M",
            "--memory-swap", "96M", "--pids", "100",
        ],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/io.max /sys/fs/cgroup/cpu.weight /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max /sys/fs/cgroup/pids.max",
        ],
    );
    run.ok();
    let expected = format!(
        "{majmin} rbps=2097152 wbps=1048576 riops=100 wiops=max\n50\n67108864\n33554432\n100\n"
    );
    assert_eq!(run.stdout, expected, "{}", run.stderr);
    assert_cgroup_gone(&run);
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn no_cgroup_is_left_after_many_runs() {
    let r = rootfs("gone");
    for cmd in [
        vec!["true"],
        vec!["sh", "-c", "sleep 30 & exit 5"],
        vec!["no-such-cmd"],
    ] {
        let run = r.run(&["-v", "--pids", "50"], &cmd);
        assert!([0, 5, 127].contains(&run.code), "{}", run.stderr);
        assert_cgroup_gone(&run);
        assert_no_leftovers(&r, &run);
    }
    let left: Vec<_> = fs::read_dir("/sys/fs/cgroup/strata")
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn as_uid_1000() -> [&'static str; 4] {
    ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
}

fn rootless_run(r: &Rootfs, opts: &[&str], cmd: &[&str]) -> Run {
    chown(&r.state, Some(1000), Some(1000)).unwrap();
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(r.layer_args());
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    r.run_raw(&args, Some(&as_uid_1000()))
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn rootless_container_with_the_fuse_driver() {
    let r = rootfs("rootless");
    assert_stratafs();
    let upper = r.mkdir("upper");
    chown(&upper, Some(1000), Some(1000)).unwrap();
    let run = rootless_run(
        &r,
        &["-v", "--driver", "fuse", "--upper", upper.to_str().unwrap(), "--hostname", "rootless"],
        &[
            "sh",
            "-c",
            "id -u; hostname; cat /etc/who; echo $$; grep ' / ' /proc/mounts | cut -d' ' -f3; echo w > /written; ls /sys/class/net",
        ],
    );
    assert_eq!(
        run.ok().stdout,
        "0\nrootless\napp\n2\nfuse.stratafs\nlo\n",
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(rootless)"), "{}", run.stderr);
    let written = upper.join("written");
    assert_eq!(fs::read_to_string(&written).unwrap(), "w\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&written).unwrap().uid(),
        1000,
        "root inside is uid 1000 outside"
    );
    assert_no_leftovers(&r, &run);
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn rootless_auto_driver_and_limits_without_delegation() {
    let r = rootfs("rootless-auto");
    let run = rootless_run(
        &r,
        &["-v"],
        &["sh", "-c", "cat /etc/who; echo x > /tmpfile; cat /tmpfile"],
    );
    assert_eq!(run.ok().stdout, "app\nx\n", "{}", run.stderr);
    assert_no_leftovers(&r, &run);
    // uid 1000's cgroup (the root here) is not delegated to it: limits fail with one line.
    let run = rootless_run(&r, &["--memory", "64M"], &["true"]);
    run.expect(125);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("not delegated"), "{}", run.stderr);
    assert!(Path::new(&r.state).read_dir().unwrap().next().is_none());
}

#[test]
#[ignore = "needs pure cgroup v2: run tests/vm/cgroup-tests.sh"]
fn device_filter_on_pure_cgroup_v2() {
    let r = rootfs("devices");
    // Without CAP_MKNOD nothing can be made.
    let run = r.run(&[], &["sh", "-c", "mknod /dev/k c 1 11 2>&1; echo $?"]);
    assert!(
        run.ok().stdout.contains("Operation not permitted"),
        "{}",
        run.stdout
    );
    // With it, the eBPF allowlist decides; the VM's own /dev/kmsg is readable (control).
    assert!(fs::File::open("/dev/kmsg").is_ok());
    assert_device_allowlist(&r, &[]);
    let run = r.run(&["-v", "--cap-add", "MKNOD"], &["true"]);
    run.ok();
    assert!(
        run.stderr.contains("device filter attached (eBPF)"),
        "{}",
        run.stderr
    );
    assert_cgroup_gone(&run);
}

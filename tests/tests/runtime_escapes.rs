//! Escapes from a `strata run` container, each attempted from inside and refused (issue 11):
//! signalling the caller's process group, typing into the caller's terminal (TIOCSTI), device
//! nodes of host disks, capabilities beyond the set asked for. Each has a control that shows
//! the attempt works where nothing stops it, so a test cannot pass by accident.
//!
//! Run as root on the host; the device cgroup's own tests need pure cgroup v2 and run in the VM
//! (runtime_cgroup.rs).

#![deny(unsafe_code)]

mod runtime_common;

use runtime_common::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rootfs(name: &str) -> Rootfs {
    assert_root();
    Rootfs::new(name)
}

/// A static C program (the busybox rootfs has no libc), built once with the machine's gcc.
fn static_helper(name: &str, source: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/strata-escape-helpers-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join(format!("{name}.c")), dir.join(name));
    if !bin.exists() {
        fs::write(&src, source).unwrap();
        let out = Command::new("gcc")
            .args(["-static", "-O", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("gcc (and libc6-dev for -static) are needed to build the test helpers");
        assert!(
            out.status.success(),
            "gcc -static {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

const TIOCSTI_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
/* Pushes "echo INJECTED" and a newline into the input of the terminal on fd 0. */
int main(void) {
    const char *s = "echo INJECTED\n";
    for (const char *p = s; *p; p++) {
        if (ioctl(0, TIOCSTI, p) < 0) {
            printf("TIOCSTI: %s\n", strerror(errno));
            return 1;
        }
    }
    printf("TIOCSTI: done\n");
    return 0;
}
"#;

fn layers(r: &Rootfs) -> String {
    r.layer_args().join(" ")
}

#[test]
fn kill_0_inside_reaches_only_the_container() {
    let r = rootfs("kill0");
    // The caller is a shell script; the container signals "its" process group.
    let script = format!(
        "{} run {} -- sh -c 'kill -TERM 0; sleep 5; echo not-killed'; echo \"strata: $?\"; echo caller-alive",
        strata_bin().display(),
        layers(&r)
    );
    // In a session of its own (util-linux setsid), so that a failure kills only the script.
    let out = Command::new("setsid")
        .args(["-w", "sh", "-c", &script])
        .env("STRATA_STATE_DIR", &r.state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("strata: 143\n") && stdout.contains("caller-alive"),
        "the caller's script must survive and see the command die of SIGTERM:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("not-killed"), "{stdout}");
}

#[test]
fn the_command_leads_its_own_session() {
    let r = rootfs("session");
    // /proc/self/stat fields 5 and 6 (after the command name): process group and session.
    let run = r.run(
        &[],
        &["sh", "-c", "cut -d' ' -f1,5,6 /proc/self/stat; echo $$"],
    );
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let fields: Vec<&str> = lines[0].split(' ').collect();
    // `cut` is a child of the shell: same group and session as the shell, the leader.
    assert_eq!(fields[1], lines[1], "process group: {}", run.stdout);
    assert_eq!(fields[2], lines[1], "session: {}", run.stdout);
}

#[test]
fn tiocsti_on_the_callers_terminal_is_refused() {
    let r = rootfs("tiocsti");
    let helper = static_helper("tiocsti", TIOCSTI_C);
    // Control: on the caller's own terminal, outside any container, the ioctl works.
    let host = on_a_terminal(
        &r,
        &format!("{}; echo", helper.display()),
        &[],
        Duration::ZERO,
    )
    .0;
    assert!(
        host.contains("TIOCSTI: done"),
        "control: TIOCSTI should work outside the container here:\n{host}"
    );
    let script = format!(
        "$STRATA run {} --bind {}:/tiocsti:ro -- /tiocsti; echo \"strata: $?\"",
        layers(&r),
        helper.display()
    );
    let shown = on_a_terminal(&r, &script, &[], Duration::ZERO).0;
    assert!(
        shown.contains("TIOCSTI: Operation not permitted") && shown.contains("strata: 1"),
        "the container typed into the caller's terminal:\n{shown}"
    );
    assert!(!shown.contains("INJECTED\nINJECTED"), "{shown}");
}

#[test]
fn device_nodes_cannot_be_made_by_default() {
    let r = rootfs("mknod");
    // loop0 (7:0) stands for a host disk: its node must not be makeable, in / or in /dev.
    for dir in ["/", "/dev/", "/tmp/"] {
        let run = r.run(
            &[],
            &["sh", "-c", &format!("mknod {dir}disk b 7 0 2>&1; echo $?")],
        );
        run.ok();
        assert!(
            run.stdout.contains("Operation not permitted") && run.stdout.ends_with("1\n"),
            "mknod in {dir}: {}",
            run.stdout
        );
    }
    let run = r.run(&[], &["sh", "-c", "grep CapBnd /proc/self/status"]);
    let mask = u64::from_str_radix(run.stdout.trim().rsplit('\t').next().unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 27), 0, "CAP_MKNOD in the bounding set");
}

#[test]
fn device_nodes_of_a_layer_or_a_bind_do_not_open() {
    let r = rootfs("nodev");
    // A layer that carries a block device node (an image can).
    let node = r.base.join("disk");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(7, 0),
    )
    .unwrap();
    // Control: /dev/null is a device node that must keep working.
    let run = r.run(
        &["--bind", "/dev:/hostdev"],
        &[
            "sh",
            "-c",
            "head -c1 /disk 2>&1; echo \"disk $?\"; head -c1 /hostdev/loop0 2>&1; echo \"bind $?\"; echo x > /dev/null && echo null-ok",
        ],
    );
    run.ok();
    assert!(
        run.stdout.contains("disk 1") && run.stdout.contains("bind 1"),
        "a device node outside /dev opened:\n{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches("Permission denied").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("null-ok"), "{}", run.stdout);
    let mounts = r.run(&[], &["cat", "/proc/self/mountinfo"]);
    let root = mounts
        .stdout
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in\n{}", mounts.stdout));
    assert!(
        root.split(' ').nth(5).unwrap_or("").contains("nodev"),
        "{root}"
    );
}

#[test]
fn cap_add_and_cap_drop_as_docker() {
    let r = rootfs("caps");
    let bnd = |opts: &[&str]| -> u64 {
        let run = r.run(opts, &["sh", "-c", "grep CapBnd /proc/self/status"]);
        run.ok();
        u64::from_str_radix(run.stdout.trim().rsplit('\t').next().unwrap(), 16).unwrap()
    };
    assert_eq!(bnd(&["--cap-drop", "ALL"]), 0);
    assert_eq!(bnd(&["--cap-drop", "ALL", "--cap-add", "net_raw"]), 1 << 13);
    let with = bnd(&["--cap-add", "CAP_MKNOD", "--cap-drop", "chown"]);
    assert_ne!(with & (1 << 27), 0);
    assert_eq!(with & 1, 0);
    // With MKNOD, the node can be made on the layer stack, but it is nodev there.
    let run = r.run(
        &["--cap-add", "MKNOD"],
        &[
            "sh",
            "-c",
            "mknod /disk b 7 0 && head -c1 /disk 2>&1; echo $?",
        ],
    );
    run.ok();
    assert!(
        run.stdout.contains("Permission denied"),
        "a node made on the rootfs opened:\n{}",
        run.stdout
    );
    let bad = r.run(&["--cap-add", "CAP_FLY"], &["true"]);
    bad.expect(2);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("CAP_FLY"), "{}", bad.stderr);
}

/// A loop device over a file stands for a host disk: its data must be neither readable nor
/// writable from a container that makes its node, through the eBPF filter (the hybrid host's
/// unified hierarchy) or the cgroup v1 devices controller.
#[test]
fn a_host_disk_node_is_refused_by_the_device_cgroup() {
    let r = rootfs("hostdisk");
    let image = r.dir.join("disk.img");
    let mut data = b"HOSTDATA".to_vec();
    data.resize(1 << 20, 0);
    fs::write(&image, &data).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .expect("losetup (util-linux)");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(loopdev.clone());
    let minor: u32 = loopdev.trim_start_matches("/dev/loop").parse().unwrap();
    // Control: the host reads it.
    let host = fs::read(&loopdev).unwrap();
    assert_eq!(&host[..8], b"HOSTDATA");
    let script = format!(
        "mknod /dev/disk b 7 {minor} || exit 9; head -c8 /dev/disk 2>&1; echo \" read $?\"; echo EVIL | dd of=/dev/disk conv=notrunc 2>&1; echo \"write $?\""
    );
    for opts in [&[][..], &["--cgroup-v1-fallback", "--pids", "100"][..]] {
        let mut all = vec!["--cap-add", "MKNOD"];
        all.extend_from_slice(opts);
        let run = r.run(&all, &["sh", "-c", &script]);
        run.ok();
        assert!(
            !run.stdout.contains("HOSTDATA") && run.stdout.contains(" read 1"),
            "{opts:?}: the container read the host disk:\n{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("write 1")
                && run.stdout.matches("Operation not permitted").count() == 2,
            "{opts:?}: {}",
            run.stdout
        );
        assert_device_allowlist(&r, opts);
    }
    let after = fs::read(&image).unwrap();
    assert_eq!(&after[..8], b"HOSTDATA", "the host disk was written");
}

#[test]
fn ulimit_and_no_new_privileges_as_docker() {
    let r = rootfs("ulimit");
    let run = r.run(
        &["--ulimit", "nofile=100:200", "--ulimit", "core=0"],
        &["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"],
    );
    assert_eq!(run.ok().stdout, "100\n200\n0\n");
    // Above fs.nr_open no process may go, root included: one line, the runtime's status.
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let too_many = format!("nofile={}", nr_open + 1);
    let run = r.run(&["--ulimit", &too_many], &["true"]);
    run.expect(125);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("--ulimit nofile="), "{}", run.stderr);
    for bad in ["nofile=10:5", "files=1", "nofile"] {
        let run = r.run(&["--ulimit", bad], &["true"]);
        run.expect(2);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    // no_new_privs: on by default (Docker's is off: we are stricter), Docker's options.
    let nnp = |opts: &[&str]| -> String {
        let run = r.run(
            opts,
            &[
                "sh",
                "-c",
                "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
            ],
        );
        run.ok().stdout.replace('\t', " ")
    };
    assert_eq!(nnp(&[]), "NoNewPrivs: 1\nSeccomp: 2\n");
    assert_eq!(
        nnp(&["--security-opt", "no-new-privileges"]),
        "NoNewPrivs: 1\nSeccomp: 2\n"
    );
    // Off: the filter is still there (loaded before --user while CAP_SYS_ADMIN is held).
    assert_eq!(
        nnp(&[
            "--security-opt",
            "no-new-privileges=false",
            "-u",
            "1000:1000"
        ]),
        "NoNewPrivs: 0\nSeccomp: 2\n"
    );
    let run = r.run(&["--security-opt", "apparmor=unconfined"], &["true"]);
    run.expect(2);
}

const PTRACE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
/* ptrace-attaches to each pid given; prints "PID: attached" or "PID: <error>". */
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        pid_t pid = atoi(argv[i]);
        if (ptrace(PTRACE_ATTACH, pid, 0, 0) < 0) {
            printf("%s: %s\n", argv[i], strerror(errno));
        } else {
            waitpid(pid, 0, 0);
            ptrace(PTRACE_DETACH, pid, 0, 0);
            printf("%s: attached\n", argv[i]);
        }
    }
    return 0;
}
"#;

#[test]
fn ptrace_of_processes_outside_the_container_is_refused() {
    let r = rootfs("ptrace");
    let helper = static_helper("ptrace", PTRACE_C);
    // A host process, and a control: the host itself may attach to it.
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = victim.id().to_string();
    let host = Command::new(&helper).arg(&pid).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        format!("{pid}: attached\n"),
        "control"
    );
    // From inside: the host's pid (not in the container's pid namespace), the host's init,
    // and the container's own init (not dumpable, no CAP_SYS_PTRACE).
    let bind = format!("{}:/ptrace:ro", helper.display());
    let run = r.run(&["--bind", &bind], &["/ptrace", &pid, "1"]);
    run.ok();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(!run.stdout.contains("attached"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("{pid}: No such process")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1: Operation not permitted"),
        "{}",
        run.stdout
    );
}

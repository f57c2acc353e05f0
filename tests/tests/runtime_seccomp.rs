//! `strata run`'s seccomp filter, seen from inside the container: Docker's default profile
//! (nested user namespaces and odd personalities refused), `--seccomp unconfined`, a custom
//! OCI profile (`--seccomp FILE`, `--security-opt seccomp=FILE`), and bad profiles.
//!
//! `cargo build -p runtime -p unionfs && cargo test -p e2e --test runtime_seccomp`

#![deny(unsafe_code)]

mod runtime_common;

use runtime_common::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

fn rootfs(name: &str) -> Rootfs {
    assert_root();
    Rootfs::new(name)
}

/// The `Seccomp:` mode of /proc/self/status printed by `grep`.
fn seccomp_mode(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no Seccomp: line in\n{stdout}"))
}

#[test]
fn default_profile_filters_the_command() {
    let r = rootfs("default");
    let run = r.run(&[], &["grep", "Seccomp", "/proc/self/status"]);
    assert_eq!(seccomp_mode(&run.ok().stdout), "2", "mode 2: a filter");
    assert!(run.stdout.contains("Seccomp_filters:\t1"), "{}", run.stdout);
}

#[test]
fn default_profile_refuses_a_nested_user_namespace() {
    let r = rootfs("userns");
    // clone/unshare with CLONE_NEWUSER is refused without CAP_SYS_ADMIN: EPERM.
    let run = r.run(&[], &["sh", "-c", "unshare -U true 2>&1; echo status=$?"]);
    run.ok();
    assert!(
        run.stdout.contains("Operation not permitted") && !run.stdout.contains("status=0"),
        "{}",
        run.stdout
    );
}

#[test]
fn default_profile_allows_only_docker_personalities() {
    let r = rootfs("personality");
    // PER_LINUX32 is in the profile's list: allowed.
    let run = r.run(&[], &["linux32", "uname", "-m"]);
    assert!(
        ["i686", "i386", "armv7l", "armv8l"].contains(&run.ok().stdout.trim()),
        "{}",
        run.stdout
    );

    // ADDR_NO_RANDOMIZE (setarch -R) is not: util-linux's setarch from the host, through a
    // read-only bind of /usr (busybox has no setarch).
    let setarch = Path::new("/usr/bin/setarch");
    assert!(
        setarch.is_file(),
        "/usr/bin/setarch is missing: install util-linux"
    );
    let libs = r.mkdir("libs");
    fs::create_dir_all(libs.join("usr")).unwrap();
    symlink("usr/lib", libs.join("lib")).unwrap();
    symlink("usr/lib64", libs.join("lib64")).unwrap();
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = vec!["run".into(), "--layer".into()];
        a.push(libs.display().to_string());
        a.extend(r.layer_args());
        a.extend(["--bind".into(), "/usr:/usr:ro".into()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(
            [
                "--",
                "sh",
                "-c",
                "/usr/bin/setarch $(uname -m) -R /bin/true 2>&1; echo status=$?",
            ]
            .map(String::from),
        );
        a
    };
    let run = r.run_raw(&args(&[]), None);
    run.ok();
    assert!(
        run.stdout.contains("Operation not permitted") && !run.stdout.contains("status=0"),
        "{}",
        run.stdout
    );
    let run = r.run_raw(&args(&["--seccomp", "unconfined"]), None);
    assert!(run.ok().stdout.contains("status=0"), "{}", run.stdout);
}

#[test]
fn unconfined_has_no_filter() {
    let r = rootfs("unconfined");
    for opt in [
        ["--seccomp", "unconfined"],
        ["--security-opt", "seccomp=unconfined"],
    ] {
        let run = r.run(&opt, &["grep", "Seccomp:", "/proc/self/status"]);
        assert_eq!(seccomp_mode(&run.ok().stdout), "0", "{opt:?}");
    }
}

#[test]
fn custom_profile_denies_mkdir_with_its_errno() {
    let r = rootfs("custom");
    let profile = r.dir.join("no-mkdir.json");
    fs::write(
        &profile,
        r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122},
    {"names": ["no_such_syscall_strata"], "action": "SCMP_ACT_KILL"}
  ]
}"#,
    )
    .unwrap();
    let p = profile.display().to_string();
    let sopt = format!("seccomp={p}");
    for opt in [["--seccomp", p.as_str()], ["--security-opt", sopt.as_str()]] {
        let run = r.run(
            &opt,
            &["sh", "-c", "touch /tmp/f && echo touched; mkdir /tmp/d"],
        );
        run.expect(1);
        assert_eq!(run.stdout, "touched\n");
        // 122 is EDQUOT.
        assert!(
            run.stderr
                .contains("mkdir: can't create directory '/tmp/d': Disk quota exceeded"),
            "{}",
            run.stderr
        );
        // A name this libseccomp does not know is skipped, with one warning.
        assert!(
            run.stderr.contains("syscalls unknown to libseccomp")
                && run.stderr.contains("no_such_syscall_strata"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_profile_that_denies_execve_fails_the_command() {
    let r = rootfs("noexec");
    let profile = r.dir.join("no-exec.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["execve","execveat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let run = r.run(&["--seccomp", profile.to_str().unwrap()], &["true"]);
    run.expect(126);
    assert_eq!(
        run.stderr, "strata: cannot execute true: Operation not permitted\n",
        "the filter is loaded last, just before execve"
    );
}

#[test]
fn bad_profiles_are_one_line_and_status_2() {
    let r = rootfs("bad");
    let write = |name: &str, text: &str| {
        let p = r.dir.join(name);
        fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let json = write("bad.json", "{\"defaultAction\": ");
    let action = write(
        "action.json",
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_DENY"}]}"#,
    );
    let op = write(
        "op.json",
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_LIKE"}]}]}"#,
    );
    let missing = r.dir.join("missing.json").display().to_string();
    let sopt = format!("seccomp={json}");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--seccomp", &json],
            format!("strata: seccomp profile {json}: bad JSON: EOF while parsing"),
        ),
        (
            vec!["--security-opt", &sopt],
            format!("strata: seccomp profile {json}: bad JSON"),
        ),
        (
            vec!["--seccomp", &action],
            format!("strata: seccomp profile {action}: mkdir: unknown action 'SCMP_ACT_DENY'"),
        ),
        (
            vec!["--seccomp", &op],
            format!("strata: seccomp profile {op}: mkdir: unknown operator 'SCMP_CMP_LIKE'"),
        ),
        (
            vec!["--seccomp", &missing],
            format!("strata: seccomp profile {missing}: No such file or directory"),
        ),
        (
            vec!["--security-opt", "apparmor=unconfined"],
            "strata: unknown --security-opt 'apparmor=unconfined'".into(),
        ),
        (
            vec![
                "--seccomp",
                "unconfined",
                "--security-opt",
                "seccomp=unconfined",
            ],
            "strata: --seccomp and --security-opt seccomp= do not go together".into(),
        ),
    ];
    for (opts, want) in cases {
        let run = r.run(&opts, &["true"]);
        run.expect(2);
        assert_eq!(run.stderr.lines().count(), 1, "{opts:?}: {}", run.stderr);
        assert!(run.stderr.starts_with(&want), "{opts:?}: {}", run.stderr);
    }
    // Nothing was created.
    assert_eq!(fs::read_dir(&r.state).unwrap().count(), 0);
}

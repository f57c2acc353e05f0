//! Helpers shared by the `runtime_*` tests: the `strata` binary, a two-layer busybox rootfs
//! built from Debian's busybox-static, running `strata run` with a time limit, and checks
//! that a run left nothing behind (state directory, mount, cgroup, daemon).

#![deny(unsafe_code)]
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The binary under test: $STRATA_BIN, else target/<profile>/strata next to this test.
pub fn strata_bin() -> PathBuf {
    e2e::target_bin("strata", "STRATA_BIN", "cargo build -p runtime -p unionfs")
}

pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runtime tests create namespaces and mounts and must run as root"
    );
}

pub const BUSYBOX: &str = "/bin/busybox";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory with a two-layer busybox rootfs:
/// * `base`: /bin/busybox and its applet links, /etc/passwd, /etc/group, /etc/who ("base"),
///   /etc/base-only, the usual empty mount points;
/// * `app` (on top): /app/hello.sh, /etc/who ("app"), /app/notexec (not executable);
///
/// and `state`, used as STRATA_STATE_DIR so each test sees only its own state directories.
pub struct Rootfs {
    pub dir: PathBuf,
    pub base: PathBuf,
    pub app: PathBuf,
    pub state: PathBuf,
}

impl Rootfs {
    pub fn new(name: &str) -> Rootfs {
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: install Debian's busybox-static (apt-get install busybox-static)"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/tmp/strata-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        let (base, app, state) = (dir.join("base"), dir.join("app"), dir.join("state"));
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::create_dir_all(app.join("app")).unwrap();
        fs::create_dir_all(app.join("etc")).unwrap();
        fs::create_dir_all(&state).unwrap();
        fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') {
                let _ = symlink("busybox", base.join("bin").join(applet));
            }
        }
        fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
        )
        .unwrap();
        fs::write(base.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        fs::write(base.join("etc/who"), "base\n").unwrap();
        fs::write(base.join("etc/base-only"), "b\n").unwrap();
        fs::write(app.join("etc/who"), "app\n").unwrap();
        let hello = app.join("app/hello.sh");
        fs::write(&hello, "#!/bin/sh\necho hello from the app layer\n").unwrap();
        fs::set_permissions(&hello, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(app.join("app/notexec"), "#!/bin/sh\necho no\n").unwrap();
        // World-readable, for the rootless tests.
        for d in [&dir, &base, &app] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
        Rootfs {
            dir,
            base,
            app,
            state,
        }
    }

    /// `--layer app --layer base`.
    pub fn layer_args(&self) -> Vec<String> {
        vec![
            "--layer".into(),
            self.app.display().to_string(),
            "--layer".into(),
            self.base.display().to_string(),
        ]
    }

    /// A new empty directory inside the test directory.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        p
    }

    /// Runs `strata run <layers> <opts> -- <cmd>` (60 s limit).
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Run {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.layer_args());
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        self.run_raw(&args, None)
    }

    /// Runs strata with exactly `args`, optionally through a wrapper (e.g. setpriv ...).
    pub fn run_raw(&self, args: &[String], wrapper: Option<&[&str]>) -> Run {
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(strata_bin());
                c
            }
            None => Command::new(strata_bin()),
        };
        cmd.args(args)
            .env("STRATA_STATE_DIR", &self.state)
            .env("STRATA_TEST_SECRET", "leak")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawning strata");
        let out = wait_with_timeout(child, Duration::from_secs(60));
        Run::from(out, args)
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        // Never delete through a mount a failed run may have left (the failure is reported by
        // the test itself).
        let prefix = format!("{}/", self.dir.display());
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&prefix) {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_with_timeout(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if d2.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("strata (pid {pid}) still running after {limit:?}: killing it");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().expect("waiting for strata");
    done.store(true, Ordering::SeqCst);
    out
}

/// The outcome of one `strata` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Run {
    fn from(out: Output, args: &[String]) -> Run {
        use std::os::unix::process::ExitStatusExt;
        let code = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.to_vec(),
        }
    }

    /// Panics with the whole picture unless the exit status is `code`.
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "strata {:?}: exit status {} (expected {code})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(&self) -> &Run {
        self.expect(0)
    }

    /// The container id, from the `-v` output ("strata: container ID").
    pub fn id(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("strata: container "))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no container id in the -v output:\n{}", self.stderr))
    }

    /// The cgroup directory, from the `-v` output.
    pub fn cgroup(&self) -> Option<PathBuf> {
        self.stderr.lines().find_map(|l| {
            l.strip_prefix("strata: cgroup: ")
                .or_else(|| l.strip_prefix("strata: cgroup (v1 fallback): "))
                .map(PathBuf::from)
        })
    }
}

/// Asserts that the run with this id left nothing: no state directory, no mount, no cgroup,
/// no process mentioning it (the stratafs daemon has the mount point in its arguments).
pub fn assert_no_leftovers(rootfs: &Rootfs, run: &Run) {
    let id = run.id();
    let state = rootfs.state.join(&id);
    // Processes and mounts may take a moment to disappear after strata has exited.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = Vec::new();
        if state.exists() {
            left.push(format!("state directory {}", state.display()));
        }
        let lock = rootfs.state.join(format!("{id}.lock"));
        if lock.exists() {
            left.push(format!("lock file {}", lock.display()));
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mountinfo.lines().filter(|l| l.contains(&id)) {
            left.push(format!("mount: {l}"));
        }
        if let Some(cg) = run.cgroup() {
            if cg.exists() {
                left.push(format!("cgroup {}", cg.display()));
            }
        }
        for e in fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmdline).contains(&id) {
                    left.push(format!(
                        "process {}: {}",
                        e.file_name().to_string_lossy(),
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    ));
                }
            }
        }
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "run {id} left behind:\n  {}\n--- stderr ---\n{}",
                left.join("\n  "),
                run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stratafs binary exists (for the FUSE driver tests).
pub fn assert_stratafs() {
    let p = std::env::var_os("STRATAFS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| strata_bin().with_file_name("stratafs"));
    assert!(
        p.is_file(),
        "{} not found: run `cargo build -p runtime -p unionfs` first",
        p.display()
    );
}

/// With CAP_MKNOD given back (`--cap-add MKNOD`), nodes can be made in /dev, but only the
/// allowlisted ones open: /dev/kmsg (c 1:11, the host's kernel log) is refused, a second
/// /dev/null (c 1:3) works. Returns the container's output for more checks.
pub fn assert_device_allowlist(r: &Rootfs, opts: &[&str]) -> String {
    let mut all = vec!["--cap-add", "MKNOD"];
    all.extend_from_slice(opts);
    let run = r.run(
        &all,
        &[
            "sh",
            "-c",
            "mknod /dev/k c 1 11 && head -c1 /dev/k 2>&1; echo \"kmsg $?\"; mknod /dev/n c 1 3 && echo x > /dev/n && echo null-ok",
        ],
    );
    run.ok();
    assert!(
        run.stdout.contains("/dev/k: Operation not permitted") && run.stdout.contains("kmsg 1"),
        "a node outside the allowlist opened ({opts:?}):\n{}{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("null-ok"), "{}", run.stdout);
    run.stdout.clone()
}

/// Runs `script` under a terminal of its own, feeding `input` (chunks sent `pause` apart);
/// returns what the terminal showed (without \r) and script's exit status (the shell's).
pub fn on_a_terminal(r: &Rootfs, script: &str, input: &[&[u8]], pause: Duration) -> (String, i32) {
    let mut child = Command::new("script")
        .args(["-qec", script, "/dev/null"])
        .env("STRATA_STATE_DIR", &r.state)
        .env("STRATA", strata_bin())
        .env("LAYERS", r.layer_args().join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    let chunks: Vec<Vec<u8>> = input.iter().map(|c| c.to_vec()).collect();
    let input_given = !chunks.is_empty();
    let feeder = std::thread::spawn(move || {
        for c in chunks {
            std::thread::sleep(pause);
            if stdin.write_all(&c).is_err() {
                return;
            }
        }
        // Keep stdin open a little: script(1) ends the session at its stdin's end.
        if !input_given {
            return;
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let out = wait_with_timeout(child, Duration::from_secs(60));
    let _ = feeder.join();
    (
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        out.status.code().unwrap_or(-1),
    )
}

//! `strata` as an OCI runtime, driven as runc's callers drive it: a bundle (`config.json` made
//! by `strata spec`, edited as an engine would) and the create/start/state/kill/delete/run/
//! exec/ps/list commands, on real namespaces, mounts and cgroups. Covers the lifecycle, exit
//! codes, errors (one line, exit 2 for bad input), hooks, the bundle's settings (read-only root,
//! masked and read-only paths, sysctl, rlimits, capabilities, user, env, cwd, hostname) and the
//! `org.strata.layers` annotation. Run as root.

mod runtime_common;

use runtime_common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bundle whose rootfs is a copy of the test rootfs's base layer, and a private `--root`.
struct Oci {
    r: Rootfs,
    bundle: PathBuf,
    root: PathBuf,
}

struct Res {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Oci {
    fn new(name: &str) -> Oci {
        assert_root();
        let r = Rootfs::new(name);
        let bundle = r.mkdir("bundle");
        let root = r.mkdir("oci-root");
        let st = Command::new("cp")
            .arg("-a")
            .arg(&r.base)
            .arg(bundle.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        let o = Oci { r, bundle, root };
        o.strata(&["spec", "-b", o.bundle.to_str().unwrap()]).ok();
        // An engine's usual edits: no terminal, a command of the test's choice.
        o.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["root"]["readonly"] = json!(false);
        });
        o
    }

    fn config(&self) -> Value {
        serde_json::from_slice(&fs::read(self.bundle.join("config.json")).unwrap()).unwrap()
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.config();
        f(&mut c);
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    fn args(&self, c: &str) {
        let a = vec!["sh".to_string(), "-c".to_string(), c.to_string()];
        self.edit(|cfg| cfg["process"]["args"] = json!(a));
    }

    /// `strata --root ROOT ARGS...` (60 s limit). Its output goes to files, not pipes: a
    /// created container keeps the caller's stdio (as runc's does), so a pipe would not end
    /// with `strata create`.
    fn strata(&self, args: &[&str]) -> Res {
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (out_path, err_path) = (
            self.r.dir.join(format!("call-{n}.out")),
            self.r.dir.join(format!("call-{n}.err")),
        );
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(&self.r.dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("strata {args:?} still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Res {
            code: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&out_path).unwrap(),
            stderr: fs::read_to_string(&err_path).unwrap(),
        }
    }

    fn create(&self, id: &str) -> Res {
        self.strata(&["create", "-b", self.bundle.to_str().unwrap(), id])
    }

    /// `strata run -b BUNDLE ID` in the foreground: the container's exit status.
    fn run(&self, id: &str) -> Res {
        self.strata(&["run", "-b", self.bundle.to_str().unwrap(), id])
    }

    fn state(&self, id: &str) -> Value {
        let s = self.strata(&["state", id]).ok().stdout.clone();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("state {id}: {e}: {s}"))
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.strata(&["state", id]);
            let s = serde_json::from_str::<Value>(&r.stdout)
                .map(|v| v["status"].as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|_| r.stderr.clone());
            if s == want {
                return;
            }
            assert!(Instant::now() < deadline, "{id} is {s}, not {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After `delete`: no container directory, no mount, no cgroup, no process of `id`.
    fn assert_gone(&self, id: &str, pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = Vec::new();
            if self.root.join(id).exists() {
                left.push(format!("{}", self.root.join(id).display()));
            }
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let dir = format!("{}/", self.r.dir.display());
            for l in mountinfo.lines().filter(|l| l.contains(&dir)) {
                left.push(format!("mount: {l}"));
            }
            if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() {
                left.push(format!("process {pid}"));
            }
            for cg in cgroup_dirs(id) {
                left.push(format!("cgroup {}", cg.display()));
            }
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} left behind: {}",
                left.join(", ")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Res {
    fn ok(&self) -> &Res {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Failed with `code` and exactly one line on stderr that contains `want`.
    fn fails(&self, code: i32, want: &str) -> &Res {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one error line expected: {}",
            self.stderr
        );
        assert!(
            self.stderr.contains(want),
            "error should mention {want:?}: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

/// The cgroup directories named for container `id` (v2 and v1 hierarchies).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            if p.file_name().and_then(|n| n.to_str()) == Some(id)
                && p.parent()
                    .and_then(|q| q.file_name())
                    .and_then(|n| n.to_str())
                    == Some("strata")
            {
                found.push(p.clone());
            }
            // strata's cgroups are at most a few levels down.
            if p.components().count() < 8 {
                stack.push(p);
            }
        }
    }
    found
}

static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn unique(name: &str) -> String {
    format!("oci-{name}-{}", std::process::id())
}

#[test]
fn lifecycle_create_start_state_delete() {
    let o = Oci::new("lifecycle");
    let out = o.r.mkdir("out");
    o.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]
        }));
    });
    o.args("echo started > /out/started; while [ ! -e /out/go ]; do sleep 0.02; done; exit 7");
    let id = unique("life");
    let pid_file = o.r.dir.join("pid");
    o.strata(&[
        "create",
        "-b",
        o.bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ])
    .ok();
    let st = o.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["ociVersion"], "1.2.0");
    assert_eq!(
        Path::new(st["bundle"].as_str().unwrap()),
        o.bundle.canonicalize().unwrap()
    );
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // Created: the process waits before the command; nothing of it has run yet.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !out.join("started").exists(),
        "the command ran before start"
    );
    // list: table and JSON.
    let list = o.strata(&["list"]).ok().stdout.clone();
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("created")),
        "{list}"
    );
    let json_list: Value =
        serde_json::from_str(&o.strata(&["list", "-f", "json"]).ok().stdout).unwrap();
    assert!(json_list
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str()));
    assert_eq!(o.strata(&["list", "-q"]).ok().stdout.trim(), id);
    // A created container cannot be deleted without --force, nor started twice.
    o.strata(&["delete", &id]).fails(2, "created");

    o.strata(&["start", &id]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.join("started").exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(o.status(&id), "running");
    o.strata(&["start", &id]).fails(2, "running");
    // ps: the container's processes, by host pid.
    let ps: Value =
        serde_json::from_str(&o.strata(&["ps", "-f", "json", &id]).ok().stdout).unwrap();
    assert!(ps.as_array().unwrap().contains(&json!(pid)), "{ps}");
    o.strata(&["delete", &id]).fails(2, "running");

    fs::write(out.join("go"), "").unwrap();
    o.wait_status(&id, "stopped");
    o.strata(&["delete", &id]).ok();
    o.assert_gone(&id, pid);
    o.strata(&["state", &id]).fails(2, "does not exist");
}

#[test]
fn run_returns_the_exit_status_and_output() {
    let o = Oci::new("run");
    o.args("echo out; echo err >&2; exit 42");
    let id = unique("run");
    let r = o.run(&id);
    assert_eq!(r.code, 42, "{}", r.stderr);
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    // run deletes what it created.
    o.assert_gone(&id, 0);
    // Killed by a signal (from outside: pid 1 cannot be killed from its own namespace):
    // 128+N, as a shell reports it.
    o.args("exec sleep 100");
    let id2 = unique("run-killed");
    let runner = {
        let (bin, root, bundle, id2) =
            (strata_bin(), o.root.clone(), o.bundle.clone(), id2.clone());
        std::thread::spawn(move || {
            Command::new(bin)
                .arg("--root")
                .arg(root)
                .args(["run", "-b"])
                .arg(bundle)
                .arg(id2)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
        })
    };
    o.wait_status(&id2, "running");
    o.strata(&["kill", &id2, "KILL"]).ok();
    assert_eq!(runner.join().unwrap().code(), Some(137));
    o.assert_gone(&id2, 0);
}

#[test]
fn kill_and_delete_force() {
    let o = Oci::new("kill");
    o.args("exec sleep 100");
    let id = unique("kill");
    o.create(&id).ok();
    o.strata(&["start", &id]).ok();
    let pid = o.state(&id)["pid"].as_i64().unwrap() as i32;
    // pid 1 of its namespace with no handler: TERM is not delivered (as with runc), KILL is.
    o.strata(&["kill", &id, "KILL"]).ok();
    o.wait_status(&id, "stopped");
    o.strata(&["kill", &id, "TERM"]).fails(2, "not running");
    o.strata(&["delete", &id]).ok();
    o.assert_gone(&id, pid);

    // delete --force of a running container kills it.
    o.create(&id).ok();
    o.strata(&["start", &id]).ok();
    let pid = o.state(&id)["pid"].as_i64().unwrap() as i32;
    o.strata(&["delete", "--force", &id]).ok();
    o.assert_gone(&id, pid);
    // and of a created one.
    o.create(&id).ok();
    let pid = o.state(&id)["pid"].as_i64().unwrap() as i32;
    o.strata(&["delete", "-f", &id]).ok();
    o.assert_gone(&id, pid);
}

#[test]
fn exec_joins_the_running_container() {
    let o = Oci::new("exec");
    o.edit(|c| c["hostname"] = json!("exec-box"));
    o.args("echo mark > /tmp/mark; exec sleep 100");
    let id = unique("exec");
    o.create(&id).ok();
    o.strata(&["start", &id]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = o.strata(&["exec", &id, "cat", "/tmp/mark"]);
        if r.code == 0 {
            assert_eq!(r.stdout, "mark\n");
            break;
        }
        assert!(Instant::now() < deadline, "exec: {}", r.stderr);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Same namespaces: hostname, pid 1 is the container's command.
    let r = o.strata(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; cat /proc/1/comm; exit 3",
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "exec-box\nsleep\n");
    // --process with an OCI process object; -e, --cwd, -u on the command line.
    let p = o.r.dir.join("process.json");
    fs::write(
        &p,
        serde_json::to_vec(&json!({
            "args": ["sh", "-c", "echo $FOO $(pwd) $(id -u)"],
            "env": ["FOO=bar", "PATH=/bin"],
            "cwd": "/tmp",
            "user": {"uid": 1000, "gid": 1000}
        }))
        .unwrap(),
    )
    .unwrap();
    let r = o.strata(&["exec", "--process", p.to_str().unwrap(), &id]);
    assert_eq!(r.stdout, "bar /tmp 1000\n", "{}", r.stderr);
    let r = o.strata(&[
        "exec",
        "-e",
        "X=1",
        "--cwd",
        "/etc",
        "-u",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u):$(id -g)",
    ]);
    assert_eq!(r.stdout, "1 /etc 1000:1000\n", "{}", r.stderr);
    // A missing command: 127 and one line, as the run form.
    o.strata(&["exec", &id, "/no/such"]).fails(127, "/no/such");
    o.strata(&["delete", "-f", &id]).ok();
    o.strata(&["exec", &id, "true"]).fails(2, "does not exist");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let o = Oci::new("bad");
    let id = unique("bad");
    o.strata(&["create", "-b", "/no/such/bundle", &id])
        .fails(2, "/no/such/bundle");
    o.strata(&["start", &id]).fails(2, "does not exist");
    o.strata(&["kill", &id, "KILL"]).fails(2, "does not exist");
    o.strata(&["delete", &id]).fails(2, "does not exist");
    // An id that would leave --root.
    o.create("../escape").fails(2, "../escape");
    // A signal that does not exist.
    o.args("exec sleep 100");
    o.create(&id).ok();
    o.strata(&["kill", &id, "SIGNOPE"]).fails(2, "SIGNOPE");
    // The same id twice.
    o.create(&id).fails(2, "exists");
    o.strata(&["delete", "-f", &id]).ok();
    // A config.json that is not JSON, and one whose root does not exist.
    fs::write(o.bundle.join("config.json"), "{ nope").unwrap();
    o.create(&id).fails(2, "config.json");
    o.assert_gone(&id, 0);
    let o = Oci::new("bad2");
    o.edit(|c| c["root"]["path"] = json!("missing-rootfs"));
    o.create(&id).fails(2, "missing-rootfs");
    o.assert_gone(&id, 0);
    // A command that is not in the container: create succeeds (as runtime-tools wants),
    // the process fails at start with 127 and says so on the container's stderr.
    let o = Oci::new("bad3");
    o.edit(|c| c["process"]["args"] = json!(["/no/such/cmd"]));
    o.run(&id).fails(127, "/no/such/cmd");
    o.assert_gone(&id, 0);
    // A bare name found on no PATH directory is not taken from the working directory.
    fs::write(o.bundle.join("rootfs/nosuchcmd"), "#!/bin/sh\necho RAN\n").unwrap();
    fs::set_permissions(
        o.bundle.join("rootfs/nosuchcmd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    o.edit(|c| {
        c["process"]["args"] = json!(["nosuchcmd"]);
        c["process"]["cwd"] = json!("/");
    });
    let r = o.run(&id);
    r.fails(127, "nosuchcmd");
    assert!(!r.stdout.contains("RAN"), "{}", r.stdout);
    o.assert_gone(&id, 0);
    // spec refuses to overwrite a config.json.
    o.strata(&["spec", "-b", o.bundle.to_str().unwrap()])
        .fails(2, "config.json");
}

#[test]
fn hooks_run_with_the_state_on_stdin() {
    let o = Oci::new("hooks");
    let log = o.r.mkdir("hooklog");
    let hook = |name: &str| {
        json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", log.display())],
        })
    };
    o.edit(|c| {
        c["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    o.args("exit 0");
    let id = unique("hooks");
    o.create(&id).ok();
    let st: Value =
        serde_json::from_slice(&fs::read(log.join("createRuntime.json")).unwrap()).unwrap();
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["status"], "created");
    assert!(st["pid"].as_i64().unwrap() > 0);
    assert!(!log.join("poststart.json").exists());
    o.strata(&["start", &id]).ok();
    let st: Value = serde_json::from_slice(&fs::read(log.join("poststart.json")).unwrap()).unwrap();
    assert_eq!(st["id"], id.as_str());
    o.wait_status(&id, "stopped");
    assert!(!log.join("poststop.json").exists());
    o.strata(&["delete", &id]).ok();
    let st: Value = serde_json::from_slice(&fs::read(log.join("poststop.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped");

    // A failing createRuntime hook fails create, in one line, and leaves nothing.
    o.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    o.create(&id).fails(125, "/bin/false");
    o.assert_gone(&id, 0);
}

#[test]
fn the_bundles_settings_apply() {
    let o = Oci::new("settings");
    o.edit(|c| {
        c["hostname"] = json!("oci-box");
        c["root"]["readonly"] = json!(true);
        c["process"]["cwd"] = json!("/etc");
        c["process"]["env"] = json!(["PATH=/bin", "ONE=1"]);
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 6]});
        c["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654},
        ]);
        c["process"]["noNewPrivileges"] = json!(true);
        c["linux"]["maskedPaths"] = json!(["/proc/uptime", "/etc/base-only", "/proc/no-such"]);
        c["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        c["linux"]["sysctl"] = json!({"kernel.domainname": "strata.test"});
    });
    o.args(
        "echo host=$(hostname) cwd=$(pwd) one=$ONE id=$(id -u):$(id -g) groups=$(id -G); \
         echo nofile=$(ulimit -n) hard=$(ulimit -Hn); \
         echo domain=$(cat /proc/sys/kernel/domainname); \
         echo masked=$(wc -c < /etc/base-only) uptime=$(wc -c < /proc/uptime); \
         touch /rootfile 2>/dev/null && echo root=rw || echo root=ro; \
         grep -E '^(NoNewPrivs|CapEff):' /proc/self/status | tr -s '\t' ' '",
    );
    let id = unique("settings");
    let r = o.run(&id);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "host=oci-box cwd=/etc one=1 id=1000:1000 groups=1000 5 6",
            "nofile=321 hard=654",
            "domain=strata.test",
            "masked=0 uptime=0",
            "root=ro",
            "CapEff: 0000000000000000",
            "NoNewPrivs: 1",
        ],
        "{}",
        r.stderr
    );
    // As root, the bundle's capability sets are the process's.
    o.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["process"]["user"] = json!({"uid": 0, "gid": 0});
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_RAW"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        });
        c["linux"]["readonlyPaths"] = json!(["/proc/sys", "/etc"]);
    });
    o.args(
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status | tr -s '\t' ' '; \
         touch /rootfile && echo root=rw; touch /etc/x 2>/dev/null || echo etc=ro; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo procsys=ro",
    );
    let r = o.run(&id);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // CAP_CHOWN 0, CAP_KILL 5, CAP_NET_RAW 13.
    assert_eq!(
        r.stdout,
        "CapInh: 0000000000000020\nCapPrm: 0000000000000021\nCapEff: 0000000000000021\n\
         CapBnd: 0000000000002021\nCapAmb: 0000000000000020\n\
         root=rw\netc=ro\nprocsys=ro\n",
        "{}",
        r.stderr
    );
    // Writes to a writable root land in the bundle's rootfs (it is the root, bind-mounted).
    assert!(o.bundle.join("rootfs/rootfile").exists());
}

#[test]
fn layers_annotation_mounts_the_stack() {
    let o = Oci::new("layers");
    // root.path becomes the upper directory of the stack app:base.
    let upper = o.bundle.join("upper");
    fs::create_dir(&upper).unwrap();
    let (app, base) = (o.r.app.clone(), o.r.base.clone());
    o.edit(|c| {
        c["root"] = json!({"path": "upper", "readonly": false});
        c["annotations"] = json!({
            "org.strata.layers": format!("{}:{}", app.display(), base.display()),
            "org.strata.driver": "kernel",
        });
    });
    o.args("cat /etc/who /etc/base-only; /app/hello.sh; echo new > /etc/who; rm /etc/base-only");
    let id = unique("layers");
    let r = o.run(&id);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "app\nb\nhello from the app layer\n");
    // Writes and whiteouts in the upper, the layers untouched.
    assert_eq!(fs::read_to_string(upper.join("etc/who")).unwrap(), "new\n");
    let wh = fs::symlink_metadata(upper.join("etc/base-only")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert_eq!(fs::read_to_string(app.join("etc/who")).unwrap(), "app\n");
    assert!(base.join("etc/base-only").exists());
    o.assert_gone(&id, 0);
    // A layer that does not exist: one line naming it, exit 2.
    o.edit(|c| {
        c["annotations"]["org.strata.layers"] = json!("/no/such/layer");
    });
    o.run(&id).fails(2, "/no/such/layer");
    o.assert_gone(&id, 0);
}

#[test]
fn cgroups_path_places_the_cgroup() {
    let o = Oci::new("cgpath");
    let top = format!("strata-test-cgpath-{}", std::process::id());
    o.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("/{top}/box"));
        c["linux"]["resources"] = json!({
            "pids": {"limit": 100},
            "cpu": {"shares": 1024, "period": 500000, "quota": 200000},
        });
    });
    o.args("exec sleep 100");
    let id = unique("cgpath");
    o.create(&id).ok();
    let pid = o.state(&id)["pid"].as_i64().unwrap() as i32;
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // The pids controller's line (v2: 0::, hybrid hosts: the v1 pids hierarchy).
    let line = cg
        .lines()
        .find(|l| l.ends_with(&format!(":/{top}/box")))
        .unwrap_or_else(|| panic!("no cgroup at /{top}/box: {cg}"));
    let mount = if line.starts_with("0::") && !Path::new("/sys/fs/cgroup/pids").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    let leaf = mount.join(&top).join("box");
    assert_eq!(
        fs::read_to_string(leaf.join("pids.max")).unwrap().trim(),
        "100"
    );
    // The bundle's cpu values as given: v1 exactly (shares, period), v2 as cpu.max.
    let read =
        |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if mount == Path::new("/sys/fs/cgroup") {
        assert_eq!(read(leaf.join("cpu.max")).trim(), "200000 500000");
    } else {
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(&top).join("box");
        assert_eq!(read(cpu.join("cpu.shares")).trim(), "1024");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")).trim(), "500000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "200000");
    }
    o.strata(&["delete", "-f", &id]).ok();
    o.assert_gone(&id, pid);
    assert!(!leaf.exists(), "{} is left", leaf.display());
    // The parent it made stays, as runc leaves it; this test removes it.
    for hierarchy in ["", "pids", "cpu", "devices"] {
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(hierarchy).join(&top));
    }
    // A path that would leave the hierarchy is refused.
    o.edit(|c| c["linux"]["cgroupsPath"] = json!("/../../x"));
    o.create(&id).fails(2, "cgroupsPath");
}

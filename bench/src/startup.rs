//! Runtime start-up (issue 6, item 4): `strata run -- /bin/true` on a two-layer busybox stack,
//! with the kernel and the FUSE driver, next to `crun run`, `runc run` and `bwrap` on the same
//! rootfs. crun, runc and bwrap get the two layers already mounted (a read-only kernel overlay,
//! as an engine would hand them); strata mounts its stack itself, inside the measure.

use crate::guard::Mount;
use crate::report::median;
use crate::sys::{self, ctx, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

/// Where the section sits in RESULTS.md, so `bench startup` can replace it alone.
pub const BEGIN: &str = "<!-- startup:begin -->";
pub const END: &str = "<!-- startup:end -->";

/// The `strata` binary: `STRATA_BIN`, else next to this executable.
pub fn strata_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("strata");
    p.is_file().then_some(p)
}

/// One runner's times, seconds: interleaved with the others, and in blocks of its own.
pub struct Row {
    pub label: String,
    pub command: String,
    pub times: Vec<f64>,
    pub block_times: Vec<f64>,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub runs: usize,
}

/// The base layer: static busybox with `true` and `sh`, and the mountpoints; the top layer:
/// /etc files.
fn build_layers(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let base = root.join("base");
    let top = root.join("top");
    let busybox =
        sys::which("busybox").ok_or("busybox is not installed (apt-get install busybox-static)")?;
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        ctx(d, fs::create_dir_all(base.join(d)))?;
    }
    ctx("busybox", fs::copy(&busybox, base.join("bin/busybox")))?;
    for applet in ["true", "sh"] {
        ctx(
            applet,
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)),
        )?;
    }
    ctx("top", fs::create_dir_all(top.join("etc")))?;
    ctx("hostname", fs::write(top.join("etc/hostname"), "bench\n"))?;
    ctx(
        "passwd",
        fs::write(top.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n"),
    )?;
    Ok((top, base))
}

fn oci_config(rootfs: &Path) -> String {
    format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "terminal": false,
    "user": {{ "uid": 0, "gid": 0 }},
    "args": [ "/bin/true" ],
    "env": [ "PATH=/bin" ],
    "cwd": "/",
    "noNewPrivileges": true
  }},
  "root": {{ "path": "{}", "readonly": true }},
  "hostname": "bench",
  "mounts": [
    {{ "destination": "/proc", "type": "proc", "source": "proc" }},
    {{ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": [ "nosuid", "mode=755", "size=65536k" ] }}
  ],
  "linux": {{
    "namespaces": [ {{ "type": "pid" }}, {{ "type": "ipc" }}, {{ "type": "uts" }}, {{ "type": "mount" }}, {{ "type": "network" }} ]
  }}
}}
"#,
        rootfs.display()
    )
}

/// Runs the comparison under `work` (a scratch directory), `runs` times each, interleaved.
pub fn run(work: &Path, runs: usize) -> Result<Results> {
    let mut notes = Vec::new();
    let (top, base) = build_layers(work)?;
    let rootfs = work.join("rootfs");
    ctx("rootfs", fs::create_dir_all(&rootfs))?;
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}:{}", top.display(), base.display()).as_str()),
    )
    .map_err(|e| format!("mounting the busybox rootfs: {e}"))?;
    let rootfs_mount = Mount::adopt(&rootfs, None);
    let bundle = work.join("bundle");
    ctx("bundle", fs::create_dir_all(&bundle))?;
    ctx(
        "config.json",
        fs::write(bundle.join("config.json"), oci_config(&rootfs)),
    )?;

    // (label, program, args before the per-run id; `{id}` is replaced)
    let mut candidates: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
    match strata_bin() {
        Some(strata) => {
            for driver in ["kernel", "fuse"] {
                candidates.push((
                    format!("strata run ({driver})"),
                    strata.clone(),
                    vec![
                        "run".into(),
                        "--layer".into(),
                        top.display().to_string(),
                        "--layer".into(),
                        base.display().to_string(),
                        "--driver".into(),
                        driver.into(),
                        "--".into(),
                        "/bin/true".into(),
                    ],
                ));
            }
        }
        None => notes.push(
            "strata skipped: the runtime binary was not found (build it with `cargo build --release -p runtime` in the same target dir, or set STRATA_BIN)".into(),
        ),
    }
    let bundle_s = bundle.display().to_string();
    // strata's OCI form on the very bundle crun and runc get (state under the work dir).
    if let Some(strata) = strata_bin() {
        candidates.push((
            "strata run ID (OCI bundle)".into(),
            strata,
            vec![
                "--root".into(),
                work.join("strata-oci").display().to_string(),
                "run".into(),
                "--bundle".into(),
                bundle_s.clone(),
                "{id}".into(),
            ],
        ));
    }
    for oci in ["crun", "runc"] {
        let mut args: Vec<String> = Vec::new();
        args.extend([
            "run".into(),
            "--bundle".into(),
            bundle_s.clone(),
            "{id}".into(),
        ]);
        match sys::which(oci) {
            Some(p) => candidates.push((format!("{oci} run"), p, args)),
            None => notes.push(format!(
                "{oci} skipped: not installed (apt-get install {oci})"
            )),
        }
    }
    match sys::which("bwrap") {
        Some(p) => candidates.push((
            "bwrap".into(),
            p,
            [
                "--ro-bind",
                &rootfs.display().to_string(),
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--unshare-all",
                "--die-with-parent",
                "/bin/true",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )),
        None => notes.push("bwrap skipped: not installed (apt-get install bubblewrap)".into()),
    }

    let stratafs = crate::targets::stratafs_bin();
    let mut rows: Vec<Row> = candidates
        .iter()
        .map(|(label, program, args)| Row {
            label: label.clone(),
            command: format!(
                "{} {}",
                program.file_name().unwrap_or_default().to_string_lossy(),
                args.join(" ").replace(&work.display().to_string(), "…")
            ),
            times: Vec::new(),
            block_times: Vec::new(),
        })
        .collect();
    let mut failed = vec![false; candidates.len()];
    // crun refuses hybrid cgroup hosts (v1 controllers plus a v2 hierarchy at
    // /sys/fs/cgroup/unified). Every runner is started from a thread whose mount namespace
    // hides that v2 hierarchy, so all of them run under the same conditions.
    let hidden = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let hidden = hide_cgroup2_unified();
                measure(
                    &candidates,
                    &stratafs,
                    runs,
                    Order::Interleaved,
                    &mut rows,
                    &mut failed,
                    &mut notes,
                )?;
                measure(
                    &candidates,
                    &stratafs,
                    runs,
                    Order::Blocks,
                    &mut rows,
                    &mut failed,
                    &mut notes,
                )
                .map(|()| hidden)
            })
            .join()
            .unwrap_or_else(|_| Err("the start-up measuring thread panicked".into()))
    })?;
    if hidden {
        notes.push(
            "every runner ran in a mount namespace without /sys/fs/cgroup/unified (crun refuses hybrid cgroup hosts); without a cgroup v2 hierarchy strata puts the container in a cgroup v1 devices cgroup (its device allowlist) and applies Docker's seccomp profile (cached); crun runs the spec of `crun spec`, which has no seccomp profile"
                .into(),
        );
    }
    rootfs_mount.release()?;
    Ok(Results { rows, notes, runs })
}

/// On a hybrid cgroup host, gives the calling thread a private mount namespace without the v2
/// hierarchy at /sys/fs/cgroup/unified. Returns whether it did.
fn hide_cgroup2_unified() -> bool {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !unified.exists() {
        return false;
    }
    // CLONE_FS too: a thread sharing its filesystem attributes cannot take a new namespace.
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_FS)
        .is_err()
    {
        return false;
    }
    let private = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    );
    private.is_ok() && umount2(unified, MntFlags::MNT_DETACH).is_ok()
}

/// How the runs of the candidates are ordered.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// One run of each in turn (the order rotating): drift hits every runner alike.
    Interleaved,
    /// Three rounds of a block of consecutive runs per runner (a third of `runs` each, after
    /// three unrecorded ones), as hyperfine measures: what one runner leaves behind (a v1
    /// cgroup migration's RCU grace period, a daemon exiting) falls on itself.
    Blocks,
}

/// Runs every candidate `runs` times in `order`, recording times (`times` or `block_times`)
/// or the first failure.
fn measure(
    candidates: &[(String, PathBuf, Vec<String>)],
    stratafs: &Option<PathBuf>,
    runs: usize,
    order: Order,
    rows: &mut [Row],
    failed: &mut [bool],
    notes: &mut Vec<String>,
) -> Result<()> {
    let n = candidates.len();
    let schedule: Vec<(usize, bool)> = match order {
        Order::Interleaved => (0..runs)
            .flat_map(|rep| (0..n).map(move |k| ((k + rep) % n, true)))
            .collect(),
        Order::Blocks => {
            let per = runs.div_ceil(3).max(1);
            (0..3)
                .flat_map(|_| (0..n).flat_map(move |i| (0..per + 3).map(move |j| (i, j >= 3))))
                .collect()
        }
    };
    let mut id = order as usize * 1_000_000;
    for (i, record) in schedule {
        {
            if failed[i] {
                continue;
            }
            sys::check_interrupt()?;
            id += 1;
            let (label, program, args) = &candidates[i];
            let args: Vec<String> = args
                .iter()
                .map(|a| a.replace("{id}", &format!("strata-bench-{}-{id}", std::process::id())))
                .collect();
            let mut cmd = std::process::Command::new(program);
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some(s) = &stratafs {
                cmd.env("STRATAFS_BIN", s);
            }
            let start = Instant::now();
            let out = cmd.output();
            let t = start.elapsed().as_secs_f64();
            match out {
                Ok(o) if o.status.success() => {
                    if record {
                        match order {
                            Order::Interleaved => rows[i].times.push(t),
                            Order::Blocks => rows[i].block_times.push(t),
                        }
                    }
                }
                Ok(o) => {
                    failed[i] = true;
                    notes.push(format!(
                        "{label} failed ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                Err(e) => {
                    failed[i] = true;
                    notes.push(format!("{label} could not start: {e}"));
                }
            }
        }
    }
    Ok(())
}

impl Results {
    /// The RESULTS.md section, between the markers.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{BEGIN}\n## Runtime start-up\n\n`/bin/true` in a container over a two-layer busybox stack, {} runs each, \
             interleaved, then again in blocks (three rounds of a block per runner); ratio to `crun run` (`runc run` if crun failed). crun, runc and bwrap get the two layers already mounted (a \
             read-only kernel overlay); strata mounts its stack itself (kernel overlay or stratafs) within the time.\n\n",
            self.runs
        );
        // The reference: crun, else runc.
        let reference = |times: fn(&Row) -> &Vec<f64>| {
            ["crun run", "runc run"].iter().find_map(|l| {
                let r = self.rows.iter().find(|r| r.label == *l)?;
                Some((*l, median(times(r))?))
            })
        };
        let base = reference(|r| &r.times);
        let block_base = reference(|r| &r.block_times);
        let base_label = base.map(|(l, _)| l).unwrap_or("crun run");
        s += &format!(
            "| runner | median | ratio to {base_label} | median, blocks | ratio, blocks | command |\n|---|---:|---:|---:|---:|---|\n"
        );
        let cells = |times: &Vec<f64>, base: Option<(&str, f64)>| {
            let m = median(times);
            let ratio = match (m, base) {
                (Some(m), Some((_, b))) if b > 0.0 => format!("{:.2}x", m / b),
                _ => "–".into(),
            };
            let med = m
                .map(|v| crate::workloads::Unit::Seconds.format(v))
                .unwrap_or_else(|| "–".into());
            (med, ratio)
        };
        for r in &self.rows {
            let (med, ratio) = cells(&r.times, base);
            let (bmed, bratio) = cells(&r.block_times, block_base);
            s += &format!(
                "| {} | {med} | {ratio} | {bmed} | {bratio} | `{}` |\n",
                r.label, r.command
            );
        }
        for n in &self.notes {
            s += &format!("\n- {n}");
        }
        s += &format!("\n{END}\n");
        s
    }
}

/// The section when the comparison did not run.
pub fn skipped_markdown(why: &str) -> String {
    format!("{BEGIN}\n## Runtime start-up\n\nNot measured: {why}\n{END}\n")
}

/// Replaces the start-up section of an existing report (or appends it).
pub fn splice_into(report: &Path, section: &str) -> Result<()> {
    let text = fs::read_to_string(report).unwrap_or_default();
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &text[..a],
                section.trim_end(),
                &text[b + END.len()..]
            )
        }
        _ => format!("{}\n{}", text.trim_end(), section),
    };
    ctx(report.display(), fs::write(report, new))
}

//! `bench compare`: builds the stack on a loop-mounted ext4 image, runs every workload on
//! every target (interleaved, repeated, fresh mount and empty upper each time) and reports.

use crate::guard::{LoopFs, Mount, Scratch};
use crate::report::{self, Report};
use crate::stack::{self, Scale, Stack};
use crate::sys::{self, ctx, DaemonCost, Result};
use crate::targets::{Kind, Target};
use crate::workloads::{Env, Layers, Workload};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Config {
    pub scale: Scale,
    pub targets: Vec<String>,
    pub workloads: Vec<Workload>,
    pub reps: usize,
    pub work_dir: PathBuf,
    pub out: PathBuf,
    pub svg: PathBuf,
    pub command_line: String,
    /// Keep the ext4 image in RAM (a tmpfs) rather than on the work dir's disk.
    pub ram: bool,
    /// Also run the runtime start-up comparison.
    pub startup: bool,
}

/// When the daemon's memory and fds are read.
pub const COST_PHASES: &[(Workload, &str)] = &[
    (Workload::FindCold, "after find over the tree"),
    (Workload::CreateDelete, "after create+delete"),
];

pub fn run(cfg: Config) -> Result<()> {
    if !sys::is_root() {
        return Err("compare needs root (mounts, loop devices, dropping caches)".into());
    }
    for tool in ["fio", "find", "tar", "mkfs.ext4", "losetup"] {
        if sys::which(tool).is_none() {
            return Err(format!(
                "{tool} is missing (apt-get install fio e2fsprogs mount tar findutils)"
            ));
        }
    }
    sys::install_signal_handlers();
    let started = Instant::now();
    let mut notes = Vec::new();

    let mut targets = Vec::new();
    for spec in &cfg.targets {
        let mut t = Target::parse(spec)?;
        match t.locate() {
            Ok(()) => targets.push(t),
            Err(why) if t.kind == Kind::Stratafs => return Err(why),
            Err(why) => notes.push(format!("target {} skipped: {why}", t.label)),
        }
    }
    if !targets.iter().any(|t| t.kind == Kind::Overlay) {
        return Err("the kernel overlay target is the reference of every ratio: keep `overlay` in --targets".into());
    }

    if cfg.ram {
        let avail_gib = sys::mem_available_kib() as f64 / (1 << 20) as f64;
        let need = cfg.scale.image_gib as f64 + 2.0;
        if avail_gib < need {
            return Err(format!(
                "--image-on ram needs about {need:.0} GiB of free memory, {avail_gib:.1} GiB available: use --image-on disk"
            ));
        }
    }
    let scratch = Scratch::new(&cfg.work_dir)?;
    let img_dir = scratch.path().join("img");
    eprintln!(
        "bench: creating a {} GiB ext4 image under {}",
        cfg.scale.image_gib,
        scratch.path().display()
    );
    let image = LoopFs::create(
        &scratch.path().join("image"),
        cfg.scale.image_gib,
        &img_dir,
        cfg.ram,
    )?;
    eprintln!(
        "bench: building the {} layer stack on {}",
        cfg.scale.name,
        image.device()
    );
    let t0 = Instant::now();
    let stack = stack::build(image.path(), &cfg.scale)?;
    let floor = image.path().join("floor");
    let (entries, dirs) = build_floor(&stack, &floor, scratch.path())?;
    eprintln!(
        "bench: stack built in {:.0} s: {} entries in {} directories visible",
        t0.elapsed().as_secs_f64(),
        entries.len(),
        dirs
    );
    sys::check_interrupt()?;

    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut costs: BTreeMap<(String, String), DaemonCost> = BTreeMap::new();
    let mut seq = 0usize;
    let runs_dir = image.path().join("runs");
    let mnt_dir = scratch.path().join("mnt");
    ctx("runs dir", fs::create_dir_all(&runs_dir))?;
    ctx("mnt dir", fs::create_dir_all(&mnt_dir))?;

    for (wi, &w) in cfg.workloads.iter().enumerate() {
        let mut failed: Vec<String> = Vec::new();
        for rep in 0..cfg.reps {
            // Interleave: every target once per repetition, starting one further each time.
            let n = targets.len();
            for k in 0..n {
                let target = &targets[(k + rep) % n];
                if failed.contains(&target.label) {
                    continue;
                }
                sys::check_interrupt()?;
                seq += 1;
                let lowers = match w.layers() {
                    Layers::Main => stack.layers.clone(),
                    Layers::Deep(n) => stack.deep(n),
                };
                let target_floor = match w.layers() {
                    Layers::Main => floor.clone(),
                    Layers::Deep(_) => stack.deep_layers.last().cloned().unwrap_or_default(),
                };
                let run_dir = runs_dir.join(seq.to_string());
                let result = run_once(
                    target,
                    w,
                    &lowers,
                    &run_dir,
                    &mnt_dir.join(seq.to_string()),
                    &target_floor,
                    &stack,
                    &cfg.scale,
                    &entries,
                );
                if target.kind == Kind::Dir {
                    w.restore_floor(&floor, &stack, &cfg.scale)?;
                }
                let _ = fs::remove_dir_all(&run_dir);
                sys::check_interrupt()?;
                match result {
                    Ok((got, cost)) => {
                        let shown: Vec<String> = got
                            .iter()
                            .map(|s| {
                                let unit = w
                                    .metrics()
                                    .iter()
                                    .find(|(m, _)| *m == s.metric)
                                    .map(|(_, u)| *u)
                                    .unwrap_or(crate::workloads::Unit::Seconds);
                                format!("{} {}", s.metric, unit.format(s.value))
                            })
                            .collect();
                        eprintln!(
                            "[{}/{} rep {}/{}] {:<24} {}",
                            wi + 1,
                            cfg.workloads.len(),
                            rep + 1,
                            cfg.reps,
                            target.label,
                            shown.join(", ")
                        );
                        for s in got {
                            samples
                                .entry((s.metric, target.label.clone()))
                                .or_default()
                                .push(s.value);
                        }
                        if let (Some(c), Some((_, phase))) =
                            (cost, COST_PHASES.iter().find(|(pw, _)| *pw == w))
                        {
                            let e = costs
                                .entry((target.label.clone(), phase.to_string()))
                                .or_default();
                            if c.hwm_kib >= e.hwm_kib {
                                *e = c;
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("bench: {} on {}: FAILED: {e}", w.name(), target.label);
                        notes.push(format!("{} failed on {}: {e}", target.label, w.name()));
                        failed.push(target.label.clone());
                    }
                }
            }
        }
    }

    let startup = if !cfg.startup {
        crate::startup::skipped_markdown("not asked for (`--workloads` without `startup`)")
    } else if crate::startup::strata_bin().is_none() {
        crate::startup::skipped_markdown(
            "the `strata` runtime binary was not found next to this program (build it with \
             `cargo build --release -p runtime` in the same target dir) nor in STRATA_BIN",
        )
    } else {
        eprintln!("bench: runtime start-up");
        let dir = image.path().join("startup");
        ctx("startup dir", fs::create_dir_all(&dir))?;
        let runs = if cfg.scale.name == "quick" { 5 } else { 20 };
        match crate::startup::run(&dir, runs) {
            Ok(r) => r.markdown(),
            Err(e) => crate::startup::skipped_markdown(&format!("failed: {e}")),
        }
    };

    let report = Report {
        scale: cfg.scale.clone(),
        targets: targets.clone(),
        workloads: cfg.workloads.clone(),
        reps: cfg.reps,
        samples,
        costs,
        notes,
        entries: entries.len(),
        dirs,
        stats: stack.stats.clone(),
        command_line: cfg.command_line.clone(),
        elapsed: started.elapsed(),
        device: image.describe(),
        startup,
    };
    print!("{}", report.summary_text());
    report::write(&report, &cfg.out, &cfg.svg)?;
    eprintln!(
        "bench: wrote {} and {}",
        cfg.out.display(),
        cfg.svg.display()
    );
    drop(image);
    drop(scratch);
    Ok(())
}

/// One run: fresh upper, mount, workload, daemon cost, unmount.
#[allow(clippy::too_many_arguments)]
fn run_once(
    target: &Target,
    w: Workload,
    lowers: &[PathBuf],
    run_dir: &Path,
    mountpoint: &Path,
    floor: &Path,
    stack: &Stack,
    scale: &Scale,
    entries: &[PathBuf],
) -> Result<(Vec<crate::workloads::Sample>, Option<DaemonCost>)> {
    let mount: Mount = target.mount(
        lowers,
        &run_dir.join("upper"),
        &run_dir.join("work"),
        mountpoint,
        floor,
    )?;
    let env = Env {
        root: mount.path(),
        stack,
        scale,
        entries,
    };
    let result = w.run(&env);
    let cost = mount.daemon.and_then(sys::daemon_cost);
    let released = mount.release();
    let got = result?;
    released?;
    Ok((got, cost))
}

/// Materialises the merged view of the main stack as a plain directory (the `dir` target):
/// walks a read-only kernel overlay of the layers, hard-links each file from the layer it comes
/// from (copies the ones workloads modify). Returns the non-directory entries and the
/// directory count.
fn build_floor(stack: &Stack, floor: &Path, scratch: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let probe = scratch.join("probe");
    ctx("probe dir", fs::create_dir_all(&probe))?;
    let lowerdir = stack
        .layers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    nix::mount::mount(
        Some("overlay"),
        &probe,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .map_err(|e| format!("mounting a read-only overlay of the stack: {e}"))?;
    let guard = Mount::adopt(&probe, None);
    let mut entries = Vec::new();
    let mut dirs = 0;
    ctx("floor", fs::create_dir_all(floor))?;
    let mut stack_dirs = vec![PathBuf::new()];
    while let Some(rel) = stack_dirs.pop() {
        let mut names: Vec<_> = ctx(rel.display(), fs::read_dir(probe.join(&rel)))?
            .filter_map(|e| e.ok())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let r = rel.join(e.file_name());
            let ft = ctx(r.display(), e.file_type())?;
            let dst = floor.join(&r);
            if ft.is_dir() {
                ctx(dst.display(), fs::create_dir(&dst))?;
                dirs += 1;
                stack_dirs.push(r);
                continue;
            }
            if ft.is_symlink() {
                let t = ctx(r.display(), fs::read_link(e.path()))?;
                ctx(dst.display(), std::os::unix::fs::symlink(t, &dst))?;
            } else if ft.is_file() {
                let src = stack
                    .layers
                    .iter()
                    .map(|l| l.join(&r))
                    .find(|p| {
                        fs::symlink_metadata(p)
                            .map(|m| m.is_file())
                            .unwrap_or(false)
                    })
                    .ok_or_else(|| format!("{} visible but in no layer", r.display()))?;
                let mutated =
                    r.starts_with(stack::APPEND_DIR) || r == Path::new(stack::COPYUP_FILE);
                if mutated {
                    ctx(dst.display(), fs::copy(&src, &dst))?;
                } else {
                    ctx(dst.display(), fs::hard_link(&src, &dst))?;
                }
            } else if ft.is_char_device() {
                return Err(format!(
                    "{}: a whiteout is visible in the merged view",
                    r.display()
                ));
            }
            entries.push(r);
        }
    }
    guard.release()?;
    entries.sort();
    Ok((entries, dirs))
}

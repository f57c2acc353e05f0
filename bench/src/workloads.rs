//! The workloads of the comparison. Each runs on a fresh mount with an empty upper; the
//! preparation (dropping caches for cold runs, a first pass for warm ones) is not timed.

use crate::stack::{self, Scale, Stack};
use crate::sys::{self, ctx, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    /// Throughput, MB/s (10^6 bytes).
    MBps,
    Iops,
}

impl Unit {
    pub fn lower_is_better(self) -> bool {
        self == Unit::Seconds
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 1e-3 => format!("{:.0} µs", v * 1e6),
            Unit::Seconds if v < 1.0 => format!("{:.1} ms", v * 1e3),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::MBps => format!("{v:.0} MB/s"),
            Unit::Iops if v >= 1e3 => format!("{:.1}k IOPS", v / 1e3),
            Unit::Iops => format!("{v:.0} IOPS"),
        }
    }
}

/// Which layers a workload mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    Main,
    /// The bottom N layers of the deep stack.
    Deep(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    FindCold,
    FindWarm,
    LstatCold,
    LstatWarm,
    ListCold,
    ListWarm,
    /// Sequential reads by N jobs; `cold`: caches dropped after mount, else after a read.
    SeqRead {
        jobs: u32,
        cold: bool,
    },
    RandRead(u32),
    CopyUpBig,
    CopyUpAppend,
    CreateDelete,
    Untar,
    TarC,
    DeepStat(usize),
}

/// One measured number of a run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub metric: String,
    pub value: f64,
}

pub const ALL: &[Workload] = &[
    Workload::FindCold,
    Workload::FindWarm,
    Workload::LstatCold,
    Workload::LstatWarm,
    Workload::ListCold,
    Workload::ListWarm,
    Workload::SeqRead {
        jobs: 1,
        cold: true,
    },
    Workload::SeqRead {
        jobs: 1,
        cold: false,
    },
    Workload::SeqRead {
        jobs: 2,
        cold: false,
    },
    Workload::RandRead(1),
    Workload::RandRead(2),
    Workload::CopyUpBig,
    Workload::CopyUpAppend,
    Workload::CreateDelete,
    Workload::Untar,
    Workload::TarC,
    Workload::DeepStat(20),
    Workload::DeepStat(50),
];

/// What the runner hands a workload.
pub struct Env<'a> {
    /// Root of the merged tree (the mountpoint, or the floor for `dir`).
    pub root: &'a Path,
    pub stack: &'a Stack,
    pub scale: &'a Scale,
    /// Every non-directory entry of the merged tree, relative to its root.
    pub entries: &'a [PathBuf],
}

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::FindCold => "find-cold".into(),
            Workload::FindWarm => "find-warm".into(),
            Workload::LstatCold => "lstat-cold".into(),
            Workload::LstatWarm => "lstat-warm".into(),
            Workload::ListCold => "list-bigdir-cold".into(),
            Workload::ListWarm => "list-bigdir-warm".into(),
            Workload::SeqRead { jobs, cold } => {
                format!("seq-read-{}-{jobs}job", if cold { "cold" } else { "warm" })
            }
            Workload::RandRead(j) => format!("rand-read-4k-{j}job"),
            Workload::CopyUpBig => "copyup-4k-into-big".into(),
            Workload::CopyUpAppend => "copyup-append".into(),
            Workload::CreateDelete => "create-delete".into(),
            Workload::Untar => "untar".into(),
            Workload::TarC => "tar-c-cold".into(),
            Workload::DeepStat(n) => format!("stat-deep-{n}"),
        }
    }

    pub fn parse(name: &str) -> Result<Vec<Workload>> {
        let found: Vec<Workload> = ALL
            .iter()
            .copied()
            .filter(|w| {
                let n = w.name();
                n == name
                    || n.starts_with(&format!("{name}-"))
                    || w.metrics().iter().any(|(m, _)| m == name)
            })
            .collect();
        if found.is_empty() {
            let names: Vec<String> = ALL.iter().map(|w| w.name()).collect();
            return Err(format!(
                "unknown workload '{name}' (one of: {})",
                names.join(", ")
            ));
        }
        Ok(found)
    }

    /// The numbers a run yields, with their units.
    pub fn metrics(self) -> Vec<(String, Unit)> {
        match self {
            Workload::SeqRead { .. } => vec![(self.name(), Unit::MBps)],
            Workload::RandRead(_) => vec![(self.name(), Unit::Iops)],
            Workload::CreateDelete => vec![
                ("create".into(), Unit::Seconds),
                ("delete".into(), Unit::Seconds),
            ],
            _ => vec![(self.name(), Unit::Seconds)],
        }
    }

    /// One line on what it does, for the report.
    pub fn describe(self, scale: &Scale) -> String {
        match self {
            Workload::FindCold => "`find` of the whole merged tree, caches dropped after mount".into(),
            Workload::FindWarm => "`find` of the whole merged tree, after a first untimed `find`".into(),
            Workload::LstatCold => "lstat(2) of every non-directory entry, caches dropped after mount".into(),
            Workload::LstatWarm => "lstat(2) of every non-directory entry, after a first untimed pass".into(),
            Workload::ListCold => format!("readdir of the {}-entry directory merged from 3 layers, caches dropped", scale.bigdir_entries),
            Workload::ListWarm => format!("readdir of the {}-entry directory, mean of 10 after an untimed one", scale.bigdir_entries),
            Workload::SeqRead { jobs, cold } => format!(
                "fio sequential 1 MiB reads of the {} MiB file, {jobs} job(s) each reading its share, {}",
                scale.big_file_mib,
                if cold { "caches dropped after mount" } else { "after an untimed read of the file through the mount" }
            ),
            Workload::RandRead(j) => format!("fio 4 KiB random reads of the {} MiB file, {j} job(s), {} s, after an untimed read of the file", scale.big_file_mib, scale.fio_seconds),
            Workload::CopyUpBig => format!("open O_WRONLY + 4 KiB pwrite + close of a {} MiB lower file (its copy-up)", scale.copyup_file_mib),
            Workload::CopyUpAppend => format!("append 100 bytes to each of {} 1 KiB lower files (open, write, close)", scale.append_files),
            Workload::CreateDelete => format!("create: create+write 100 B+close of {} new files in one directory; delete: unlink them", scale.create_files),
            Workload::Untar => format!("`tar x` of a {}-file tarball into a new directory of the mount", scale.tar_files),
            Workload::TarC => "`tar c` of the merged tree but data/ (the big files), to a pipe, caches dropped".into(),
            Workload::DeepStat(n) => format!("lstat of {} files in the bottom of {n} layers, on a fresh mount (first lookups)", scale.deep_files),
        }
    }

    pub fn layers(self) -> Layers {
        match self {
            Workload::DeepStat(n) => Layers::Deep(n),
            _ => Layers::Main,
        }
    }

    /// Runs it once on `env.root`, returning one sample per metric.
    pub fn run(self, env: &Env) -> Result<Vec<Sample>> {
        let root = env.root;
        let secs = |d: Duration| d.as_secs_f64();
        let one = |v: f64| {
            Ok(vec![Sample {
                metric: self.name(),
                value: v,
            }])
        };
        match self {
            Workload::FindCold | Workload::FindWarm => {
                if self == Workload::FindWarm {
                    find(root)?;
                } else {
                    sys::drop_caches()?;
                }
                one(secs(sys::timed(|| find(root))?.0))
            }
            Workload::LstatCold | Workload::LstatWarm => {
                if self == Workload::LstatWarm {
                    lstat_all(root, env.entries)?;
                } else {
                    sys::drop_caches()?;
                }
                one(secs(sys::timed(|| lstat_all(root, env.entries))?.0))
            }
            Workload::ListCold => {
                let dir = root.join(stack::BIGDIR);
                sys::drop_caches()?;
                let (t, n) = sys::timed(|| list(&dir))?;
                check_count(n, env.scale.bigdir_entries, &dir)?;
                one(secs(t))
            }
            Workload::ListWarm => {
                let dir = root.join(stack::BIGDIR);
                let n = list(&dir)?;
                check_count(n, env.scale.bigdir_entries, &dir)?;
                let (t, _) = sys::timed(|| {
                    for _ in 0..10 {
                        list(&dir)?;
                    }
                    Ok(())
                })?;
                one(secs(t) / 10.0)
            }
            Workload::SeqRead { jobs, cold } => {
                if cold {
                    sys::drop_caches()?;
                } else {
                    read_whole(&root.join(stack::BIG_FILE))?;
                }
                let share = (env.scale.big_file_mib / jobs as u64).max(1);
                let bw = fio(
                    &root.join(stack::BIG_FILE),
                    &[
                        "--rw=read".into(),
                        "--bs=1M".into(),
                        format!("--numjobs={jobs}"),
                        format!("--size={share}M"),
                        format!("--offset_increment={share}M"),
                    ],
                )?;
                one(bw.0)
            }
            Workload::RandRead(jobs) => {
                read_whole(&root.join(stack::BIG_FILE))?;
                let iops = fio(
                    &root.join(stack::BIG_FILE),
                    &[
                        "--rw=randread".into(),
                        "--bs=4k".into(),
                        format!("--numjobs={jobs}"),
                        format!("--size={}M", env.scale.big_file_mib),
                        "--time_based".into(),
                        format!("--runtime={}", env.scale.fio_seconds),
                    ],
                )?;
                one(iops.1)
            }
            Workload::CopyUpBig => {
                let path = root.join(stack::COPYUP_FILE);
                let (t, _) = sys::timed(|| {
                    let f = ctx(
                        path.display(),
                        fs::OpenOptions::new().write(true).open(&path),
                    )?;
                    ctx(path.display(), f.write_all_at(&[0x5a; 4096], 0))?;
                    drop(f);
                    Ok(())
                })?;
                one(secs(t))
            }
            Workload::CopyUpAppend => {
                let dir = root.join(stack::APPEND_DIR);
                let n = env.scale.append_files;
                let (t, _) = sys::timed(|| {
                    for i in 0..n {
                        let p = dir.join(format!("a{i:05}"));
                        let mut f = ctx(p.display(), fs::OpenOptions::new().append(true).open(&p))?;
                        ctx(p.display(), f.write_all(&[0x41; 100]))?;
                    }
                    Ok(())
                })?;
                one(secs(t))
            }
            Workload::CreateDelete => {
                let dir = root.join("created");
                ctx(dir.display(), fs::create_dir(&dir))?;
                let names: Vec<PathBuf> = (0..env.scale.create_files)
                    .map(|i| dir.join(format!("n{i:05}")))
                    .collect();
                let (create, _) = sys::timed(|| {
                    for p in &names {
                        let mut f = ctx(
                            p.display(),
                            fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o644)
                                .open(p),
                        )?;
                        ctx(p.display(), f.write_all(&[0x42; 100]))?;
                    }
                    Ok(())
                })?;
                let (delete, _) = sys::timed(|| {
                    for p in &names {
                        ctx(p.display(), fs::remove_file(p))?;
                    }
                    Ok(())
                })?;
                Ok(vec![
                    Sample {
                        metric: "create".into(),
                        value: secs(create),
                    },
                    Sample {
                        metric: "delete".into(),
                        value: secs(delete),
                    },
                ])
            }
            Workload::Untar => {
                let dir = root.join("untar");
                ctx(dir.display(), fs::create_dir(&dir))?;
                read_whole(&env.stack.tarball)?;
                let (t, _) = sys::timed(|| {
                    sys::run(
                        std::process::Command::new("tar")
                            .arg("-xf")
                            .arg(&env.stack.tarball)
                            .arg("-C")
                            .arg(&dir),
                    )
                    .map(drop)
                })?;
                one(secs(t))
            }
            Workload::TarC => {
                sys::drop_caches()?;
                one(secs(sys::timed(|| tar_c(root))?.0))
            }
            Workload::DeepStat(_) => {
                let files = Stack::deep_files(env.scale);
                let (t, _) = sys::timed(|| {
                    for f in &files {
                        let p = root.join(f);
                        ctx(p.display(), fs::symlink_metadata(&p))?;
                    }
                    Ok(())
                })?;
                one(secs(t))
            }
        }
    }

    /// For the `dir` target, which has no upper to throw away: undoes what a run changed in
    /// the floor, copying mutated files back from their layer.
    pub fn restore_floor(self, floor: &Path, stack: &Stack, scale: &Scale) -> Result<()> {
        let from_layers = |rel: &str| -> Result<()> {
            let src = stack
                .layers
                .iter()
                .map(|l| l.join(rel))
                .find(|p| p.exists())
                .ok_or_else(|| format!("{rel} in no layer"))?;
            let dst = floor.join(rel);
            let _ = fs::remove_file(&dst);
            ctx(format!("restoring {rel}"), fs::copy(&src, &dst)).map(drop)
        };
        match self {
            Workload::CopyUpBig => from_layers(stack::COPYUP_FILE),
            Workload::CopyUpAppend => {
                for i in 0..scale.append_files {
                    from_layers(&format!("{}/a{i:05}", stack::APPEND_DIR))?;
                }
                Ok(())
            }
            Workload::CreateDelete => remove_if_exists(&floor.join("created")),
            Workload::Untar => remove_if_exists(&floor.join("untar")),
            _ => Ok(()),
        }
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => ctx(p.display(), Err(e)),
        _ => Ok(()),
    }
}

fn check_count(n: usize, want: usize, dir: &Path) -> Result<()> {
    if n < want {
        return Err(format!(
            "{}: listed {n} entries, expected {want}",
            dir.display()
        ));
    }
    Ok(())
}

fn find(root: &Path) -> Result<()> {
    let status = std::process::Command::new("find")
        .arg(root)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("find: {e}"))?;
    if !status.success() {
        return Err(format!("find {} failed: {status}", root.display()));
    }
    Ok(())
}

fn lstat_all(root: &Path, entries: &[PathBuf]) -> Result<()> {
    for e in entries {
        let p = root.join(e);
        ctx(p.display(), fs::symlink_metadata(&p))?;
    }
    Ok(())
}

/// Reads a directory to the end (getdents only, no stat); returns the entry count.
fn list(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in ctx(dir.display(), fs::read_dir(dir))? {
        ctx(dir.display(), e)?;
        n += 1;
    }
    Ok(n)
}

fn read_whole(path: &Path) -> Result<()> {
    let mut f = ctx(path.display(), fs::File::open(path))?;
    let mut buf = vec![0u8; 1 << 20];
    while ctx(path.display(), f.read(&mut buf))? > 0 {}
    Ok(())
}

/// `tar c` of the tree without data/, into a pipe we drain (GNU tar skips reading file
/// contents when it writes to /dev/null).
fn tar_c(root: &Path) -> Result<()> {
    let mut child = std::process::Command::new("tar")
        .args(["-cf", "-", "--exclude=./data", "-C"])
        .arg(root)
        .arg(".")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Err(format!("reading tar's output: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("tar: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "tar c {} failed ({}): {}",
            root.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    log::debug!("tar c: {total} bytes");
    Ok(())
}

/// Runs fio on one file read-only; returns (MB/s, IOPS) over all jobs.
fn fio(file: &Path, args: &[String]) -> Result<(f64, f64)> {
    let out = sys::run(
        std::process::Command::new("fio")
            .arg("--name=bench")
            .arg(format!("--filename={}", file.display()))
            .args([
                "--ioengine=psync",
                "--invalidate=0",
                "--readonly",
                "--group_reporting",
                "--output-format=terse",
            ])
            .args(args),
    )?;
    let line = out
        .lines()
        .find(|l| l.starts_with("3;"))
        .ok_or_else(|| format!("fio: no terse output: {out}"))?;
    let fields: Vec<&str> = line.split(';').collect();
    let num = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("fio: bad terse field {i}: {line}"))
    };
    // Terse v3: 6 = read bandwidth KiB/s, 7 = read IOPS.
    Ok((num(6)? * 1024.0 / 1e6, num(7)?))
}

//! Criterion benchmarks of the hot paths (issue 6, item 1). Each benchmark runs on a stratafs
//! mount and on a kernel overlay mount of the same layers, in the same criterion group, so the
//! report shows them side by side: `group/overlay` next to `group/stratafs`.
//!
//! Needs root (mounts) and the stratafs binary (`cargo build --release -p unionfs` in the same
//! target dir, or STRATAFS_BIN); without them it prints why and exits 0. More targets:
//! `BENCH_TARGETS=overlay,stratafs,stratafs+threads=8 cargo bench -p bench`.
//! Everything lives on a loop-mounted ext4 image under /var/tmp/strata-bench-criterion,
//! removed at the end (also on Ctrl-C: the next iteration panics and the guards unwind).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use bench::guard::{LoopFs, Mount, Scratch};
use bench::stack;
use bench::sys;
use bench::targets::Target;
use criterion::{BenchmarkId, Criterion, SamplingMode};
use fastrand::Rng;
use std::fs;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEPTHS: &[usize] = &[1, 5, 20, 50];
const BIGDIR_ENTRIES: usize = 10_000;
const COPYUP_SMALL_FILES: usize = 2_000;
const COPYUP_BIG_MIB: usize = 256;

/// One target mounted over one set of layers, remountable with a fresh upper.
struct Mounted {
    target: Target,
    lowers: Vec<PathBuf>,
    runs: PathBuf,
    mnts: PathBuf,
    seq: usize,
    mount: Option<Mount>,
}

impl Mounted {
    fn new(target: &Target, lowers: Vec<PathBuf>, runs: &Path, mnts: &Path) -> Mounted {
        let mut m = Mounted {
            target: target.clone(),
            lowers,
            runs: runs.to_path_buf(),
            mnts: mnts.to_path_buf(),
            seq: 0,
            mount: None,
        };
        m.remount();
        m
    }

    fn root(&self) -> &Path {
        self.mount.as_ref().expect("mounted").path()
    }

    /// Unmounts (if mounted), throws the upper away and mounts again with an empty one.
    fn remount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.release().expect("unmount");
            let _ = fs::remove_dir_all(self.run_dir());
        }
        self.seq += 1;
        let run = self.run_dir();
        let mnt = self
            .mnts
            .join(format!("{}-{}", sanitize(&self.target.label), self.seq));
        let m = self
            .target
            .mount(
                &self.lowers,
                &run.join("upper"),
                &run.join("work"),
                &mnt,
                &mnt,
            )
            .unwrap_or_else(|e| panic!("mounting {}: {e}", self.target.label));
        self.mount = Some(m);
    }

    fn run_dir(&self) -> PathBuf {
        self.runs
            .join(format!("{}-{}", sanitize(&self.target.label), self.seq))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.release();
        }
        let _ = fs::remove_dir_all(self.run_dir());
    }
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn check() {
    if sys::interrupted() {
        panic!("interrupted: unwinding to unmount everything");
    }
}

fn file(path: &Path, len: usize, rng: &mut Rng) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = fs::File::create(path).unwrap();
    let chunk: Vec<u8> = (0..(1 << 20)).map(|_| rng.u8(..)).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// Which half of `small_files` is timed.
#[derive(Clone, Copy)]
enum Phase {
    Create,
    Remove,
}

/// Creates `iters` files of 100 bytes in `dir`, then removes them; returns the time `timed` took.
fn small_files(dir: &Path, iters: u64, timed: Phase) -> Duration {
    let names: Vec<PathBuf> = (0..iters).map(|i| dir.join(format!("n{i}"))).collect();
    check();
    let start = Instant::now();
    for p in &names {
        let mut f = fs::File::create_new(p).unwrap();
        f.write_all(&[0x42; 100]).unwrap();
    }
    let created = start.elapsed();
    let start = Instant::now();
    for p in &names {
        fs::remove_file(p).unwrap();
    }
    let removed = start.elapsed();
    match timed {
        Phase::Create => created,
        Phase::Remove => removed,
    }
}

/// Times `iters` first writes of 4 KiB (each a copy-up) to the lower files `next` names; `next`
/// runs untimed and may remount.
fn copy_ups(iters: u64, mut next: impl FnMut() -> PathBuf) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        check();
        let p = next();
        let start = Instant::now();
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0x5a; 4096], 0).unwrap();
        drop(f);
        total += start.elapsed();
    }
    total
}

/// The layers: a deep stack (the file looked up is in its bottom layer; every layer has the
/// directory), and a 3-layer stack with the 10k-entry directory and the files to read and copy up.
fn build(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut rng = Rng::with_seed(7);
    let deep: Vec<PathBuf> = (0..DEPTHS[DEPTHS.len() - 1])
        .map(|i| root.join(format!("deep/l{i:02}")))
        .collect();
    for (i, l) in deep.iter().enumerate() {
        for k in 0..10 {
            file(&l.join(format!("d/l{i:02}_{k}")), 64, &mut rng);
        }
    }
    file(&deep[deep.len() - 1].join("d/target"), 64, &mut rng);

    let main: Vec<PathBuf> = (0..3).map(|i| root.join(format!("main/l{i}"))).collect();
    for i in 0..BIGDIR_ENTRIES {
        file(
            &main[i % 3].join(format!("{}/e{i:05}", stack::BIGDIR)),
            0,
            &mut rng,
        );
    }
    file(&main[2].join(stack::SMALL_FILE), 4096, &mut rng);
    for i in 0..COPYUP_SMALL_FILES {
        file(&main[2].join(format!("cu/c{i:05}")), 4096, &mut rng);
    }
    file(
        &main[1].join(stack::COPYUP_FILE),
        COPYUP_BIG_MIB << 20,
        &mut rng,
    );
    (deep, main)
}

fn main() {
    if !sys::is_root() {
        eprintln!("hotpaths: skipped: needs root (mounts)");
        return;
    }
    let specs = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "overlay,stratafs".into());
    let mut targets = Vec::new();
    for spec in specs.split(',') {
        let mut t = Target::parse(spec).unwrap_or_else(|e| panic!("{e}"));
        if let Err(why) = t.locate() {
            eprintln!("hotpaths: skipped: {why}");
            return;
        }
        targets.push(t);
    }
    sys::install_signal_handlers();

    let scratch = Scratch::new(Path::new("/var/tmp/strata-bench-criterion")).expect("scratch");
    let image = LoopFs::create(
        &scratch.path().join("image"),
        4,
        &scratch.path().join("img"),
        true,
    )
    .expect("ext4 image");
    eprintln!("hotpaths: building layers on {}", image.device());
    let (deep, main_layers) = build(image.path());
    let runs = image.path().join("runs");
    let mnts = scratch.path().join("mnt");
    fs::create_dir_all(&runs).unwrap();
    fs::create_dir_all(&mnts).unwrap();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();

    {
        let mut group = c.benchmark_group("stat_bottom_of_n_layers");
        for &n in DEPTHS {
            let lowers = deep[deep.len() - n..].to_vec();
            for t in &targets {
                let m = Mounted::new(t, lowers.clone(), &runs, &mnts);
                let path = m.root().join("d/target");
                group.bench_with_input(BenchmarkId::new(&t.label, n), &n, |b, _| {
                    b.iter(|| {
                        check();
                        black_box(fs::symlink_metadata(&path).unwrap())
                    })
                });
            }
        }
        group.finish();
    }

    let mut mounted: Vec<Mounted> = targets
        .iter()
        .map(|t| Mounted::new(t, main_layers.clone(), &runs, &mnts))
        .collect();

    {
        let mut group = c.benchmark_group("readdir_10k_merged_3_layers");
        for m in &mounted {
            let dir = m.root().join(stack::BIGDIR);
            group.bench_function(&m.target.label, |b| {
                b.iter(|| {
                    check();
                    let n = fs::read_dir(&dir).unwrap().count();
                    assert_eq!(n, BIGDIR_ENTRIES);
                })
            });
        }
        group.finish();
    }

    {
        let mut group = c.benchmark_group("open_read_4k");
        for m in &mounted {
            let path = m.root().join(stack::SMALL_FILE);
            let mut buf = vec![0u8; 4096];
            group.bench_function(&m.target.label, |b| {
                b.iter(|| {
                    check();
                    let mut f = fs::File::open(&path).unwrap();
                    f.read_exact(&mut buf).unwrap();
                })
            });
        }
        group.finish();
    }

    // The same small files, created (each write and close timed) or removed (only the unlinks
    // timed).
    for (name, subdir, timed) in [
        ("create_write_close_small", "created", Phase::Create),
        ("unlink_small", "unlinked", Phase::Remove),
    ] {
        let mut group = c.benchmark_group(name);
        for m in &mounted {
            let dir = m.root().join(subdir);
            fs::create_dir_all(&dir).unwrap();
            group.bench_function(&m.target.label, |b| {
                b.iter_custom(|iters| small_files(&dir, iters, timed))
            });
        }
        group.finish();
    }

    {
        // First write to a 4 KiB lower file: the copy-up. Each file copies up once; when all
        // have been, the target is remounted with an empty upper (not timed).
        let mut group = c.benchmark_group("copy_up_4k");
        for m in mounted.iter_mut() {
            let label = m.target.label.clone();
            let mut next = 0usize;
            group.bench_function(&label, |b| {
                b.iter_custom(|iters| {
                    copy_ups(iters, || {
                        if next == COPYUP_SMALL_FILES {
                            m.remount();
                            next = 0;
                        }
                        let p = m.root().join(format!("cu/c{next:05}"));
                        next += 1;
                        p
                    })
                })
            });
        }
        group.finish();
    }

    {
        // First write (4 KiB) to a 256 MiB lower file; a fresh mount for every iteration.
        let mut group = c.benchmark_group("copy_up_256m");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(15));
        for m in mounted.iter_mut() {
            let label = m.target.label.clone();
            group.bench_function(&label, |b| {
                b.iter_custom(|iters| {
                    copy_ups(iters, || {
                        m.remount();
                        m.root().join(stack::COPYUP_FILE)
                    })
                })
            });
        }
        group.finish();
    }

    drop(mounted);
    c.final_summary();
    drop(image);
    drop(scratch);
}

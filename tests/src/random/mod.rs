//! Randomized differential testing: seeded random layer stacks and operation sequences, run on
//! the kernel overlay and on stratafs side by side (through [`Pair`]), compared after every
//! step and at the end ([`Pair::finish`]); failing sequences are shrunk to a minimal reproducer
//! printed as a runnable Rust test.
//!
//! * [`Seq`]: one sequence: its lower layers (2-4), an optional pre-populated upper layer and
//!   its operations, all generated from one seed ([`Seq::generate`]). Paths are relative to the
//!   sequence's base directory, so that several sequences can share one mount (each in its own
//!   top-level directory, which exists in the sequence's own layers only).
//! * [`Op`]: the operations, including fd slots ("keep this fd open across the next
//!   operations"). [`Run`] executes them on both sides and compares the results: the return
//!   value or errno plus a look at the paths involved (stat fields, mtime when it was set
//!   explicitly, contents, link target, ordered listing with d_type, user xattrs).
//! * [`main`]: the driver of `tests/tests/random_diff.rs` (env: RANDOM_SEED, RANDOM_SEQUENCES,
//!   RANDOM_SOAK_SECS, RANDOM_THREADS, RANDOM_BATCH, RANDOM_REPLAY, RANDOM_SHRINK_SECS).
//!
//! What is normalised, and why:
//! * inode numbers: the two sides use different copies of the layers, so only relations are
//!   compared ([`Op::SameIno`], [`Op::FdSameIno`], and "fd and path are the same inode" after
//!   open);
//! * times: atime and ctime are not compared; an mtime is compared exactly when it is before
//!   2020 (the fixed time of the layers, or set by utimensat), otherwise only as "recent";
//! * directories: size and link count are not compared (as in the harness's `St`);
//! * layers never contain whiteouts in directories that are not merged (the known, deliberate
//!   difference: stratafs hides them, the kernel lists them), see [`normalize`];
//! * symlink targets never contain ".." or absolute paths, so that sequences sharing a mount
//!   cannot reach each other.

use crate::*;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

// The parts, in the order a sequence goes through them: `rng` (splitmix64, per-sequence
// seeds), `spec` (what a sequence is: layer entries, operations, their Rust form), `gen` (a
// sequence from a seed, normalised), `exec` (running operations on both sides and looking at
// the results), `shrink` (attributing and shrinking failures, reproducers); the driver below.
mod exec;
mod gen;
mod rng;
mod shrink;
mod spec;

pub use exec::*;
pub use gen::*;
pub use rng::*;
pub use shrink::*;
pub use spec::*;

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        let v = v.trim();
        let r = if let Some(h) = v.strip_prefix("0x") {
            u64::from_str_radix(h, 16)
        } else {
            v.parse()
        };
        r.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// Default base seed (CI is reproducible).
pub const DEFAULT_SEED: u64 = 0x5157_A7A0;

/// A failing sequence with its shrunk form.
struct Found {
    seed: u64,
    failure: Failure,
    repro: String,
}

/// The driver of tests/tests/random_diff.rs; see the module doc and that file for the env
/// switches. Panics with the reproducers of the failures found.
pub fn main() {
    let threads = env_u64("RANDOM_THREADS").unwrap_or(2).max(1) as usize;
    let batch = env_u64("RANDOM_BATCH").unwrap_or(10).max(1) as usize;
    let shrink_secs = env_u64("RANDOM_SHRINK_SECS").unwrap_or(60);
    let soak = env_u64("RANDOM_SOAK_SECS");
    if let Some(seed) = env_u64("RANDOM_REPLAY") {
        let seq = Seq::generate(seed);
        eprintln!("replaying sequence {seed}: {seq:#?}");
        match run_one(&seq) {
            None => eprintln!("sequence {seed} passes"),
            Some(f) => {
                eprintln!("sequence {seed} fails:\n{}", f.msg);
                let (small, f2, tries) = shrink(&seq, &f.sig, Duration::from_secs(shrink_secs));
                panic!(
                    "sequence {seed} fails ({}); shrunk in {tries} runs to:\n\n{}\n{}",
                    f.sig,
                    reproducer(&small, &f2),
                    f2.msg
                );
            }
        }
        return;
    }
    let base = match (env_u64("RANDOM_SEED"), soak) {
        (Some(s), _) => s,
        (None, Some(_)) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
        }
        (None, None) => DEFAULT_SEED,
    };
    let total = env_u64("RANDOM_SEQUENCES").unwrap_or(2000);
    let skip = env_u64("RANDOM_FIRST").unwrap_or(0);
    let deadline = soak.map(|s| Instant::now() + Duration::from_secs(s));
    let start = Instant::now();
    eprintln!(
        "random_diff: base seed {base} (RANDOM_SEED={base}), {} , {threads} threads, {batch} sequences per mount",
        match soak {
            Some(s) => format!("soak for {s} s"),
            None => format!("{total} sequences"),
        }
    );
    let next = std::sync::atomic::AtomicU64::new(skip);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let nops = std::sync::atomic::AtomicUsize::new(0);
    let found: Mutex<Vec<Found>> = Mutex::new(Vec::new());
    let sigs: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let first = next.fetch_add(batch as u64, std::sync::atomic::Ordering::SeqCst);
                let n = match deadline {
                    Some(d) if Instant::now() >= d => return,
                    Some(_) => batch as u64,
                    None if first >= skip + total => return,
                    None => (skip + total - first).min(batch as u64),
                };
                let seqs: Vec<Seq> = (first..first + n)
                    .map(|i| Seq::generate(seq_seed(base, i)))
                    .collect();
                let name = format!("rnd-{first}");
                let f = run_shared(&name, &seqs, &nops);
                done.fetch_add(n as usize, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = f else { continue };
                eprintln!(
                    "random_diff: batch of sequences {first}..{} failed ({}); running them one by one",
                    first + n,
                    f.sig
                );
                let mut any = false;
                for seq in &seqs {
                    let Some(f) = run_one(seq) else { continue };
                    any = true;
                    eprintln!(
                        "random_diff: FAILING SEQUENCE: RANDOM_REPLAY={} ({})\n{}",
                        seq.seed, f.sig, f.msg
                    );
                    {
                        let mut s = sigs.lock().unwrap();
                        if s.contains(&f.sig) || s.len() >= 4 {
                            found.lock().unwrap().push(Found {
                                seed: seq.seed,
                                failure: f,
                                repro: String::from("(not shrunk: same signature as another failure)"),
                            });
                            continue;
                        }
                        s.push(f.sig.clone());
                    }
                    let (small, f2, tries) =
                        shrink(seq, &f.sig, Duration::from_secs(shrink_secs));
                    let repro = reproducer(&small, &f2);
                    eprintln!(
                        "random_diff: sequence {} shrunk in {tries} runs to:\n{repro}\n{}",
                        seq.seed, f2.msg
                    );
                    found.lock().unwrap().push(Found {
                        seed: seq.seed,
                        failure: f2,
                        repro,
                    });
                }
                if !any {
                    found.lock().unwrap().push(Found {
                        seed: seqs[0].seed,
                        failure: f.clone(),
                        repro: format!(
                            "(fails only when sharing a mount: RANDOM_SEED={base} RANDOM_FIRST={first} \
                             RANDOM_SEQUENCES={n} RANDOM_BATCH={batch})"
                        ),
                    });
                }
            });
        }
    });
    let done = done.into_inner();
    let el = start.elapsed();
    eprintln!(
        "random_diff: {done} sequences, {} operations, {:.1} s ({:.1} sequences/s), base seed {base}",
        nops.into_inner(),
        el.as_secs_f64(),
        done as f64 / el.as_secs_f64()
    );
    let found = found.into_inner().unwrap();
    if !found.is_empty() {
        let mut s = format!(
            "random_diff: {} failing sequence(s) (base seed {base}):\n",
            found.len()
        );
        for f in &found {
            let _ = writeln!(
                s,
                "\n=== RANDOM_REPLAY={} ({})\n{}\n{}",
                f.seed, f.failure.sig, f.failure.msg, f.repro
            );
        }
        panic!("{s}");
    }
}

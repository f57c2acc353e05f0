//! Running, attributing and shrinking failures; reproducers as Rust tests.

use super::*;
use std::cell::Cell;
use std::time::Instant;

/// A failing sequence: what failed (`sig`, used to recognise the same failure while shrinking)
/// and the full message.
#[derive(Clone, Debug)]
pub struct Failure {
    pub sig: String,
    pub msg: String,
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                prev(info)
            }
        }));
    });
}

/// Runs `f`, catching a panic (without printing it) as its message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|e| panic_msg(&e))
}

/// Where two step outcomes first differ: "segment N, after <field>" (values left out, so that
/// the same bug with other values has the same signature).
fn diff_token(msg: &str) -> String {
    let line = |p: &str| {
        msg.lines()
            .find_map(|l| l.trim_start().strip_prefix(p).map(str::trim))
            .unwrap_or("")
            .to_string()
    };
    let (k, s) = (line("kernel:"), line("stratafs:"));
    let ks: Vec<&str> = k.split(" | ").collect();
    let ss: Vec<&str> = s.split(" | ").collect();
    for (i, (a, b)) in ks.iter().zip(ss.iter()).enumerate() {
        if a == b {
            continue;
        }
        fn split(x: &str) -> Vec<&str> {
            x.split([' ', ',', '(', ')', '{', '}']).collect()
        }
        let (ta, tb) = (split(a), split(b));
        let mut field = "";
        for (x, y) in ta.iter().zip(tb.iter()) {
            if x != y {
                break;
            }
            if x.ends_with(':') || x.ends_with('=') {
                field = x;
            }
        }
        let first = |t: &[&str]| t.first().map(|x| x.to_string()).unwrap_or_default();
        let shape = |t: &str| {
            if t.starts_with("Err") || t.starts_with('E') {
                "err"
            } else {
                "ok"
            }
        };
        return format!(
            "segment {i} {field} ({}/{})",
            shape(&first(&ta)),
            shape(&first(&tb))
        );
    }
    "segments".into()
}

fn final_sig(msg: &str) -> String {
    for k in [
        "kernel remount",
        "stratafs over the kernel's layers",
        "merged views differ",
        "upper layers differ",
        "lower layers modified",
        "outside of the layers",
        "mount failed",
        "materialize",
        "cleanup",
    ] {
        if msg.contains(k) {
            return format!("final: {k}");
        }
    }
    format!("final: {}", msg.lines().next().unwrap_or(""))
}

/// Runs sequences sharing one pair (sequence i in the directory "q{i}"), then the final
/// checks. Returns the failure of the batch (not attributed to a sequence).
pub(super) fn run_shared(
    name: &str,
    seqs: &[Seq],
    ops: &std::sync::atomic::AtomicUsize,
) -> Option<Failure> {
    let bases: Vec<String> = (0..seqs.len())
        .map(|i| {
            if seqs.len() == 1 {
                "q".into()
            } else {
                format!("q{i}")
            }
        })
        .collect();
    let named: Vec<(String, &Seq)> = bases.iter().cloned().zip(seqs.iter()).collect();
    let layers = layers_of(&named);
    let mut step_fail: Option<Failure> = None;
    let r = catch(|| {
        let pair = Pair::new(name, &layers);
        for (base, seq) in &named {
            let mut run = Run::new(&pair, base);
            for op in &seq.ops {
                ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(msg) = run.try_step(op) {
                    step_fail = Some(Failure {
                        sig: format!("step: {}: {}", op.kind(), diff_token(&msg)),
                        msg,
                    });
                    return;
                }
            }
        }
        pair.finish();
    });
    if step_fail.is_some() {
        return step_fail;
    }
    r.err().map(|msg| Failure {
        sig: final_sig(&msg),
        msg,
    })
}

/// Runs one sequence alone on a fresh pair (base directory "q").
pub fn run_one(seq: &Seq) -> Option<Failure> {
    let n = std::sync::atomic::AtomicUsize::new(0);
    run_shared(&format!("rnd{:x}", seq.seed), std::slice::from_ref(seq), &n)
}

/// Shrinks a failing sequence (delta debugging over operations, layer entries, layers and
/// details; every candidate runs on fresh mounts) while it fails with the same signature.
pub fn shrink(seq: &Seq, sig: &str, budget: Duration) -> (Seq, Failure, usize) {
    let start = Instant::now();
    let mut best = seq.clone();
    let mut best_f = Failure {
        sig: sig.to_string(),
        msg: String::new(),
    };
    let mut tries = 0usize;
    let mut test = |cand: &mut Seq, best: &mut Seq, best_f: &mut Failure| -> bool {
        if start.elapsed() > budget {
            return false;
        }
        normalize(cand);
        if cand == best {
            return false;
        }
        tries += 1;
        match run_one(cand) {
            Some(f) if f.sig == sig => {
                *best = cand.clone();
                *best_f = f;
                true
            }
            _ => false,
        }
    };
    // Establish the failure message of the original.
    if let Some(f) = run_one(&best) {
        best_f = f;
    }
    loop {
        let before = best.clone();
        // Operations: chunks of halving size.
        let mut chunk = best.ops.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < best.ops.len() {
                let mut cand = best.clone();
                let end = (i + chunk).min(cand.ops.len());
                cand.ops.drain(i..end);
                if !test(&mut cand, &mut best, &mut best_f) {
                    i += chunk;
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        // Whole layers: the upper, then lowers (at least two stay).
        if best.upper.is_some() {
            let mut cand = best.clone();
            cand.upper = None;
            test(&mut cand, &mut best, &mut best_f);
        }
        let mut li = 0;
        while li < best.lowers.len() && best.lowers.len() > 2 {
            let mut cand = best.clone();
            cand.lowers.remove(li);
            if !test(&mut cand, &mut best, &mut best_f) {
                li += 1;
            }
        }
        // Layer entries, one at a time (dependents go with them through normalize).
        let nlayers = best.lowers.len() + usize::from(best.upper.is_some());
        for layer in 0..nlayers {
            let mut i = 0;
            loop {
                let mut cand = best.clone();
                let l = layer_mut(&mut cand, layer);
                if i >= l.len() {
                    break;
                }
                l.remove(i);
                if !test(&mut cand, &mut best, &mut best_f) {
                    i += 1;
                }
            }
        }
        // Details of entries: modifiers, contents.
        for layer in 0..nlayers {
            for i in 0..layer_mut(&mut best.clone(), layer).len() {
                for what in 0..4 {
                    let mut cand = best.clone();
                    let e = &mut layer_mut(&mut cand, layer)[i];
                    match what {
                        0 => e.mode = None,
                        1 => e.owner = None,
                        2 => e.xattr = None,
                        _ => {
                            if let LNode::File(Content::Pattern(..)) | LNode::Sparse(..) = e.node {
                                e.node = LNode::File(Content::Text("x".into()));
                            }
                        }
                    }
                    test(&mut cand, &mut best, &mut best_f);
                }
            }
        }
        // Details of operations: shorter data, fewer open flags, plain modes.
        for i in 0..best.ops.len() {
            for what in 0..8 {
                let mut cand = best.clone();
                match (&mut cand.ops[i], what) {
                    (
                        Op::Write { data, .. }
                        | Op::Append { data, .. }
                        | Op::FdWrite { data, .. }
                        | Op::FdWriteSeq { data, .. },
                        0,
                    ) => *data = Content::Text("d".into()),
                    (Op::Open { mode, .. }, 0) => *mode = 0o644,
                    (Op::Open { flags, .. }, 1..=6) => {
                        let bit = [
                            libc::O_APPEND,
                            libc::O_TRUNC,
                            libc::O_CREAT,
                            libc::O_EXCL,
                            libc::O_DIRECTORY,
                            libc::O_NOFOLLOW,
                        ][what - 1];
                        if *flags & bit == 0 {
                            continue;
                        }
                        *flags &= !bit;
                    }
                    (Op::Open { slot, .. }, 7) if slot.is_some() => *slot = None,
                    (Op::Rename { flags, .. }, 0) if *flags != 0 => *flags = 0,
                    _ => continue,
                }
                test(&mut cand, &mut best, &mut best_f);
            }
        }
        if best == before || start.elapsed() > budget {
            break;
        }
    }
    (best, best_f, tries)
}

fn layer_mut(seq: &mut Seq, i: usize) -> &mut Vec<LEnt> {
    if let Some(u) = &mut seq.upper {
        if i == 0 {
            return u;
        }
        return &mut seq.lowers[i - 1];
    }
    &mut seq.lowers[i]
}

/// The sequence as a runnable regression test (for tests/tests/regressions.rs, which has
/// `use e2e::random::*; use e2e::*;`).
pub fn reproducer(seq: &Seq, f: &Failure) -> String {
    let mut s = String::new();
    let name = format!("random_{:016x}", seq.seed);
    let first = f.msg.lines().next().unwrap_or("").replace('"', "'");
    let _ = writeln!(
        s,
        "/// Found by random_diff (RANDOM_REPLAY={}): {}",
        seq.seed, f.sig
    );
    let _ = writeln!(s, "#[test]");
    let _ = writeln!(
        s,
        "#[ignore = \"stratafs bug: {}\"]",
        first.replace('\\', "")
    );
    let _ = writeln!(s, "fn {name}() {{");
    let _ = writeln!(s, "    let layers = Layers::new()");
    let layer = |entries: &[LEnt]| {
        let mut l = String::from("Layer::new().dir(\"q\")");
        for e in entries {
            let _ = write!(l, "\n                {}", e.rust("q"));
        }
        l
    };
    for l in &seq.lowers {
        let _ = writeln!(s, "        .lower(\n            {},\n        )", layer(l));
    }
    if let Some(u) = &seq.upper {
        let _ = writeln!(s, "        .upper(\n            {},\n        )", layer(u));
    }
    let _ = writeln!(s, "        ;");
    let _ = writeln!(
        s,
        "    replay(\n        {name:?},\n        &layers,\n        ["
    );
    for op in &seq.ops {
        let _ = writeln!(s, "            {},", op.rust());
    }
    let _ = writeln!(s, "        ],\n    );");
    let _ = writeln!(s, "}}");
    s
}

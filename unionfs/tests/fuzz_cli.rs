//! Property-based fuzzing of the command line: `cli::parse` must answer every argument vector
//! (arbitrary bytes, or mount-style vocabulary that reaches deep into the option parser) with Ok
//! or a `CliError`, never a panic; escaped paths survive a parse unchanged; and the real binary,
//! run with a few hundred generated argument vectors, exits with 0 or 2 and never panics.
//!
//! Cases per property: 1024 unless PROPTEST_CASES says otherwise; a failure
//! is shrunk to a minimal argument vector and printed.

use proptest::prelude::*;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use unionfs::cli::{self, CliError};

mod common;

/// Pieces of mount-style command lines: flags, option names, separators and escapes.
const VOCAB: &[&str] = &[
    "-o",
    "-f",
    "-d",
    "-v",
    "-fv",
    "-of",
    "-ovx",
    "-h",
    "-V",
    "-x",
    "--",
    "--help",
    "--version",
    "--foreground",
    "--debug",
    "--verbose",
    "--bogus",
    "-",
    "",
    "lowerdir=",
    "upperdir=",
    "workdir=",
    "fsname=",
    "subtype=",
    "threads=",
    "driver=",
    "driver=fuse",
    "driver=kernel",
    "driver=auto",
    "threads=0",
    "threads=257",
    "threads=4",
    "threads=-1",
    "threads=99999999999999999999999",
    "x-systemd.automount",
    "ro",
    "rw",
    "ro=1",
    "nodev",
    "nosuid",
    "noexec",
    "noatime",
    "allow_other",
    "userxattr",
    "default_permissions",
    "defaults",
    "lowerdir",
    "=",
    ",",
    ",,",
    ":",
    "::",
    "\\",
    "\\\\",
    "\\,",
    "\\:",
    "/nonexistent-strata-fuzz/a",
    "/nonexistent-strata-fuzz/b",
    "/nonexistent-strata-fuzz/m",
    "rel/dir",
    "\u{e9}",
    "\u{1F600}",
];

/// One argument: a vocabulary token, the concatenation of a few, or raw bytes.
fn arg() -> impl Strategy<Value = Vec<u8>> {
    let token = proptest::sample::select(VOCAB).prop_map(|s| s.as_bytes().to_vec());
    let joined = proptest::collection::vec(proptest::sample::select(VOCAB), 1..6)
        .prop_map(|v| v.concat().into_bytes());
    let raw = proptest::collection::vec(any::<u8>(), 0..24);
    prop_oneof![3 => token, 4 => joined, 2 => raw]
}

fn argv() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 0..8)
}

fn os(args: &[Vec<u8>]) -> Vec<OsString> {
    args.iter().map(|a| OsString::from_vec(a.clone())).collect()
}

/// Every error renders (Display is what the binary prints).
fn render(r: &Result<cli::Command, CliError>) {
    if let Err(e) = r {
        let _ = e.to_string();
    }
}

proptest! {
    #![proptest_config(common::config())]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)
    ) {
        render(&cli::parse(os(&args)));
    }

    #[test]
    fn parse_never_panics_on_mount_style_args(args in argv()) {
        render(&cli::parse(os(&args)));
    }

    /// `-o` values built from options with arbitrary (escaped and unescaped) values.
    #[test]
    fn parse_never_panics_on_option_lists(
        items in proptest::collection::vec(
            (proptest::sample::select(VOCAB), proptest::collection::vec(any::<u8>(), 0..16)),
            0..6,
        ),
        mnt in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut o = Vec::new();
        for (k, v) in &items {
            if !o.is_empty() {
                o.push(b',');
            }
            o.extend_from_slice(k.as_bytes());
            o.extend_from_slice(v);
        }
        let args = vec![b"-o".to_vec(), o, mnt];
        render(&cli::parse(os(&args)));
    }

    /// A path escaped with `cli::escape_path` comes back unchanged from the parser, as the only
    /// lower layer, as upperdir/workdir and as one layer of several.
    #[test]
    fn escaped_paths_round_trip(
        path in proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..40),
        other in proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..20),
    ) {
        let p = OsString::from_vec(path.clone());
        let q = OsString::from_vec(other.clone());
        let ep = cli::escape_path(&p);
        let eq = cli::escape_path(&q);
        let mut o = b"lowerdir=".to_vec();
        o.extend_from_slice(ep.as_bytes());
        o.push(b':');
        o.extend_from_slice(eq.as_bytes());
        o.extend_from_slice(b",upperdir=");
        o.extend_from_slice(ep.as_bytes());
        o.extend_from_slice(b",workdir=");
        o.extend_from_slice(eq.as_bytes());
        let args = vec![OsString::from("-o"), OsString::from_vec(o), OsString::from("/mnt")];
        match cli::parse(args) {
            Ok(cli::Command::Mount(opts)) => {
                prop_assert_eq!(opts.lowerdirs, vec![PathBuf::from(&p), PathBuf::from(&q)]);
                prop_assert_eq!(opts.upperdir, Some(PathBuf::from(&p)));
                prop_assert_eq!(opts.workdir, Some(PathBuf::from(&q)));
            }
            other => prop_assert!(false, "expected a mount, got {:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a tiny seeded generator, so that the run is reproducible (seed printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn gen_arg(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => VOCAB[rng.below(VOCAB.len())].as_bytes().to_vec(),
        1 | 2 => {
            let n = 1 + rng.below(5);
            (0..n)
                .flat_map(|_| VOCAB[rng.below(VOCAB.len())].bytes())
                .collect()
        }
        _ => {
            let n = rng.below(16);
            // No NUL: an argv element cannot hold one.
            (0..n).map(|_| (rng.next() % 255) as u8 + 1).collect()
        }
    }
}

/// Mounts whose mount point is one a generated command line could name (relative paths resolve
/// in `cwd`; absolute ones are under /nonexistent-strata-fuzz). Other tests may mount elsewhere
/// concurrently.
fn our_mounts(cwd: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| {
            std::path::Path::new(m).starts_with(cwd) || m.starts_with("/nonexistent-strata-fuzz")
        })
        .collect()
}

#[test]
fn binary_never_panics_on_random_argv() {
    let bin = env!("CARGO_BIN_EXE_stratafs");
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c11f_u64);
    let runs: usize = std::env::var("FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = Rng(seed | 1);
    let mut by_status = std::collections::BTreeMap::new();
    // Run from an empty directory: no relative path generated can name an existing layer.
    let cwd = std::env::temp_dir().join(format!("fuzz-cli-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    for run in 0..runs {
        let n = rng.below(7);
        let args: Vec<OsString> = (0..n)
            .map(|_| OsString::from_vec(gen_arg(&mut rng)))
            .collect();
        // `stratafs demo` builds and mounts a stack: not an input we want here.
        if args.len() == 1 && args[0] == "demo" {
            continue;
        }
        let mut child = Command::new(bin)
            .args(&args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stratafs");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("run {run} (seed {seed}): stratafs {args:?} did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            !stderr.contains("panicked"),
            "run {run} (seed {seed}): stratafs {args:?} panicked:\n{stderr}"
        );
        assert!(
            matches!(code, Some(0) | Some(2)),
            "run {run} (seed {seed}): stratafs {args:?} exited with {:?}:\n{stderr}",
            out.status
        );
        *by_status.entry(code).or_insert(0usize) += 1;
    }
    let mounted = our_mounts(&cwd);
    assert!(
        mounted.is_empty(),
        "a generated command line mounted something: {mounted:?}"
    );
    let _ = std::fs::remove_dir_all(&cwd);
    eprintln!("binary fuzz: {runs} runs (seed {seed}), exit statuses: {by_status:?}");
}

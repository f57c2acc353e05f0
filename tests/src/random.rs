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
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// Random numbers (splitmix64: tiny, deterministic, no dependency)
// ---------------------------------------------------------------------------------------------

/// A small deterministic random number generator (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability pct/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize].clone()
    }

    /// Index into `weights`, chosen proportionally.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        unreachable!()
    }
}

/// The seed of sequence number `index` of a run with base seed `base`.
pub fn seq_seed(base: u64, index: u64) -> u64 {
    Rng::new(base ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

// ---------------------------------------------------------------------------------------------
// Specs: contents, layer entries, operations
// ---------------------------------------------------------------------------------------------

/// Deterministic filler: `len` bytes, varied by `k`.
pub fn pattern(len: usize, k: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 7 + k as usize) % 26) as u8)
        .collect()
}

/// File or write contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Text(String),
    /// [`pattern`]`(len, k)`
    Pattern(usize, u8),
}

impl Content {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Text(s) => s.as_bytes().to_vec(),
            Content::Pattern(n, k) => pattern(*n, *k),
        }
    }

    fn rust(&self) -> String {
        match self {
            Content::Text(s) => format!("Content::Text({s:?}.into())"),
            Content::Pattern(n, k) => format!("Content::Pattern({n}, {k})"),
        }
    }

    fn rust_bytes(&self) -> String {
        match self {
            Content::Text(s) => format!("{s:?}"),
            Content::Pattern(n, k) => format!("random::pattern({n}, {k})"),
        }
    }
}

/// What a layer entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LNode {
    File(Content),
    /// size, (offset, data) extents
    Sparse(u64, Vec<(u64, String)>),
    Dir,
    Opaque,
    Symlink(String),
    /// hard link to an earlier file entry of the same layer (relative path)
    Hardlink(String),
    Fifo,
    Whiteout,
}

/// One entry of a generated layer (path relative to the sequence base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LEnt {
    pub path: String,
    pub node: LNode,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub xattr: Option<(String, String)>,
}

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{rel}"),
    }
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map(|i| &p[..i]).unwrap_or("")
}

impl LEnt {
    fn add_to(&self, l: Layer, base: &str) -> Layer {
        let p = join(base, &self.path);
        let mut l = match &self.node {
            LNode::File(c) => l.file(&p, c.bytes()),
            LNode::Sparse(size, ext) => {
                let ext: Vec<(u64, &[u8])> = ext.iter().map(|(o, d)| (*o, d.as_bytes())).collect();
                l.sparse(&p, *size, &ext)
            }
            LNode::Dir => l.dir(&p),
            LNode::Opaque => l.opaque(&p),
            LNode::Symlink(t) => l.symlink(&p, t),
            LNode::Hardlink(t) => l.hardlink(&p, &join(base, t)),
            LNode::Fifo => l.fifo(&p),
            LNode::Whiteout => l.whiteout(&p),
        };
        if let Some(m) = self.mode {
            l = l.mode(m);
        }
        if let Some((u, g)) = self.owner {
            l = l.owner(u, g);
        }
        if let Some((n, v)) = &self.xattr {
            l = l.xattr(n, v);
        }
        l
    }

    fn rust(&self, base: &str) -> String {
        let p = join(base, &self.path);
        let mut s = match &self.node {
            LNode::File(c) => format!(".file({p:?}, {})", c.rust_bytes()),
            LNode::Sparse(size, ext) => {
                let e: Vec<String> = ext
                    .iter()
                    .map(|(o, d)| format!("({o}, {:?}.as_bytes())", d))
                    .collect();
                format!(".sparse({p:?}, {size}, &[{}])", e.join(", "))
            }
            LNode::Dir => format!(".dir({p:?})"),
            LNode::Opaque => format!(".opaque({p:?})"),
            LNode::Symlink(t) => format!(".symlink({p:?}, {t:?})"),
            LNode::Hardlink(t) => format!(".hardlink({p:?}, {:?})", join(base, t)),
            LNode::Fifo => format!(".fifo({p:?})"),
            LNode::Whiteout => format!(".whiteout({p:?})"),
        };
        if let Some(m) = self.mode {
            let _ = write!(s, ".mode({m:#o})");
        }
        if let Some((u, g)) = self.owner {
            let _ = write!(s, ".owner({u}, {g})");
        }
        if let Some((n, v)) = &self.xattr {
            let _ = write!(s, ".xattr({n:?}, {v:?})");
        }
        s
    }
}

/// A timestamp argument of utimensat (mirrors [`Ts`], printable).
pub type Time = Ts;

/// One operation. Paths are relative to the sequence base; `slot` is an fd slot (0..SLOTS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(2); the fd is kept in `slot` (replacing what was there) or closed at once.
    Open {
        path: String,
        flags: i32,
        mode: u32,
        slot: Option<usize>,
    },
    /// open O_RDONLY, read everything.
    Read {
        path: String,
    },
    /// open O_WRONLY, pwrite at `off`.
    Write {
        path: String,
        off: u64,
        data: Content,
    },
    /// open O_WRONLY|O_APPEND, write.
    Append {
        path: String,
        data: Content,
    },
    Truncate {
        path: String,
        len: u64,
    },
    /// open O_RDONLY, fsync.
    Fsync {
        path: String,
    },
    FdRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    FdWrite {
        slot: usize,
        off: u64,
        data: Content,
    },
    /// write(2) at the fd's position.
    FdWriteSeq {
        slot: usize,
        data: Content,
    },
    FdTruncate {
        slot: usize,
        len: u64,
    },
    FdStat {
        slot: usize,
    },
    FdSync {
        slot: usize,
        data_only: bool,
    },
    /// mmap the whole file MAP_SHARED, write `data` at `off` modulo the size, msync, munmap.
    FdMmapWrite {
        slot: usize,
        off: u64,
        data: Content,
    },
    Close {
        slot: usize,
    },
    /// fstat(fd).st_ino == lstat(path).st_ino
    FdSameIno {
        slot: usize,
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimens {
        path: String,
        atime: Time,
        mtime: Time,
        nofollow: bool,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
        flags: i32,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Readdir {
        path: String,
    },
    Stat {
        path: String,
    },
    /// lstat(a).st_ino == lstat(b).st_ino
    SameIno {
        a: String,
        b: String,
    },
}

/// Number of fd slots.
pub const SLOTS: usize = 4;

fn flags_rust(flags: i32) -> String {
    let mut v = vec![match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "libc::O_WRONLY",
        libc::O_RDWR => "libc::O_RDWR",
        _ => "libc::O_RDONLY",
    }
    .to_string()];
    for (f, n) in [
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    ] {
        if flags & f != 0 {
            v.push(format!("libc::{n}"));
        }
    }
    v.join(" | ")
}

fn ts_rust(t: &Ts) -> String {
    match t {
        Ts::Now => "Ts::Now".into(),
        Ts::Omit => "Ts::Omit".into(),
        Ts::At(s, n) => format!("Ts::At({s}, {n})"),
    }
}

impl Op {
    /// The variant's name (failure signatures).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Open { .. } => "Open",
            Op::Read { .. } => "Read",
            Op::Write { .. } => "Write",
            Op::Append { .. } => "Append",
            Op::Truncate { .. } => "Truncate",
            Op::Fsync { .. } => "Fsync",
            Op::FdRead { .. } => "FdRead",
            Op::FdWrite { .. } => "FdWrite",
            Op::FdWriteSeq { .. } => "FdWriteSeq",
            Op::FdTruncate { .. } => "FdTruncate",
            Op::FdStat { .. } => "FdStat",
            Op::FdSync { .. } => "FdSync",
            Op::FdMmapWrite { .. } => "FdMmapWrite",
            Op::Close { .. } => "Close",
            Op::FdSameIno { .. } => "FdSameIno",
            Op::Rename { .. } => "Rename",
            Op::Link { .. } => "Link",
            Op::Unlink { .. } => "Unlink",
            Op::Mkdir { .. } => "Mkdir",
            Op::Rmdir { .. } => "Rmdir",
            Op::Symlink { .. } => "Symlink",
            Op::Mkfifo { .. } => "Mkfifo",
            Op::Chmod { .. } => "Chmod",
            Op::Chown { .. } => "Chown",
            Op::Utimens { .. } => "Utimens",
            Op::SetXattr { .. } => "SetXattr",
            Op::RemoveXattr { .. } => "RemoveXattr",
            Op::Readdir { .. } => "Readdir",
            Op::Stat { .. } => "Stat",
            Op::SameIno { .. } => "SameIno",
        }
    }

    /// The operation as Rust source (for reproducers).
    pub fn rust(&self) -> String {
        let s = |x: &String| format!("{x:?}.into()");
        match self {
            Op::Open {
                path,
                flags,
                mode,
                slot,
            } => format!(
                "Op::Open {{ path: {}, flags: {}, mode: {mode:#o}, slot: {slot:?} }}",
                s(path),
                flags_rust(*flags)
            ),
            Op::Read { path } => format!("Op::Read {{ path: {} }}", s(path)),
            Op::Write { path, off, data } => format!(
                "Op::Write {{ path: {}, off: {off}, data: {} }}",
                s(path),
                data.rust()
            ),
            Op::Append { path, data } => {
                format!("Op::Append {{ path: {}, data: {} }}", s(path), data.rust())
            }
            Op::Truncate { path, len } => {
                format!("Op::Truncate {{ path: {}, len: {len} }}", s(path))
            }
            Op::Fsync { path } => format!("Op::Fsync {{ path: {} }}", s(path)),
            Op::FdRead { slot, off, len } => {
                format!("Op::FdRead {{ slot: {slot}, off: {off}, len: {len} }}")
            }
            Op::FdWrite { slot, off, data } => format!(
                "Op::FdWrite {{ slot: {slot}, off: {off}, data: {} }}",
                data.rust()
            ),
            Op::FdWriteSeq { slot, data } => {
                format!("Op::FdWriteSeq {{ slot: {slot}, data: {} }}", data.rust())
            }
            Op::FdTruncate { slot, len } => {
                format!("Op::FdTruncate {{ slot: {slot}, len: {len} }}")
            }
            Op::FdStat { slot } => format!("Op::FdStat {{ slot: {slot} }}"),
            Op::FdSync { slot, data_only } => {
                format!("Op::FdSync {{ slot: {slot}, data_only: {data_only} }}")
            }
            Op::FdMmapWrite { slot, off, data } => format!(
                "Op::FdMmapWrite {{ slot: {slot}, off: {off}, data: {} }}",
                data.rust()
            ),
            Op::Close { slot } => format!("Op::Close {{ slot: {slot} }}"),
            Op::FdSameIno { slot, path } => {
                format!("Op::FdSameIno {{ slot: {slot}, path: {} }}", s(path))
            }
            Op::Rename { from, to, flags } => format!(
                "Op::Rename {{ from: {}, to: {}, flags: {} }}",
                s(from),
                s(to),
                match *flags {
                    RENAME_NOREPLACE => "RENAME_NOREPLACE".to_string(),
                    RENAME_EXCHANGE => "RENAME_EXCHANGE".to_string(),
                    f => f.to_string(),
                }
            ),
            Op::Link { from, to } => {
                format!("Op::Link {{ from: {}, to: {} }}", s(from), s(to))
            }
            Op::Unlink { path } => format!("Op::Unlink {{ path: {} }}", s(path)),
            Op::Mkdir { path, mode } => {
                format!("Op::Mkdir {{ path: {}, mode: {mode:#o} }}", s(path))
            }
            Op::Rmdir { path } => format!("Op::Rmdir {{ path: {} }}", s(path)),
            Op::Symlink { target, path } => {
                format!("Op::Symlink {{ target: {}, path: {} }}", s(target), s(path))
            }
            Op::Mkfifo { path, mode } => {
                format!("Op::Mkfifo {{ path: {}, mode: {mode:#o} }}", s(path))
            }
            Op::Chmod { path, mode } => {
                format!("Op::Chmod {{ path: {}, mode: {mode:#o} }}", s(path))
            }
            Op::Chown { path, uid, gid } => {
                format!("Op::Chown {{ path: {}, uid: {uid}, gid: {gid} }}", s(path))
            }
            Op::Utimens {
                path,
                atime,
                mtime,
                nofollow,
            } => format!(
                "Op::Utimens {{ path: {}, atime: {}, mtime: {}, nofollow: {nofollow} }}",
                s(path),
                ts_rust(atime),
                ts_rust(mtime)
            ),
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => format!(
                "Op::SetXattr {{ path: {}, name: {}, value: {}, flags: {flags} }}",
                s(path),
                s(name),
                s(value)
            ),
            Op::RemoveXattr { path, name } => {
                format!("Op::RemoveXattr {{ path: {}, name: {} }}", s(path), s(name))
            }
            Op::Readdir { path } => format!("Op::Readdir {{ path: {} }}", s(path)),
            Op::Stat { path } => format!("Op::Stat {{ path: {} }}", s(path)),
            Op::SameIno { a, b } => format!("Op::SameIno {{ a: {}, b: {} }}", s(a), s(b)),
        }
    }
}

/// One random sequence: layers and operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq {
    pub seed: u64,
    /// Lower layers, top first.
    pub lowers: Vec<Vec<LEnt>>,
    /// Pre-populated upper layer (None: the base directory is not in the upper layer).
    pub upper: Option<Vec<LEnt>>,
    pub ops: Vec<Op>,
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

const L1: &[&str] = &["a", "b", "c", "d", "e"];
const L2: &[&str] = &["x", "y"];
const TARGETS: &[&str] = &["a", "b", "c/x", "d", "zz", "a/x", "e/y/z", "b/y"];

/// Layer entry kinds, in the order of the weights of `rand_entry`.
const NODE_NAMES: &[&str] = &[
    "File", "Sparse", "Dir", "Opaque", "Symlink", "Hardlink", "Fifo", "Whiteout",
];
/// Operation kinds, in the order of the weights of `gen_op`.
const OP_NAMES: &[&str] = &[
    "Open",
    "Read",
    "Write",
    "Append",
    "Truncate",
    "Fsync",
    "FdRead",
    "FdWrite",
    "FdWriteSeq",
    "FdTruncate",
    "FdStat",
    "FdSync",
    "FdMmapWrite",
    "Close",
    "FdSameIno",
    "Rename",
    "Link",
    "Unlink",
    "Mkdir",
    "Rmdir",
    "Symlink",
    "Mkfifo",
    "Chmod",
    "Chown",
    "Utimens",
    "SetXattr",
    "RemoveXattr",
    "Readdir",
    "Stat",
    "SameIno",
];

/// `RANDOM_EXCLUDE=Name,Name`: operation and layer entry kinds not generated (a triage aid to
/// look past a known bug; the names are those of [`Op::kind`] and [`LNode`]).
fn excluded(w: &[u64], names: &[&str]) -> Vec<u64> {
    let ex = std::env::var("RANDOM_EXCLUDE").unwrap_or_default();
    let ex: Vec<&str> = ex.split(',').map(str::trim).collect();
    w.iter()
        .zip(names)
        .map(|(w, n)| if ex.contains(n) { 0 } else { *w })
        .collect()
}

fn rand_path(r: &mut Rng) -> String {
    let a = r.pick(L1);
    match r.below(100) {
        0..=54 => a.to_string(),
        55..=94 => format!("{a}/{}", r.pick(L2)),
        _ => format!("{a}/{}/z", r.pick(L2)),
    }
}

fn rand_text(r: &mut Rng, tag: &str) -> Content {
    match r.below(10) {
        0 => Content::Pattern(r.pick(&[4096, 5000, 70_000]), r.below(26) as u8),
        1 => Content::Text(String::new()),
        _ => Content::Text(format!("{tag}{}", "#".repeat(r.below(12) as usize))),
    }
}

fn rand_mode(r: &mut Rng) -> u32 {
    r.pick(&[
        0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750, 0o1777, 0o000, 0o640,
    ])
}

fn rand_entry(r: &mut Rng, layer: &[LEnt], path: String, depth: usize, tag: &str) -> LEnt {
    // File, Sparse, Dir, Opaque, Symlink, Hardlink, Fifo, Whiteout
    let w: [u64; 8] = if depth < 3 {
        [30, 5, 25, 5, 10, 8, 4, 13]
    } else {
        [40, 5, 0, 0, 15, 10, 5, 15]
    };
    let files: Vec<&LEnt> = layer
        .iter()
        .filter(|e| matches!(e.node, LNode::File(_) | LNode::Sparse(..)))
        .collect();
    let w = excluded(&w, NODE_NAMES);
    let node = match r.weighted(&w) {
        0 => LNode::File(rand_text(r, tag)),
        1 => {
            let size = r.pick(&[8192u64, 100_000, 1 << 20]);
            let mut ext = Vec::new();
            for off in [0u64, 12288, 65536, 1 << 19] {
                if off < size && r.chance(50) {
                    ext.push((off, format!("{tag}@{off}")));
                }
            }
            LNode::Sparse(size, ext)
        }
        2 => LNode::Dir,
        3 => LNode::Opaque,
        4 => LNode::Symlink(r.pick(TARGETS).to_string()),
        5 if !files.is_empty() => LNode::Hardlink(r.pick(&files).path.clone()),
        5 => LNode::File(rand_text(r, tag)),
        6 => LNode::Fifo,
        _ => LNode::Whiteout,
    };
    let mut e = LEnt {
        path,
        node,
        mode: None,
        owner: None,
        xattr: None,
    };
    let plain = matches!(
        e.node,
        LNode::File(_) | LNode::Sparse(..) | LNode::Dir | LNode::Opaque
    );
    if (plain || e.node == LNode::Fifo) && r.chance(20) {
        e.mode = Some(rand_mode(r));
    }
    if e.node != LNode::Whiteout && !matches!(e.node, LNode::Hardlink(_)) && r.chance(15) {
        e.owner = Some((1000, 1000));
    }
    if plain && r.chance(15) {
        e.xattr = Some((r.pick(&["user.a", "user.b"]).to_string(), tag.to_string()));
    }
    e
}

fn gen_layer(r: &mut Rng, tag: &str) -> Vec<LEnt> {
    let mut out: Vec<LEnt> = Vec::new();
    for a in L1 {
        if !r.chance(45) {
            continue;
        }
        let e = rand_entry(r, &out, a.to_string(), 1, tag);
        let is_dir = matches!(e.node, LNode::Dir | LNode::Opaque);
        out.push(e);
        if !is_dir {
            continue;
        }
        for b in L2 {
            if !r.chance(50) {
                continue;
            }
            let p = format!("{a}/{b}");
            let e = rand_entry(r, &out, p.clone(), 2, tag);
            let is_dir = matches!(e.node, LNode::Dir | LNode::Opaque);
            out.push(e);
            if is_dir && r.chance(40) {
                let e = rand_entry(r, &out, format!("{p}/z"), 3, tag);
                out.push(e);
            }
        }
    }
    out
}

fn rand_time(r: &mut Rng) -> Ts {
    match r.below(4) {
        0 => Ts::Now,
        1 => Ts::Omit,
        _ => Ts::At(
            1_000_000_000 + r.below(1000) as i64,
            r.pick(&[0, 5, 999_999_999]),
        ),
    }
}

fn gen_op(r: &mut Rng, i: usize) -> Op {
    let tag = format!("w{i}");
    let slot = r.below(SLOTS as u64) as usize;
    // Relative weights of the operations, in the order of the match below.
    let w = [
        14, 5, 5, 4, 3, 2, 6, 6, 3, 2, 3, 2, 3, 3, 2, 8, 3, 5, 4, 3, 3, 1, 3, 2, 2, 3, 2, 4, 3, 2,
    ];
    match r.weighted(&excluded(&w, OP_NAMES)) {
        0 => {
            let acc = r.pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]);
            let mut flags = acc;
            for f in [libc::O_APPEND, libc::O_TRUNC, libc::O_CREAT, libc::O_EXCL] {
                if r.chance(if f == libc::O_CREAT { 40 } else { 25 }) {
                    flags |= f;
                }
            }
            if r.chance(4) {
                flags |= libc::O_DIRECTORY;
            }
            if r.chance(4) {
                flags |= libc::O_NOFOLLOW;
            }
            Op::Open {
                path: rand_path(r),
                flags,
                mode: rand_mode(r),
                slot: if r.chance(75) { Some(slot) } else { None },
            }
        }
        1 => Op::Read { path: rand_path(r) },
        2 => Op::Write {
            path: rand_path(r),
            off: r.pick(&[0, 1, 3, 4096, 8190, 70_000]),
            data: rand_text(r, &tag),
        },
        3 => Op::Append {
            path: rand_path(r),
            data: rand_text(r, &tag),
        },
        4 => Op::Truncate {
            path: rand_path(r),
            len: r.pick(&[0, 2, 10, 4096, 100_000]),
        },
        5 => Op::Fsync { path: rand_path(r) },
        6 => Op::FdRead {
            slot,
            off: r.pick(&[0, 0, 2, 4095, 12288]),
            len: r.pick(&[1, 16, 5000, 200_000]),
        },
        7 => Op::FdWrite {
            slot,
            off: r.pick(&[0, 1, 3, 4096, 8190, 70_000]),
            data: rand_text(r, &tag),
        },
        8 => Op::FdWriteSeq {
            slot,
            data: rand_text(r, &tag),
        },
        9 => Op::FdTruncate {
            slot,
            len: r.pick(&[0, 2, 10, 4096, 100_000]),
        },
        10 => Op::FdStat { slot },
        11 => Op::FdSync {
            slot,
            data_only: r.chance(50),
        },
        12 => Op::FdMmapWrite {
            slot,
            off: r.pick(&[0, 1, 4000, 5000]),
            data: Content::Text(format!("{tag}mm")),
        },
        13 => Op::Close { slot },
        14 => Op::FdSameIno {
            slot,
            path: rand_path(r),
        },
        15 => Op::Rename {
            from: rand_path(r),
            to: rand_path(r),
            flags: r.pick(&[0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
        },
        16 => Op::Link {
            from: rand_path(r),
            to: rand_path(r),
        },
        17 => Op::Unlink { path: rand_path(r) },
        18 => Op::Mkdir {
            path: rand_path(r),
            mode: r.pick(&[0o755, 0o700, 0o1777]),
        },
        19 => Op::Rmdir { path: rand_path(r) },
        20 => Op::Symlink {
            target: r.pick(TARGETS).to_string(),
            path: rand_path(r),
        },
        21 => Op::Mkfifo {
            path: rand_path(r),
            mode: r.pick(&[0o644, 0o600]),
        },
        22 => Op::Chmod {
            path: rand_path(r),
            mode: rand_mode(r),
        },
        23 => {
            let (uid, gid) = r.pick(&[(1000, 1000), (0, 0), (u32::MAX, 1000), (1000, u32::MAX)]);
            Op::Chown {
                path: rand_path(r),
                uid,
                gid,
            }
        }
        24 => Op::Utimens {
            path: rand_path(r),
            atime: rand_time(r),
            mtime: rand_time(r),
            nofollow: r.chance(30),
        },
        25 => Op::SetXattr {
            path: rand_path(r),
            name: r.pick(&["user.a", "user.b"]).to_string(),
            value: r.pick(&["1", "22", ""]).to_string() + &tag,
            flags: r.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        26 => Op::RemoveXattr {
            path: rand_path(r),
            name: r.pick(&["user.a", "user.b"]).to_string(),
        },
        27 => Op::Readdir {
            path: if r.chance(40) {
                String::new()
            } else {
                rand_path(r)
            },
        },
        28 => Op::Stat {
            path: if r.chance(20) {
                String::new()
            } else {
                rand_path(r)
            },
        },
        _ => Op::SameIno {
            a: rand_path(r),
            b: rand_path(r),
        },
    }
}

impl Seq {
    /// The sequence of a seed: 2-4 lower layers, sometimes a pre-populated upper layer, 8-40
    /// operations.
    pub fn generate(seed: u64) -> Seq {
        let mut r = Rng::new(seed);
        let nl = 2 + r.below(3) as usize;
        let lowers = (0..nl)
            .map(|i| gen_layer(&mut r, &format!("L{i}")))
            .collect();
        let upper = r.chance(30).then(|| gen_layer(&mut r, "U"));
        let nops = 8 + r.below(33) as usize;
        let ops = (0..nops).map(|i| gen_op(&mut r, i)).collect();
        let mut seq = Seq {
            seed,
            lowers,
            upper,
            ops,
        };
        normalize(&mut seq);
        seq
    }

    /// The layer stack top first: the upper layer (if any), then the lowers.
    fn stack(&self) -> Vec<&[LEnt]> {
        let mut v: Vec<&[LEnt]> = Vec::new();
        if let Some(u) = &self.upper {
            v.push(u);
        }
        v.extend(self.lowers.iter().map(|l| l.as_slice()));
        v
    }
}

fn node_at<'a>(layer: &'a [LEnt], path: &str) -> Option<&'a LNode> {
    layer.iter().find(|e| e.path == path).map(|e| &e.node)
}

/// The layers (indices into `stack`, from `from` down) that contribute to directory `dir` of
/// the stack `stack[from..]`.
fn dir_layers(stack: &[&[LEnt]], from: usize, dir: &str) -> Vec<usize> {
    if dir.is_empty() {
        return (from..stack.len()).collect();
    }
    let mut out = Vec::new();
    for l in dir_layers(stack, from, parent_of(dir)) {
        match node_at(stack[l], dir) {
            Some(LNode::Dir) => out.push(l),
            Some(LNode::Opaque) => {
                out.push(l);
                break;
            }
            Some(_) => break,
            None => {}
        }
    }
    out
}

/// Drops entries that cannot be materialized or that fall under the known, deliberate
/// difference, until nothing changes: entries whose parent is not a directory entry of the
/// same layer; hard links whose target is not an earlier file entry; duplicates; whiteouts in
/// a directory that is not merged (in the stack from their own layer down).
pub fn normalize(seq: &mut Seq) {
    loop {
        let mut removed = false;
        let n_up = usize::from(seq.upper.is_some());
        let snapshot: Vec<Vec<LEnt>> = seq.stack().iter().map(|l| l.to_vec()).collect();
        let refs: Vec<&[LEnt]> = snapshot.iter().map(|l| l.as_slice()).collect();
        for (li, layer) in snapshot.iter().enumerate() {
            let mut keep = Vec::new();
            for (i, e) in layer.iter().enumerate() {
                let earlier = &layer[..i];
                let parent = parent_of(&e.path);
                let ok_parent = parent.is_empty()
                    || matches!(node_at(earlier, parent), Some(LNode::Dir | LNode::Opaque));
                let dup = node_at(earlier, &e.path).is_some();
                let ok = ok_parent
                    && !dup
                    && match &e.node {
                        LNode::Hardlink(t) => {
                            matches!(
                                node_at(earlier, t),
                                Some(LNode::File(_) | LNode::Sparse(..))
                            )
                        }
                        LNode::Whiteout => dir_layers(&refs, li, parent).len() >= 2,
                        _ => true,
                    };
                if ok {
                    keep.push(e.clone());
                } else {
                    removed = true;
                }
            }
            if li < n_up {
                seq.upper = Some(keep);
            } else {
                seq.lowers[li - n_up] = keep;
            }
        }
        if !removed {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers of one or several sequences
// ---------------------------------------------------------------------------------------------

/// The layers of sequences sharing one mount, each in its base directory (which exists in its
/// own lower layers only, and in the upper layer when it has a pre-populated one).
pub fn layers_of(seqs: &[(String, &Seq)]) -> Layers {
    let n = seqs.iter().map(|(_, s)| s.lowers.len()).max().unwrap_or(2);
    let mut layers = Layers::new();
    for i in 0..n {
        let mut l = Layer::new();
        for (base, s) in seqs {
            if let Some(entries) = s.lowers.get(i) {
                l = l.dir(base);
                for e in entries {
                    l = e.add_to(l, base);
                }
            }
        }
        layers = layers.lower(l);
    }
    if seqs.iter().any(|(_, s)| s.upper.is_some()) {
        let mut l = Layer::new();
        for (base, s) in seqs {
            if let Some(entries) = &s.upper {
                l = l.dir(base);
                for e in entries {
                    l = e.add_to(l, base);
                }
            }
        }
        layers = layers.upper(l);
    }
    layers
}

// ---------------------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------------------

/// mtime as compared: exact when before 2020 (fixed layer time, or set by utimensat), else
/// "recent".
fn time_class(sec: i64, nsec: i64) -> String {
    if sec < 1_577_836_800 {
        format!("{sec}.{nsec:09}")
    } else {
        "recent".into()
    }
}

fn open_nb(p: &Path, flags: i32, mode: u32) -> R<OwnedFd> {
    open(p, flags | libc::O_NONBLOCK, mode)
}

fn user_xattrs(p: &Path) -> String {
    match llistxattr(p) {
        Err(e) => format!("{e:?}"),
        Ok(names) => {
            let mut s = String::new();
            for n in names {
                let v = lgetxattr(p, &n);
                let _ = write!(s, "{n}={v:?} ");
            }
            s
        }
    }
}

fn listing(p: &Path) -> R<Vec<(String, u8)>> {
    let fd = open_nb(p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    Ok(list_fd(fd.as_raw_fd())?
        .into_iter()
        .filter(|(n, _)| n != "." && n != "..")
        .collect())
}

/// Everything compared about a path: lstat fields, mtime class, contents / target / ordered
/// listing, xattrs.
fn look(p: &Path) -> String {
    let st = match lstat_raw(p) {
        Err(e) => return format!("{e:?}"),
        Ok(st) => st,
    };
    let s = St::from_raw(&st);
    let extra = match s.kind {
        Kind::File => format!(
            "{:?}",
            open_nb(p, libc::O_RDONLY, 0).and_then(|fd| read_fd_all(&fd))
        ),
        Kind::Symlink => format!("{:?}", readlink(p)),
        Kind::Dir => format!("{:?}", listing(p)),
        _ => String::new(),
    };
    format!(
        "{s:?} mtime={} {extra} xattrs[{}]",
        time_class(st.st_mtime, st.st_mtime_nsec),
        user_xattrs(p)
    )
}

fn fd_look(fd: &OwnedFd) -> String {
    match fstat_raw(fd) {
        Err(e) => format!("{e:?}"),
        Ok(st) => format!(
            "{:?} mtime={}",
            St::from_raw(&st),
            time_class(st.st_mtime, st.st_mtime_nsec)
        ),
    }
}

fn mmap_write(fd: &OwnedFd, off: u64, data: &[u8]) -> R<String> {
    let size = fstat_raw(fd)?.st_size as usize;
    if size == 0 {
        return Ok("empty".into());
    }
    let off = off as usize % size;
    let len = data.len().min(size - off);
    mmap_shared_write(fd.as_raw_fd(), size, off, &data[..len])?;
    Ok(format!("wrote {len} at {off}"))
}

/// One side's open fds.
#[derive(Default)]
pub struct Fds(Vec<Option<OwnedFd>>);

impl Fds {
    fn get(&self, slot: usize) -> Option<&OwnedFd> {
        self.0.get(slot).and_then(Option::as_ref)
    }
    fn set(&mut self, slot: usize, fd: Option<OwnedFd>) {
        if self.0.len() <= slot {
            self.0.resize_with(slot + 1, || None);
        }
        self.0[slot] = fd;
    }
}

fn same_ino(a: R<libc::stat>, b: R<libc::stat>) -> R<bool> {
    Ok(a?.st_ino == b?.st_ino)
}

/// Runs `op` on one side; the comparable outcome.
fn exec(side: &Side, fds: &mut Fds, base: &str, op: &Op) -> String {
    let m = |rel: &str| side.m(&join(base, rel));
    let par = |rel: &str| format!("parent {:?}", listing(&m(parent_of(rel))));
    let with_fd = |fds: &Fds, slot: usize, f: &dyn Fn(&OwnedFd) -> String| match fds.get(slot) {
        None => "no fd".to_string(),
        Some(fd) => format!("{} | {}", f(fd), fd_look(fd)),
    };
    match op {
        Op::Open {
            path,
            flags,
            mode,
            slot,
        } => {
            let p = m(path);
            let r = open_nb(&p, *flags, *mode);
            let out = match &r {
                Err(e) => format!("{e:?}"),
                Ok(fd) => format!(
                    "ok {} same={:?}",
                    fd_look(fd),
                    same_ino(fstat_raw(fd), stat_raw(&p))
                ),
            };
            if let (Some(slot), Ok(fd)) = (slot, r) {
                fds.set(*slot, Some(fd));
            }
            format!("{out} | {} | {}", look(&p), par(path))
        }
        Op::Read { path } => format!(
            "{:?}",
            open_nb(&m(path), libc::O_RDONLY, 0).and_then(|fd| read_fd_all(&fd))
        ),
        Op::Write { path, off, data } => {
            let p = m(path);
            let r = open_nb(&p, libc::O_WRONLY, 0).and_then(|fd| pwrite(&fd, *off, &data.bytes()));
            format!("{r:?} | {}", look(&p))
        }
        Op::Append { path, data } => {
            let p = m(path);
            let r = open_nb(&p, libc::O_WRONLY | libc::O_APPEND, 0)
                .and_then(|fd| write_fd(&fd, &data.bytes()));
            format!("{r:?} | {}", look(&p))
        }
        Op::Truncate { path, len } => {
            let p = m(path);
            format!("{:?} | {}", truncate(&p, *len), look(&p))
        }
        Op::Fsync { path } => {
            let p = m(path);
            let r = open_nb(&p, libc::O_RDONLY, 0).and_then(|fd| fsync_fd(&fd));
            format!("{r:?} | {}", look(&p))
        }
        Op::FdRead { slot, off, len } => {
            with_fd(fds, *slot, &|fd| format!("{:?}", pread(fd, *off, *len)))
        }
        Op::FdWrite { slot, off, data } => with_fd(fds, *slot, &|fd| {
            format!("{:?}", pwrite(fd, *off, &data.bytes()))
        }),
        Op::FdWriteSeq { slot, data } => with_fd(fds, *slot, &|fd| {
            format!("{:?}", write_fd(fd, &data.bytes()))
        }),
        Op::FdTruncate { slot, len } => {
            with_fd(fds, *slot, &|fd| format!("{:?}", ftruncate(fd, *len)))
        }
        Op::FdStat { slot } => with_fd(fds, *slot, &|_| String::new()),
        Op::FdSync { slot, data_only } => with_fd(fds, *slot, &|fd| {
            format!(
                "{:?}",
                if *data_only {
                    fdatasync_fd(fd)
                } else {
                    fsync_fd(fd)
                }
            )
        }),
        Op::FdMmapWrite { slot, off, data } => with_fd(fds, *slot, &|fd| {
            format!("{:?}", mmap_write(fd, *off, &data.bytes()))
        }),
        Op::Close { slot } => {
            let had = fds.get(*slot).is_some();
            fds.set(*slot, None);
            format!("closed {had}")
        }
        Op::FdSameIno { slot, path } => with_fd(fds, *slot, &|fd| {
            format!("{:?}", same_ino(fstat_raw(fd), lstat_raw(m(path))))
        }),
        Op::Rename { from, to, flags } => {
            let r = rename2(m(from), m(to), *flags);
            format!(
                "{r:?} | {} | {} | {} | {}",
                look(&m(from)),
                look(&m(to)),
                par(from),
                par(to)
            )
        }
        Op::Link { from, to } => {
            let r = link(m(from), m(to));
            format!(
                "{r:?} | {} | {} | {}",
                look(&m(from)),
                look(&m(to)),
                par(to)
            )
        }
        Op::Unlink { path } => {
            format!("{:?} | {} | {}", unlink(m(path)), look(&m(path)), par(path))
        }
        Op::Mkdir { path, mode } => format!(
            "{:?} | {} | {}",
            mkdir(m(path), *mode),
            look(&m(path)),
            par(path)
        ),
        Op::Rmdir { path } => format!("{:?} | {} | {}", rmdir(m(path)), look(&m(path)), par(path)),
        Op::Symlink { target, path } => format!(
            "{:?} | {} | {}",
            symlink(target, m(path)),
            look(&m(path)),
            par(path)
        ),
        Op::Mkfifo { path, mode } => format!(
            "{:?} | {} | {}",
            mkfifo(m(path), *mode),
            look(&m(path)),
            par(path)
        ),
        Op::Chmod { path, mode } => format!("{:?} | {}", chmod(m(path), *mode), look(&m(path))),
        Op::Chown { path, uid, gid } => {
            format!("{:?} | {}", chown(m(path), *uid, *gid), look(&m(path)))
        }
        Op::Utimens {
            path,
            atime,
            mtime,
            nofollow,
        } => {
            let r = if *nofollow {
                lutimens(m(path), *atime, *mtime)
            } else {
                utimens(m(path), *atime, *mtime)
            };
            format!("{r:?} | {}", look(&m(path)))
        }
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => format!(
            "{:?} | {}",
            setxattr(m(path), name, value, *flags),
            look(&m(path))
        ),
        Op::RemoveXattr { path, name } => {
            format!("{:?} | {}", removexattr(m(path), name), look(&m(path)))
        }
        Op::Readdir { path } => format!("{:?}", listing(&m(path))),
        Op::Stat { path } => look(&m(path)),
        Op::SameIno { a, b } => format!("{:?}", same_ino(lstat_raw(m(a)), lstat_raw(m(b)))),
    }
}

/// Executes operations on both sides of a pair and compares the outcomes.
pub struct Run<'a> {
    pair: &'a Pair,
    base: String,
    k: Fds,
    s: Fds,
    steps: usize,
}

impl<'a> Run<'a> {
    /// Operations relative to `base` (a directory of the mount, "" = the root).
    pub fn new(pair: &'a Pair, base: &str) -> Run<'a> {
        Run {
            pair,
            base: base.to_string(),
            k: Fds::default(),
            s: Fds::default(),
            steps: 0,
        }
    }

    /// Runs `op` on both sides (kernel first); Err(description) if the outcomes differ.
    pub fn try_step(&mut self, op: &Op) -> Result<(), String> {
        self.steps += 1;
        let k = exec(&self.pair.k, &mut self.k, &self.base, op);
        let s = exec(&self.pair.s, &mut self.s, &self.base, op);
        if std::env::var_os("E2E_TRACE").is_some() {
            eprintln!("[{}] {} {op:?}: {k}", self.pair.name, self.steps);
        }
        if k == s {
            Ok(())
        } else {
            Err(format!(
                "[{}] step {} {op:?}: results differ\n  kernel:   {k}\n  stratafs: {s}",
                self.pair.name, self.steps
            ))
        }
    }

    /// Like [`Run::try_step`], failing the pair (panic, or recorded with E2E_SOFT=1).
    #[track_caller]
    pub fn step(&mut self, op: Op) {
        if let Err(m) = self.try_step(&op) {
            self.pair
                .fail(format!("{m}\n  at {}", std::panic::Location::caller()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running, attributing and shrinking failures
// ---------------------------------------------------------------------------------------------

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
fn run_shared(name: &str, seqs: &[Seq], ops: &std::sync::atomic::AtomicUsize) -> Option<Failure> {
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
    let _ = writeln!(s, "    let pair = Pair::new({:?}, &layers);", name);
    let _ = writeln!(s, "    let mut run = Run::new(&pair, \"q\");");
    for op in &seq.ops {
        let _ = writeln!(s, "    run.step({});", op.rust());
    }
    let _ = writeln!(s, "    drop(run);");
    let _ = writeln!(s, "    pair.finish();");
    let _ = writeln!(s, "}}");
    s
}

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

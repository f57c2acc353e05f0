//! Specs: contents, layer entries, operations (with their Rust source form for reproducers),
//! sequences, and the harness layers of one or several sequences.

use super::*;

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

    pub(super) fn rust(&self) -> String {
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

pub(super) fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{rel}"),
    }
}

pub(super) fn parent_of(p: &str) -> &str {
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

    pub(super) fn rust(&self, base: &str) -> String {
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

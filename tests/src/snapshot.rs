//! Snapshots: a sorted tree map of a directory, fd-based (works beyond PATH_MAX).

use crate::*;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hasher;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// File contents in a snapshot: the bytes for small files, length + hash for large ones.
#[derive(Clone, PartialEq, Eq)]
pub enum Blob {
    Bytes(Vec<u8>),
    Hash { len: u64, hash: u64 },
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blob::Bytes(b) => write!(f, "b\"{}\"", b.escape_ascii()),
            Blob::Hash { len, hash } => write!(f, "Hash(len={len}, {hash:016x})"),
        }
    }
}

/// (mtime, ctime, inode number) of an entry.
pub type TimesIno = ((i64, i64), (i64, i64), u64);

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Type, permissions, owner, size, links, device: `ops`'s comparable stat fields (reached
    /// through Deref: `entry.kind`).
    pub st: St,
    pub content: Option<Blob>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, Data>,
    /// (mtime, ctime, ino), only with `SnapOpts::exact`.
    pub times_ino: Option<TimesIno>,
}

impl std::ops::Deref for Entry {
    type Target = St;
    fn deref(&self) -> &St {
        &self.st
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut St {
        &mut self.st
    }
}

/// relative path ("" = the root) → entry
pub type Tree = BTreeMap<String, Entry>;

/// What a snapshot records and how it normalises.
#[derive(Clone, Debug, Default)]
pub struct SnapOpts {
    /// Record everything lstat gives except atime: mtime, ctime, inode numbers, directory sizes
    /// and link counts (for the "lower layers are never modified" check).
    pub exact: bool,
    /// Classify char devices 0/0 as whiteouts and record only their type (upper layers).
    pub whiteouts: bool,
    /// Drop kernel-private `trusted.overlay.*` xattrs except `trusted.overlay.opaque` and the
    /// escaped `trusted.overlay.overlay.*` (user-set through the mount).
    pub overlay_xattrs: bool,
    /// Top-level names to skip.
    pub skip_top: Vec<String>,
    /// Directory prefixes replaced by "{SET}" in symlink targets.
    pub roots: Vec<String>,
}

fn xattrs_at(dirfd: RawFd, name: &str, opts: &SnapOpts) -> BTreeMap<String, Data> {
    let path = PathBuf::from(format!("/proc/self/fd/{dirfd}/{name}"));
    let path = if name.is_empty() {
        PathBuf::from(format!("/proc/self/fd/{dirfd}"))
    } else {
        path
    };
    let mut out = BTreeMap::new();
    let names = match ops::llistxattr(&path) {
        Ok(n) => n,
        Err(Errno::EOPNOTSUPP) => return out,
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    for n in names {
        // Kernel-private xattrs are dropped, except the opaque marker and escaped xattrs that a
        // user set through the mount (trusted.overlay.X is stored as trusted.overlay.overlay.X).
        if opts.overlay_xattrs
            && n.starts_with("trusted.overlay.")
            && n != "trusted.overlay.opaque"
            && !n.starts_with("trusted.overlay.overlay.")
        {
            continue;
        }
        match ops::lgetxattr(&path, &n) {
            Ok(v) => {
                out.insert(n, v);
            }
            Err(Errno::ENODATA) => {}
            Err(e) => panic!("lgetxattr {} {n}: {e}", path.display()),
        }
    }
    out
}

fn hash_file(fd: &OwnedFd) -> R<Blob> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut small = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off: i64 = 0;
    loop {
        let n = pread_buf(fd.as_raw_fd(), &mut buf, off)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if off < 256 {
            small.extend_from_slice(chunk);
        }
        hash_bytes(&mut h, chunk);
        off += n as i64;
    }
    if off <= 256 {
        Ok(Blob::Bytes(small))
    } else {
        Ok(Blob::Hash {
            len: off as u64,
            hash: h.finish(),
        })
    }
}

fn entry_at(dirfd: RawFd, name: &str, st: &libc::stat, opts: &SnapOpts) -> Entry {
    let blank = |kind| Entry {
        st: St {
            kind,
            perm: 0,
            uid: 0,
            gid: 0,
            size: None,
            nlink: None,
            rdev: None,
        },
        content: None,
        target: None,
        xattrs: BTreeMap::new(),
        times_ino: None,
    };
    let mut e = blank(Kind::of_mode(st.st_mode));
    e.perm = st.st_mode & 0o7777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.size = Some(st.st_size as u64);
    e.nlink = Some(st.st_nlink);
    if matches!(e.kind, Kind::Char | Kind::Block) {
        e.rdev = Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)));
    }
    if opts.whiteouts && e.kind == Kind::Char && st.st_rdev == 0 {
        return blank(Kind::Whiteout);
    }
    if e.kind == Kind::Dir && !opts.exact {
        e.size = None;
        e.nlink = None;
    }
    if opts.exact {
        e.times_ino = Some((
            (st.st_mtime, st.st_mtime_nsec),
            (st.st_ctime, st.st_ctime_nsec),
            st.st_ino,
        ));
    }
    e.xattrs = xattrs_at(dirfd, name, opts);
    match e.kind {
        Kind::Symlink => {
            let mut buf = vec![0u8; 8192];
            let n = readlinkat(dirfd, name, &mut buf)
                .unwrap_or_else(|e| panic!("readlinkat {name}: {e}"));
            buf.truncate(n);
            let mut t = String::from_utf8_lossy(&buf).into_owned();
            for r in &opts.roots {
                t = t.replace(r.as_str(), "{SET}");
            }
            e.target = Some(t);
        }
        Kind::File => {
            let fd = ops::openat(
                dirfd,
                name,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )
            .unwrap_or_else(|err| panic!("snapshot: open {name}: {err}"));
            e.content =
                Some(hash_file(&fd).unwrap_or_else(|err| panic!("snapshot: read {name}: {err}")));
        }
        _ => {}
    }
    e
}

fn walk(dirfd: RawFd, rel: &str, opts: &SnapOpts, out: &mut Tree) {
    let mut names: Vec<String> = ops::list_fd(dirfd)
        .unwrap_or_else(|e| panic!("snapshot: getdents {rel:?}: {e}"))
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    for name in names {
        if rel.is_empty() && opts.skip_top.contains(&name) {
            continue;
        }
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let st = ops::fstatat_raw(dirfd, &name, libc::AT_SYMLINK_NOFOLLOW)
            .unwrap_or_else(|e| panic!("snapshot: lstat {path:?}: {e}"));
        let entry = entry_at(dirfd, &name, &st, opts);
        let is_dir = entry.kind == Kind::Dir;
        out.insert(path.clone(), entry);
        if is_dir {
            let fd = ops::openat(
                dirfd,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .unwrap_or_else(|e| panic!("snapshot: open dir {path:?}: {e}"));
            walk(fd.as_raw_fd(), &path, opts, out);
        }
    }
}

/// Snapshot of a directory tree with the given options. The root itself is the entry "".
pub fn snapshot_with(dir: &Path, opts: &SnapOpts) -> Tree {
    let mut out = Tree::new();
    let fd = ops::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .unwrap_or_else(|e| panic!("snapshot: open {}: {e}", dir.display()));
    let st = fstat_raw(&fd).unwrap_or_else(|e| panic!("snapshot: fstat {}: {e}", dir.display()));
    // The root: xattrs through /proc/self/fd/N.
    let mut root = entry_at(fd.as_raw_fd(), "", &st, &SnapOpts { ..opts.clone() });
    root.xattrs = xattrs_at(fd.as_raw_fd(), "", opts);
    out.insert(String::new(), root);
    walk(fd.as_raw_fd(), "", opts, &mut out);
    out
}

/// Snapshot as seen by a user of a merged view (no times, no dir sizes/nlink).
pub fn snapshot(dir: &Path) -> Tree {
    snapshot_with(dir, &SnapOpts::default())
}

/// Human-readable differences between two trees (empty = equal).
pub fn diff_trees(a_label: &str, a: &Tree, b_label: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (k, ea) in a {
        match b.get(k) {
            None => out.push(format!("  {k:?}: only in {a_label}: {ea:?}")),
            Some(eb) if eb != ea => out.push(format!(
                "  {k:?}:\n    {a_label}: {ea:?}\n    {b_label}: {eb:?}"
            )),
            _ => {}
        }
    }
    for (k, eb) in b {
        if !a.contains_key(k) {
            out.push(format!("  {k:?}: only in {b_label}: {eb:?}"));
        }
    }
    out
}

#[track_caller]
pub fn assert_trees_eq(what: &str, a_label: &str, a: &Tree, b_label: &str, b: &Tree) {
    let d = diff_trees(a_label, a, b_label, b);
    if !d.is_empty() {
        let shown: Vec<_> = d.iter().take(40).cloned().collect();
        panic!(
            "{what}: {} difference(s){}\n{}",
            d.len(),
            if d.len() > 40 {
                " (first 40 shown)"
            } else {
                ""
            },
            shown.join("\n")
        );
    }
}

//! Filesystem operations returning comparable values or the errno, and the types they
//! return.

use crate::*;
use std::fmt;
use std::hash::Hasher;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

// The thin syscall wrappers among the operations live in `sys` (the crate's only unsafe code).
pub use crate::sys::{
    access, chmod, chown, fdatasync_fd, fstat_raw, fstatat_raw, fsync_fd, ftruncate, lchown, link,
    listxattr_size, lremovexattr, lsetxattr, lstat_raw, mkdir, mknod, open, openat, pwrite,
    readlink, removexattr, rename, rename2, rmdir, setxattr, stat_raw, symlink, truncate, unlink,
    write_fd, LibcDir,
};

/// Bytes with a compact Debug (length + hash + head for large contents).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Data(pub Vec<u8>);

impl Data {
    pub fn as_str(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 96 {
            write!(f, "b\"{}\"", self.0.escape_ascii())
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            hash_bytes(&mut h, &self.0);
            write!(
                f,
                "Data(len={}, hash={:016x}, head=b\"{}\")",
                self.0.len(),
                h.finish(),
                self.0[..48].escape_ascii()
            )
        }
    }
}

impl From<&str> for Data {
    fn from(s: &str) -> Data {
        Data(s.as_bytes().to_vec())
    }
}

/// File type as seen by lstat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
    /// Only in snapshots of layers taken with `whiteouts: true`: a char device 0/0.
    Whiteout,
    Unknown,
}

impl Kind {
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => Kind::Unknown,
        }
    }
}

/// The stat fields that overlay defines and that are comparable between two directory sets.
/// `size` and `nlink` are None for directories (ext4 directory sizes depend on history, and
/// directory link counts are compared explicitly where a test wants them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct St {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub rdev: Option<(u32, u32)>,
}

impl St {
    pub fn from_raw(s: &libc::stat) -> St {
        let kind = Kind::of_mode(s.st_mode);
        let is_dir = kind == Kind::Dir;
        let rdev = if matches!(kind, Kind::Char | Kind::Block) {
            Some((libc::major(s.st_rdev), libc::minor(s.st_rdev)))
        } else {
            None
        };
        St {
            kind,
            perm: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
            size: if is_dir { None } else { Some(s.st_size as u64) },
            nlink: if is_dir { None } else { Some(s.st_nlink) },
            rdev,
        }
    }
}

/// Statfs fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fs {
    pub ftype: i64,
    pub bsize: i64,
    pub frsize: i64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namelen: i64,
}

pub fn stat(p: impl AsRef<Path>) -> R<St> {
    stat_raw(p).map(|s| St::from_raw(&s))
}

pub fn lstat(p: impl AsRef<Path>) -> R<St> {
    lstat_raw(p).map(|s| St::from_raw(&s))
}

pub fn fstat(fd: &OwnedFd) -> R<St> {
    fstat_raw(fd).map(|s| St::from_raw(&s))
}

/// (mtime_sec, mtime_nsec) of lstat.
pub fn mtime(p: impl AsRef<Path>) -> R<(i64, i64)> {
    lstat_raw(p).map(|s| (s.st_mtime, s.st_mtime_nsec))
}

/// (atime_sec, atime_nsec) of lstat.
pub fn atime(p: impl AsRef<Path>) -> R<(i64, i64)> {
    lstat_raw(p).map(|s| (s.st_atime, s.st_atime_nsec))
}

pub fn ino(p: impl AsRef<Path>) -> R<u64> {
    lstat_raw(p).map(|s| s.st_ino)
}

pub fn exists(p: impl AsRef<Path>) -> bool {
    lstat_raw(p).is_ok()
}

/// Opens and closes again (for errno checks and open-triggered copy-up).
pub fn open_close(p: impl AsRef<Path>, flags: i32, mode: u32) -> R<()> {
    open(p, flags, mode).map(drop)
}

pub fn read_fd_all(fd: &OwnedFd) -> R<Data> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut off: i64 = 0;
    loop {
        let n = pread_buf(fd.as_raw_fd(), &mut buf, off)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        off += n as i64;
    }
    Ok(Data(out))
}

pub fn pread(fd: &OwnedFd, off: u64, len: usize) -> R<Data> {
    let mut buf = vec![0u8; len];
    let n = pread_buf(fd.as_raw_fd(), &mut buf, off as i64)?;
    buf.truncate(n);
    Ok(Data(buf))
}

/// Whole contents of a file.
pub fn read(p: impl AsRef<Path>) -> R<Data> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    read_fd_all(&fd)
}

/// Contents as a (lossy) string.
pub fn read_str(p: impl AsRef<Path>) -> R<String> {
    read(p).map(|d| d.as_str())
}

pub fn read_at(p: impl AsRef<Path>, off: u64, len: usize) -> R<Data> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    pread(&fd, off, len)
}

/// Create or truncate, then write `data` (like `echo > p`).
pub fn write_file(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> R<()> {
    let fd = open(p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
    let d = data.as_ref();
    let n = write_fd(&fd, d)?;
    assert_eq!(n, d.len(), "short write");
    Ok(())
}

/// Writes at an offset of an existing file (O_WRONLY, no O_CREAT).
pub fn write_at(p: impl AsRef<Path>, off: u64, data: impl AsRef<[u8]>) -> R<usize> {
    let fd = open(p, libc::O_WRONLY, 0)?;
    pwrite(&fd, off, data.as_ref())
}

/// Appends (O_WRONLY|O_APPEND, no O_CREAT).
pub fn append(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> R<usize> {
    let fd = open(p, libc::O_WRONLY | libc::O_APPEND, 0)?;
    write_fd(&fd, data.as_ref())
}

/// Raw directory listing of an fd with getdents64 (entries in order, with d_type and d_off).
pub fn getdents(fd: RawFd, bufsize: usize) -> R<Vec<(String, u8, i64)>> {
    let mut buf = vec![0u8; bufsize];
    let n = getdents64(fd, &mut buf)?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < n {
        let d_off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().unwrap()) as usize;
        let dtype = buf[pos + 18];
        let name_bytes = &buf[pos + 19..pos + reclen];
        let end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        out.push((name, dtype, d_off));
        pos += reclen;
    }
    Ok(out)
}

/// Full listing of an open directory fd (from offset 0), including "." and "..".
pub fn list_fd(fd: RawFd) -> R<Vec<(String, u8)>> {
    lseek(fd, 0, libc::SEEK_SET)?;
    let mut out = Vec::new();
    loop {
        let batch = getdents(fd, 32 * 1024)?;
        if batch.is_empty() {
            break;
        }
        out.extend(batch.into_iter().map(|(n, t, _)| (n, t)));
    }
    Ok(out)
}

/// Names in a directory, in the order returned, without "." and "..".
pub fn readdir_ordered(p: impl AsRef<Path>) -> R<Vec<String>> {
    let fd = open(p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    Ok(list_fd(fd.as_raw_fd())?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Sorted names in a directory, without "." and "..".
pub fn readdir(p: impl AsRef<Path>) -> R<Vec<String>> {
    let mut v = readdir_ordered(p)?;
    v.sort();
    Ok(v)
}

/// Sorted (name, d_type) pairs, without "." and "..".
pub fn readdir_types(p: impl AsRef<Path>) -> R<Vec<(String, u8)>> {
    let fd = open(p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut v: Vec<_> = list_fd(fd.as_raw_fd())?
        .into_iter()
        .filter(|(n, _)| n != "." && n != "..")
        .collect();
    v.sort();
    Ok(v)
}

/// mkdir -p (mode 0755 for created components).
pub fn mkdir_p(p: impl AsRef<Path>) -> R<()> {
    let p = p.as_ref();
    match lstat(p) {
        Ok(st) if st.kind == Kind::Dir => return Ok(()),
        Ok(_) => return Err(Errno::EEXIST),
        Err(_) => {}
    }
    if let Some(parent) = p.parent() {
        if !parent.as_os_str().is_empty() {
            mkdir_p(parent)?;
        }
    }
    mkdir(p, 0o755)
}

/// Flags of `rename2` (renameat2(2)).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

pub fn mkfifo(p: impl AsRef<Path>, mode: u32) -> R<()> {
    mknod(p, libc::S_IFIFO | mode, 0, 0)
}

/// Creates a unix socket file by binding a socket to the path (via /proc/self/fd/N/name,
/// so long paths work), then closing the socket.
pub fn mksock(p: impl AsRef<Path>) -> R<()> {
    let p = p.as_ref();
    let parent = p.parent().unwrap_or(Path::new("."));
    let name = p.file_name().expect("socket needs a file name");
    let dfd = open(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let short = format!(
        "/proc/self/fd/{}/{}",
        dfd.as_raw_fd(),
        name.to_string_lossy()
    );
    bind_unix(&short)
}

/// A timestamp argument of utimensat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    Now,
    Omit,
    At(i64, i64),
}

fn ts(t: Ts) -> libc::timespec {
    match t {
        Ts::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Ts::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Ts::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

fn utimens_flags(p: &Path, atime: Ts, mtime: Ts, flags: i32) -> R<()> {
    utimensat(libc::AT_FDCWD, &cpath(p), &[ts(atime), ts(mtime)], flags)
}

/// utimensat following symlinks.
pub fn utimens(p: impl AsRef<Path>, atime: Ts, mtime: Ts) -> R<()> {
    utimens_flags(p.as_ref(), atime, mtime, 0)
}

/// utimensat with AT_SYMLINK_NOFOLLOW.
pub fn lutimens(p: impl AsRef<Path>, atime: Ts, mtime: Ts) -> R<()> {
    utimens_flags(p.as_ref(), atime, mtime, libc::AT_SYMLINK_NOFOLLOW)
}

fn getxattr_impl(p: &Path, name: &str, follow: bool) -> R<Data> {
    let mut buf = vec![0u8; 65536];
    let len = getxattr_buf(p, name, follow, &mut buf)?;
    buf.truncate(len);
    Ok(Data(buf))
}

pub fn getxattr(p: impl AsRef<Path>, name: &str) -> R<Data> {
    getxattr_impl(p.as_ref(), name, true)
}

pub fn lgetxattr(p: impl AsRef<Path>, name: &str) -> R<Data> {
    getxattr_impl(p.as_ref(), name, false)
}

fn split_names(buf: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

fn listxattr_impl(p: &Path, follow: bool) -> R<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let len = listxattr_buf(p, follow, &mut buf)?;
    Ok(split_names(&buf[..len]))
}

/// Sorted xattr names.
pub fn listxattr(p: impl AsRef<Path>) -> R<Vec<String>> {
    listxattr_impl(p.as_ref(), true)
}

pub fn llistxattr(p: impl AsRef<Path>) -> R<Vec<String>> {
    listxattr_impl(p.as_ref(), false)
}

/// Opens read-write, fsyncs and fdatasyncs.
pub fn fsync(p: impl AsRef<Path>) -> R<()> {
    let fd = open(p, libc::O_RDWR, 0)?;
    fsync_fd(&fd)?;
    fdatasync_fd(&fd)
}

/// Opens read-only and fsyncs (for directories, or read-only files).
pub fn fsync_ro(p: impl AsRef<Path>) -> R<()> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    fsync_fd(&fd)
}

pub fn statfs(p: impl AsRef<Path>) -> R<Fs> {
    let s = statfs_raw(p)?;
    Ok(Fs {
        ftype: s.f_type,
        bsize: s.f_bsize,
        frsize: s.f_frsize,
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        bavail: s.f_bavail,
        files: s.f_files,
        ffree: s.f_ffree,
        namelen: s.f_namelen,
    })
}

/// rm -rf through ordinary path operations (returns the first error).
pub fn rm_rf(p: impl AsRef<Path>) -> R<()> {
    let p = p.as_ref();
    let st = lstat(p)?;
    if st.kind == Kind::Dir {
        for name in readdir(p)? {
            rm_rf(p.join(name))?;
        }
        rmdir(p)
    } else {
        unlink(p)
    }
}

/// Creates a chain of nested directories below `base` using mkdirat/openat relative to dir
/// fds (works beyond PATH_MAX). Existing components are reused.
pub fn mkdir_chain(base: impl AsRef<Path>, names: &[String]) -> R<()> {
    let mut dir = open(base, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for n in names {
        match mkdirat(dir.as_raw_fd(), n, 0o755) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        dir = openat(
            dir.as_raw_fd(),
            n,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok(())
}

/// Opens the directory at the end of a chain of names below `base` (openat per component).
pub fn open_chain(base: impl AsRef<Path>, names: &[String]) -> R<OwnedFd> {
    let mut dir = open(base, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for n in names {
        dir = openat(
            dir.as_raw_fd(),
            n,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok(dir)
}

/// Removes a chain created by `mkdir_chain` (deepest first), plus files in the last dir.
pub fn rm_chain(base: impl AsRef<Path>, names: &[String]) -> R<()> {
    let base = base.as_ref();
    for depth in (0..names.len()).rev() {
        let parent = open_chain(base, &names[..depth])?;
        let child = openat(
            parent.as_raw_fd(),
            &names[depth],
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        for (n, _) in list_fd(child.as_raw_fd())? {
            if n == "." || n == ".." {
                continue;
            }
            let st = fstatat_raw(child.as_raw_fd(), &n, libc::AT_SYMLINK_NOFOLLOW)?;
            let flag = if Kind::of_mode(st.st_mode) == Kind::Dir {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            unlinkat(child.as_raw_fd(), &n, flag)?;
        }
        drop(child);
        unlinkat(parent.as_raw_fd(), &names[depth], libc::AT_REMOVEDIR)?;
    }
    Ok(())
}

/// Everything observable about a path: lstat, contents (files), sorted listing (dirs),
/// link target (symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obs {
    pub st: R<St>,
    pub data: Option<R<Data>>,
    pub list: Option<R<Vec<String>>>,
    pub target: Option<R<String>>,
}

pub fn observe(p: impl AsRef<Path>) -> Obs {
    let p = p.as_ref();
    let st = lstat(p);
    let kind = st.as_ref().map(|s| s.kind).ok();
    Obs {
        data: (kind == Some(Kind::File)).then(|| read(p)),
        list: (kind == Some(Kind::Dir)).then(|| readdir(p)),
        target: (kind == Some(Kind::Symlink)).then(|| readlink(p)),
        st,
    }
}

/// Names of a deep directory chain: `levels` names of `name_len` characters each.
pub fn deep_names(levels: usize, name_len: usize) -> Vec<String> {
    (0..levels)
        .map(|i| {
            let head = format!("{i:04}");
            let mut s = head.clone();
            while s.len() < name_len {
                s.push('d');
            }
            s
        })
        .collect()
}

/// Runs `f` on a separate thread whose credentials are (uid, gid) with no supplementary groups
/// (raw setresuid/setresgid/setgroups syscalls, which only affect the calling thread), so that
/// the filesystem sees the operations as coming from that user. Capabilities are dropped by the
/// kernel when all uids become non-zero.
pub fn as_user<T: Send>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        let h = sc.spawn(move || {
            set_thread_creds(uid, gid);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    })
}

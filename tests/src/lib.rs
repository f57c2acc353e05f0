//! End-to-end harness: drives the real `stratafs` binary on a real FUSE mount side by side
//! with the kernel overlay (the oracle) and compares results, errnos and on-disk contents.
//!
//! Overview:
//! * [`Layer`] / [`Layers`]: a declarative spec of lower layers (and an optional pre-populated
//!   upper layer), materialized twice (one set of directories per side) under a unique temp root.
//! * [`Pair`]: mounts the kernel overlay on one set and stratafs on the other. [`Pair::step`]
//!   runs the same closure on both mounts and asserts equal results. [`Pair::finish`] compares
//!   the merged views, the (normalised) upper layers, the lower layers (must be unchanged,
//!   including mtime/ctime/inode numbers) and mounts the kernel overlay over each side's layers
//!   ("kernel remount") and compares those views too. Drop unmounts and cleans up, even on panic.
//! * [`ops`]: filesystem operations returning comparable values (`Result<T, Errno>`).
//! * [`snapshot`]: a sorted tree map of a directory, fd-based (works beyond PATH_MAX).
//! * [`as_user`]: runs a closure with other credentials (per-thread setresuid).
//!
//! With `E2E_SELFTEST=1`, the "stratafs" side is a kernel overlay as well (kernel vs kernel),
//! which validates the harness and the scenarios independently of stratafs.
//!
//! Environment switches:
//! * `E2E_SELFTEST=1`: see above.
//! * `E2E_SOFT=1`: a mismatching step does not stop the test; all mismatches (steps, final
//!   checks) are reported together when the test ends.
//! * `E2E_TRACE=1`: prints every step's (kernel) result with its source location (use with
//!   `--nocapture`).
//! * `E2E_KEEP=1`: keep the temp directories (for post-mortem inspection).
//! * `STRATAFS_BIN`: the stratafs binary (default: target/<profile>/stratafs).
//!
//! Kernel facts the harness relies on: the overlay needs at least two lower layers without an
//! upper layer ([`Pair::ro`] adds an empty one); the kernel is mounted through the new mount API
//! with one `lowerdir+` per layer, so there is no option-length limit; lower snapshots exclude
//! atime (reads legitimately update it through both implementations).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::hash::Hasher;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use nix::errno::Errno;
pub use ops::*;

// Randomized differential testing (generator, runner, shrinker): see tests/src/random.rs.
pub mod random;

// /proc helpers (daemon pids, fds, RSS, drop_caches, wait_until) shared by the test files.
pub mod procfs;
use procfs::{alive, daemon_pids};

/// Result of an operation: a comparable value or the errno.
pub type R<T> = Result<T, Errno>;

/// Fixed timestamp given to every entry of materialized layers (2001-01-01 + 123456789 ns), so
/// that "mtime preserved by copy-up" is distinguishable from "mtime = now".
pub const FIXED_TIME: (i64, i64) = (978_307_200, 123_456_789);

/// True when the "stratafs" side is a kernel overlay too (E2E_SELFTEST=1).
pub fn selftest() -> bool {
    std::env::var("E2E_SELFTEST")
        .map(|v| v == "1")
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL byte in path")
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("NUL byte in string")
}

fn cvt(ret: libc::c_int) -> R<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn cvt_l(ret: libc::c_long) -> R<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn cvt_s(ret: isize) -> R<isize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn hash_bytes(h: &mut std::collections::hash_map::DefaultHasher, b: &[u8]) {
    h.write(b);
}

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

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// Filesystem operations returning comparable values or the errno.
pub mod ops {
    use super::*;

    pub fn stat_raw(p: impl AsRef<Path>) -> R<libc::stat> {
        let c = cpath(p.as_ref());
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::stat(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn lstat_raw(p: impl AsRef<Path>) -> R<libc::stat> {
        let c = cpath(p.as_ref());
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn fstat_raw(fd: &OwnedFd) -> R<libc::stat> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    pub fn fstatat_raw(dirfd: RawFd, name: &str, flags: i32) -> R<libc::stat> {
        let c = cstr(name);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstatat(dirfd, c.as_ptr(), &mut st, flags) })?;
        Ok(st)
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

    pub fn open(p: impl AsRef<Path>, flags: i32, mode: u32) -> R<OwnedFd> {
        let c = cpath(p.as_ref());
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn openat(dirfd: RawFd, name: &str, flags: i32, mode: u32) -> R<OwnedFd> {
        let c = cstr(name);
        let fd = cvt(unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
            let n = cvt_s(unsafe {
                libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off)
            })?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
            off += n as i64;
        }
        Ok(Data(out))
    }

    pub fn pread(fd: &OwnedFd, off: u64, len: usize) -> R<Data> {
        let mut buf = vec![0u8; len];
        let n = cvt_s(unsafe {
            libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off as i64)
        })?;
        buf.truncate(n as usize);
        Ok(Data(buf))
    }

    pub fn pwrite(fd: &OwnedFd, off: u64, data: &[u8]) -> R<usize> {
        let n = cvt_s(unsafe {
            libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off as i64)
        })?;
        Ok(n as usize)
    }

    pub fn write_fd(fd: &OwnedFd, data: &[u8]) -> R<usize> {
        let n = cvt_s(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
        Ok(n as usize)
    }

    pub fn fsync_fd(fd: &OwnedFd) -> R<()> {
        cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
    }

    pub fn fdatasync_fd(fd: &OwnedFd) -> R<()> {
        cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(drop)
    }

    pub fn ftruncate(fd: &OwnedFd, len: u64) -> R<()> {
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }).map(drop)
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

    pub fn truncate(p: impl AsRef<Path>, len: u64) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::truncate(c.as_ptr(), len as i64) }).map(drop)
    }

    /// Raw directory listing of an fd with getdents64 (entries in order, with d_type and d_off).
    pub fn getdents(fd: RawFd, bufsize: usize) -> R<Vec<(String, u8, i64)>> {
        let mut buf = vec![0u8; bufsize];
        let n =
            cvt_l(unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) })?
                as usize;
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
        cvt_l(unsafe { libc::lseek(fd, 0, libc::SEEK_SET) })?;
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

    pub fn mkdir(p: impl AsRef<Path>, mode: u32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
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

    pub fn rmdir(p: impl AsRef<Path>) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(drop)
    }

    pub fn unlink(p: impl AsRef<Path>) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
    }

    pub fn rename(a: impl AsRef<Path>, b: impl AsRef<Path>) -> R<()> {
        let (ca, cb) = (cpath(a.as_ref()), cpath(b.as_ref()));
        cvt(unsafe { libc::rename(ca.as_ptr(), cb.as_ptr()) }).map(drop)
    }

    pub const RENAME_NOREPLACE: u32 = 1;
    pub const RENAME_EXCHANGE: u32 = 2;
    pub const RENAME_WHITEOUT: u32 = 4;

    /// renameat2(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
    pub fn rename2(a: impl AsRef<Path>, b: impl AsRef<Path>, flags: u32) -> R<()> {
        let (ca, cb) = (cpath(a.as_ref()), cpath(b.as_ref()));
        cvt_l(unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    /// link(existing, new)
    pub fn link(existing: impl AsRef<Path>, new: impl AsRef<Path>) -> R<()> {
        let (ca, cb) = (cpath(existing.as_ref()), cpath(new.as_ref()));
        cvt(unsafe { libc::link(ca.as_ptr(), cb.as_ptr()) }).map(drop)
    }

    /// symlink(target, linkpath)
    pub fn symlink(target: &str, p: impl AsRef<Path>) -> R<()> {
        let (ct, cp) = (cstr(target), cpath(p.as_ref()));
        cvt(unsafe { libc::symlink(ct.as_ptr(), cp.as_ptr()) }).map(drop)
    }

    pub fn readlink(p: impl AsRef<Path>) -> R<String> {
        let c = cpath(p.as_ref());
        let mut buf = vec![0u8; 8192];
        let n = cvt_s(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        buf.truncate(n as usize);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// mknod with full mode (type bits included) and device numbers.
    pub fn mknod(p: impl AsRef<Path>, mode: u32, major: u32, minor: u32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) }).map(drop)
    }

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
        let sock =
            cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = short.as_bytes();
        assert!(
            bytes.len() < addr.sun_path.len(),
            "socket path too long: {short}"
        );
        for (i, b) in bytes.iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        cvt(unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })
        .map(drop)
    }

    pub fn chmod(p: impl AsRef<Path>, mode: u32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
    }

    pub fn chown(p: impl AsRef<Path>, uid: u32, gid: u32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) }).map(drop)
    }

    pub fn lchown(p: impl AsRef<Path>, uid: u32, gid: u32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(drop)
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
        let c = cpath(p);
        let t = [ts(atime), ts(mtime)];
        cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), flags) }).map(drop)
    }

    /// utimensat following symlinks.
    pub fn utimens(p: impl AsRef<Path>, atime: Ts, mtime: Ts) -> R<()> {
        utimens_flags(p.as_ref(), atime, mtime, 0)
    }

    /// utimensat with AT_SYMLINK_NOFOLLOW.
    pub fn lutimens(p: impl AsRef<Path>, atime: Ts, mtime: Ts) -> R<()> {
        utimens_flags(p.as_ref(), atime, mtime, libc::AT_SYMLINK_NOFOLLOW)
    }

    pub fn setxattr(p: impl AsRef<Path>, name: &str, val: impl AsRef<[u8]>, flags: i32) -> R<()> {
        let (c, n, v) = (cpath(p.as_ref()), cstr(name), val.as_ref());
        cvt(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) })
            .map(drop)
    }

    pub fn lsetxattr(p: impl AsRef<Path>, name: &str, val: impl AsRef<[u8]>, flags: i32) -> R<()> {
        let (c, n, v) = (cpath(p.as_ref()), cstr(name), val.as_ref());
        cvt(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) })
            .map(drop)
    }

    fn getxattr_impl(p: &Path, name: &str, follow: bool) -> R<Data> {
        let (c, n) = (cpath(p), cstr(name));
        let mut buf = vec![0u8; 65536];
        let r = unsafe {
            if follow {
                libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        };
        let len = cvt_s(r)? as usize;
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
        let c = cpath(p);
        let mut buf = vec![0u8; 65536];
        let r = unsafe {
            if follow {
                libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        };
        let len = cvt_s(r)? as usize;
        Ok(split_names(&buf[..len]))
    }

    /// Sorted xattr names.
    pub fn listxattr(p: impl AsRef<Path>) -> R<Vec<String>> {
        listxattr_impl(p.as_ref(), true)
    }

    pub fn llistxattr(p: impl AsRef<Path>) -> R<Vec<String>> {
        listxattr_impl(p.as_ref(), false)
    }

    /// Size reported by listxattr(path, NULL, 0).
    pub fn listxattr_size(p: impl AsRef<Path>) -> R<usize> {
        let c = cpath(p.as_ref());
        cvt_s(unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) }).map(|n| n as usize)
    }

    pub fn removexattr(p: impl AsRef<Path>, name: &str) -> R<()> {
        let (c, n) = (cpath(p.as_ref()), cstr(name));
        cvt(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
    }

    pub fn lremovexattr(p: impl AsRef<Path>, name: &str) -> R<()> {
        let (c, n) = (cpath(p.as_ref()), cstr(name));
        cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
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
        let c = cpath(p.as_ref());
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statfs(c.as_ptr(), &mut s) })?;
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

    pub fn access(p: impl AsRef<Path>, mode: i32) -> R<()> {
        let c = cpath(p.as_ref());
        cvt(unsafe { libc::access(c.as_ptr(), mode) }).map(drop)
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
            let c = cstr(n);
            match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) }) {
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
                let c = cstr(&n);
                let st = fstatat_raw(child.as_raw_fd(), &n, libc::AT_SYMLINK_NOFOLLOW)?;
                let flag = if Kind::of_mode(st.st_mode) == Kind::Dir {
                    libc::AT_REMOVEDIR
                } else {
                    0
                };
                cvt(unsafe { libc::unlinkat(child.as_raw_fd(), c.as_ptr(), flag) })?;
            }
            drop(child);
            let c = cstr(&names[depth]);
            cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
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

    /// A directory stream of libc (opendir/readdir/telldir/seekdir/rewinddir).
    pub struct LibcDir(*mut libc::DIR);

    impl LibcDir {
        pub fn open(p: impl AsRef<Path>) -> R<LibcDir> {
            let c = cpath(p.as_ref());
            let d = unsafe { libc::opendir(c.as_ptr()) };
            if d.is_null() {
                Err(Errno::last())
            } else {
                Ok(LibcDir(d))
            }
        }

        /// Next name (including "." and ".."), None at the end.
        pub fn next_name(&mut self) -> Option<String> {
            unsafe {
                let e = libc::readdir(self.0);
                if e.is_null() {
                    return None;
                }
                let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
                Some(name.to_string_lossy().into_owned())
            }
        }

        /// Up to n names, skipping "." and "..".
        pub fn take(&mut self, n: usize) -> Vec<String> {
            let mut v = Vec::new();
            while v.len() < n {
                match self.next_name() {
                    Some(x) if x == "." || x == ".." => continue,
                    Some(x) => v.push(x),
                    None => break,
                }
            }
            v
        }

        pub fn rest(&mut self) -> Vec<String> {
            self.take(usize::MAX)
        }

        pub fn tell(&mut self) -> i64 {
            unsafe { libc::telldir(self.0) as i64 }
        }

        pub fn seek(&mut self, pos: i64) {
            unsafe { libc::seekdir(self.0, pos as libc::c_long) }
        }

        pub fn rewind(&mut self) {
            unsafe { libc::rewinddir(self.0) }
        }
    }

    impl Drop for LibcDir {
        fn drop(&mut self) {
            unsafe { libc::closedir(self.0) };
        }
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
            unsafe {
                let r = libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
                assert_eq!(r, 0, "setgroups: {}", Errno::last());
                let r = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
                assert_eq!(r, 0, "setresgid: {}", Errno::last());
                let r = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
                assert_eq!(r, 0, "setresuid: {}", Errno::last());
            }
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

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
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub rdev: Option<(u32, u32)>,
    pub content: Option<Blob>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, Data>,
    /// (mtime, ctime, ino), only with `SnapOpts::exact`.
    pub times_ino: Option<TimesIno>,
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
        let n =
            cvt_s(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n as usize];
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
    let mut e = Entry {
        kind: Kind::of_mode(st.st_mode),
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: Some(st.st_size as u64),
        nlink: Some(st.st_nlink),
        rdev: None,
        content: None,
        target: None,
        xattrs: BTreeMap::new(),
        times_ino: None,
    };
    if matches!(e.kind, Kind::Char | Kind::Block) {
        e.rdev = Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)));
    }
    if opts.whiteouts && e.kind == Kind::Char && st.st_rdev == 0 {
        return Entry {
            kind: Kind::Whiteout,
            perm: 0,
            uid: 0,
            gid: 0,
            size: None,
            nlink: None,
            rdev: None,
            content: None,
            target: None,
            xattrs: BTreeMap::new(),
            times_ino: None,
        };
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
            let c = cstr(name);
            let mut buf = vec![0u8; 8192];
            let n =
                unsafe { libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n >= 0, "readlinkat {name}: {}", Errno::last());
            buf.truncate(n as usize);
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
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
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

// ---------------------------------------------------------------------------------------------
// Layer specs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Sparse {
        size: u64,
        extents: Vec<(u64, Vec<u8>)>,
    },
    Dir,
    Opaque,
    Symlink(String),
    Hardlink(String),
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
    Whiteout,
    OciWhiteout,
    OciOpaque,
    Deep {
        levels: usize,
        name_len: usize,
        leaf: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct Item {
    path: String,
    node: Node,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: Option<(i64, i64)>,
}

/// Declarative content of one layer. Paths are relative ("a/b/c"); missing parent directories
/// are created (0755 root:root). Modifiers (`mode`, `owner`, `xattr`, `mtime`) apply to the entry
/// added last. Every entry gets the mtime/atime [`FIXED_TIME`] unless `mtime` says otherwise.
/// Symlink targets may contain "{SET}", replaced by the side's directory-set root.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    items: Vec<Item>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    fn push(mut self, path: &str, node: Node) -> Layer {
        self.items.push(Item {
            path: path.trim_matches('/').to_string(),
            node,
            mode: None,
            owner: None,
            xattrs: Vec::new(),
            mtime: None,
        });
        self
    }

    fn last(&mut self) -> &mut Item {
        self.items.last_mut().expect("modifier without an entry")
    }

    /// Regular file with contents (mode 0644).
    pub fn file(self, path: &str, data: impl AsRef<[u8]>) -> Layer {
        self.push(path, Node::File(data.as_ref().to_vec()))
    }

    /// Sparse file of `size` bytes with data at the given offsets (holes elsewhere).
    pub fn sparse(self, path: &str, size: u64, extents: &[(u64, &[u8])]) -> Layer {
        let extents = extents.iter().map(|(o, d)| (*o, d.to_vec())).collect();
        self.push(path, Node::Sparse { size, extents })
    }

    /// Directory (mode 0755). The path "" designates the layer root (for modifiers).
    pub fn dir(self, path: &str) -> Layer {
        self.push(path, Node::Dir)
    }

    /// Opaque directory: xattr trusted.overlay.opaque=y.
    pub fn opaque(self, path: &str) -> Layer {
        self.push(path, Node::Opaque)
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Node::Symlink(target.to_string()))
    }

    /// Hard link `path` to the existing entry `existing` of this layer.
    pub fn hardlink(self, path: &str, existing: &str) -> Layer {
        self.push(path, Node::Hardlink(existing.to_string()))
    }

    pub fn fifo(self, path: &str) -> Layer {
        self.push(path, Node::Fifo)
    }

    pub fn socket(self, path: &str) -> Layer {
        self.push(path, Node::Socket)
    }

    pub fn chardev(self, path: &str, major: u32, minor: u32) -> Layer {
        self.push(path, Node::Char(major, minor))
    }

    pub fn blockdev(self, path: &str, major: u32, minor: u32) -> Layer {
        self.push(path, Node::Block(major, minor))
    }

    /// Overlay whiteout: char device 0/0.
    pub fn whiteout(self, path: &str) -> Layer {
        self.push(path, Node::Whiteout)
    }

    /// OCI whiteout of `dir/NAME`: the file `dir/.wh.NAME` on the stratafs side; converted to an
    /// overlay whiteout on the kernel side (the kernel does not honour OCI markers).
    pub fn oci_whiteout(self, path: &str) -> Layer {
        self.push(path, Node::OciWhiteout)
    }

    /// OCI opaque marker: `dir/.wh..wh..opq` on the stratafs side; an opaque xattr on the kernel
    /// side. Creates the directory if needed.
    pub fn oci_opaque(self, dir: &str) -> Layer {
        self.push(dir, Node::OciOpaque)
    }

    /// A chain of `levels` nested directories with `name_len`-character names (see
    /// [`deep_names`]) below `path`, with a file "leaf" in the deepest one; created with
    /// fd-relative syscalls, so the total path may exceed PATH_MAX.
    pub fn deep(self, path: &str, levels: usize, name_len: usize, leaf: impl AsRef<[u8]>) -> Layer {
        self.push(
            path,
            Node::Deep {
                levels,
                name_len,
                leaf: leaf.as_ref().to_vec(),
            },
        )
    }

    /// Permission bits (including setuid/setgid/sticky) of the last entry.
    pub fn mode(mut self, mode: u32) -> Layer {
        self.last().mode = Some(mode);
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Layer {
        self.last().owner = Some((uid, gid));
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Layer {
        self.last()
            .xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn mtime(mut self, sec: i64, nsec: i64) -> Layer {
        self.last().mtime = Some((sec, nsec));
        self
    }

    fn has_oci(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.node, Node::OciWhiteout | Node::OciOpaque))
    }

    /// Creates the layer's contents in `dir` (which must exist). `oci_native`: keep OCI markers
    /// as `.wh.` files (stratafs side) instead of converting them (kernel side).
    fn materialize(&self, dir: &Path, set_root: &Path, oci_native: bool) {
        let set = set_root.to_str().expect("non-UTF-8 temp path");
        for it in &self.items {
            let p = if it.path.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(&it.path)
            };
            let parent = p.parent().expect("parent").to_path_buf();
            mkdir_p(&parent).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
            let ctx =
                |what: &str, e: Errno| -> ! { panic!("materialize {what} {}: {e}", p.display()) };
            let mut target = p.clone();
            match &it.node {
                Node::File(data) => {
                    write_file(&p, data).unwrap_or_else(|e| ctx("file", e));
                    chmod(&p, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Sparse { size, extents } => {
                    let fd = open(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)
                        .unwrap_or_else(|e| ctx("sparse", e));
                    for (off, d) in extents {
                        pwrite(&fd, *off, d).unwrap_or_else(|e| ctx("sparse write", e));
                    }
                    ftruncate(&fd, *size).unwrap_or_else(|e| ctx("sparse truncate", e));
                    chmod(&p, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Dir | Node::Opaque => {
                    if !it.path.is_empty() {
                        mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    }
                    chmod(&p, 0o755).unwrap_or_else(|e| ctx("chmod", e));
                    if matches!(it.node, Node::Opaque) {
                        lsetxattr(&p, "trusted.overlay.opaque", "y", 0)
                            .unwrap_or_else(|e| ctx("opaque", e));
                    }
                }
                Node::Symlink(t) => {
                    symlink(&t.replace("{SET}", set), &p).unwrap_or_else(|e| ctx("symlink", e));
                }
                Node::Hardlink(existing) => {
                    link(dir.join(existing), &p).unwrap_or_else(|e| ctx("link", e));
                }
                Node::Fifo => mkfifo(&p, 0o644).unwrap_or_else(|e| ctx("mkfifo", e)),
                Node::Socket => {
                    mksock(&p).unwrap_or_else(|e| ctx("socket", e));
                    chmod(&p, 0o755).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Char(ma, mi) => {
                    mknod(&p, libc::S_IFCHR | 0o644, *ma, *mi).unwrap_or_else(|e| ctx("mknod", e))
                }
                Node::Block(ma, mi) => {
                    mknod(&p, libc::S_IFBLK | 0o644, *ma, *mi).unwrap_or_else(|e| ctx("mknod", e))
                }
                Node::Whiteout => {
                    mknod(&p, libc::S_IFCHR, 0, 0).unwrap_or_else(|e| ctx("whiteout", e))
                }
                Node::OciWhiteout => {
                    if oci_native {
                        let name = p.file_name().unwrap().to_string_lossy().into_owned();
                        target = parent.join(format!(".wh.{name}"));
                        write_file(&target, b"").unwrap_or_else(|e| ctx("oci whiteout", e));
                        chmod(&target, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                    } else {
                        mknod(&p, libc::S_IFCHR, 0, 0).unwrap_or_else(|e| ctx("whiteout", e));
                    }
                }
                Node::OciOpaque => {
                    mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    if oci_native {
                        target = p.join(".wh..wh..opq");
                        write_file(&target, b"").unwrap_or_else(|e| ctx("oci opaque", e));
                        chmod(&target, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                    } else {
                        lsetxattr(&p, "trusted.overlay.opaque", "y", 0)
                            .unwrap_or_else(|e| ctx("opaque", e));
                    }
                }
                Node::Deep {
                    levels,
                    name_len,
                    leaf,
                } => {
                    mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    let names = deep_names(*levels, *name_len);
                    mkdir_chain(&p, &names).unwrap_or_else(|e| ctx("deep chain", e));
                    let d = open_chain(&p, &names).unwrap_or_else(|e| ctx("deep open", e));
                    let f = openat(
                        d.as_raw_fd(),
                        "leaf",
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                        0o644,
                    )
                    .unwrap_or_else(|e| ctx("deep leaf", e));
                    write_fd(&f, leaf).unwrap_or_else(|e| ctx("deep leaf write", e));
                }
            }
            if let Some((u, g)) = it.owner {
                lchown(&target, u, g).unwrap_or_else(|e| ctx("chown", e));
            }
            if let Some(m) = it.mode {
                chmod(&target, m).unwrap_or_else(|e| ctx("chmod", e));
            }
            for (n, v) in &it.xattrs {
                lsetxattr(&target, n, v, 0).unwrap_or_else(|e| ctx("setxattr", e));
            }
        }
        // Fixed times everywhere, then per-entry overrides.
        set_times_tree(dir, FIXED_TIME);
        for it in &self.items {
            if let Some(t) = it.mtime {
                let p = if it.path.is_empty() {
                    dir.to_path_buf()
                } else {
                    dir.join(&it.path)
                };
                lutimens(&p, Ts::At(t.0, t.1), Ts::At(t.0, t.1))
                    .unwrap_or_else(|e| panic!("mtime {}: {e}", p.display()));
            }
        }
    }
}

fn set_times_at(dirfd: RawFd, t: (i64, i64)) {
    for (name, _) in ops::list_fd(dirfd).expect("list") {
        if name == "." || name == ".." {
            continue;
        }
        let st = ops::fstatat_raw(dirfd, &name, libc::AT_SYMLINK_NOFOLLOW).expect("fstatat");
        if Kind::of_mode(st.st_mode) == Kind::Dir {
            let fd = ops::openat(
                dirfd,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .expect("open dir");
            set_times_at(fd.as_raw_fd(), t);
        }
        let c = cstr(&name);
        let ts = [
            libc::timespec {
                tv_sec: t.0,
                tv_nsec: t.1,
            },
            libc::timespec {
                tv_sec: t.0,
                tv_nsec: t.1,
            },
        ];
        let r =
            unsafe { libc::utimensat(dirfd, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(r, 0, "utimensat {name}: {}", Errno::last());
    }
}

fn set_times_tree(dir: &Path, t: (i64, i64)) {
    let fd = ops::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).expect("open layer");
    set_times_at(fd.as_raw_fd(), t);
    lutimens(dir, Ts::At(t.0, t.1), Ts::At(t.0, t.1)).expect("utimens layer root");
}

/// The layers of a pair: lowers (the first one added is the top, like `lowerdir=`), an
/// optional pre-populated upper, and "outside" content created next to the layers (canaries).
#[derive(Clone, Debug, Default)]
pub struct Layers {
    lowers: Vec<Layer>,
    upper: Option<Layer>,
    outside: Option<Layer>,
    trap: Option<Layer>,
}

impl Layers {
    pub fn new() -> Layers {
        Layers::default()
    }

    /// Adds a lower layer below the ones already added (the first is the top).
    pub fn lower(mut self, l: Layer) -> Layers {
        self.lowers.push(l);
        self
    }

    /// Pre-populated upper layer.
    pub fn upper(mut self, l: Layer) -> Layers {
        self.upper = Some(l);
        self
    }

    /// Content created in the side's set root ("{SET}/..."), outside of all layers: legitimate
    /// targets of symlinks resolved in the merged namespace. Compared between the sides at
    /// finish. Top-level names must not be "m", "u", "w", "w2", "L" or start with "log".
    pub fn outside(mut self, l: Layer) -> Layers {
        self.outside = Some(l);
        self
    }

    /// Content created in "{SET}/L" next to the lower layer dirs "{SET}/L/0".."{SET}/L/n": what a
    /// daemon that wrongly resolves a lower layer's relative symlinks on the host would reach.
    /// It is part of the lower snapshot, so it must never change.
    pub fn trap(mut self, l: Layer) -> Layers {
        self.trap = Some(l);
        self
    }

    fn has_oci(&self) -> bool {
        self.lowers.iter().any(Layer::has_oci)
    }
}

// ---------------------------------------------------------------------------------------------
// Mounting
// ---------------------------------------------------------------------------------------------

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Extra stratafs options for a whole run, with a leading comma (`E2E_STRATA_OPTS=uring`: the
/// io_uring transport), or nothing.
pub fn extra_strata_opts() -> String {
    match std::env::var("E2E_STRATA_OPTS") {
        Ok(extra) if !extra.is_empty() => format!(",{extra}"),
        _ => String::new(),
    }
}

/// Location of the stratafs binary: $STRATAFS_BIN, else target/debug/stratafs next to the
/// test binary's deps directory.
pub fn stratafs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is expected in target/<profile>/deps");
    let bin = dir.join("stratafs");
    if !bin.exists() {
        panic!(
            "stratafs binary not found at {} (set STRATAFS_BIN or run `cargo build --workspace` first)",
            bin.display()
        );
    }
    bin
}

fn fsconfig_str(fd: RawFd, key: &str, val: &str) -> R<()> {
    let (k, v) = (cstr(key), cstr(val));
    cvt_l(unsafe { libc::syscall(libc::SYS_fsconfig, fd, 1u32, k.as_ptr(), v.as_ptr(), 0) })
        .map(drop)
}

/// Mounts a kernel overlay through the new mount API (fsopen/fsconfig "lowerdir+"/fsmount/
/// move_mount), which has no option-string length limit (100 layers work).
pub fn kernel_mount(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    mnt: &Path,
) -> Result<(), String> {
    kernel_mount_with(lowers, upper_work, &[], mnt)
}

/// `kernel_mount` with flag options (`volatile`, `userxattr`...). The error text names the
/// failing step and its errno (`fsconfig create: EINVAL: ...`).
pub fn kernel_mount_with(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    flags: &[&str],
    mnt: &Path,
) -> Result<(), String> {
    let name = cstr("overlay");
    let fsfd = cvt_l(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), 1u32) })
        .map_err(|e| format!("fsopen overlay: {e}"))?;
    let fsfd = unsafe { OwnedFd::from_raw_fd(fsfd as RawFd) };
    let f = fsfd.as_raw_fd();
    let msgs = || {
        let mut s = String::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = unsafe { libc::read(f, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            s.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
            s.push(' ');
        }
        s
    };
    for l in lowers {
        fsconfig_str(f, "lowerdir+", l.to_str().unwrap())
            .map_err(|e| format!("fsconfig lowerdir+={}: {e} {}", l.display(), msgs()))?;
    }
    if let Some((u, w)) = upper_work {
        fsconfig_str(f, "upperdir", u.to_str().unwrap())
            .map_err(|e| format!("fsconfig upperdir: {e} {}", msgs()))?;
        fsconfig_str(f, "workdir", w.to_str().unwrap())
            .map_err(|e| format!("fsconfig workdir: {e} {}", msgs()))?;
    }
    for flag in flags {
        let k = cstr(flag);
        // FSCONFIG_SET_FLAG = 0
        cvt_l(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                f,
                0u32,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })
        .map_err(|e| format!("fsconfig {flag}: {e} {}", msgs()))?;
    }
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            f,
            6u32,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map_err(|e| format!("fsconfig create: {e} {} (see dmesg)", msgs()))?;
    let mfd = cvt_l(unsafe { libc::syscall(libc::SYS_fsmount, f, 1u32, 0u32) })
        .map_err(|e| format!("fsmount: {e}"))?;
    let mfd = unsafe { OwnedFd::from_raw_fd(mfd as RawFd) };
    let (empty, target) = (cstr(""), cpath(mnt));
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            4u32, // MOVE_MOUNT_F_EMPTY_PATH
        )
    })
    .map_err(|e| format!("move_mount {}: {e}", mnt.display()))?;
    Ok(())
}

fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}

/// Unmounts (retrying on EBUSY, then lazily). Returns an error description if even the lazy
/// unmount failed.
pub fn unmount(mnt: &Path) -> Result<(), String> {
    let c = cpath(mnt);
    for _ in 0..50 {
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EBUSY => std::thread::sleep(Duration::from_millis(20)),
            Errno::EINVAL if !is_mountpoint(mnt) => return Ok(()),
            e => return Err(format!("umount {}: {e}", mnt.display())),
        }
    }
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(format!("umount -l {}: {}", mnt.display(), Errno::last()))
    }
}

/// Which implementation serves a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Strata,
}

/// One side of a pair: its directory set and mount.
#[derive(Debug)]
pub struct Side {
    /// "kernel" or "stratafs" (the latter is a kernel overlay too under E2E_SELFTEST=1).
    pub label: &'static str,
    pub imp: Impl,
    /// Root of this side's directory set.
    pub set: PathBuf,
    pub mnt: PathBuf,
    /// Lower layer dirs, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    mounted: bool,
    pids: Vec<i32>,
    mounts: usize,
}

impl Side {
    /// Replaces this side's set root by "{SET}" (for comparing absolute paths).
    pub fn norm(&self, s: &str) -> String {
        s.replace(self.set.to_str().unwrap(), "{SET}")
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        let u = self
            .upper
            .as_ref()
            .expect("read-only pair has no upper layer");
        if rel.is_empty() {
            u.clone()
        } else {
            u.join(rel)
        }
    }

    /// Path inside lower layer i (0 = top).
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.lowers[i].clone()
        } else {
            self.lowers[i].join(rel)
        }
    }

    fn mount(&mut self) {
        assert!(!self.mounted);
        self.mounts += 1;
        match self.imp {
            Impl::Kernel => {
                let uw = self.upper.as_deref().zip(self.work.as_deref());
                kernel_mount(&self.lowers, uw, &self.mnt).unwrap_or_else(|e| {
                    panic!("[{}] kernel overlay mount failed: {e}", self.label)
                });
            }
            Impl::Strata => self.mount_strata(),
        }
        self.mounted = true;
        let magic = statfs(&self.mnt).map(|s| s.ftype).unwrap_or(0);
        let strata_kernel = std::env::var("E2E_DRIVER").is_ok_and(|d| d != "fuse");
        let want = match self.imp {
            Impl::Kernel => OVERLAYFS_SUPER_MAGIC,
            // With E2E_DRIVER=auto|kernel stratafs may hand the stack to the kernel's overlay.
            Impl::Strata if strata_kernel && magic == OVERLAYFS_SUPER_MAGIC => magic,
            Impl::Strata => FUSE_SUPER_MAGIC,
        };
        assert_eq!(
            magic,
            want,
            "[{}] {} is not the expected mount after mounting (f_type {magic:#x})",
            self.label,
            self.mnt.display()
        );
    }

    fn mount_strata(&mut self) {
        // The FUSE driver unless E2E_DRIVER says otherwise (auto/kernel: the cross-driver run).
        let driver = std::env::var("E2E_DRIVER").unwrap_or_else(|_| "fuse".to_string());
        self.mount_strata_with(&driver);
    }

    fn mount_strata_with(&mut self, driver: &str) {
        let bin = stratafs_bin();
        let lowers: Vec<&str> = self.lowers.iter().map(|p| p.to_str().unwrap()).collect();
        let mut opts = format!("driver={driver},lowerdir={}", lowers.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        opts.push_str(&extra_strata_opts());
        let log_path = self.set.join(format!("log{}", self.mounts));
        let log = fs::File::create(&log_path).expect("create daemon log");
        let status = Command::new(&bin)
            .arg("-o")
            .arg(&opts)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        if !status.success() {
            let mut s = String::new();
            let _ = fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut s));
            panic!(
                "stratafs mount failed ({status}): {} -o {opts} {}\n--- output ---\n{s}",
                bin.display(),
                self.mnt.display()
            );
        }
        self.pids = daemon_pids(&self.mnt);
    }

    fn umount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let r = unmount(&self.mnt);
        self.mounted = false;
        // Wait for the daemon to exit (cleanup only; the lifecycle tests check it properly).
        for pid in std::mem::take(&mut self.pids) {
            let mut n = 0;
            while alive(pid) && n < 500 {
                std::thread::sleep(Duration::from_millis(20));
                n += 1;
            }
            if alive(pid) {
                eprintln!(
                    "[{}] stratafs daemon {pid} still alive after unmount: killing it",
                    self.label
                );
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        r
    }

    fn merged_opts(&self, roots: &[String]) -> SnapOpts {
        SnapOpts {
            roots: roots.to_vec(),
            ..SnapOpts::default()
        }
    }
}

/// With E2E_TRACE=1, prints every step's (kernel) result with its location.
#[track_caller]
fn trace<T: fmt::Debug>(name: &str, v: &T) {
    if std::env::var_os("E2E_TRACE").is_some() {
        eprintln!("[{name}] {}: {v:?}", std::panic::Location::caller());
    }
}

fn panic_msg(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "check panicked".to_string())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Both sides' values of something.
#[derive(Debug)]
pub struct Both<T> {
    pub k: T,
    pub s: T,
}

impl<T> Both<T> {
    pub fn get(&self, side: &Side) -> &T {
        match side.label {
            "kernel" => &self.k,
            _ => &self.s,
        }
    }
}

/// The kernel overlay (`k`) and stratafs (`s`) mounted on two identical directory sets.
pub struct Pair {
    pub name: String,
    pub root: PathBuf,
    pub k: Side,
    pub s: Side,
    layers: Layers,
    lower_snap: Option<(Tree, Tree)>,
    finished: bool,
    rw: bool,
    /// E2E_SOFT=1: mismatches are recorded and reported together at the end.
    soft: bool,
    failures: std::sync::Mutex<Vec<String>>,
}

fn lower_opts() -> SnapOpts {
    SnapOpts {
        exact: true,
        ..SnapOpts::default()
    }
}

fn upper_opts(roots: &[String]) -> SnapOpts {
    SnapOpts {
        whiteouts: true,
        overlay_xattrs: true,
        roots: roots.to_vec(),
        ..SnapOpts::default()
    }
}

impl Pair {
    /// A read-write pair (lowers + upper + work).
    pub fn new(name: &str, layers: &Layers) -> Pair {
        Pair::build(name, layers, true)
    }

    /// A read-only pair (lowers only). The kernel needs at least two lower layers without an
    /// upper layer: an empty bottom layer is added when the spec has only one.
    pub fn ro(name: &str, layers: &Layers) -> Pair {
        let mut l = layers.clone();
        assert!(l.upper.is_none(), "read-only pair with an upper layer");
        while l.lowers.len() < 2 {
            l.lowers.push(Layer::new());
        }
        Pair::build(name, &l, false)
    }

    fn build(name: &str, layers: &Layers, rw: bool) -> Pair {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("e2e-{name}-{}-{n}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove stale temp root");
        }
        fs::create_dir_all(&root).expect("create temp root");
        let mut layers = layers.clone();
        if layers.lowers.is_empty() {
            layers.lowers.push(Layer::new());
        }
        let mk_side = |label: &'static str, imp: Impl| -> Side {
            let set = root.join(if label == "kernel" { "k" } else { "s" });
            let lowers: Vec<PathBuf> = (0..layers.lowers.len())
                .map(|i| set.join("L").join(i.to_string()))
                .collect();
            Side {
                label,
                imp,
                mnt: set.join("m"),
                upper: rw.then(|| set.join("u")),
                work: rw.then(|| set.join("w")),
                lowers,
                set,
                mounted: false,
                pids: Vec::new(),
                mounts: 0,
            }
        };
        let simp = if selftest() {
            Impl::Kernel
        } else {
            Impl::Strata
        };
        let mut pair = Pair {
            name: name.to_string(),
            root: root.clone(),
            k: mk_side("kernel", Impl::Kernel),
            s: mk_side("stratafs", simp),
            layers,
            lower_snap: None,
            finished: false,
            rw,
            soft: std::env::var("E2E_SOFT").map(|v| v == "1").unwrap_or(false),
            failures: std::sync::Mutex::new(Vec::new()),
        };
        // Materialize both sets (the Pair exists already, so a panic here still cleans up).
        // Order matters: materializing sets fixed times over the whole target dir, so the
        // outside content (set root) and the trap (set/L) come before the layers.
        for side in [&pair.k, &pair.s] {
            let oci_native = side.imp == Impl::Strata;
            fs::create_dir_all(&side.set).expect("mkdir set");
            if let Some(o) = &pair.layers.outside {
                o.materialize(&side.set, &side.set, false);
            }
            fs::create_dir_all(side.set.join("L")).expect("mkdir L");
            if let Some(t) = &pair.layers.trap {
                t.materialize(&side.set.join("L"), &side.set, false);
            }
            fs::create_dir_all(&side.mnt).expect("mkdir mnt");
            for (i, l) in pair.layers.lowers.iter().enumerate() {
                fs::create_dir_all(&side.lowers[i]).expect("mkdir lower");
                l.materialize(&side.lowers[i], &side.set, oci_native);
            }
            if let (Some(u), Some(w)) = (&side.upper, &side.work) {
                fs::create_dir_all(u).expect("mkdir upper");
                fs::create_dir_all(w).expect("mkdir work");
                if let Some(ul) = &pair.layers.upper {
                    ul.materialize(u, &side.set, false);
                }
            }
        }
        pair.lower_snap = Some((
            snapshot_with(&pair.k.set.join("L"), &lower_opts()),
            snapshot_with(&pair.s.set.join("L"), &lower_opts()),
        ));
        pair.k.mount();
        pair.s.mount();
        pair
    }

    fn roots(&self) -> Vec<String> {
        vec![
            self.k.set.to_str().unwrap().to_string(),
            self.s.set.to_str().unwrap().to_string(),
        ]
    }

    /// Runs `f` on both mount roots (kernel first) and asserts equal results.
    #[track_caller]
    pub fn step<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Path) -> T) {
        self.get_ctx(|s| f(&s.mnt));
    }

    /// Like [`Pair::step`], returning the (equal) result.
    #[track_caller]
    pub fn get<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Path) -> T) -> T {
        self.get_ctx(|s| f(&s.mnt))
    }

    /// Like [`Pair::step`], with the whole [`Side`] (mount, upper, lower paths, set root).
    #[track_caller]
    pub fn step_ctx<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Side) -> T) {
        self.get_ctx(f);
    }

    /// Like [`Pair::step_ctx`], returning the (equal) result.
    #[track_caller]
    pub fn get_ctx<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Side) -> T) -> T {
        let k = f(&self.k);
        let s = f(&self.s);
        trace(&self.name, &k);
        if k != s {
            self.fail(format!(
                "[{}] step at {}: results differ\n  kernel:   {k:?}\n  stratafs: {s:?}",
                self.name,
                std::panic::Location::caller()
            ));
        }
        k
    }

    /// Like [`Pair::step_ctx`] with per-side state (e.g. open fds from [`Pair::both`]).
    #[track_caller]
    pub fn step_with<S, T: PartialEq + fmt::Debug>(
        &self,
        st: &Both<S>,
        f: impl Fn(&Side, &S) -> T,
    ) {
        self.get_with(st, f);
    }

    /// Like [`Pair::step_with`], returning the (equal) result.
    #[track_caller]
    pub fn get_with<S, T: PartialEq + fmt::Debug>(
        &self,
        st: &Both<S>,
        f: impl Fn(&Side, &S) -> T,
    ) -> T {
        let k = f(&self.k, &st.k);
        let s = f(&self.s, &st.s);
        trace(&self.name, &k);
        if k != s {
            self.fail(format!(
                "[{}] step at {}: results differ\n  kernel:   {k:?}\n  stratafs: {s:?}",
                self.name,
                std::panic::Location::caller()
            ));
        }
        k
    }

    /// Records a failure (E2E_SOFT=1) or panics with it.
    pub fn fail(&self, msg: String) {
        if self.soft {
            eprintln!("{msg}");
            self.failures.lock().unwrap().push(msg);
        } else {
            panic!("{msg}");
        }
    }

    /// Runs a check; in soft mode a panic of the check is recorded instead.
    fn soft_check(&self, f: impl FnOnce()) {
        if !self.soft {
            return f();
        }
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.failures.lock().unwrap().push(panic_msg(&e));
        }
    }

    fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.failures.lock().unwrap())
    }

    /// Runs `f` on both sides without comparing (kernel first).
    pub fn both<T>(&self, f: impl Fn(&Side) -> T) -> Both<T> {
        Both {
            k: f(&self.k),
            s: f(&self.s),
        }
    }

    /// Compares the merged views now.
    #[track_caller]
    pub fn check_views(&self) {
        let roots = self.roots();
        let k = snapshot_with(&self.k.mnt, &self.k.merged_opts(&roots));
        let s = snapshot_with(&self.s.mnt, &self.s.merged_opts(&roots));
        assert_trees_eq(
            &format!("[{}] merged views differ", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Compares the upper layers now (normalised: kernel-private xattrs dropped, whiteouts by
    /// type only, no times, no directory sizes).
    #[track_caller]
    pub fn check_uppers(&self) {
        if !self.rw {
            return;
        }
        let roots = self.roots();
        let k = snapshot_with(self.k.upper.as_ref().unwrap(), &upper_opts(&roots));
        let s = snapshot_with(self.s.upper.as_ref().unwrap(), &upper_opts(&roots));
        assert_trees_eq(
            &format!("[{}] upper layers differ", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Asserts the lower layers (and the trap area) are unchanged since setup (contents,
    /// metadata, xattrs, mtime, ctime, inode numbers; not atime).
    #[track_caller]
    pub fn check_lowers(&self) {
        let (k0, s0) = self.lower_snap.as_ref().expect("lower snapshot");
        let k1 = snapshot_with(&self.k.set.join("L"), &lower_opts());
        let s1 = snapshot_with(&self.s.set.join("L"), &lower_opts());
        assert_trees_eq(
            &format!("[{}] kernel side: lower layers modified", self.name),
            "before",
            k0,
            "after",
            &k1,
        );
        assert_trees_eq(
            &format!("[{}] stratafs side: lower layers modified", self.name),
            "before",
            s0,
            "after",
            &s1,
        );
    }

    /// Compares what is outside the layers in each set (canaries, legit symlink targets).
    #[track_caller]
    pub fn check_outside(&self) {
        let roots = self.roots();
        let opts = |side: &Side| {
            let mut skip: Vec<String> = ["m", "u", "w", "w2", "L"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            for i in 0..=side.mounts {
                skip.push(format!("log{i}"));
            }
            SnapOpts {
                skip_top: skip,
                roots: roots.clone(),
                ..SnapOpts::default()
            }
        };
        let mut k = snapshot_with(&self.k.set, &opts(&self.k));
        let mut s = snapshot_with(&self.s.set, &opts(&self.s));
        k.remove("");
        s.remove("");
        assert_trees_eq(
            &format!("[{}] outside of the layers differs", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Unmounts both sides and mounts them again the same way (stratafs again on its side).
    pub fn remount(&mut self) {
        for side in [&mut self.k, &mut self.s] {
            side.umount()
                .unwrap_or_else(|e| panic!("[{}] {e}", side.label));
        }
        self.k.mount();
        self.s.mount();
    }

    /// Final checks: merged views, uppers, lowers unchanged, outside; then unmounts both and
    /// mounts the kernel overlay over each side's layers (fresh workdir) and compares those
    /// views. Also checks that stratafs's upper layer is accepted by the kernel.
    #[track_caller]
    pub fn finish(mut self) {
        self.soft_check(|| self.check_views());
        self.soft_check(|| self.check_uppers());
        self.soft_check(|| self.check_lowers());
        self.soft_check(|| self.check_outside());
        for side in [&mut self.k, &mut self.s] {
            side.umount()
                .unwrap_or_else(|e| panic!("[{}] {e}", side.label));
        }
        self.soft_check(|| self.check_lowers());
        if self.rw {
            let r = {
                let mut me = std::panic::AssertUnwindSafe(&mut self);
                std::panic::catch_unwind(move || me.kernel_remount_check())
            };
            if let Err(e) = r {
                if !self.soft {
                    std::panic::resume_unwind(e);
                }
                self.failures.lock().unwrap().push(panic_msg(&e));
            }
        }
        self.finished = true;
        let f = self.take_failures();
        if !f.is_empty() {
            panic!("[{}] {} failure(s):\n{}", self.name, f.len(), f.join("\n"));
        }
    }

    fn kernel_remount_check(&mut self) {
        let roots = self.roots();
        // With OCI markers the kernel would show the .wh. files: use the kernel side's
        // (converted, otherwise identical) lowers for both remounts.
        let oci = self.layers.has_oci();
        let klowers = self.k.lowers.clone();
        let mut trees = Vec::new();
        for side in [&mut self.k, &mut self.s] {
            let w2 = side.set.join("w2");
            if w2.exists() {
                fs::remove_dir_all(&w2).expect("rm w2");
            }
            fs::create_dir_all(&w2).expect("mkdir w2");
            let lowers = if oci {
                klowers.clone()
            } else {
                side.lowers.clone()
            };
            let upper = side.upper.clone().unwrap();
            kernel_mount(&lowers, Some((&upper, &w2)), &side.mnt).unwrap_or_else(|e| {
                panic!(
                    "kernel remount over the {} side's layers failed: {e}",
                    side.label
                )
            });
            side.mounted = true;
            let t = snapshot_with(&side.mnt, &side.merged_opts(&roots));
            let r = unmount(&side.mnt);
            side.mounted = false;
            r.unwrap_or_else(|e| panic!("{e}"));
            trees.push(t);
        }
        assert_trees_eq(
            &format!("[{}] kernel remount: merged views differ", self.name),
            "kernel-over-kernel-layers",
            &trees[0],
            "kernel-over-stratafs-layers",
            &trees[1],
        );
        // The other direction: stratafs's FUSE driver over the layers the kernel wrote shows
        // what the kernel shows.
        if selftest() {
            return;
        }
        let side = &mut self.k;
        let w3 = side.set.join("w3");
        if w3.exists() {
            fs::remove_dir_all(&w3).expect("rm w3");
        }
        fs::create_dir_all(&w3).expect("mkdir w3");
        let saved_work = side.work.replace(w3);
        side.mount_strata_with("fuse");
        side.mounted = true;
        let t = snapshot_with(&side.mnt, &side.merged_opts(&roots));
        let r = side.umount();
        side.work = saved_work;
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_trees_eq(
            &format!(
                "[{}] stratafs over the kernel's layers: merged views differ",
                self.name
            ),
            "kernel-over-kernel-layers",
            &trees[0],
            "stratafs-over-kernel-layers",
            &t,
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut errs = Vec::new();
        for side in [&mut self.k, &mut self.s] {
            if let Err(e) = side.umount() {
                errs.push(e);
            }
        }
        let panicking = std::thread::panicking();
        let mut lower_err = None;
        if !self.finished && !panicking {
            if let Err(e) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check_lowers()))
            {
                lower_err = Some(e);
            }
        }
        let still_mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .any(|m| Path::new(&m).starts_with(&self.root));
        if still_mounted {
            errs.push(format!(
                "mounts left under {}; not removing it",
                self.root.display()
            ));
        } else if std::env::var_os("E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
        if panicking {
            for e in errs {
                eprintln!("[{}] cleanup: {e}", self.name);
            }
            return;
        }
        if let Some(e) = lower_err {
            std::panic::resume_unwind(e);
        }
        let f = self.take_failures();
        if !f.is_empty() {
            panic!("[{}] {} failure(s):\n{}", self.name, f.len(), f.join("\n"));
        }
        if !errs.is_empty() {
            panic!("[{}] cleanup failed: {}", self.name, errs.join("; "));
        }
    }
}

/// Replaces the set root (the parent of the mount `root`) in `s` by "{SET}".
pub fn norm_set(root: &Path, s: &str) -> String {
    s.replace(root.parent().unwrap().to_str().unwrap(), "{SET}")
}

/// Convenience: `p(root, "a/b")` = root.join("a/b").
pub fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

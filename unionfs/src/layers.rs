//! The layer stack: one directory fd per layer, the upper first when there is one, and path
//! resolution inside a layer that never leaves it (see `sys::open_beneath`).

use crate::options::{Options, XattrNamespace};
use crate::sys;
use crate::whiteout;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// Index of a layer in `Layers::layers`; the upper, when present, is 0.
pub type LayerIdx = usize;

/// The upper layer's index, in a stack that has one (`Layers::is_upper` tells).
pub const UPPER: LayerIdx = 0;

pub struct Layer {
    pub root: OwnedFd,
    pub path: PathBuf,
    pub dev: u64,
}

/// A directory fd inside a layer: the layer's root itself (borrowed) or an opened subdirectory.
pub enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl DirFd<'_> {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(b) => *b,
            DirFd::Owned(o) => o.as_fd(),
        }
    }
}

/// What opening the stack can fail on, naming the layer.
#[derive(Debug)]
pub struct LayerError {
    pub what: &'static str,
    pub path: PathBuf,
    pub err: io::Error,
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.err)
    }
}

impl std::error::Error for LayerError {}

pub struct Layers {
    pub layers: Vec<Layer>,
    pub has_upper: bool,
    /// `workdir/work`, where copy-ups and whiteouts are built before being renamed into place.
    pub work: Option<OwnedFd>,
    pub xattr_ns: XattrNamespace,
    /// Every layer on one filesystem: inode numbers are unique across layers, so a copied-up
    /// entry keeps its lower inode number (recorded in the upper as its "origin").
    pub same_fs: bool,
    /// Whiteouts are written as zero-size files with the `overlay.whiteout` xattr: asked for,
    /// or found necessary when the upper refused a 0/0 device.
    xwhiteouts: AtomicBool,
    /// Directories of lower layers by (layer, path): lower layers never change, so what was
    /// read once stays true, and a miss needs no system call. Bounded: each holds an fd.
    lower_dirs: Mutex<LruCache<(LayerIdx, OsString), Arc<LowerDir>>>,
}

/// How many lower directories stay open and indexed.
const LOWER_DIRS: usize = 512;
/// A lower directory with more entries keeps its fd but not its names.
const LOWER_DIR_MAX_NAMES: usize = 100_000;

/// At most an eighth of the fds we may open, so that users' open files always find room.
fn lower_dirs_capacity() -> NonZeroUsize {
    let limit = sys::mount::nofile_limit().unwrap_or(1024) as usize;
    NonZeroUsize::new(LOWER_DIRS.min(limit / 8)).unwrap_or(NonZeroUsize::MIN)
}

/// One directory of a lower layer, read once.
pub struct LowerDir {
    fd: OwnedFd,
    /// Every name in it (`None`: too many to keep, ask the filesystem).
    names: Option<HashSet<OsString>>,
}

impl LowerDir {
    fn read(fd: OwnedFd) -> io::Result<LowerDir> {
        let mut names = HashSet::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let batch = sys::getdents(fd.as_fd(), &mut buf)?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                if e.name != "." && e.name != ".." {
                    names.insert(e.name);
                }
            }
            if names.len() > LOWER_DIR_MAX_NAMES {
                return Ok(LowerDir { fd, names: None });
            }
        }
        names.shrink_to_fit();
        Ok(LowerDir {
            fd,
            names: Some(names),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `name` may exist here (`false` is certain; `true` must be checked).
    fn may_have(&self, name: &[u8]) -> bool {
        self.names
            .as_ref()
            .is_none_or(|n| n.contains(OsStr::from_bytes(name)))
    }

    /// Whether an OCI marker `.wh.NAME` hides `name` here.
    fn has_oci_whiteout(&self, name: &OsStr) -> bool {
        if self.names.is_some() {
            return whiteout::oci_marker(name).is_some_and(|m| self.may_have(m.as_bytes()));
        }
        whiteout::has_oci_whiteout(self.fd(), name)
    }
}

/// Name of the scratch directory inside workdir, the same as the kernel's.
pub const WORK_SUBDIR: &str = "work";

fn open_root(what: &'static str, path: &Path) -> Result<Layer, LayerError> {
    let lerr = |err| LayerError {
        what,
        path: path.to_path_buf(),
        err,
    };
    let fd = std::fs::File::open(path).map_err(lerr)?;
    let st = sys::fstat(fd.as_fd()).map_err(lerr)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(lerr(sys::err(libc::ENOTDIR)));
    }
    Ok(Layer {
        root: OwnedFd::from(fd),
        path: path.to_path_buf(),
        dev: st.st_dev,
    })
}

impl Layers {
    pub fn open_stack(opts: &Options) -> Result<Layers, LayerError> {
        let mut layers = Vec::new();
        let mut work = None;
        let has_upper = opts.upperdir.is_some();
        if let (Some(upper), Some(workdir)) = (&opts.upperdir, &opts.workdir) {
            layers.push(open_root("upperdir", upper)?);
            let w = open_root("workdir", workdir)?;
            work = Some(
                prepare_work(&w, workdir, opts.volatile).map_err(|err| LayerError {
                    what: "workdir",
                    path: workdir.clone(),
                    err,
                })?,
            );
        }
        for l in &opts.lowerdirs {
            layers.push(open_root("lowerdir", l)?);
        }
        // trusted.* needs CAP_SYS_ADMIN in the initial user namespace; otherwise markers live
        // in user.overlay.*, as the kernel's `userxattr`.
        let xattr_ns = opts.xattr_ns.unwrap_or(
            if sys::mount::in_initial_userns() && sys::mount::has_cap_sys_admin() {
                XattrNamespace::Trusted
            } else {
                XattrNamespace::User
            },
        );
        let same_fs = layers.windows(2).all(|w| w[0].dev == w[1].dev);
        Ok(Layers {
            layers,
            has_upper,
            work,
            xattr_ns,
            same_fs,
            xwhiteouts: AtomicBool::new(opts.xwhiteouts),
            lower_dirs: Mutex::new(LruCache::new(lower_dirs_capacity())),
        })
    }

    pub fn is_upper(&self, l: LayerIdx) -> bool {
        self.has_upper && l == UPPER
    }

    pub fn first_lower(&self) -> LayerIdx {
        usize::from(self.has_upper)
    }

    pub fn root(&self, l: LayerIdx) -> BorrowedFd<'_> {
        self.layers[l].root.as_fd()
    }

    pub fn work(&self) -> io::Result<BorrowedFd<'_>> {
        self.work
            .as_ref()
            .map(|w| w.as_fd())
            .ok_or_else(|| sys::err(libc::EROFS))
    }

    /// The directory `rel` ("" for the root) of layer `l`, as an `O_PATH` fd.
    pub fn dir(&self, l: LayerIdx, rel: &OsStr) -> io::Result<DirFd<'_>> {
        if rel.is_empty() {
            return Ok(DirFd::Root(self.root(l)));
        }
        sys::open_beneath(self.root(l), rel, libc::O_PATH | libc::O_DIRECTORY, 0).map(DirFd::Owned)
    }

    /// Closes every kept lower directory (the kernel forgot most of the tree: its fds and
    /// memory go back, as the nodes' do).
    pub fn drop_lower_dirs(&self) {
        self.lower_dirs.lock().clear();
    }

    /// The directory `rel` of lower layer `l`, read and kept (`None`: no such directory).
    pub fn lower_dir(&self, l: LayerIdx, rel: &OsStr) -> io::Result<Option<Arc<LowerDir>>> {
        let key = (l, rel.to_os_string());
        if let Some(d) = self.lower_dirs.lock().get(&key) {
            return Ok(Some(d.clone()));
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let fd = match self.open(l, rel, flags) {
            Ok(fd) => fd,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let d = Arc::new(LowerDir::read(fd)?);
        self.lower_dirs.lock().put(key, d.clone());
        Ok(Some(d))
    }

    /// Opens `rel` in layer `l` with `flags` (O_NOFOLLOW is added: a symlink is never followed).
    pub fn open(&self, l: LayerIdx, rel: &OsStr, flags: i32) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { OsStr::new(".") } else { rel };
        sys::open_beneath(self.root(l), rel, flags | libc::O_NOFOLLOW, 0)
    }

    pub fn origin_xattr(&self) -> OsString {
        OsString::from(format!("{}origin", self.xattr_ns.prefix()))
    }

    /// The inode number of the lower entry an upper entry was copied up from, if it records
    /// one that still resolves.
    pub fn origin_ino(&self, upper_entry: BorrowedFd) -> Option<u64> {
        if !self.same_fs || !self.has_upper || self.layers.len() < 2 {
            return None;
        }
        let v = sys::fgetxattr(upper_entry, &self.origin_xattr()).ok()?;
        let (htype, handle) = whiteout::decode_origin(&v)?;
        let fd = sys::open_by_handle(self.root(1), htype, handle, libc::O_PATH).ok()?;
        Some(sys::fstat(fd.as_fd()).ok()?.st_ino)
    }

    /// Records in the upper entry `dst` that it was copied up from `src`.
    pub fn set_origin(&self, src: BorrowedFd, dst: BorrowedFd) {
        if !self.same_fs {
            return;
        }
        if let Ok((htype, handle)) = sys::name_to_handle(src) {
            let v = whiteout::encode_origin(htype, &handle);
            if let Err(e) = sys::fsetxattr(dst, &self.origin_xattr(), &v, 0) {
                log::debug!("origin not recorded: {e}");
            }
        }
    }

    fn xattr_name(&self, what: &str) -> OsString {
        OsString::from(format!("{}{what}", self.xattr_ns.prefix()))
    }

    /// Whether the entry `name` in `dir`, of stat `st`, is a whiteout: a 0/0 character device,
    /// or a zero-size regular file carrying the `overlay.whiteout` xattr.
    pub fn is_whiteout_at(&self, dir: BorrowedFd, name: &OsStr, st: &sys::Stat) -> bool {
        if whiteout::is_whiteout(st) {
            return true;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
            return false;
        }
        sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map(|fd| sys::fgetxattr(fd.as_fd(), &self.xattr_name("whiteout")).is_ok())
            .unwrap_or(false)
    }

    /// Whether the layer directory `dir` is marked as holding xattr whiteouts (opaque "x"),
    /// so that its listing must check its empty files.
    pub fn has_xwhiteouts(&self, dir: BorrowedFd) -> bool {
        sys::fgetxattr(dir, &self.opaque_xattr())
            .map(|v| v == b"x")
            .unwrap_or(false)
    }

    /// Creates a whiteout `name` in `dir`: a 0/0 device, or where that is refused (or
    /// `xwhiteouts` asks), an empty file with the `overlay.whiteout` xattr. The caller marks
    /// the upper directory it ends up in with `note_whiteout`.
    pub fn make_whiteout(&self, dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
        if !self.xwhiteouts.load(Ordering::Relaxed) {
            match whiteout::make_whiteout(dir, name) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    log::info!("0/0 devices refused here: whiteouts become xattr files");
                    self.xwhiteouts.store(true, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        let fd = sys::openat(
            dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0,
        )?;
        let r = sys::fsetxattr(fd.as_fd(), &self.xattr_name("whiteout"), b"y", 0);
        if r.is_err() {
            let _ = sys::unlinkat(dir, name, false);
        }
        r
    }

    /// Whether whiteouts are xattr files (so `RENAME_WHITEOUT`, which makes devices, is out).
    pub fn xwhiteouts(&self) -> bool {
        self.xwhiteouts.load(Ordering::Relaxed)
    }

    /// After a whiteout landed in the upper directory `udir`: with xattr whiteouts, mark the
    /// directory opaque "x" (unless it is opaque already) so that listings look for them, and
    /// the upper root too: the kernel reads xattr whiteouts in listings of a lower layer whose
    /// root is so marked, which this upper becomes when stacked under another.
    pub fn note_whiteout(&self, udir: BorrowedFd) -> io::Result<()> {
        if !self.xwhiteouts() {
            return Ok(());
        }
        for dir in [udir, self.root(UPPER)] {
            match sys::fgetxattr(dir, &self.opaque_xattr()) {
                Ok(v) if v == b"y" || v == b"x" => {}
                _ => sys::fsetxattr(dir, &self.opaque_xattr(), b"x", 0)?,
            }
        }
        Ok(())
    }

    pub fn opaque_xattr(&self) -> OsString {
        OsString::from(format!("{}opaque", self.xattr_ns.prefix()))
    }

    /// Whether a stored xattr name belongs to overlay's private namespace (markers such as
    /// `opaque`), hidden from users; escaped names (`PREFIX.overlay.X`) are not private.
    pub fn is_private_xattr(&self, name: &OsStr) -> bool {
        let p = self.xattr_ns.prefix().as_bytes();
        let b = name.as_bytes();
        b.starts_with(p) && !b[p.len()..].starts_with(b"overlay.")
    }

    /// The stored name of an xattr a user names: names in the private namespace are escaped
    /// (`trusted.overlay.X` is kept as `trusted.overlay.overlay.X`), as the kernel does since
    /// 6.7 so that overlays can nest.
    pub fn escape_xattr(&self, name: &OsStr) -> OsString {
        let p = self.xattr_ns.prefix().as_bytes();
        let b = name.as_bytes();
        if !b.starts_with(p) {
            return name.to_os_string();
        }
        let mut v = Vec::with_capacity(b.len() + 8);
        v.extend_from_slice(p);
        v.extend_from_slice(b"overlay.");
        v.extend_from_slice(&b[p.len()..]);
        OsString::from_vec(v)
    }

    /// The name a user sees for a stored xattr name; `None` for private ones.
    pub fn unescape_xattr<'a>(&self, stored: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        let p = self.xattr_ns.prefix().as_bytes();
        if !stored.starts_with(p) {
            return Some(std::borrow::Cow::Borrowed(stored));
        }
        let rest = stored[p.len()..].strip_prefix(b"overlay.")?;
        let mut v = Vec::with_capacity(stored.len());
        v.extend_from_slice(p);
        v.extend_from_slice(rest);
        Some(std::borrow::Cow::Owned(v))
    }
}

/// Where the kernel's overlay records features a later mount must understand, inside
/// `workdir/work`; any entry in it makes the kernel refuse the mount (EINVAL).
pub const INCOMPAT_SUBDIR: &str = "incompat";
/// The feature a `volatile` mount records: `work/incompat/volatile/dirty`, as the kernel.
pub const VOLATILE_FEATURE: &str = "volatile";

/// A workdir marked with a feature in `work/incompat/` (a `volatile` mount used it): refused
/// as the kernel refuses it, with EINVAL. `Display` is the part after "workdir DIR: ".
#[derive(Debug)]
pub struct Incompat {
    pub workdir: PathBuf,
    pub feature: OsString,
}

impl fmt::Display for Incompat {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let dir = self
            .workdir
            .join(WORK_SUBDIR)
            .join(INCOMPAT_SUBDIR)
            .join(&self.feature);
        write!(
            f,
            "overlay with incompat feature '{}' cannot be mounted (Invalid argument)",
            self.feature.to_string_lossy()
        )?;
        if self.feature == VOLATILE_FEATURE {
            // The kernel keeps the mark after a clean unmount too: it cannot tell a crash apart.
            write!(f, ": a volatile mount used it, its upper may be incomplete")?;
        }
        write!(f, "; remove {} to mount it again", dir.display())
    }
}

impl std::error::Error for Incompat {}

/// The first feature recorded in `work/incompat` under the workdir `workdir_fd`, if any.
pub fn incompat_feature(workdir_fd: BorrowedFd) -> io::Result<Option<OsString>> {
    let path = Path::new(WORK_SUBDIR).join(INCOMPAT_SUBDIR);
    let dir = match sys::openat(
        workdir_fd,
        path.as_os_str(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut names: Vec<OsString> = sys::read_dir(dir)?.into_iter().map(|e| e.name).collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// Makes `workdir/work` exist and empty: leftovers of a copy-up or whiteout interrupted by a
/// crash are never visible (they were never renamed into the upper) and are removed here.
/// A feature in `work/incompat` refuses the mount first, as the kernel does; an empty
/// `work/incompat` goes with the rest. A `volatile` mount then marks the workdir.
fn prepare_work(workdir: &Layer, path: &Path, volatile: bool) -> io::Result<OwnedFd> {
    if let Some(feature) = incompat_feature(workdir.root.as_fd())? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            Incompat {
                workdir: path.to_path_buf(),
                feature,
            },
        ));
    }
    let name = OsStr::new(WORK_SUBDIR);
    match sys::mkdirat(workdir.root.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let work = sys::openat(
        workdir.root.as_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    clean_dir(work.as_fd())?;
    if volatile {
        mark_volatile(work.as_fd())?;
    }
    Ok(work)
}

/// Creates `work/incompat/volatile/dirty` as the kernel does (modes 0700/0600 rather than the
/// kernel's 0, so that an unprivileged owner can remove it). It stays after a clean unmount,
/// as the kernel's does: only the user may declare the upper layer sound again.
fn mark_volatile(work: BorrowedFd) -> io::Result<()> {
    let mkdir = |dir: BorrowedFd, name: &str| -> io::Result<OwnedFd> {
        let name = OsStr::new(name);
        sys::mkdirat(dir, name, 0o700)?;
        sys::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    };
    let incompat = mkdir(work, INCOMPAT_SUBDIR)?;
    let feature = mkdir(incompat.as_fd(), VOLATILE_FEATURE)?;
    sys::openat(
        feature.as_fd(),
        OsStr::new("dirty"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )?;
    // The one sync of a volatile mount (the kernel does none): the mark is what tells a later
    // mount not to trust the upper after a crash, so it must reach the disk before any data.
    sys::fsync(incompat.as_fd(), false)?;
    sys::fsync(work, false)
}

/// Removes everything inside the directory `dir`, depth first, never following symlinks.
pub fn clean_dir(dir: BorrowedFd) -> io::Result<()> {
    let listing = sys::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir(listing)? {
        remove_tree(dir, &e.name)?;
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively if it is a directory.
pub fn remove_tree(dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let st = match sys::fstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = sys::openat(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        clean_dir(sub.as_fd())?;
        sys::unlinkat(dir, name, true)
    } else {
        sys::unlinkat(dir, name, false)
    }
}

/// Where a name was found, top-down.
#[derive(Debug, Clone)]
pub struct Found {
    pub stat: sys::Stat,
    /// The layers that make up the entry, topmost first: one for a non-directory, every merged
    /// layer for a directory (stopping at an opaque one).
    pub layers: Vec<LayerIdx>,
    /// For an upper entry copied up from a lower one: the lower inode number it keeps.
    pub origin_ino: Option<u64>,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        is_dir(&self.stat)
    }
}

pub fn is_dir(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Joins a relative directory path and a name.
pub fn join(rel: &OsStr, name: &OsStr) -> OsString {
    if rel.is_empty() {
        return name.to_os_string();
    }
    let mut p = OsString::with_capacity(rel.len() + 1 + name.len());
    p.push(rel);
    p.push("/");
    p.push(name);
    p
}

impl Layers {
    /// Looks `name` up in the directory `rel`, merged from `dir_layers` (topmost first):
    /// `Ok(None)` when no layer has it or a whiteout hides it.
    pub fn lookup(
        &self,
        rel: &OsStr,
        dir_layers: &[LayerIdx],
        name: &OsStr,
    ) -> io::Result<Option<Found>> {
        let mut found: Option<Found> = None;
        for &l in dir_layers {
            let lower = !self.is_upper(l);
            if lower && whiteout::is_oci_marker(name) {
                continue;
            }
            let (upper_dir, lower_dir) = if lower {
                let Some(d) = self.lower_dir(l, rel)? else {
                    continue;
                };
                if !d.may_have(name.as_bytes()) {
                    if d.has_oci_whiteout(name) {
                        break;
                    }
                    continue;
                }
                (None, Some(d))
            } else {
                match self.dir(l, rel) {
                    Ok(d) => (Some(d), None),
                    Err(e) if is_gone(&e) => continue,
                    Err(e) => return Err(e),
                }
            };
            let dir = match (&upper_dir, &lower_dir) {
                (Some(d), _) => d.fd(),
                (None, Some(d)) => d.fd(),
                (None, None) => continue,
            };
            match sys::fstatat(dir, name) {
                Ok(st) => {
                    if self.is_whiteout_at(dir, name, &st) {
                        break;
                    }
                    match &mut found {
                        None => {
                            let d = is_dir(&st);
                            let origin_ino = if self.is_upper(l) && self.same_fs {
                                sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                                    .ok()
                                    .and_then(|fd| self.origin_ino(fd.as_fd()))
                            } else {
                                None
                            };
                            found = Some(Found {
                                stat: st,
                                layers: vec![l],
                                origin_ino,
                            });
                            if !d || self.is_opaque(l, dir, name)? {
                                break;
                            }
                        }
                        Some(f) => {
                            if !is_dir(&st) {
                                break;
                            }
                            f.layers.push(l);
                            if self.is_opaque(l, dir, name)? {
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if lower_dir.as_ref().is_some_and(|d| d.has_oci_whiteout(name)) {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Whether the directory `name` in `dir` of layer `l` hides the layers below it.
    fn is_opaque(&self, l: LayerIdx, dir: BorrowedFd, name: &OsStr) -> io::Result<bool> {
        let fd = match sys::openat(
            dir,
            name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if is_gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(whiteout::is_opaque_dir(
            fd.as_fd(),
            &self.opaque_xattr(),
            !self.is_upper(l),
        ))
    }

    /// Whether any layer below the upper, in the directory `rel` merged from `dir_layers`, has a
    /// visible `name`: removing or renaming it away must then leave a whiteout.
    pub fn lower_positive(
        &self,
        rel: &OsStr,
        dir_layers: &[LayerIdx],
        name: &OsStr,
    ) -> io::Result<bool> {
        let lowers: Vec<LayerIdx> = dir_layers
            .iter()
            .copied()
            .filter(|&l| !self.is_upper(l))
            .collect();
        Ok(self.lookup(rel, &lowers, name)?.is_some())
    }
}

/// Errors meaning "that path is not there (any more)".
pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FUSE driver's own check (the CLI checks first, but `open_stack` must not trust it):
    /// a volatile mount marks the workdir, the mark refuses the next open, its removal does not.
    #[test]
    fn volatile_mark_refuses_next_open() {
        let base =
            std::env::temp_dir().join(format!("stratafs-layers-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["l", "u", "w", "m"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let mut opts = Options::new(vec![base.join("l")], base.join("m"));
        opts.upperdir = Some(base.join("u"));
        opts.workdir = Some(base.join("w"));
        opts.volatile = true;
        let mark = base.join("w/work/incompat/volatile");
        drop(Layers::open_stack(&opts).unwrap());
        assert!(mark.join("dirty").is_file());
        let e = Layers::open_stack(&opts).err().unwrap();
        assert_eq!(e.err.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&mark.display().to_string()), "{e}");
        opts.volatile = false;
        assert!(Layers::open_stack(&opts).is_err());
        std::fs::remove_dir_all(&mark).unwrap();
        drop(Layers::open_stack(&opts).unwrap());
        assert!(!base.join("w/work/incompat").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! Execution: one operation on one side, and what is looked at afterwards; a run of
//! sequences on a pair.

use super::*;

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

/// Runs `ops` on a fresh pair of `layers` in the base directory "q", then the final checks:
/// the body of a reproducer ([`reproducer`]; tests/tests/regressions.rs).
#[track_caller]
pub fn replay(name: &str, layers: &Layers, ops: impl IntoIterator<Item = Op>) {
    let pair = Pair::new(name, layers);
    let mut run = Run::new(&pair, "q");
    for op in ops {
        run.step(op);
    }
    drop(run);
    pair.finish();
}

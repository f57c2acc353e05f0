//! Command line parsing and validation.
//!
//! The syntax is the one of `mount -t overlay` (`-o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W`)
//! plus the calling convention of `mount.fuse3` (`stratafs SOURCE MOUNTPOINT -o OPTIONS`). This
//! mount-style syntax (options anywhere, comma lists with backslash escapes, generic options
//! injected by mount(8)) is parsed by hand: an argument-parsing crate would not help with it.
//!
//! `parse` is purely syntactic (no filesystem access) so it can be unit tested; `validate`
//! checks the paths and canonicalizes them.

use crate::options::{Driver, Options, Passthrough, XattrNamespace};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest accepted `threads=N`; more would only waste memory (one 16 MiB buffer per thread).
const MAX_THREADS: usize = 256;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    /// `stratafs demo`: build a throwaway stack and show it working.
    Demo {
        verbose: u8,
    },
    Mount(Options),
}

/// A bad command line or a bad layer setup; `Display` is the one line printed after `stratafs: `.
#[derive(Debug)]
pub enum CliError {
    /// Malformed command line (missing argument, stray argument, unknown flag).
    Usage(String),
    UnknownOption(String),
    /// A known option with a value it cannot take.
    BadValue {
        option: String,
        value: String,
        reason: &'static str,
    },
    MissingLowerdir,
    /// `upperdir` without `workdir`, or the reverse.
    UpperWorkPair {
        given: &'static str,
        missing: &'static str,
    },
    /// An empty path, or an empty component of a `lowerdir` list (`a::b`).
    EmptyPath {
        option: &'static str,
        value: String,
    },
    /// A path that cannot be used (missing, unreadable...).
    Path {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    NotADirectory {
        what: &'static str,
        path: PathBuf,
    },
    /// Two layers that are the same directory or nested in each other.
    Overlap {
        inner_what: &'static str,
        inner: PathBuf,
        outer_what: &'static str,
        outer: PathBuf,
    },
    CrossDevice {
        upper: PathBuf,
        work: PathBuf,
    },
    /// An option that only means something with an upper layer (`volatile`).
    NeedsUpper(&'static str),
    /// The workdir records a feature in `work/incompat` (a `volatile` mount used it).
    Incompat(crate::layers::Incompat),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(msg) => write!(f, "{msg} (see stratafs --help)"),
            CliError::UnknownOption(opt) => write!(f, "unknown option: {opt}"),
            CliError::BadValue {
                option,
                value,
                reason,
            } => write!(f, "bad value for {option}: '{value}': {reason}"),
            CliError::MissingLowerdir => {
                write!(f, "missing lowerdir= option (see stratafs --help)")
            }
            CliError::UpperWorkPair { given, missing } => {
                write!(f, "{given} needs {missing} as well")
            }
            CliError::EmptyPath { option, value } => {
                write!(f, "{option}: empty path in '{value}'")
            }
            CliError::Path { what, path, err } => {
                write!(f, "{what} {}: {}", path.display(), io_error_text(err))
            }
            CliError::NotADirectory { what, path } => {
                write!(f, "{what} {}: Not a directory", path.display())
            }
            CliError::Overlap {
                inner_what,
                inner,
                outer_what,
                outer,
            } => {
                if inner == outer {
                    write!(
                        f,
                        "{inner_what} and {outer_what} are the same directory: {}",
                        inner.display()
                    )
                } else {
                    write!(
                        f,
                        "{inner_what} {} is inside {outer_what} {}",
                        inner.display(),
                        outer.display()
                    )
                }
            }
            CliError::CrossDevice { upper, work } => write!(
                f,
                "workdir {} is not on the same filesystem as upperdir {}",
                work.display(),
                upper.display()
            ),
            CliError::NeedsUpper(option) => write!(
                f,
                "{option} needs upperdir and workdir: without an upper layer nothing is written"
            ),
            CliError::Incompat(inc) => write!(f, "workdir {}: {inc}", inc.workdir.display()),
        }
    }
}

impl std::error::Error for CliError {}

/// `strerror` text of an io::Error, without the " (os error N)" suffix std adds.
pub fn io_error_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => err.to_string(),
    }
}

pub fn help_text() -> String {
    format!(
        "stratafs {version}: a union filesystem over FUSE with the semantics of Linux overlayfs

Usage:
  stratafs [-f] [-d] [-v...] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W][,OPTS] MOUNTPOINT
  stratafs SOURCE MOUNTPOINT -o OPTS   form used by mount.fuse3 and /etc/fstab
                                        (mount -t fuse.stratafs SOURCE MOUNTPOINT -o OPTS)
  stratafs demo                         build a small stack in a temp dir and show it working
  stratafs --help | --version

Flags:
  -f, --foreground    stay in the foreground (default: return once the mount is ready)
  -d, --debug         log every request; implies -f
  -v, --verbose       more logging (-v info, -vv debug); RUST_LOG is honoured too
  -o OPTS             comma separated options; may be given several times

Layer options:
  lowerdir=L1:L2:...  read-only layers, leftmost on top; '\\:' escapes a ':', '\\,' a ','
                      and '\\\\' a '\\' in any path
  upperdir=DIR        writable layer; needs workdir
  workdir=DIR         scratch directory on the same filesystem as upperdir
                      (without upperdir and workdir the mount is read-only)
  userxattr           keep overlay markers in user.overlay.* instead of trusted.overlay.*
  threads=N           threads serving requests (default 4)
  timeout=SECS        how long the kernel caches names and attributes (default 86400: the
                      layers must change only through the mount while it is mounted)
  driver=auto|fuse|kernel
                      who serves the stack: the kernel's overlay or stratafs over FUSE;
                      auto (default) takes the kernel where it permits the mount and can
                      honour the stack, FUSE otherwise (-v says which and why)
  xwhiteouts          FUSE driver: write whiteouts as empty files with the overlay.whiteout
                      xattr (what it does anyway where 0/0 devices cannot be made)
  volatile            as the kernel's: never sync the upper layer (no fsync of copied-up
                      data; fsync, fdatasync and O_SYNC return at once), for throwaway
                      uppers. Needs upperdir. Marks workdir/work/incompat/volatile, which
                      stays after unmount: later mounts of that workdir (either driver)
                      refuse with EINVAL until it is removed; after a crash, discard the
                      upper layer instead
  passthrough=off|upper|all
                      FUSE driver as root: hand opened files to the kernel (FUSE
                      passthrough), reads and writes then skip the daemon. upper
                      (default): files in the upper layer, the kernel overlay's semantics
                      exactly. all: lower files opened read-only too; while one is open
                      that way, opening it for writing or truncating it fails with
                      ETXTBSY. nopassthrough is passthrough=off
  uring               FUSE driver: take requests through FUSE over io_uring, one queue per
                      CPU answered on the caller's CPU (about twice as fast for metadata on
                      a VM). Needs Linux >= 6.14 with the fuse module's enable_uring set
                      (echo Y > /sys/module/fuse/parameters/enable_uring); /dev/fuse
                      otherwise

Generic options (as passed by mount(8)):
  ro rw nodev dev nosuid suid noexec exec noatime atime relatime strictatime
  allow_other allow_root default_permissions (always on) fsname=NAME subtype=NAME
  accepted without effect: nodiratime sync async dirsync auto noauto user nouser users
                           _netdev nofail defaults x-*

Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`; SIGTERM, SIGINT or SIGHUP to
the daemon unmount too.
Exit status: 0 once the mount serves requests, 2 on bad input or a failed mount.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

pub fn version_text() -> String {
    format!("stratafs {}", env!("CARGO_PKG_VERSION"))
}

/// Parses the arguments after argv[0]. Does not touch the filesystem.
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut items: Vec<Vec<u8>> = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let (mut foreground, mut debug, mut verbose) = (false, false, 0u8);
    let mut only_positionals = false;

    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if only_positionals || bytes.len() < 2 || bytes[0] != b'-' {
            positionals.push(arg);
            continue;
        }
        match bytes {
            b"--" => only_positionals = true,
            b"--help" => return Ok(Command::Help),
            b"--version" => return Ok(Command::Version),
            b"--foreground" => foreground = true,
            b"--debug" => debug = true,
            b"--verbose" => verbose = verbose.saturating_add(1),
            _ if bytes.starts_with(b"--") => {
                return Err(CliError::Usage(format!(
                    "unknown flag {}",
                    arg.to_string_lossy()
                )))
            }
            _ => {
                // A cluster of short flags such as `-fv`; `-o` takes the rest or the next arg.
                for (i, &c) in bytes.iter().enumerate().skip(1) {
                    match c {
                        b'f' => foreground = true,
                        b'd' => debug = true,
                        b'v' => verbose = verbose.saturating_add(1),
                        b'h' => return Ok(Command::Help),
                        b'V' => return Ok(Command::Version),
                        b'o' => {
                            let value = if i + 1 < bytes.len() {
                                bytes[i + 1..].to_vec()
                            } else {
                                args.next()
                                    .ok_or_else(|| {
                                        CliError::Usage("-o needs an argument".to_string())
                                    })?
                                    .into_vec()
                            };
                            items.extend(split_items(&value)?);
                            break;
                        }
                        _ => {
                            return Err(CliError::Usage(format!(
                                "unknown flag -{}",
                                char::from(c).escape_default()
                            )))
                        }
                    }
                }
            }
        }
    }

    if items.is_empty() && positionals.len() == 1 && positionals[0] == "demo" {
        return Ok(Command::Demo {
            verbose: if debug { verbose.max(2) } else { verbose },
        });
    }

    let (source, mountpoint) = match positionals.len() {
        0 => return Err(CliError::Usage("missing mountpoint".to_string())),
        1 => (None, positionals.remove(0)),
        2 => {
            let mountpoint = positionals.remove(1);
            (Some(positionals.remove(0)), mountpoint)
        }
        _ => {
            return Err(CliError::Usage(format!(
                "too many arguments: {}",
                positionals[2..]
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            )))
        }
    };
    if mountpoint.is_empty() {
        return Err(CliError::EmptyPath {
            option: "mountpoint",
            value: String::new(),
        });
    }

    let mut opts = Options::new(Vec::new(), PathBuf::from(mountpoint));
    opts.foreground = foreground || debug;
    opts.debug = debug;
    opts.verbose = verbose;
    let mut fsname = None;
    for item in &items {
        apply_item(&mut opts, item, &mut fsname)?;
    }
    if opts.lowerdirs.is_empty() {
        return Err(CliError::MissingLowerdir);
    }
    match (&opts.upperdir, &opts.workdir) {
        (Some(_), None) => {
            return Err(CliError::UpperWorkPair {
                given: "upperdir",
                missing: "workdir",
            })
        }
        (None, Some(_)) => {
            return Err(CliError::UpperWorkPair {
                given: "workdir",
                missing: "upperdir",
            })
        }
        _ => {}
    }
    // As the kernel's `volatile` it skips syncs of the upper layer; with none it is a mistake
    // (the kernel ignores it with a note in its log).
    if opts.volatile && opts.upperdir.is_none() {
        return Err(CliError::NeedsUpper("volatile"));
    }
    // An explicit fsname= wins over the SOURCE argument of the mount helper form.
    if let Some(name) = fsname.or_else(|| source.map(|s| s.to_string_lossy().into_owned())) {
        opts.fsname = name;
    }
    Ok(Command::Mount(opts))
}

/// Splits one `-o` argument on unescaped commas. Escapes are kept: values are unescaped
/// later, once (so `\:` in a lowerdir still separates nothing).
fn split_items(arg: &[u8]) -> Result<Vec<Vec<u8>>, CliError> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = arg.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => {
                let next = bytes.next().ok_or_else(|| CliError::BadValue {
                    option: "-o".to_string(),
                    value: String::from_utf8_lossy(arg).into_owned(),
                    reason: "ends with a lone backslash",
                })?;
                cur.push(b'\\');
                cur.push(*next);
            }
            b',' => items.push(std::mem::take(&mut cur)),
            _ => cur.push(b),
        }
    }
    items.push(cur);
    // `-o a,,b` or a trailing comma: empty items carry nothing, as in mount(8).
    items.retain(|i| !i.is_empty());
    Ok(items)
}

/// Splits on unescaped `sep` and removes the escapes (a backslash quotes any byte).
fn split_unescape(value: &[u8], sep: Option<u8>) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                cur.push(next);
            }
        } else if Some(b) == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(b);
        }
    }
    parts.push(cur);
    parts
}

fn path_value(option: &'static str, value: &[u8]) -> Result<PathBuf, CliError> {
    let mut parts = split_unescape(value, None);
    let path = parts.pop().unwrap_or_default();
    if path.is_empty() {
        return Err(CliError::EmptyPath {
            option,
            value: String::from_utf8_lossy(value).into_owned(),
        });
    }
    Ok(PathBuf::from(OsString::from_vec(path)))
}

fn apply_item(
    opts: &mut Options,
    item: &[u8],
    fsname: &mut Option<String>,
) -> Result<(), CliError> {
    let (key, value) = match item.iter().position(|&b| b == b'=') {
        Some(i) => (&item[..i], Some(&item[i + 1..])),
        None => (item, None),
    };
    let key_str = String::from_utf8_lossy(key).into_owned();
    let need_value = || {
        value.ok_or_else(|| CliError::BadValue {
            option: key_str.clone(),
            value: String::new(),
            reason: "needs a value (NAME=VALUE)",
        })
    };
    let value_str = || String::from_utf8_lossy(value.unwrap_or_default()).into_owned();

    // Options that take a value.
    match key {
        b"lowerdir" => {
            let value = need_value()?;
            let mut lowers = Vec::new();
            for part in split_unescape(value, Some(b':')) {
                if part.is_empty() {
                    return Err(CliError::EmptyPath {
                        option: "lowerdir",
                        value: value_str(),
                    });
                }
                lowers.push(PathBuf::from(OsString::from_vec(part)));
            }
            opts.lowerdirs = lowers;
            return Ok(());
        }
        b"upperdir" => {
            opts.upperdir = Some(path_value("upperdir", need_value()?)?);
            return Ok(());
        }
        b"workdir" => {
            opts.workdir = Some(path_value("workdir", need_value()?)?);
            return Ok(());
        }
        b"fsname" => {
            let name = split_unescape(need_value()?, None).concat();
            *fsname = Some(String::from_utf8_lossy(&name).into_owned());
            return Ok(());
        }
        // The mount type is always fuse.stratafs; a subtype is accepted for fstab compatibility.
        b"subtype" => {
            need_value()?;
            return Ok(());
        }
        b"threads" => {
            let n = value_str();
            match n.parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => opts.threads = n,
                _ => {
                    return Err(CliError::BadValue {
                        option: "threads".to_string(),
                        value: n,
                        reason: "expected a number from 1 to 256",
                    })
                }
            }
            return Ok(());
        }
        b"timeout" => {
            let n = value_str();
            match n.parse::<u64>() {
                Ok(n) if n <= 365 * 86400 => opts.timeout_secs = n,
                _ => {
                    return Err(CliError::BadValue {
                        option: "timeout".to_string(),
                        value: n,
                        reason: "expected seconds from 0 to 31536000",
                    })
                }
            }
            return Ok(());
        }
        b"passthrough" => {
            opts.passthrough = match need_value()? {
                b"off" => Passthrough::Off,
                b"upper" => Passthrough::Upper,
                b"all" => Passthrough::All,
                _ => {
                    return Err(CliError::BadValue {
                        option: "passthrough".to_string(),
                        value: value_str(),
                        reason: "expected off, upper or all",
                    })
                }
            };
            return Ok(());
        }
        b"driver" => {
            return match need_value()? {
                b"fuse" => {
                    opts.driver = Driver::Fuse;
                    Ok(())
                }
                b"auto" => {
                    opts.driver = Driver::Auto;
                    Ok(())
                }
                b"kernel" => {
                    opts.driver = Driver::Kernel;
                    Ok(())
                }
                _ => Err(CliError::BadValue {
                    option: "driver".to_string(),
                    value: value_str(),
                    reason: "expected fuse, auto or kernel",
                }),
            };
        }
        _ => {}
    }
    if key.starts_with(b"x-") {
        return Ok(()); // userspace-only fstab annotations (x-systemd.*, ...)
    }

    // Flags: no value allowed.
    let flag: Option<fn(&mut Options)> = match key {
        b"rw" => Some(|o| o.read_only = false),
        b"ro" => Some(|o| o.read_only = true),
        b"dev" => Some(|o| o.nodev = false),
        b"nodev" => Some(|o| o.nodev = true),
        b"suid" => Some(|o| o.nosuid = false),
        b"nosuid" => Some(|o| o.nosuid = true),
        b"exec" => Some(|o| o.noexec = false),
        b"noexec" => Some(|o| o.noexec = true),
        b"atime" | b"relatime" | b"strictatime" => Some(|o| o.noatime = false),
        b"noatime" => Some(|o| o.noatime = true),
        b"allow_other" | b"allow_root" => Some(|o| o.allow_other = true),
        b"userxattr" => Some(|o| o.xattr_ns = Some(XattrNamespace::User)),
        b"xwhiteouts" => Some(|o| o.xwhiteouts = true),
        b"volatile" => Some(|o| o.volatile = true),
        b"nopassthrough" => Some(|o| o.passthrough = Passthrough::Off),
        b"uring" => Some(|o| o.uring = true),
        // Accepted without effect: default_permissions is always on; the rest are either
        // meaningful only to mount(8)/fstab or not supported by FUSE mounts.
        b"default_permissions"
        | b"nodiratime"
        | b"sync"
        | b"async"
        | b"dirsync"
        | b"auto"
        | b"noauto"
        | b"user"
        | b"nouser"
        | b"users"
        | b"_netdev"
        | b"nofail"
        | b"defaults" => Some(|_| {}),
        _ => None,
    };
    match (flag, value) {
        (Some(set), None) => {
            set(opts);
            Ok(())
        }
        (Some(_), Some(_)) => Err(CliError::BadValue {
            option: key_str,
            value: value_str(),
            reason: "takes no value",
        }),
        (None, _) => Err(CliError::UnknownOption(
            String::from_utf8_lossy(item).into_owned(),
        )),
    }
}

/// Checks the layers and the mountpoint; returns the options with every path canonicalized
/// (the filesystem opens the layers later, possibly after chdir or from another process).
pub fn validate(opts: &Options) -> Result<Options, CliError> {
    let mut out = opts.clone();
    out.lowerdirs = opts
        .lowerdirs
        .iter()
        .map(|p| existing_dir("lowerdir", p))
        .collect::<Result<_, _>>()?;
    out.upperdir = opts
        .upperdir
        .as_deref()
        .map(|p| existing_dir("upperdir", p))
        .transpose()?;
    out.workdir = opts
        .workdir
        .as_deref()
        .map(|p| existing_dir("workdir", p))
        .transpose()?;
    out.mountpoint = existing_dir("mountpoint", &opts.mountpoint)?;

    let upper = out.upperdir.as_deref().map(|p| ("upperdir", p));
    let work = out.workdir.as_deref().map(|p| ("workdir", p));
    for writable in [upper, work].into_iter().flatten() {
        for lower in &out.lowerdirs {
            check_overlap(writable, ("lowerdir", lower))?;
        }
    }
    if let (Some(upper), Some(work)) = (upper, work) {
        check_overlap(upper, work)?;
        let dev = |what, path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.dev())
                .map_err(|err| CliError::Path {
                    what,
                    path: path.to_path_buf(),
                    err,
                })
        };
        if dev("upperdir", upper.1)? != dev("workdir", work.1)? {
            return Err(CliError::CrossDevice {
                upper: upper.1.to_path_buf(),
                work: work.1.to_path_buf(),
            });
        }
        // Checked here so that both drivers refuse with the same message (the kernel's own
        // refusal is a bare EINVAL, its reason only in the kernel log).
        let feature = std::fs::File::open(work.1)
            .and_then(|w| crate::layers::incompat_feature(std::os::fd::AsFd::as_fd(&w)))
            .map_err(|err| CliError::Path {
                what: "workdir",
                path: work.1.to_path_buf(),
                err,
            })?;
        if let Some(feature) = feature {
            return Err(CliError::Incompat(crate::layers::Incompat {
                workdir: work.1.to_path_buf(),
                feature,
            }));
        }
    }
    Ok(out)
}

fn existing_dir(what: &'static str, path: &Path) -> Result<PathBuf, CliError> {
    let canonical = std::fs::canonicalize(path).map_err(|err| CliError::Path {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|err| CliError::Path {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    if !meta.is_dir() {
        return Err(CliError::NotADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(canonical)
}

/// Errors when two canonical layer paths are equal or one contains the other.
fn check_overlap(a: (&'static str, &Path), b: (&'static str, &Path)) -> Result<(), CliError> {
    let overlap = |inner: (&'static str, &Path), outer: (&'static str, &Path)| CliError::Overlap {
        inner_what: inner.0,
        inner: inner.1.to_path_buf(),
        outer_what: outer.0,
        outer: outer.1.to_path_buf(),
    };
    if a.1.starts_with(b.1) {
        Err(overlap(a, b))
    } else if b.1.starts_with(a.1) {
        Err(overlap(b, a))
    } else {
        Ok(())
    }
}

/// Escapes a path for use inside a `-o` value (inverse of the parser's unescaping).
pub fn escape_path(path: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(args: &[&str]) -> Options {
        match parse(args.iter().copied()) {
            Ok(Command::Mount(o)) => o,
            other => panic!("expected a mount for {args:?}, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> CliError {
        match parse(args.iter().copied()) {
            Err(e) => e,
            Ok(c) => panic!("expected an error for {args:?}, got {c:?}"),
        }
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn basic_read_only_stack() {
        let o = mount(&["-o", "lowerdir=/a:/b:/c", "/mnt"]);
        assert_eq!(o.lowerdirs, paths(&["/a", "/b", "/c"]));
        assert_eq!(o.upperdir, None);
        assert_eq!(o.workdir, None);
        assert_eq!(o.mountpoint, PathBuf::from("/mnt"));
        assert!(!o.foreground && !o.debug && !o.writable());
        assert_eq!(o.fsname, "stratafs");
    }

    #[test]
    fn writable_stack_and_flags() {
        let o = mount(&[
            "-f",
            "-vv",
            "-o",
            "lowerdir=/l,upperdir=/u,workdir=/w",
            "/mnt",
        ]);
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert!(o.foreground && o.writable());
        assert_eq!(o.verbose, 2);
        let o = mount(&["-d", "-olowerdir=/l", "/mnt"]);
        assert!(o.debug && o.foreground);
        let o = mount(&["-fdv", "-o", "lowerdir=/l", "--", "-mnt"]);
        assert!(o.debug && o.foreground);
        assert_eq!(o.verbose, 1);
        assert_eq!(o.mountpoint, PathBuf::from("-mnt"));
    }

    #[test]
    fn escapes() {
        let o = mount(&[
            "-o",
            r"lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u\,1\:x,workdir=/w\\",
            "/mnt",
        ]);
        assert_eq!(o.lowerdirs, paths(&["/a:b", "/c,d", r"/e\f"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u,1:x")));
        assert_eq!(o.workdir, Some(PathBuf::from(r"/w\")));
        // An escaped backslash before a colon does not escape the colon.
        let o = mount(&["-o", r"lowerdir=/a\\:/b", "/mnt"]);
        assert_eq!(o.lowerdirs, paths(&[r"/a\", "/b"]));
        assert!(matches!(
            error(&["-o", r"lowerdir=/a\", "/mnt"]),
            CliError::BadValue { .. }
        ));
    }

    #[test]
    fn escape_path_round_trips() {
        let weird = r"/t/a:b,c\d";
        let arg = format!(
            "lowerdir={}",
            escape_path(OsStr::new(weird)).to_string_lossy()
        );
        let o = mount(&["-o", &arg, "/mnt"]);
        assert_eq!(o.lowerdirs, paths(&[weird]));
    }

    #[test]
    fn multiple_o_accumulate_and_last_wins() {
        let o = mount(&[
            "-o",
            "lowerdir=/x",
            "-o",
            "upperdir=/u",
            "/mnt",
            "-o",
            "workdir=/w,lowerdir=/l1:/l2",
        ]);
        assert_eq!(o.lowerdirs, paths(&["/l1", "/l2"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
    }

    #[test]
    fn mount_helper_form() {
        // What mount.fuse3 runs for `mount -t fuse.stratafs mysrc /mnt -o ...`.
        let o = mount(&[
            "mysrc",
            "/mnt",
            "-o",
            "rw,nosuid,nodev,noexec,noatime,relatime,lowerdir=/l,allow_root,x-systemd.automount,_netdev,nofail,defaults,auto,user,default_permissions,subtype=stratafs",
        ]);
        assert_eq!(o.fsname, "mysrc");
        assert_eq!(o.mountpoint, PathBuf::from("/mnt"));
        assert!(o.nosuid && o.nodev && o.noexec && o.allow_other && !o.read_only);
        // relatime after noatime turns atime updates back on, as with mount(8).
        assert!(!o.noatime);
        let o = mount(&["src", "/mnt", "-o", "lowerdir=/l,fsname=named,ro"]);
        assert_eq!(o.fsname, "named");
        assert!(o.read_only);
    }

    #[test]
    fn overlay_specific_options() {
        let o = mount(&["-o", "lowerdir=/l,userxattr,threads=7,driver=fuse", "/m"]);
        assert_eq!(o.xattr_ns, Some(XattrNamespace::User));
        assert_eq!(o.threads, 7);
        assert_eq!(o.driver, Driver::Fuse);
        assert_eq!(mount(&["-o", "lowerdir=/l", "/m"]).driver, Driver::Auto);
        assert_eq!(
            mount(&["-o", "lowerdir=/l", "/m"]).passthrough,
            Passthrough::Upper
        );
        for (opt, want) in [
            ("passthrough=off", Passthrough::Off),
            ("nopassthrough", Passthrough::Off),
            ("passthrough=upper", Passthrough::Upper),
            ("passthrough=all", Passthrough::All),
        ] {
            let o = mount(&["-o", &format!("lowerdir=/l,{opt}"), "/m"]);
            assert_eq!(o.passthrough, want, "{opt}");
        }
        let o = mount(&["-o", "lowerdir=/l,driver=kernel,xwhiteouts", "/m"]);
        assert_eq!(o.driver, Driver::Kernel);
        assert!(o.xwhiteouts);
        assert!(!o.volatile);
        let o = mount(&["-o", "volatile,lowerdir=/l,upperdir=/u,workdir=/w", "/m"]);
        assert!(o.volatile && o.writable());
        assert!(matches!(
            error(&["-o", "lowerdir=/l,driver=zfs", "/m"]),
            CliError::BadValue { .. }
        ));
        for bad in ["threads=0", "threads=x", "threads=100000", "threads"] {
            let arg = format!("lowerdir=/l,{bad}");
            assert!(
                matches!(error(&["-o", &arg, "/m"]), CliError::BadValue { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_command_lines() {
        assert!(matches!(error(&["-o", "lowerdir=/l"]), CliError::Usage(_)));
        assert!(matches!(error(&["/mnt"]), CliError::MissingLowerdir));
        assert!(matches!(
            error(&["-o", "upperdir=/u,workdir=/w", "/m"]),
            CliError::MissingLowerdir
        ));
        assert!(matches!(
            error(&["-o", "lowerdir=/l,upperdir=/u", "/m"]),
            CliError::UpperWorkPair { .. }
        ));
        assert!(matches!(
            error(&["-o", "lowerdir=/l,workdir=/w", "/m"]),
            CliError::UpperWorkPair { .. }
        ));
        for bad in ["lowerdir=a::b", "lowerdir=a:", "lowerdir=:a", "lowerdir="] {
            assert!(
                matches!(error(&["-o", bad, "/m"]), CliError::EmptyPath { .. }),
                "{bad}"
            );
        }
        assert!(matches!(
            error(&["-o", "lowerdir=/l,upperdir=,workdir=/w", "/m"]),
            CliError::EmptyPath { .. }
        ));
        let e = error(&["-o", "lowerdir=/l,volatile", "/m"]);
        assert!(matches!(e, CliError::NeedsUpper("volatile")));
        assert_eq!(
            e.to_string(),
            "volatile needs upperdir and workdir: without an upper layer nothing is written"
        );
        assert!(matches!(
            error(&["-o", "lowerdir=/l,volatile=1,upperdir=/u,workdir=/w", "/m"]),
            CliError::BadValue { .. }
        ));
        assert!(matches!(
            error(&["-o", "lowerdir=/l,rw=1", "/m"]),
            CliError::BadValue { .. }
        ));
        assert!(matches!(error(&["-x", "/m"]), CliError::Usage(_)));
        assert!(matches!(error(&["--frob", "/m"]), CliError::Usage(_)));
        assert!(matches!(error(&["/m", "-o"]), CliError::Usage(_)));
        assert!(matches!(error(&["a", "b", "c"]), CliError::Usage(_)));
    }

    #[test]
    fn help_version_demo() {
        assert!(matches!(parse(["--help"]), Ok(Command::Help)));
        assert!(matches!(parse(["-h"]), Ok(Command::Help)));
        assert!(matches!(parse(["--version"]), Ok(Command::Version)));
        assert!(matches!(parse(["-V"]), Ok(Command::Version)));
        assert!(matches!(parse(["demo"]), Ok(Command::Demo { verbose: 0 })));
        assert!(matches!(
            parse(["-v", "demo"]),
            Ok(Command::Demo { verbose: 1 })
        ));
        // `demo` as the SOURCE of the helper form is not the subcommand.
        let o = mount(&["demo", "/mnt", "-o", "lowerdir=/l"]);
        assert_eq!(o.fsname, "demo");
    }

    #[test]
    fn error_lines_are_single_lines() {
        let e = CliError::Path {
            what: "lowerdir",
            path: PathBuf::from("/x"),
            err: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.to_string(), "lowerdir /x: No such file or directory");
        let e = CliError::Overlap {
            inner_what: "upperdir",
            inner: PathBuf::from("/l/u"),
            outer_what: "lowerdir",
            outer: PathBuf::from("/l"),
        };
        assert_eq!(e.to_string(), "upperdir /l/u is inside lowerdir /l");
    }

    #[test]
    fn validate_checks_paths() {
        let base = std::env::temp_dir().join(format!("stratafs-cli-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["l", "u", "w", "m", "l/inner"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("file"), b"x").unwrap();
        let opts = |lower: &str, upper: Option<&str>, work: Option<&str>, mnt: &str| {
            let mut o = Options::new(vec![base.join(lower)], base.join(mnt));
            o.upperdir = upper.map(|u| base.join(u));
            o.workdir = work.map(|w| base.join(w));
            o
        };
        let ok = validate(&opts("l", Some("u"), Some("w"), "m")).unwrap();
        assert_eq!(
            ok.lowerdirs[0],
            std::fs::canonicalize(base.join("l")).unwrap()
        );
        assert!(matches!(
            validate(&opts("nope", None, None, "m")),
            Err(CliError::Path { .. })
        ));
        assert!(matches!(
            validate(&opts("file", None, None, "m")),
            Err(CliError::NotADirectory { .. })
        ));
        assert!(matches!(
            validate(&opts("l", None, None, "file")),
            Err(CliError::NotADirectory { .. })
        ));
        for (l, u, w) in [
            ("l", "l/inner", "w"),
            ("l", "u", "l/inner"),
            ("l/inner", "l", "w"),
            ("l", "u", "u"),
            ("l", "l", "w"),
            ("l", "u", "u/../u"),
        ] {
            assert!(
                matches!(
                    validate(&opts(l, Some(u), Some(w), "m")),
                    Err(CliError::Overlap { .. })
                ),
                "{l} {u} {w}"
            );
        }
        std::fs::create_dir_all(base.join("w/work/incompat/volatile")).unwrap();
        let e = validate(&opts("l", Some("u"), Some("w"), "m")).unwrap_err();
        assert!(matches!(e, CliError::Incompat(_)));
        let mark = std::fs::canonicalize(base.join("w/work/incompat/volatile")).unwrap();
        assert!(e.to_string().contains(&mark.display().to_string()), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! Argv parsing: flags, positionals and the `-o` lists, split into items for `options`.

use super::options::apply_item;
use super::{CliError, Command};
use crate::options::Options;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::escape_path;
    use crate::options::{Driver, Passthrough, XattrNamespace};
    use std::ffi::OsStr;

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
}

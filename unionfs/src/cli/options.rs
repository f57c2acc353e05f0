//! The option table: what each `-o` item (`NAME` or `NAME=VALUE`) sets, and the escaping of
//! paths inside option values.

use super::CliError;
use crate::options::{Driver, Options, Passthrough, XattrNamespace};
use std::ffi::{OsStr, OsString};
use std::ops::RangeInclusive;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::str::FromStr;

/// Largest accepted `threads=N`; more would only waste memory (one 16 MiB buffer per thread).
const MAX_THREADS: usize = 256;

/// Largest accepted `timeout=SECS`: a year.
const MAX_TIMEOUT_SECS: u64 = 365 * 86400;

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

/// The value of a numeric option, if it parses and lies in `range`; a missing value
/// (`threads`) fails the same way as a bad one.
fn number<T: FromStr + PartialOrd>(
    option: &str,
    value: String,
    range: RangeInclusive<T>,
    reason: &'static str,
) -> Result<T, CliError> {
    match value.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(CliError::BadValue {
            option: option.to_string(),
            value,
            reason,
        }),
    }
}

pub(super) fn apply_item(
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
            let reason = "expected a number from 1 to 256";
            opts.threads = number("threads", value_str(), 1..=MAX_THREADS, reason)?;
            return Ok(());
        }
        b"timeout" => {
            let reason = "expected seconds from 0 to 31536000";
            opts.timeout_secs = number("timeout", value_str(), 0..=MAX_TIMEOUT_SECS, reason)?;
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

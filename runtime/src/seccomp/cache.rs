//! A cache of compiled filters: libseccomp takes some 15 ms to compile Docker's profile for
//! x86-64 and its 32-bit ABIs, more than the rest of a container's start-up. The BPF program
//! is a pure function of the profile's text, the capability set, the machine (arch, kernel)
//! and the compiler (this binary and libseccomp), so it is kept under a key hashing all of
//! them, in a directory only its owner may write (`$STRATA_CACHE_DIR`, else
//! /var/cache/strata/seccomp as root, `$XDG_CACHE_HOME/strata/seccomp` or
//! `~/.cache/strata/seccomp` otherwise). Any failure to read or write it just means compiling.

use super::{Filter, Insn};
use crate::state::create_private_dir;
use log::debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"strsecc1";

fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STRATA_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/strata/seccomp"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("strata/seccomp"))
}

/// The key of a compilation: everything the program depends on.
fn key(text: &str, caps: &[u32], machine: &str) -> String {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    caps.hash(&mut h);
    machine.hash(&mut h);
    // This very binary (a rebuild may compile differently) and its libseccomp.
    if let Ok(md) = std::env::current_exe().and_then(std::fs::metadata) {
        (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec()).hash(&mut h);
    }
    super::libseccomp_version().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn encode(f: &Filter) -> Vec<u8> {
    let skipped = f.skipped.join("\n");
    let mut out = Vec::with_capacity(20 + skipped.len() + f.program.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&f.flags.to_le_bytes());
    out.extend_from_slice(&(skipped.len() as u32).to_le_bytes());
    out.extend_from_slice(skipped.as_bytes());
    for i in &f.program {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Option<Filter> {
    let rest = b.strip_prefix(MAGIC)?;
    let u32_at =
        |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let flags = u32_at(rest, 0)?;
    let n = u32_at(rest, 4)? as usize;
    let skipped = std::str::from_utf8(rest.get(8..8 + n)?).ok()?;
    let prog = rest.get(8 + n..)?;
    if prog.is_empty() || prog.len() % 8 != 0 {
        return None;
    }
    let program = prog
        .chunks_exact(8)
        .map(|c| Insn {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(Filter {
        program,
        flags,
        skipped: skipped
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// The filter for (`text`, `caps`, `machine`) from the cache, or from `compile`, then kept.
pub fn get_or_compile<E>(
    text: &str,
    caps: &[u32],
    machine: &str,
    compile: impl FnOnce() -> Result<Filter, E>,
) -> Result<Filter, E> {
    let Some(dir) = dir() else {
        return compile();
    };
    let path = dir.join(key(text, caps, machine));
    if let Some(f) = std::fs::read(&path).ok().and_then(|b| decode(&b)) {
        debug!("seccomp: compiled filter from {}", path.display());
        return Ok(f);
    }
    let f = compile()?;
    if let Err(e) = store(&dir, &path, &f) {
        debug!("seccomp: not caching the filter in {}: {e}", dir.display());
    }
    Ok(f)
}

fn store(dir: &Path, path: &Path, f: &Filter) -> Result<(), String> {
    create_private_dir(dir).map_err(|e| e.to_string())?;
    // Written aside and renamed: a reader never sees half a program.
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(f))?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let f = Filter {
            program: vec![
                Insn {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                Insn {
                    code: 0x06,
                    jt: 1,
                    jf: 2,
                    k: 0x7fff_0000,
                },
            ],
            flags: 2,
            skipped: vec!["mseal".into(), "listmount".into()],
        };
        let b = encode(&f);
        let back = decode(&b).unwrap();
        assert_eq!(back.program, f.program);
        assert_eq!((back.flags, back.skipped.clone()), (2, f.skipped.clone()));
        assert!(decode(&b[..b.len() - 3]).is_none(), "a torn file is a miss");
        assert!(decode(b"garbage").is_none());
    }

    #[test]
    fn keys_differ_by_every_input() {
        let k = key("p", &[1, 2], "x86_64 6.1");
        assert_ne!(k, key("q", &[1, 2], "x86_64 6.1"));
        assert_ne!(k, key("p", &[1], "x86_64 6.1"));
        assert_ne!(k, key("p", &[1, 2], "x86_64 6.2"));
        assert_eq!(k, key("p", &[1, 2], "x86_64 6.1"));
    }
}

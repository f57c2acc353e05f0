//! Merged directory listings: each name once, from the topmost layer that has it, whiteouts and
//! OCI markers hidden. A listing is taken whole when a directory handle starts (or restarts) at
//! offset 0, so offsets are indices into a fixed list: `telldir`/`seekdir` stay valid while the
//! directory changes, as with the kernel's cached listing of merged directories.

use crate::layers::{LayerIdx, Layers};
use crate::sys;
use crate::whiteout;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;

#[derive(Debug, Clone)]
pub struct MergedEntry {
    pub name: OsString,
    pub ino: u64,
    /// `DT_*` type from the layer's listing.
    pub kind: u8,
}

/// Lists the directory `rel` merged from `dir_layers` (topmost first).
pub fn merged_list(
    layers: &Layers,
    rel: &OsStr,
    dir_layers: &[LayerIdx],
) -> io::Result<Vec<MergedEntry>> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    for (i, &l) in dir_layers.iter().enumerate() {
        let fd = match layers.open(l, rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            // A lower part may have been replaced by nothing: list what remains.
            Err(e) if i > 0 && crate::layers::is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let dirfd = layers.dir(l, rel)?;
        let entries = sys::read_dir(fd)?;
        let lower = !layers.is_upper(l);
        if lower {
            for e in &entries {
                if let Some(hidden) = whiteout::oci_hidden_name(&e.name) {
                    seen.insert(hidden.to_os_string());
                }
            }
        }
        let single = dir_layers.len() == 1;
        for e in entries {
            if lower && whiteout::is_oci_marker(&e.name) {
                continue;
            }
            if !single && seen.contains(&e.name) {
                continue;
            }
            if e.kind == libc::DT_CHR || e.kind == libc::DT_UNKNOWN {
                if let Ok(st) = sys::fstatat(dirfd.fd(), &e.name) {
                    if whiteout::is_whiteout(&st) {
                        seen.insert(e.name);
                        continue;
                    }
                }
            }
            if !single {
                seen.insert(e.name.clone());
            }
            out.push(MergedEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
            });
        }
    }
    Ok(out)
}

/// Whether the merged directory has no entry at all (rmdir and rename over it need that).
pub fn is_empty(layers: &Layers, rel: &OsStr, dir_layers: &[LayerIdx]) -> io::Result<bool> {
    Ok(merged_list(layers, rel, dir_layers)?.is_empty())
}

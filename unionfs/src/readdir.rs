//! Directory listings. A merged directory (several layers) is listed whole when a handle starts
//! (or restarts) at offset 0, each name once, whiteouts and OCI markers hidden; offsets are
//! indices into that list, so `telldir`/`seekdir` hold while the directory changes, as with the
//! kernel's cached listing of merged directories. A directory of one layer is read straight
//! from the layer with the layer's own offsets, as the kernel does for such "real" dirs.

use crate::layers::{LayerIdx, Layers};
use crate::sys;
use crate::whiteout;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;

#[derive(Debug, Clone)]
pub struct MergedEntry {
    pub name: OsString,
    pub ino: u64,
    /// `DT_*` type from the layer's listing.
    pub kind: u8,
}

/// Lists the directory `rel` merged from `dir_layers` (topmost first), in the kernel's order:
/// the lowest layer's entries first (in its own order, names also found above included), then
/// those only found in the layers above, in their order. That keeps offsets mostly stable.
pub fn merged_list(
    layers: &Layers,
    rel: &OsStr,
    dir_layers: &[LayerIdx],
) -> io::Result<Vec<MergedEntry>> {
    struct Slot {
        e: MergedEntry,
        hidden: bool,
        moved: bool,
    }
    let mut upper: Vec<Slot> = Vec::new();
    let mut index: HashMap<OsString, usize> = HashMap::new();
    let mut lowest: Vec<Slot> = Vec::new();
    let last = dir_layers.len().saturating_sub(1);
    for (i, &l) in dir_layers.iter().enumerate() {
        let entries = match read_layer_dir(layers, l, rel) {
            Ok(e) => e,
            // A lower part may have been replaced by nothing: list what remains.
            Err(e) if i > 0 && crate::layers::is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let is_lowest = i == last && i > 0;
        for (e, hidden) in entries {
            match index.get(&e.name) {
                Some(&at) if is_lowest && at != usize::MAX => {
                    if !upper[at].moved {
                        upper[at].moved = true;
                        lowest.push(Slot {
                            e: upper[at].e.clone(),
                            hidden: upper[at].hidden,
                            moved: false,
                        });
                    }
                }
                Some(_) => {}
                None if is_lowest => {
                    index.insert(e.name.clone(), usize::MAX);
                    lowest.push(Slot {
                        e,
                        hidden,
                        moved: false,
                    });
                }
                None => {
                    index.insert(e.name.clone(), upper.len());
                    upper.push(Slot {
                        e,
                        hidden,
                        moved: false,
                    });
                }
            }
        }
    }
    Ok(lowest
        .into_iter()
        .chain(upper.into_iter().filter(|s| !s.moved))
        .filter(|s| !s.hidden)
        .map(|s| s.e)
        .collect())
}

/// One layer's directory: every entry with whether it hides its name (a whiteout, or a name
/// an OCI marker of this layer hides). OCI markers themselves are dropped.
fn read_layer_dir(
    layers: &Layers,
    l: LayerIdx,
    rel: &OsStr,
) -> io::Result<Vec<(MergedEntry, bool)>> {
    let fd = layers.open(l, rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let dirfd = layers.dir(l, rel)?;
    let entries = sys::read_dir(fd)?;
    let lower = !layers.is_upper(l);
    let mut oci_hidden: HashSet<OsString> = HashSet::new();
    if lower {
        for e in &entries {
            if let Some(h) = whiteout::oci_hidden_name(&e.name) {
                oci_hidden.insert(h.to_os_string());
            }
        }
    }
    let mut out = Vec::with_capacity(entries.len() + oci_hidden.len());
    let xwh = layers.has_xwhiteouts(dirfd.fd());
    for e in entries {
        if lower && whiteout::is_oci_marker(&e.name) {
            continue;
        }
        let hidden = oci_hidden.remove(&e.name) || is_listed_whiteout(layers, dirfd.fd(), xwh, &e);
        out.push((
            MergedEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
            },
            hidden,
        ));
    }
    // Names an OCI marker hides without an entry of their own in this layer.
    for name in oci_hidden {
        out.push((
            MergedEntry {
                name,
                ino: 0,
                kind: libc::DT_UNKNOWN,
            },
            true,
        ));
    }
    Ok(out)
}

/// Whether a listed entry is a whiteout: a 0/0 device, or (in a directory marked as holding
/// them) an xattr whiteout, as the kernel checks in listings.
fn is_listed_whiteout(layers: &Layers, dir: BorrowedFd, xwh: bool, e: &sys::DirEntry) -> bool {
    let maybe =
        e.kind == libc::DT_CHR || e.kind == libc::DT_UNKNOWN || (xwh && e.kind == libc::DT_REG);
    maybe
        && sys::fstatat(dir, &e.name)
            .map(|st| {
                whiteout::is_whiteout(&st) || (xwh && layers.is_whiteout_at(dir, &e.name, &st))
            })
            .unwrap_or(false)
}

/// Whether a real directory entry is shown: whiteouts and (in a lower layer) OCI markers are
/// not.
pub fn shown(layers: &Layers, dir: BorrowedFd, lower: bool, xwh: bool, e: &sys::RawDirent) -> bool {
    if lower && whiteout::is_oci_marker(&e.name) {
        return false;
    }
    let entry = sys::DirEntry {
        name: e.name.clone(),
        ino: e.ino,
        kind: e.kind,
    };
    !is_listed_whiteout(layers, dir, xwh, &entry)
}

/// Whether the merged directory has no entry at all (rmdir and rename over it need that).
pub fn is_empty(layers: &Layers, rel: &OsStr, dir_layers: &[LayerIdx]) -> io::Result<bool> {
    Ok(merged_list(layers, rel, dir_layers)?.is_empty())
}

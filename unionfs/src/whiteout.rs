//! Whiteouts and opaque directories, in the kernel's format (a 0/0 character device; the
//! `overlay.opaque` xattr set to "y") and, read-only, the OCI image format (`.wh.NAME` files and
//! a `.wh..wh..opq` file) found in layers unpacked by image tools.

use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

pub const OCI_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &str = ".wh..wh..opq";

/// A whiteout is a character device with device number 0/0.
pub fn is_whiteout(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Names that are OCI markers, never shown from a lower layer.
pub fn is_oci_marker(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_PREFIX)
}

/// For an OCI marker `.wh.NAME`, the name it hides (`None` for the opaque marker).
pub fn oci_hidden_name(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if name == OCI_OPAQUE || !b.starts_with(OCI_PREFIX) {
        return None;
    }
    Some(OsStr::from_bytes(&b[OCI_PREFIX.len()..]))
}

/// The OCI whiteout `.wh.NAME` that would hide `name` (`None`: too long to exist).
pub fn oci_marker(name: &OsStr) -> Option<OsString> {
    let mut marker = Vec::with_capacity(OCI_PREFIX.len() + name.len());
    marker.extend_from_slice(OCI_PREFIX);
    marker.extend_from_slice(name.as_bytes());
    (marker.len() <= 255).then(|| OsString::from_vec(marker))
}

/// Whether `dir` holds an OCI whiteout `.wh.NAME` for `name`.
pub fn has_oci_whiteout(dir: BorrowedFd, name: &OsStr) -> bool {
    oci_marker(name).is_some_and(|m| sys::fstatat(dir, &m).is_ok())
}

/// Whether the directory behind `fd` is opaque: the overlay xattr, or (in a lower layer) the OCI
/// marker inside it.
pub fn is_opaque_dir(fd: BorrowedFd, opaque_xattr: &OsStr, lower: bool) -> bool {
    if let Ok(v) = sys::fgetxattr(fd, opaque_xattr) {
        if v == b"y" {
            return true;
        }
    }
    lower && sys::fstatat(fd, OsStr::new(OCI_OPAQUE)).is_ok()
}

pub fn set_opaque(fd: BorrowedFd, opaque_xattr: &OsStr) -> io::Result<()> {
    sys::fsetxattr(fd, opaque_xattr, b"y", 0)
}

/// Creates a whiteout named `name` in `dir`.
pub fn make_whiteout(dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    sys::mknodat(dir, name, libc::S_IFCHR, sys::makedev(0, 0))
}

/// Overlay's on-disk "origin" of a copied-up entry: the kernel's `struct ovl_fb` (version 0,
/// magic 0xfb, length, flags, handle type, filesystem uuid, handle). The uuid is left null, as
/// the kernel writes it when every layer is on one filesystem.
pub fn encode_origin(htype: i32, handle: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(21 + handle.len());
    let flags: u8 = if cfg!(target_endian = "big") { 1 } else { 0 };
    v.extend_from_slice(&[0, 0xfb, (21 + handle.len()) as u8, flags, htype as u8]);
    v.extend_from_slice(&[0u8; 16]);
    v.extend_from_slice(handle);
    v
}

/// The handle type and bytes of an origin xattr, if it is well formed.
pub fn decode_origin(v: &[u8]) -> Option<(i32, &[u8])> {
    if v.len() < 21 || v[0] != 0 || v[1] != 0xfb || v[2] as usize != v.len() {
        return None;
    }
    Some((v[4] as i32, &v[21..]))
}

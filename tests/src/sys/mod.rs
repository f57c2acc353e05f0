//! The only home of `unsafe` in the e2e crate: safe wrappers around the raw syscalls the
//! harness and the tests make, one module per family, plus C strings and errno conversion.
//! Every wrapper keeps the raw call's semantics (flags as given, O_CLOEXEC where the callers
//! always added it, the errno of the failing call).

use crate::*;
use std::ffi::CString;
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

mod dir;
mod file;
mod mount;
mod process;

pub use dir::*;
pub use file::*;
pub use mount::*;
pub use process::*;

pub(crate) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL byte in path")
}

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).expect("NUL byte in string")
}

pub(crate) fn cvt(ret: libc::c_int) -> R<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cvt_l(ret: libc::c_long) -> R<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cvt_s(ret: isize) -> R<isize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub(crate) fn hash_bytes(h: &mut std::collections::hash_map::DefaultHasher, b: &[u8]) {
    h.write(b);
}

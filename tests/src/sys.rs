//! Small helpers: C strings and errno conversion for the raw syscalls.

use crate::*;
use std::ffi::CString;
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

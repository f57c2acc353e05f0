//! A libc directory stream (opendir/readdir/telldir/seekdir/rewinddir).

use crate::*;
use std::path::Path;

/// A directory stream of libc (opendir/readdir/telldir/seekdir/rewinddir).
pub struct LibcDir(*mut libc::DIR);

impl LibcDir {
    pub fn open(p: impl AsRef<Path>) -> R<LibcDir> {
        let c = cpath(p.as_ref());
        // SAFETY: a NUL-terminated path.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() {
            Err(Errno::last())
        } else {
            Ok(LibcDir(d))
        }
    }

    /// Next name (including "." and ".."), None at the end.
    pub fn next_name(&mut self) -> Option<String> {
        // SAFETY: self.0 is an open stream (closed only in Drop); a non-NULL entry and its
        // NUL-terminated d_name stay valid until the next readdir on this stream, and the
        // name is copied out before that.
        unsafe {
            let e = libc::readdir(self.0);
            if e.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            Some(name.to_string_lossy().into_owned())
        }
    }

    /// Up to n names, skipping "." and "..".
    pub fn take(&mut self, n: usize) -> Vec<String> {
        let mut v = Vec::new();
        while v.len() < n {
            match self.next_name() {
                Some(x) if x == "." || x == ".." => continue,
                Some(x) => v.push(x),
                None => break,
            }
        }
        v
    }

    pub fn rest(&mut self) -> Vec<String> {
        self.take(usize::MAX)
    }

    pub fn tell(&mut self) -> i64 {
        // SAFETY: self.0 is an open stream.
        unsafe { libc::telldir(self.0) as i64 }
    }

    pub fn seek(&mut self, pos: i64) {
        // SAFETY: self.0 is an open stream.
        unsafe { libc::seekdir(self.0, pos as libc::c_long) }
    }

    pub fn rewind(&mut self) {
        // SAFETY: self.0 is an open stream.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for LibcDir {
    fn drop(&mut self) {
        // SAFETY: self.0 is an open stream, closed exactly once here.
        unsafe { libc::closedir(self.0) };
    }
}

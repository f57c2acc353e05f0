//! Scratch directories for the tests that drive the binaries directly (without a [`Pair`]).

use crate::procfs::mount_points;
use crate::sys::umount2;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A unique directory under the temp dir, `{kind}-{name}-{pid}-{n}` (canonical); on drop,
/// lazily unmounts anything still mounted below it (a failed test must not leave mounts
/// behind), innermost first, and removes it.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(kind: &str, name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{kind}-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch {
            root: std::fs::canonicalize(&dir).unwrap(),
        }
    }

    /// `rel` below the root (not created).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// The directory `rel` below the root, created with its parents.
    pub fn dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// The file `rel` below the root, written with `data`.
    pub fn file(&self, rel: impl AsRef<Path>, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut below: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.root))
            .collect();
        below.reverse();
        for m in below {
            let _ = umount2(&m, libc::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Panics unless running as root (the tests that mount filesystems).
pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount filesystems and must run as root"
    );
}

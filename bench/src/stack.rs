//! The deterministic layer stack: a tree resembling a container image spread over 4 layers
//! (some files shadowed, some whited out, a few opaque directories), a big file, a directory
//! of many entries merged from 3 layers, files to copy up, a tarball to unpack and a deep
//! stack of 50 layers. The same seed always gives the same bytes.

use crate::sys::{self, ctx, Result};
use fastrand::Rng;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Sizes of everything; `full()` is the stack, `quick()` a tenth of it for smoke runs.
#[derive(Debug, Clone)]
pub struct Scale {
    pub name: &'static str,
    /// Top-level directories of the tree, and leaf directories under each.
    pub top_dirs: usize,
    pub leaf_dirs: usize,
    /// Files per leaf directory, on average.
    pub files_per_dir: usize,
    pub big_file_mib: u64,
    pub copyup_file_mib: u64,
    pub bigdir_entries: usize,
    pub append_files: usize,
    pub create_files: usize,
    pub tar_files: usize,
    pub deep_layers: usize,
    pub deep_files: usize,
    /// fio time for each random-read job, seconds.
    pub fio_seconds: u32,
    /// Size of the ext4 image, GiB (sparse).
    pub image_gib: u64,
}

impl Scale {
    pub fn full() -> Scale {
        Scale {
            name: "full",
            top_dirs: 30,
            leaf_dirs: 100,
            files_per_dir: 10,
            big_file_mib: 1024,
            copyup_file_mib: 256,
            bigdir_entries: 10_000,
            append_files: 1_000,
            create_files: 10_000,
            tar_files: 6_000,
            deep_layers: 50,
            deep_files: 2_000,
            fio_seconds: 5,
            image_gib: 8,
        }
    }

    pub fn quick() -> Scale {
        Scale {
            name: "quick",
            top_dirs: 10,
            leaf_dirs: 30,
            files_per_dir: 10,
            big_file_mib: 64,
            copyup_file_mib: 32,
            bigdir_entries: 1_000,
            append_files: 100,
            create_files: 1_000,
            tar_files: 600,
            deep_layers: 50,
            deep_files: 200,
            fio_seconds: 1,
            image_gib: 3,
        }
    }
}

/// Relative paths inside the merged tree that the workloads use.
pub const BIG_FILE: &str = "data/big.bin";
pub const COPYUP_FILE: &str = "data/copyup.bin";
pub const SMALL_FILE: &str = "data/small4k.bin";
pub const BIGDIR: &str = "data/bigdir";
pub const APPEND_DIR: &str = "data/append";
pub const DEEP_DIR: &str = "d";

/// What was built, with counts for the report.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Main stack layers, topmost first (the order of `lowerdir=`).
    pub layers: Vec<PathBuf>,
    /// Deep stack layers, topmost first; the files to look up are in the last one.
    pub deep_layers: Vec<PathBuf>,
    /// Tarball of `tar_files` files to unpack into the mount.
    pub tarball: PathBuf,
    pub stats: StackStats,
}

#[derive(Debug, Clone, Default)]
pub struct StackStats {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub shadowed: usize,
    pub whiteouts: usize,
    pub opaque_dirs: usize,
    pub bytes: u64,
}

impl Stack {
    /// Layers of the deep stack holding its bottom `n` layers (the bottom one included).
    pub fn deep(&self, n: usize) -> Vec<PathBuf> {
        let all = &self.deep_layers;
        all[all.len() - n.min(all.len())..].to_vec()
    }

    /// Names of the files in the bottom of the deep stack, relative to its root.
    pub fn deep_files(scale: &Scale) -> Vec<String> {
        (0..scale.deep_files)
            .map(|k| format!("{DEEP_DIR}/b{k:05}"))
            .collect()
    }
}

/// Writes files with deterministic contents taken from one random buffer.
struct Writer {
    buf: Vec<u8>,
    rng: Rng,
    stats: StackStats,
}

impl Writer {
    fn file(&mut self, path: &Path, len: usize) -> Result<()> {
        if let Some(parent) = path.parent() {
            ctx(parent.display(), fs::create_dir_all(parent))?;
        }
        let mut f = ctx(path.display(), fs::File::create(path))?;
        let mut left = len;
        while left > 0 {
            let start = self.rng.u64(..(self.buf.len() / 2) as u64) as usize;
            let n = left.min(self.buf.len() - start);
            ctx(path.display(), f.write_all(&self.buf[start..start + n]))?;
            left -= n;
        }
        self.stats.bytes += len as u64;
        Ok(())
    }

    /// A size drawn from a container-image-like mix: mostly small, a few large.
    fn size(&mut self) -> usize {
        match self.rng.u64(..100) {
            0..=74 => self.rng.u64(..2048) as usize,
            75..=96 => 2048 + self.rng.u64(..30 * 1024) as usize,
            _ => 32 * 1024 + self.rng.u64(..224 * 1024) as usize,
        }
    }
}

/// A whiteout: the character device 0/0 that hides a lower entry.
pub fn whiteout(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        ctx(parent.display(), fs::create_dir_all(parent))?;
    }
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o000),
        0,
    )
    .map_err(|e| format!("mknod {}: {e} (whiteouts need root)", path.display()))
}

pub fn set_opaque(dir: &Path) -> Result<()> {
    let p = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    sys::setxattr(&p, c"trusted.overlay.opaque", b"y")
        .map_err(|e| format!("setxattr trusted.overlay.opaque on {}: {e}", dir.display()))
}

/// Builds the whole stack under `root` (on the loop-mounted image).
pub fn build(root: &Path, scale: &Scale) -> Result<Stack> {
    let mut rng = Rng::with_seed(0x5354_5241_5441);
    let mut buf = vec![0u8; 1 << 20];
    for chunk in buf.chunks_mut(8) {
        let v = rng.u64(..).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let mut w = Writer {
        buf,
        rng,
        stats: StackStats::default(),
    };
    // Bottom first: layer 0 is the base image, layer 3 the top.
    let layer = |i: usize| root.join(format!("layers/l{i}"));
    for i in 0..4 {
        ctx("layer dir", fs::create_dir_all(layer(i)))?;
    }

    build_tree(&mut w, &layer, scale)?;

    // data/: the files the I/O and copy-up workloads use.
    w.file(
        &layer(0).join(BIG_FILE),
        (scale.big_file_mib << 20) as usize,
    )?;
    w.file(
        &layer(1).join(COPYUP_FILE),
        (scale.copyup_file_mib << 20) as usize,
    )?;
    w.file(&layer(2).join(SMALL_FILE), 4096)?;
    for i in 0..scale.append_files {
        w.file(&layer(0).join(format!("{APPEND_DIR}/a{i:05}")), 1024)?;
    }
    // A directory of many entries merged from 3 layers, 2% of names shadowed.
    for i in 0..scale.bigdir_entries {
        let name = format!("{BIGDIR}/e{i:05}");
        w.file(&layer(i % 3).join(&name), 100)?;
        if i % 50 == 0 {
            w.file(&layer((i + 1) % 3).join(&name), 100)?;
        }
    }

    // The deep stack: every layer has the directory `d` (so it merges through all of them)
    // with a few files of its own; the bottom one holds the files looked up.
    let deep_root = root.join("deep");
    let mut deep_layers = Vec::new();
    for i in 0..scale.deep_layers {
        let l = deep_root.join(format!("l{i:02}"));
        for k in 0..20 {
            w.file(&l.join(format!("{DEEP_DIR}/l{i:02}_{k:02}")), 64)?;
        }
        deep_layers.push(l);
    }
    let bottom = deep_layers.last().cloned().unwrap_or_default();
    for name in Stack::deep_files(scale) {
        w.file(&bottom.join(name), 64)?;
    }

    // The tarball: a tree of tar_files files in directories of 20.
    let src = root.join("tar-src");
    for i in 0..scale.tar_files {
        let size = w.size();
        w.file(
            &src.join(format!("t{:03}/f{:05}", i / 20, i)),
            size.min(16 * 1024),
        )?;
    }
    let tarball = root.join("untar.tar");
    crate::sys::run(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg("."),
    )?;
    ctx("removing tar-src", fs::remove_dir_all(&src))?;

    let mut layers: Vec<PathBuf> = (0..4).map(layer).collect();
    layers.reverse();
    Ok(Stack {
        layers,
        deep_layers,
        tarball,
        stats: w.stats,
    })
}

/// The tree: `tree/dTT/sLLL/...` leaf directories with files spread over the 4 layers.
fn build_tree(w: &mut Writer, layer: &dyn Fn(usize) -> PathBuf, scale: &Scale) -> Result<()> {
    for t in 0..scale.top_dirs {
        for l in 0..scale.leaf_dirs {
            let dir = format!("tree/d{t:02}/s{l:03}");
            w.stats.dirs += 1;
            let fate = w.rng.u64(..200);
            // 1 in 200 leaf directories is replaced by an opaque one in the top layer.
            let opaque = fate == 0;
            let n = scale.files_per_dir / 2 + w.rng.u64(..scale.files_per_dir as u64 + 1) as usize;
            for k in 0..n {
                let name = format!("{dir}/f{k:03}");
                // 55% base layer, then 20/15/10% in the layers above.
                let home = match w.rng.u64(..100) {
                    0..=54 => 0,
                    55..=74 => 1,
                    75..=89 => 2,
                    _ => 3,
                };
                let path = layer(home).join(&name);
                if w.rng.u64(..100) < 4 {
                    if let Some(parent) = path.parent() {
                        ctx(parent.display(), fs::create_dir_all(parent))?;
                    }
                    let target = format!("f{:03}", w.rng.u64(..n as u64));
                    ctx(path.display(), std::os::unix::fs::symlink(&target, &path))?;
                    w.stats.symlinks += 1;
                } else {
                    let size = w.size();
                    w.file(&path, size)?;
                    w.stats.files += 1;
                }
                // 15% of the files above the base also exist, older, in a lower layer.
                if home > 0 && w.rng.u64(..100) < 15 {
                    let below = w.rng.u64(..home as u64) as usize;
                    let size = w.size();
                    w.file(&layer(below).join(&name), size)?;
                    w.stats.shadowed += 1;
                }
                // 3% of the files in the two lower layers are deleted by a whiteout above.
                if home < 2 && w.rng.u64(..100) < 3 {
                    let above = 2 + w.rng.u64(..2) as usize;
                    let wh = layer(above).join(&name);
                    if !wh.exists() && fs::symlink_metadata(&wh).is_err() {
                        whiteout(&wh)?;
                        w.stats.whiteouts += 1;
                    }
                }
            }
            if opaque {
                let top = layer(3).join(&dir);
                // Whatever the top layer had there goes; an opaque directory with 3 files.
                if top.exists() {
                    ctx(top.display(), fs::remove_dir_all(&top))?;
                }
                for k in 0..3 {
                    w.file(&top.join(format!("o{k}")), 100)?;
                }
                set_opaque(&top)?;
                w.stats.opaque_dirs += 1;
            }
        }
    }
    Ok(())
}

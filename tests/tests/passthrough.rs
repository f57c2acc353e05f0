//! FUSE passthrough (stratafs as root): the kernel serves reads and writes of opened files from
//! the layer file. With `passthrough=upper` (the default) the results must be the kernel
//! overlay's, checked side by side here for the cases where the choice of backing file matters:
//! a reader opened on a lower file while another open copies it up, mixed opens of one file, an
//! mmap. With `passthrough=all` a lower file opened read-only passes through too, and while it
//! is open, writers and truncations get ETXTBSY; the lower layer is never written.
//!
//! Runs as root against the real binary: `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

use e2e::{kernel_mount_with, stratafs_bin, sys, unmount, Errno, Scratch};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const LOWER: &[u8] = b"lower data, long enough to be read in two parts\n";

struct Stack {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    /// Unmounts what is left and removes the directories on drop (after `Stack`'s own drop).
    _scratch: Scratch,
}

impl Stack {
    fn new(tag: &str) -> Stack {
        let scratch = Scratch::new("e2e-passthrough", tag);
        let s = Stack {
            lower: scratch.dir("l"),
            upper: scratch.dir("u"),
            work: scratch.dir("w"),
            mnt: scratch.dir("m"),
            _scratch: scratch,
        };
        fs::write(s.lower.join("f"), LOWER).unwrap();
        fs::write(s.lower.join("g"), LOWER).unwrap();
        s
    }

    fn mount_kernel(&self) {
        kernel_mount_with(
            std::slice::from_ref(&self.lower),
            Some((&self.upper, &self.work)),
            &[],
            &self.mnt,
        )
        .unwrap();
    }

    fn mount_strata(&self, extra: &str) {
        let st = Command::new(stratafs_bin())
            .arg("-o")
            .arg(format!(
                "driver=fuse,lowerdir={},upperdir={},workdir={}{extra}",
                self.lower.display(),
                self.upper.display(),
                self.work.display()
            ))
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "stratafs mount failed");
    }

    fn p(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = unmount(&self.mnt);
    }
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// What a program sees through `mnt` in the cases where the backing file matters.
fn scenario(s: &Stack) -> Vec<String> {
    let mut seen = Vec::new();
    // A reader of the lower file, then a writer copying it up and writing.
    let mut reader = File::open(s.p("f")).unwrap();
    let mut half = vec![0u8; 10];
    reader.read_exact(&mut half).unwrap();
    let writer = OpenOptions::new().write(true).open(s.p("f")).unwrap();
    writer.write_all_at(b"WRITTEN", 0).unwrap();
    writer.write_all_at(b"TAIL", LOWER.len() as u64).unwrap();
    // A third open while both are open, then the reader again.
    let mut third = File::open(s.p("f")).unwrap();
    seen.push(format!(
        "third: {:?}",
        String::from_utf8_lossy(&read_all(&mut third))
    ));
    seen.push(format!(
        "reader: {:?}",
        String::from_utf8_lossy(&read_all(&mut reader))
    ));
    drop((reader, writer, third));
    seen.push(format!(
        "after: {:?}",
        String::from_utf8_lossy(&fs::read(s.p("f")).unwrap())
    ));
    // A file created through the mount, written by one open, read and appended by others.
    let mut c = File::create(s.p("new")).unwrap();
    c.write_all(b"created").unwrap();
    let mut r = File::open(s.p("new")).unwrap();
    seen.push(format!(
        "new while open: {:?}",
        String::from_utf8_lossy(&read_all(&mut r))
    ));
    let mut a = OpenOptions::new().append(true).open(s.p("new")).unwrap();
    a.write_all(b"+appended").unwrap();
    seen.push(format!(
        "new appended: {:?}",
        String::from_utf8_lossy(&read_all(&mut r))
    ));
    seen.push(format!(
        "new size: {}",
        fs::metadata(s.p("new")).unwrap().len()
    ));
    drop((c, r, a));
    // Truncation by path while a reader is open.
    let mut r = File::open(s.p("g")).unwrap();
    let t = OpenOptions::new().write(true).open(s.p("g")).unwrap();
    t.set_len(5).unwrap();
    seen.push(format!(
        "g truncated: {:?}",
        String::from_utf8_lossy(&read_all(&mut r))
    ));
    drop((r, t));
    seen.push(format!("g size: {}", fs::metadata(s.p("g")).unwrap().len()));
    seen
}

#[test]
fn default_passthrough_shows_what_the_kernel_overlay_shows() {
    let k = Stack::new("kernel");
    k.mount_kernel();
    let want = scenario(&k);
    unmount(&k.mnt).unwrap();
    let s = Stack::new("strata");
    s.mount_strata("");
    let got = scenario(&s);
    unmount(&s.mnt).unwrap();
    assert_eq!(got, want);
    // Same upper contents, lower untouched.
    for name in ["f", "g", "new"] {
        assert_eq!(
            fs::read(s.upper.join(name)).unwrap(),
            fs::read(k.upper.join(name)).unwrap(),
            "upper {name}"
        );
    }
    for l in [&s.lower, &k.lower] {
        assert_eq!(fs::read(l.join("f")).unwrap(), LOWER);
        assert_eq!(fs::read(l.join("g")).unwrap(), LOWER);
    }
}

#[test]
fn mmap_of_a_passed_through_file_writes_the_upper_copy() {
    let s = Stack::new("mmap");
    s.mount_strata("");
    let path = s.p("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let len = LOWER.len();
    assert_eq!(
        sys::mmap_shared_write(std::os::fd::AsRawFd::as_raw_fd(&f), len, 0, b"MAPPED"),
        Ok(())
    );
    drop(f);
    let mut want = LOWER.to_vec();
    want[..6].copy_from_slice(b"MAPPED");
    assert_eq!(fs::read(&path).unwrap(), want);
    unmount(&s.mnt).unwrap();
    assert_eq!(fs::read(s.upper.join("f")).unwrap(), want);
    assert_eq!(fs::read(s.lower.join("f")).unwrap(), LOWER);
}

#[test]
fn passthrough_all_refuses_writers_while_a_lower_reader_is_open() {
    let s = Stack::new("all");
    s.mount_strata(",passthrough=all");
    let mut reader = File::open(s.p("f")).unwrap();
    let mut reader2 = File::open(s.p("f")).unwrap();
    assert_eq!(read_all(&mut reader), LOWER);
    assert_eq!(read_all(&mut reader2), LOWER);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(s.p("f"))),
        libc::ETXTBSY
    );
    assert_eq!(
        errno(OpenOptions::new().append(true).open(s.p("f"))),
        libc::ETXTBSY
    );
    assert_eq!(
        errno(OpenOptions::new().write(true).truncate(true).open(s.p("f"))),
        libc::ETXTBSY
    );
    assert_eq!(sys::truncate(s.p("f"), 3), Err(Errno::ETXTBSY));
    // Nothing was copied up, the lower file is intact, other files are not held.
    assert!(!s.upper.join("f").exists());
    assert_eq!(fs::read(s.lower.join("f")).unwrap(), LOWER);
    fs::write(s.p("g"), b"g rewritten").unwrap();
    drop((reader, reader2));
    // Once the readers are gone the file is written (copied up) as usual.
    let w = OpenOptions::new().write(true).open(s.p("f")).unwrap();
    w.write_all_at(b"NEW", 0).unwrap();
    drop(w);
    let mut want = LOWER.to_vec();
    want[..3].copy_from_slice(b"NEW");
    assert_eq!(fs::read(s.p("f")).unwrap(), want);
    // A reader of the copy does not hold writers back.
    let mut r = File::open(s.p("f")).unwrap();
    fs::write(s.p("f"), b"short").unwrap();
    assert_eq!(read_all(&mut r), b"short");
    drop(r);
    unmount(&s.mnt).unwrap();
    assert_eq!(fs::read(s.lower.join("f")).unwrap(), LOWER);
    assert_eq!(fs::read(s.lower.join("g")).unwrap(), LOWER);
    assert_eq!(fs::read(s.upper.join("f")).unwrap(), b"short");
    assert_eq!(fs::read(s.upper.join("g")).unwrap(), b"g rewritten");
}

#[test]
fn bad_passthrough_value_is_a_one_line_error() {
    let s = Stack::new("bad");
    let out = Command::new(stratafs_bin())
        .arg("-o")
        .arg(format!(
            "driver=fuse,lowerdir={},passthrough=maybe",
            s.lower.display()
        ))
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("passthrough"), "{err}");
    let _ = Path::new(&s.mnt);
}

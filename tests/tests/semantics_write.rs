//! Copy-up triggers and what copy-up preserves, allocation of new objects in the upper layer,
//! write semantics, setuid/setgid clearing, timestamps, fsync.

#![deny(unsafe_code)]

use e2e::*;
use std::path::Path;

fn copy_up_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .dir("dir")
                .mode(0o751)
                .owner(1000, 1001)
                .xattr("user.dirattr", "d")
                .file("dir/f", "lower content\n")
                .mode(0o640)
                .owner(1000, 1001)
                .xattr("user.a", "1")
                .xattr("user.b", "two")
                .file("dir/other", "untouched"),
        )
        .lower(Layer::new().dir("dir").file("dir/below", "b"))
}

/// Applies `trigger` to the lower file "dir/f" and compares everything copy-up is about.
/// `expect_copied`: the kernel is expected to have copied the file up (sanity of the scenario).
fn copy_up_case<T: PartialEq + std::fmt::Debug>(
    name: &str,
    expect_copied: bool,
    trigger: impl Fn(&Path) -> T,
) {
    let pair = Pair::new(name, &copy_up_layers());
    let ino_before = pair.both(|s| ino(s.m("dir/f")).expect("ino"));
    let dir_ino_before = pair.both(|s| ino(s.m("dir")).expect("ino"));
    pair.step(|r| trigger(r));
    let copied = pair.get_ctx(|s| exists(s.u("dir/f")));
    assert_eq!(
        copied, expect_copied,
        "kernel copy-up expectation for {name}"
    );
    pair.step(|r| lstat(r.join("dir/f")));
    pair.step(|r| read(r.join("dir/f")));
    pair.step(|r| listxattr(r.join("dir/f")));
    pair.step(|r| {
        (
            getxattr(r.join("dir/f"), "user.a"),
            getxattr(r.join("dir/f"), "user.b"),
        )
    });
    // mtime preserved by copy-up (unless the trigger changes it): compared as a relation.
    pair.step(|r| mtime(r.join("dir/f")).map(|t| t == FIXED_TIME));
    pair.step(|r| mtime(r.join("dir")).map(|t| t == FIXED_TIME));
    // The parent was copied up with its metadata; the sibling was not.
    pair.step_ctx(|s| {
        (
            lstat(s.u("dir")),
            exists(s.u("dir/other")),
            exists(s.u("dir/below")),
        )
    });
    pair.step(|r| readdir(r.join("dir")));
    pair.check_uppers();
    // st_ino relations (last, so that a failure here does not hide the checks above).
    pair.step_with(&ino_before, |s, i| ino(s.m("dir/f")).map(|n| n == *i));
    pair.step_with(&dir_ino_before, |s, i| ino(s.m("dir")).map(|n| n == *i));
    pair.finish();
}

#[test]
fn copy_up_on_open_wronly() {
    copy_up_case("cu_wronly", true, |r| {
        open_close(r.join("dir/f"), libc::O_WRONLY, 0)
    });
}

#[test]
fn copy_up_on_open_rdwr() {
    copy_up_case("cu_rdwr", true, |r| {
        open_close(r.join("dir/f"), libc::O_RDWR, 0)
    });
}

#[test]
fn copy_up_on_open_append() {
    copy_up_case("cu_append", true, |r| append(r.join("dir/f"), "appended\n"));
}

#[test]
fn copy_up_on_open_trunc() {
    copy_up_case("cu_trunc", true, |r| {
        open_close(r.join("dir/f"), libc::O_WRONLY | libc::O_TRUNC, 0)
    });
}

#[test]
fn copy_up_on_write() {
    copy_up_case("cu_write", true, |r| write_at(r.join("dir/f"), 2, "XY"));
}

#[test]
fn copy_up_on_truncate() {
    copy_up_case("cu_truncate", true, |r| truncate(r.join("dir/f"), 5));
}

#[test]
fn copy_up_on_chmod() {
    copy_up_case("cu_chmod", true, |r| chmod(r.join("dir/f"), 0o604));
}

#[test]
fn copy_up_on_chown() {
    copy_up_case("cu_chown", true, |r| chown(r.join("dir/f"), 2000, 2001));
}

#[test]
fn copy_up_on_utimensat() {
    copy_up_case("cu_utimens", true, |r| {
        (
            utimens(r.join("dir/f"), Ts::At(1_000_000_000, 5), Ts::Omit),
            atime(r.join("dir/f")),
            mtime(r.join("dir/f")),
        )
    });
}

#[test]
fn copy_up_on_setxattr() {
    copy_up_case("cu_setxattr", true, |r| {
        setxattr(r.join("dir/f"), "user.c", "three", 0)
    });
}

#[test]
fn copy_up_on_removexattr() {
    copy_up_case("cu_rmxattr", true, |r| {
        removexattr(r.join("dir/f"), "user.a")
    });
}

#[test]
fn copy_up_on_link() {
    copy_up_case("cu_link", true, |r| {
        (
            link(r.join("dir/f"), r.join("dir/f_link")),
            lstat(r.join("dir/f_link")),
            read(r.join("dir/f_link")),
        )
    });
}

#[test]
fn open_for_read_does_not_copy_up() {
    let layers = copy_up_layers().lower(
        Layer::new()
            .symlink("lnk", "dir/f")
            .fifo("fifo")
            .dir("emptydir")
            .file("dir/deep/er/file", "x"),
    );
    let pair = Pair::new("nocu", &layers);
    pair.step(|r| (lstat(r.join("dir/f")), stat(r.join("lnk")), lstat(r)));
    pair.step(|r| read(r.join("dir/f")));
    pair.step(|r| read(r.join("lnk")));
    pair.step(|r| readlink(r.join("lnk")));
    pair.step(|r| {
        (
            readdir(r),
            readdir(r.join("dir")),
            readdir(r.join("emptydir")),
            readdir(r.join("dir/deep/er")),
        )
    });
    pair.step(|r| {
        (
            listxattr(r.join("dir/f")),
            getxattr(r.join("dir/f"), "user.a"),
            getxattr(r.join("dir"), "user.x"),
        )
    });
    pair.step(|r| {
        (
            access(r.join("dir/f"), libc::R_OK),
            access(r.join("dir/f"), libc::W_OK),
        )
    });
    pair.step(|r| open_close(r.join("dir/f"), libc::O_RDONLY, 0));
    pair.step(|r| open_close(r.join("dir/f"), libc::O_PATH, 0));
    pair.step(|r| open_close(r.join("fifo"), libc::O_RDONLY | libc::O_NONBLOCK, 0));
    pair.step(|r| open_close(r.join("dir"), libc::O_RDONLY | libc::O_DIRECTORY, 0));
    pair.step(|r| fsync_ro(r.join("dir/f")));
    pair.step(|r| fsync_ro(r.join("dir")));
    pair.step(|r| statfs(r).map(|s| s.namelen));
    let upper = pair.get_ctx(|s| readdir(s.u("")));
    assert_eq!(
        upper,
        Ok(vec![]),
        "kernel: read-only operations left something in upper"
    );
    pair.check_uppers();
    // Failed modifications: whatever the kernel leaves in upper (it copies up before some
    // checks, e.g. setxattr XATTR_CREATE), stratafs must leave the same.
    pair.step(|r| setxattr(r.join("dir/f"), "user.a", "new", libc::XATTR_CREATE));
    pair.step(|r| removexattr(r.join("dir/f"), "user.missing"));
    pair.step(|r| mkdir(r.join("dir/deep"), 0o755));
    pair.step(|r| rmdir(r.join("dir/deep")));
    pair.step(|r| open_close(r.join("dir/deep"), libc::O_WRONLY, 0));
    pair.step(|r| truncate(r.join("emptydir"), 0));
    pair.step(|r| as_user(65534, 65534, || chmod(r.join("lnk"), 0o777)));
    pair.step(|r| {
        as_user(65534, 65534, || {
            open_close(r.join("dir/f"), libc::O_RDWR, 0)
        })
    });
    pair.finish();
}

#[test]
fn copy_up_creates_missing_parents() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .dir("a")
                .mode(0o755)
                .owner(1, 2)
                .dir("a/b")
                .mode(0o711)
                .owner(3, 4)
                .xattr("user.level", "b")
                .dir("a/b/c")
                .mode(0o700)
                .dir("a/b/c/d")
                .mode(0o2775)
                .owner(0, 5)
                .dir("a/b/c/d/e")
                .mode(0o1777)
                .file("a/b/c/d/e/file", "deep")
                .mode(0o600)
                .owner(9, 9)
                .file("a/b/c/d/e/sibling", "s")
                .file("a/b/c/x", "x"),
        )
        .lower(
            Layer::new()
                .dir("a/b/c/d/e")
                .mode(0o700)
                .file("a/b/c/d/e/from_below", "y"),
        );
    let pair = Pair::new("cuparents", &layers);
    pair.step(|r| append(r.join("a/b/c/d/e/file"), "+more"));
    for rel in [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "a/b/c/d/e",
        "a/b/c/d/e/file",
    ] {
        pair.step(|r| lstat(r.join(rel)));
        pair.step(|r| mtime(r.join(rel)).map(|t| t == FIXED_TIME));
        pair.step_ctx(|s| lstat(s.u(rel)));
        pair.step_ctx(|s| {
            llistxattr(s.u(rel)).map(|v| {
                v.into_iter()
                    .filter(|n| n.starts_with("user."))
                    .collect::<Vec<_>>()
            })
        });
    }
    pair.step(|r| readdir(r.join("a/b/c/d/e")));
    pair.step_ctx(|s| (exists(s.u("a/b/c/x")), exists(s.u("a/b/c/d/e/sibling"))));
    pair.finish();
}

#[test]
fn copy_up_keeps_sparse_files_sparse() {
    const SIZE: u64 = 64 << 20;
    let layers = Layers::new().lower(Layer::new().sparse(
        "sparse",
        SIZE,
        &[(0, b"start of file"), (32 << 20, b"in the middle")],
    ));
    let pair = Pair::new("sparse", &layers);
    pair.step(|r| lstat(r.join("sparse")));
    pair.step(|r| chmod(r.join("sparse"), 0o600));
    let sparse = pair.get_ctx(|s| {
        lstat_raw(s.u("sparse")).map(|st| {
            (
                st.st_size as u64,
                (st.st_blocks as u64) * 512 < st.st_size as u64 / 2,
            )
        })
    });
    assert_eq!(
        sparse,
        Ok((SIZE, true)),
        "kernel copy-up is expected to keep holes"
    );
    pair.step(|r| read_at(r.join("sparse"), 0, 13));
    pair.step(|r| read_at(r.join("sparse"), 32 << 20, 13));
    pair.step(|r| read_at(r.join("sparse"), 16 << 20, 64));
    pair.step(|r| read_at(r.join("sparse"), SIZE - 10, 64));
    pair.step(|r| mtime(r.join("sparse")).map(|t| t == FIXED_TIME));
    pair.finish();
}

#[test]
fn new_objects_land_in_upper_only() {
    let layers = Layers::new()
        .lower(Layer::new().dir("dir").file("dir/existing", "e"))
        .lower(Layer::new().dir("dir2"));
    let pair = Pair::new("alloc", &layers);
    for base in ["", "dir", "dir2"] {
        pair.step(|r| {
            let b = r.join(base);
            (
                write_file(b.join("file"), "new file"),
                mkdir(b.join("newdir"), 0o750),
                symlink("file", b.join("sym")),
                mkfifo(b.join("fifo"), 0o640),
                mksock(b.join("sock")),
                mknod(b.join("chr"), libc::S_IFCHR | 0o600, 1, 3),
                mknod(b.join("blk"), libc::S_IFBLK | 0o660, 8, 1),
                mknod(b.join("reg"), libc::S_IFREG | 0o604, 0, 0),
            )
        });
        for name in ["file", "newdir", "sym", "fifo", "sock", "chr", "blk", "reg"] {
            pair.step(|r| lstat(r.join(base).join(name)));
            pair.step_ctx(|s| lstat(s.u(base).join(name)));
        }
        pair.step(|r| readdir(r.join(base)));
    }
    // Creating an existing name fails the same way.
    pair.step(|r| mkdir(r.join("dir/existing"), 0o755));
    pair.step(|r| mknod(r.join("dir/existing"), libc::S_IFIFO | 0o644, 0, 0));
    pair.step(|r| symlink("x", r.join("dir/existing")));
    pair.step(|r| mkdir(r.join("nodir/sub"), 0o755));
    pair.finish();
}

#[test]
fn write_read_semantics() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("lower", "0123456789")
                .file("lower2", "abcdefghij"),
        )
        .upper(Layer::new().file("upper", "ABCDEFGHIJ"));
    let pair = Pair::new("writes", &layers);
    for f in ["lower", "upper"] {
        pair.step(|r| write_at(r.join(f), 20, "beyond"));
        pair.step(|r| read(r.join(f)));
        pair.step(|r| append(r.join(f), "+tail"));
        pair.step(|r| truncate(r.join(f), 4));
        pair.step(|r| truncate(r.join(f), 12));
        pair.step(|r| read(r.join(f)));
        pair.step(|r| lstat(r.join(f)));
    }
    // One fd for write and read after copy-up.
    pair.step(|r| {
        let fd = open(r.join("lower2"), libc::O_RDWR, 0)?;
        let w = pwrite(&fd, 3, b"XYZ")?;
        let back = pread(&fd, 0, 100)?;
        let st = fstat(&fd)?;
        Ok::<_, Errno>((w, back, st))
    });
    pair.step(|r| write_file(r.join("lower2"), "replaced via O_TRUNC"));
    pair.step(|r| read(r.join("lower2")));
    pair.step(|r| open_close(r.join("lower"), libc::O_RDONLY | libc::O_TRUNC, 0));
    pair.step(|r| read(r.join("lower")));
    pair.finish();
}

/// A read-only fd opened before copy-up: the kernel overlay makes later reads through it see
/// the copied-up (and modified) data.
#[test]
fn read_fd_opened_before_copy_up() {
    let layers = Layers::new().lower(Layer::new().file("f", "original data"));
    let pair = Pair::new("rofdcu", &layers);
    let fds = pair.both(|s| open(s.m("f"), libc::O_RDONLY, 0).expect("open"));
    pair.step_with(&fds, |_, fd| pread(fd, 0, 100));
    pair.step(|r| write_at(r.join("f"), 0, "MODIFIED"));
    pair.step_with(&fds, |_, fd| pread(fd, 0, 100));
    pair.step_with(&fds, |_, fd| fstat(fd));
    drop(fds);
    pair.finish();
}

fn suid_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("suid_ww", "x")
                .mode(0o6777)
                .owner(1000, 1000)
                .file("suid_ww2", "x")
                .mode(0o6777)
                .owner(1000, 1000)
                .file("sgid_noexec", "x")
                .mode(0o2666)
                .owner(1000, 1000)
                .file("suid_root", "x")
                .mode(0o6755)
                .file("suid_chown", "x")
                .mode(0o6755)
                .owner(1000, 1000)
                .file("sgid_chown", "x")
                .mode(0o2755)
                .owner(1000, 1000)
                .dir("sgid_dir")
                .mode(0o2777)
                .owner(1000, 1000),
        )
        .upper(
            Layer::new()
                .file("up_suid_ww", "x")
                .mode(0o6777)
                .owner(1000, 1000),
        )
}

#[test]
fn setuid_cleared_on_write_by_non_owner() {
    let pair = Pair::new("suidw", &suid_layers());
    for f in ["suid_ww", "sgid_noexec", "up_suid_ww"] {
        pair.step(|r| as_user(65534, 65534, || append(r.join(f), "more")));
        pair.step(|r| lstat(r.join(f)));
    }
    pair.step(|r| as_user(65534, 65534, || truncate(r.join("suid_ww2"), 0)));
    pair.step(|r| lstat(r.join("suid_ww2")));
    pair.finish();
}

#[test]
fn setuid_on_write_by_root() {
    let pair = Pair::new("suidroot", &suid_layers());
    for f in ["suid_root", "suid_ww", "up_suid_ww"] {
        pair.step(|r| append(r.join(f), "more"));
        pair.step(|r| lstat(r.join(f)));
    }
    pair.finish();
}

#[test]
fn setuid_cleared_on_chown() {
    let pair = Pair::new("suidchown", &suid_layers());
    pair.step(|r| chown(r.join("suid_chown"), 1000, 1000));
    pair.step(|r| lstat(r.join("suid_chown")));
    pair.step(|r| chown(r.join("sgid_chown"), 1001, u32::MAX));
    pair.step(|r| lstat(r.join("sgid_chown")));
    pair.step(|r| chown(r.join("up_suid_ww"), 0, 0));
    pair.step(|r| lstat(r.join("up_suid_ww")));
    // Directories keep setgid on chown.
    pair.step(|r| chown(r.join("sgid_dir"), 1001, 1001));
    pair.step(|r| lstat(r.join("sgid_dir")));
    pair.finish();
}

#[test]
fn setgid_dir_inheritance() {
    let pair = Pair::new("sgiddir", &suid_layers());
    pair.step(|r| as_user(65534, 65534, || write_file(r.join("sgid_dir/f"), "x")));
    pair.step(|r| as_user(65534, 65534, || mkdir(r.join("sgid_dir/d"), 0o755)));
    pair.step(|r| write_file(r.join("sgid_dir/rootfile"), "x"));
    for rel in ["sgid_dir/f", "sgid_dir/d", "sgid_dir/rootfile"] {
        pair.step(|r| lstat(r.join(rel)));
    }
    pair.finish();
}

#[test]
fn utimensat_now_and_omit() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("f", "x")
                .dir("d")
                .symlink("l", "f")
                .file("shared", "x")
                .mode(0o666)
                .owner(1000, 1000),
        )
        .upper(Layer::new().file("u", "x"));
    let pair = Pair::new("utimens", &layers);
    let t1 = (1_000_000_000, 111);
    for rel in ["f", "d", "u"] {
        pair.step(|r| utimens(r.join(rel), Ts::At(t1.0, t1.1), Ts::Omit));
        pair.step(|r| {
            (
                atime(r.join(rel)),
                mtime(r.join(rel)).map(|m| m == FIXED_TIME || m == t1),
            )
        });
        pair.step(|r| utimens(r.join(rel), Ts::Omit, Ts::Now));
        pair.step(|r| {
            (
                atime(r.join(rel)),
                mtime(r.join(rel)).map(|m| m == FIXED_TIME || m == t1),
            )
        });
        pair.step(|r| utimens(r.join(rel), Ts::Now, Ts::Omit));
        pair.step(|r| atime(r.join(rel)).map(|a| a == t1));
        pair.step(|r| utimens(r.join(rel), Ts::At(5, 6), Ts::At(7, 8)));
        pair.step(|r| (atime(r.join(rel)), mtime(r.join(rel))));
        pair.step(|r| utimens(r.join(rel), Ts::Omit, Ts::Omit));
        pair.step(|r| (atime(r.join(rel)), mtime(r.join(rel))));
    }
    // The symlink itself.
    pair.step(|r| lutimens(r.join("l"), Ts::At(9, 10), Ts::At(11, 12)));
    pair.step(|r| (mtime(r.join("l")), mtime(r.join("f"))));
    // A non-owner with write permission may set "now" but not explicit times.
    pair.step(|r| as_user(65534, 65534, || utimens(r.join("shared"), Ts::Now, Ts::Now)));
    pair.step(|r| {
        as_user(65534, 65534, || {
            utimens(r.join("shared"), Ts::At(1, 2), Ts::At(3, 4))
        })
    });
    pair.step(|r| as_user(65534, 65534, || utimens(r.join("f"), Ts::Now, Ts::Now)));
    pair.step(|r| mtime(r.join("shared")).map(|m| m == FIXED_TIME));
    pair.finish();
}

#[test]
fn fsync_and_fdatasync() {
    let layers = Layers::new()
        .lower(Layer::new().file("lower", "l").dir("d"))
        .upper(Layer::new().file("upper", "u"));
    let pair = Pair::new("fsync", &layers);
    pair.step(|r| fsync(r.join("lower")));
    pair.step(|r| fsync(r.join("upper")));
    pair.step(|r| fsync_ro(r.join("d")));
    pair.step(|r| fsync_ro(r));
    pair.step(|r| {
        let fd = open(r.join("new"), libc::O_RDWR | libc::O_CREAT, 0o644)?;
        write_fd(&fd, b"data")?;
        fsync_fd(&fd)?;
        fdatasync_fd(&fd)?;
        read_fd_all(&fd)
    });
    pair.finish();
}

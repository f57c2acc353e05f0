//! Hard links and inode numbers, open-then-unlinked files, statfs, name and path length limits,
//! special files, xattrs, open flags, permissions of an unprivileged user, symlink safety.

#![deny(unsafe_code)]

use e2e::*;
use std::os::fd::AsRawFd;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Hard links and st_ino
// ---------------------------------------------------------------------------------------------

fn link_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("a", "lower a")
                .mode(0o640)
                .owner(1000, 1000)
                .file("h1", "shared inode")
                .hardlink("h2", "h1")
                .hardlink("dir/h3", "h1")
                .file("plain", "p")
                .dir("d"),
        )
        .upper(Layer::new().file("u1", "upper").hardlink("u2", "u1"))
}

/// lstat of the three names of the lower hard-linked file.
fn h_lstats(r: &Path) -> (R<St>, R<St>, R<St>) {
    (
        lstat(r.join("h1")),
        lstat(r.join("h2")),
        lstat(r.join("dir/h3")),
    )
}

/// Whether `a` and `b` below `r` have the same inode number.
fn same_ino(r: &Path, a: &str, b: &str) -> R<bool> {
    Ok(ino(r.join(a))? == ino(r.join(b))?)
}

#[test]
fn hardlink_of_lower_file() {
    let pair = Pair::new("hllower", &link_layers());
    pair.step(|r| link(r.join("a"), r.join("a_link")));
    pair.step(|r| (lstat(r.join("a")), lstat(r.join("a_link"))));
    pair.step(|r| Ok::<_, Errno>(ino(r.join("a"))? == ino(r.join("a_link"))?));
    pair.step(|r| append(r.join("a_link"), "+via link"));
    pair.step(|r| (read(r.join("a")), read(r.join("a_link"))));
    pair.step(|r| link(r.join("a"), r.join("d/a_in_d")));
    pair.step(|r| lstat(r.join("d/a_in_d")));
    pair.step(|r| unlink(r.join("a")));
    pair.step(|r| (lstat(r.join("a_link")), lstat(r.join("d/a_in_d"))));
    // Errors: linking a directory, onto an existing name, from a missing name.
    pair.step(|r| link(r.join("d"), r.join("d_link")));
    pair.step(|r| link(r.join("plain"), r.join("h1")));
    pair.step(|r| link(r.join("missing"), r.join("x")));
    pair.step(|r| link(r.join("a"), r.join("x")));
    pair.finish();
}

#[test]
fn hardlinked_lower_files_after_write_to_one() {
    let pair = Pair::new("hlwrite", &link_layers());
    pair.step(h_lstats);
    pair.step(|r| Ok::<_, Errno>((same_ino(r, "h1", "h2")?, same_ino(r, "h1", "dir/h3")?)));
    let before = pair.both(|s| ino(s.m("h1")).expect("ino"));
    pair.step(|r| write_at(r.join("h1"), 0, "SHARED"));
    pair.step(|r| {
        (
            read(r.join("h1")),
            read(r.join("h2")),
            read(r.join("dir/h3")),
        )
    });
    pair.step(h_lstats);
    pair.step(|r| Ok::<_, Errno>((same_ino(r, "h1", "h2")?, same_ino(r, "h2", "dir/h3")?)));
    pair.step_with(&before, |s, i| ino(s.m("h1")).map(|n| n == *i));
    pair.step(|r| chmod(r.join("h2"), 0o600));
    pair.step(h_lstats);
    pair.step(|r| unlink(r.join("h2")));
    pair.step(|r| (lstat(r.join("h1")), lstat(r.join("dir/h3"))));
    pair.finish();
}

#[test]
fn inode_number_relations() {
    let pair = Pair::new("inos", &link_layers());
    // Upper hard links share the inode number.
    pair.step(|r| Ok::<_, Errno>(ino(r.join("u1"))? == ino(r.join("u2"))?));
    pair.step(|r| (lstat(r.join("u1")), lstat(r.join("u2"))));
    // Copy-up keeps the inode number (the kernel with all layers on one fs does).
    let before = pair.both(|s| {
        (
            ino(s.m("plain")).unwrap(),
            ino(s.m("d")).unwrap(),
            ino(s.m("")).unwrap(),
        )
    });
    pair.step(|r| chmod(r.join("plain"), 0o600));
    pair.step(|r| write_file(r.join("d/new"), "n"));
    pair.step_with(&before, |s, b| {
        (
            ino(s.m("plain")).map(|n| n == b.0),
            ino(s.m("d")).map(|n| n == b.1),
        )
    });
    pair.step_with(&before, |s, b| ino(s.m("")).map(|n| n == b.2));
    // Stable across lookups, and distinct for distinct files.
    pair.step(|r| Ok::<_, Errno>(ino(r.join("plain"))? == ino(r.join("plain"))?));
    pair.step(|r| Ok::<_, Errno>(ino(r.join("plain"))? != ino(r.join("a"))?));
    // fstat and stat agree.
    pair.step(|r| {
        let fd = open(r.join("a"), libc::O_RDONLY, 0)?;
        Ok::<_, Errno>(fstat_raw(&fd)?.st_ino == ino(r.join("a"))?)
    });
    // An inode number is stable across a remount... compared as a relation on both.
    let inos = pair.both(|s| {
        (
            ino(s.m("a")).unwrap(),
            ino(s.m("plain")).unwrap(),
            ino(s.m("u1")).unwrap(),
        )
    });
    let mut pair = pair;
    pair.remount();
    pair.step_with(&inos, |s, i| {
        (
            ino(s.m("a")).map(|n| n == i.0),
            ino(s.m("plain")).map(|n| n == i.1),
            ino(s.m("u1")).map(|n| n == i.2),
        )
    });
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// Open files
// ---------------------------------------------------------------------------------------------

#[test]
fn open_then_unlinked_files_stay_usable() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("lower_ro", "lower read-only")
                .file("lower_rw", "lower read-write"),
        )
        .upper(Layer::new().file("upper", "upper file"));
    let pair = Pair::new("openunlinked", &layers);
    let fds = pair.both(|s| {
        (
            open(s.m("lower_ro"), libc::O_RDONLY, 0).unwrap(),
            open(s.m("lower_rw"), libc::O_RDWR, 0).unwrap(),
            open(s.m("upper"), libc::O_RDWR, 0).unwrap(),
        )
    });
    pair.step(|r| {
        (
            unlink(r.join("lower_ro")),
            unlink(r.join("lower_rw")),
            unlink(r.join("upper")),
        )
    });
    pair.step_with(&fds, |_, f| {
        (read_fd_all(&f.0), read_fd_all(&f.1), read_fd_all(&f.2))
    });
    pair.step_with(&fds, |_, f| {
        (pwrite(&f.1, 0, b"LOWER"), pwrite(&f.2, 0, b"UPPER"))
    });
    pair.step_with(&fds, |_, f| (read_fd_all(&f.1), read_fd_all(&f.2)));
    pair.step_with(&fds, |_, f| (fstat(&f.0), fstat(&f.1), fstat(&f.2)));
    pair.step_with(&fds, |_, f| {
        (fsync_fd(&f.1), fsync_fd(&f.2), ftruncate(&f.2, 3))
    });
    pair.step_with(&fds, |_, f| (fstat(&f.2), read_fd_all(&f.2)));
    pair.step(|r| (lstat(r.join("lower_ro")), readdir(r)));
    // A new file under the same name is independent.
    pair.step(|r| write_file(r.join("upper"), "new upper"));
    pair.step_with(&fds, |s, f| (read_fd_all(&f.2), read(s.m("upper"))));
    drop(fds);
    pair.finish();
}

#[test]
fn open_flags() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("f", "lower file")
                .dir("d")
                .symlink("sl", "f")
                .whiteout("wh"),
        )
        .lower(Layer::new().file("wh", "hidden"));
    let pair = Pair::new("oflags", &layers);
    let cases: &[(&str, i32)] = &[
        ("f", libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
        ("wh", libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
        ("f", libc::O_RDONLY | libc::O_DIRECTORY),
        ("sl", libc::O_RDONLY | libc::O_NOFOLLOW),
        ("sl", libc::O_PATH | libc::O_NOFOLLOW),
        ("d", libc::O_WRONLY),
        ("d", libc::O_RDWR),
        ("d", libc::O_RDONLY | libc::O_CREAT),
        ("f/x", libc::O_RDONLY | libc::O_CREAT),
        ("missing", libc::O_RDONLY),
        ("d/new", libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
        ("sl", libc::O_WRONLY | libc::O_APPEND),
        ("newdir_missing/x", libc::O_WRONLY | libc::O_CREAT),
    ];
    for (rel, flags) in cases {
        pair.step(|r| (open_close(r.join(rel), *flags, 0o640), observe(r.join(rel))));
    }
    pair.step(|r| readdir(r));
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// statfs, limits
// ---------------------------------------------------------------------------------------------

#[test]
fn statfs_reports_the_upper_filesystem() {
    let pair = Pair::new("statfs", &Layers::new().lower(Layer::new().file("f", "x")));
    pair.step_ctx(|s| {
        let (m, u) = (statfs(&s.mnt)?, statfs(s.u(""))?);
        Ok::<_, Errno>((
            m.bsize == u.bsize,
            m.blocks == u.blocks,
            m.files == u.files,
            m.namelen,
            u.namelen,
        ))
    });
    pair.step(|r| statfs(r.join("f")).map(|s| s.namelen));
    pair.finish();
}

#[test]
fn statfs_read_only_reports_the_top_lower_filesystem() {
    let pair = Pair::ro(
        "statfsro",
        &Layers::new().lower(Layer::new().file("f", "x")),
    );
    pair.step_ctx(|s| {
        let (m, l) = (statfs(&s.mnt)?, statfs(s.l(0, ""))?);
        Ok::<_, Errno>((m.bsize == l.bsize, m.blocks == l.blocks, m.namelen))
    });
    pair.finish();
}

#[test]
fn name_too_long() {
    let long = "n".repeat(256);
    let max = "m".repeat(255);
    let pair = Pair::new(
        "namelen",
        &Layers::new().lower(Layer::new().file("f", "x").dir("d")),
    );
    pair.step(|r| lstat(r.join(&long)));
    pair.step(|r| write_file(r.join(&long), "x"));
    pair.step(|r| mkdir(r.join("d").join(&long), 0o755));
    pair.step(|r| symlink("f", r.join(&long)));
    pair.step(|r| rename(r.join("f"), r.join(&long)));
    pair.step(|r| link(r.join("f"), r.join(&long)));
    pair.step(|r| mknod(r.join(&long), libc::S_IFIFO | 0o644, 0, 0));
    pair.step(|r| setxattr(r.join("f"), &format!("user.{}", "x".repeat(256)), "v", 0));
    // 255 is fine.
    pair.step(|r| write_file(r.join(&max), "max"));
    pair.step(|r| (read(r.join(&max)), readdir(r)));
    pair.step(|r| rename(r.join(&max), r.join("d").join(&max)));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

#[test]
fn very_deep_paths() {
    // 100 levels of 50-char names in a lower layer (> PATH_MAX), plus 300 levels created
    // through the mount; all operations relative to directory fds.
    let lower_names = deep_names(100, 50);
    let layers = Layers::new().lower(
        Layer::new()
            .deep("deep", 100, 50, "leaf in lower")
            .file("top", "t"),
    );
    let pair = Pair::new("deep", &layers);
    let read_leaf = |root: &std::path::Path, names: &[String]| -> R<(Data, St)> {
        let d = open_chain(root, names)?;
        let f = openat(d.as_raw_fd(), "leaf", libc::O_RDONLY, 0)?;
        Ok((read_fd_all(&f)?, fstat(&f)?))
    };
    pair.step(|r| read_leaf(&r.join("deep"), &lower_names));
    // Copy-up of the leaf: 100 parents are copied up.
    pair.step(|r| {
        let d = open_chain(r.join("deep"), &lower_names)?;
        let f = openat(d.as_raw_fd(), "leaf", libc::O_WRONLY | libc::O_APPEND, 0)?;
        write_fd(&f, b" + appended")
    });
    pair.step(|r| read_leaf(&r.join("deep"), &lower_names));
    pair.step_ctx(|s| read_leaf(&s.u("deep"), &lower_names).map(|(d, _)| d));
    // 300 levels through the mount.
    let names = deep_names(300, 50);
    pair.step(|r| mkdir_chain(r, &names));
    pair.step(|r| {
        let d = open_chain(r, &names)?;
        let f = openat(d.as_raw_fd(), "leaf", libc::O_WRONLY | libc::O_CREAT, 0o644)?;
        write_fd(&f, b"deep leaf")
    });
    pair.step(|r| read_leaf(r, &names));
    pair.step(|r| {
        let d = open_chain(r, &names[..299])?;
        Ok::<_, Errno>(list_fd(d.as_raw_fd())?.len())
    });
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// Special files
// ---------------------------------------------------------------------------------------------

#[test]
fn special_files() {
    let layers = Layers::new().lower(
        Layer::new()
            .fifo("lfifo")
            .socket("lsock")
            .chardev("lchr", 1, 3)
            .owner(5, 5)
            .blockdev("lblk", 8, 2)
            .mode(0o600),
    );
    let pair = Pair::new("special", &layers);
    for rel in ["lfifo", "lsock", "lchr", "lblk"] {
        pair.step(|r| lstat(r.join(rel)));
    }
    // Metadata changes copy them up as what they are.
    pair.step(|r| chmod(r.join("lfifo"), 0o600));
    pair.step(|r| chown(r.join("lchr"), 7, 7));
    pair.step(|r| lchown(r.join("lsock"), 8, 8));
    pair.step(|r| utimens(r.join("lblk"), Ts::At(1, 0), Ts::At(2, 0)));
    for rel in ["lfifo", "lsock", "lchr", "lblk"] {
        pair.step(|r| lstat(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)));
    }
    // New ones.
    pair.step(|r| (mkfifo(r.join("fifo"), 0o644), mksock(r.join("sock"))));
    pair.step(|r| mknod(r.join("chr"), libc::S_IFCHR | 0o644, 4, 64));
    pair.step(|r| mknod(r.join("blk"), libc::S_IFBLK | 0o644, 7, 3));
    // A char device 0/0 is what a whiteout looks like on disk.
    pair.step(|r| mknod(r.join("looks_like_whiteout"), libc::S_IFCHR | 0o644, 0, 0));
    pair.step(|r| observe(r.join("looks_like_whiteout")));
    pair.step(|r| readdir(r));
    pair.step(|r| open_close(r.join("fifo"), libc::O_RDONLY | libc::O_NONBLOCK, 0));
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// xattrs, metadata of directories
// ---------------------------------------------------------------------------------------------

#[test]
fn xattr_operations() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("f", "x")
                .xattr("user.one", "1")
                .xattr("user.two", "2")
                .xattr("trusted.t", "root only")
                .dir("d")
                .xattr("user.dir", "d")
                .symlink("sl", "f")
                .opaque("o"),
        )
        .upper(Layer::new().file("u", "u"));
    let pair = Pair::new("xattrs", &layers);
    for rel in ["f", "d", "o", "u"] {
        pair.step(|r| (listxattr(r.join(rel)), listxattr_size(r.join(rel))));
    }
    pair.step(|r| getxattr(r.join("f"), "user.missing"));
    pair.step(|r| getxattr(r.join("f"), "trusted.t"));
    pair.step(|r| getxattr(r.join("o"), "trusted.overlay.opaque"));
    pair.step(|r| setxattr(r.join("f"), "user.one", "x", libc::XATTR_CREATE));
    pair.step(|r| setxattr(r.join("u"), "user.new", "x", libc::XATTR_REPLACE));
    pair.step(|r| setxattr(r.join("f"), "user.big", vec![b'v'; 1500], 0));
    pair.step(|r| setxattr(r.join("f"), "user.one", "replaced", libc::XATTR_REPLACE));
    pair.step(|r| setxattr(r.join("f"), "user.empty", "", 0));
    pair.step(|r| {
        (
            getxattr(r.join("f"), "user.big"),
            getxattr(r.join("f"), "user.one"),
            getxattr(r.join("f"), "user.empty"),
        )
    });
    pair.step(|r| removexattr(r.join("f"), "user.two"));
    pair.step(|r| removexattr(r.join("f"), "user.two"));
    pair.step(|r| listxattr(r.join("f")));
    pair.step(|r| setxattr(r.join("d"), "user.dir2", "dd", 0));
    pair.step(|r| removexattr(r.join("d"), "user.dir"));
    pair.step(|r| listxattr(r.join("d")));
    // user.* on symlinks is not permitted; trusted.* is.
    pair.step(|r| lsetxattr(r.join("sl"), "user.x", "1", 0));
    pair.step(|r| lsetxattr(r.join("sl"), "trusted.x", "1", 0));
    pair.step(|r| llistxattr(r.join("sl")));
    // The overlay-private namespace.
    pair.step(|r| setxattr(r.join("u"), "trusted.overlay.opaque", "y", 0));
    pair.step(|r| setxattr(r.join("u"), "trusted.overlay.foo", "y", 0));
    pair.step(|r| removexattr(r.join("o"), "trusted.overlay.opaque"));
    pair.step(|r| listxattr(r.join("u")));
    pair.step(|r| getxattr(r.join("u"), "trusted.overlay.foo"));
    // Bad names.
    pair.step(|r| setxattr(r.join("u"), "nonamespace", "y", 0));
    pair.step(|r| getxattr(r.join("u"), "user."));
    pair.finish();
}

#[test]
fn directory_metadata_copy_up() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .dir("d")
                .mode(0o750)
                .owner(100, 200)
                .xattr("user.d", "1")
                .file("d/f", "f")
                .dir("d2")
                .dir("d3")
                .mode(0o1777),
        )
        .lower(Layer::new().dir("d").file("d/below", "b"));
    let pair = Pair::new("dirmeta", &layers);
    pair.step(|r| chmod(r.join("d"), 0o705));
    pair.step(|r| chown(r.join("d2"), 3, 4));
    pair.step(|r| utimens(r.join("d3"), Ts::At(100, 0), Ts::At(200, 0)));
    for rel in ["d", "d2", "d3"] {
        pair.step(|r| {
            (
                lstat(r.join(rel)),
                readdir(r.join(rel)),
                listxattr(r.join(rel)),
            )
        });
        pair.step(|r| mtime(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)));
    }
    pair.step_ctx(|s| (exists(s.u("d/f")), exists(s.u("d/below"))));
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// Permissions (root mount, allow_other + default_permissions for stratafs)
// ---------------------------------------------------------------------------------------------

const NOBODY: u32 = 65534;

fn perm_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("secret", "secret")
                .mode(0o600)
                .owner(1000, 1000)
                .file("public", "public")
                .mode(0o644)
                .owner(1000, 1000)
                .file("group_rw", "g")
                .mode(0o660)
                .owner(1000, NOBODY)
                .dir("priv")
                .mode(0o700)
                .owner(1000, 1000)
                .file("priv/inner", "inner")
                .mode(0o644)
                .dir("xonly")
                .mode(0o711)
                .owner(1000, 1000)
                .file("xonly/known", "known")
                .dir("rootdir")
                .file("rootdir/f", "f")
                .dir("open")
                .mode(0o777)
                .dir("sticky")
                .mode(0o1777)
                .file("sticky/others", "o")
                .mode(0o666)
                .owner(1000, 1000)
                .file("script", "#!/bin/sh\n")
                .mode(0o700)
                .owner(1000, 1000),
        )
        .upper(
            Layer::new()
                .file("upsecret", "u")
                .mode(0o600)
                .owner(1000, 1000),
        )
}

#[test]
fn unprivileged_user_permissions() {
    let pair = Pair::new("perms", &perm_layers());
    pair.step(|r| as_user(NOBODY, NOBODY, || read(r.join("secret"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || read(r.join("upsecret"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || read(r.join("public"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || read(r.join("group_rw"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || write_at(r.join("public"), 0, "x")));
    pair.step(|r| as_user(NOBODY, NOBODY, || append(r.join("group_rw"), "+nobody")));
    pair.step(|r| as_user(NOBODY, NOBODY, || readdir(r.join("priv"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || lstat(r.join("priv/inner"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || readdir(r.join("xonly"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || read(r.join("xonly/known"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || write_file(r.join("rootdir/new"), "x")));
    pair.step(|r| as_user(NOBODY, NOBODY, || unlink(r.join("rootdir/f"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || mkdir(r.join("rootdir/nd"), 0o755)));
    pair.step(|r| as_user(NOBODY, NOBODY, || write_file(r.join("open/mine"), "mine")));
    pair.step(|r| as_user(NOBODY, NOBODY, || mkdir(r.join("open/mydir"), 0o700)));
    pair.step(|r| (lstat(r.join("open/mine")), lstat(r.join("open/mydir"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || unlink(r.join("sticky/others"))));
    pair.step(|r| {
        as_user(NOBODY, NOBODY, || {
            rename(r.join("sticky/others"), r.join("sticky/x"))
        })
    });
    pair.step(|r| as_user(NOBODY, NOBODY, || write_file(r.join("sticky/mine"), "m")));
    pair.step(|r| as_user(NOBODY, NOBODY, || unlink(r.join("sticky/mine"))));
    pair.step(|r| as_user(NOBODY, NOBODY, || chmod(r.join("public"), 0o666)));
    pair.step(|r| as_user(NOBODY, NOBODY, || chown(r.join("public"), NOBODY, NOBODY)));
    pair.step(|r| {
        as_user(NOBODY, NOBODY, || {
            setxattr(r.join("public"), "user.x", "1", 0)
        })
    });
    pair.step(|r| as_user(NOBODY, NOBODY, || getxattr(r.join("secret"), "user.x")));
    pair.step(|r| as_user(NOBODY, NOBODY, || truncate(r.join("public"), 0)));
    pair.step(|r| as_user(NOBODY, NOBODY, || access(r.join("secret"), libc::R_OK)));
    pair.step(|r| as_user(NOBODY, NOBODY, || access(r.join("public"), libc::R_OK)));
    pair.step(|r| as_user(NOBODY, NOBODY, || access(r.join("script"), libc::X_OK)));
    pair.step(|r| as_user(NOBODY, NOBODY, || access(r.join("group_rw"), libc::W_OK)));
    // The owner may chmod its file; root may read anything.
    pair.step(|r| as_user(1000, 1000, || chmod(r.join("secret"), 0o640)));
    pair.step(|r| as_user(1000, 1000, || read(r.join("secret"))));
    pair.step(|r| read(r.join("upsecret")));
    pair.step(|r| lstat(r.join("secret")));
    pair.finish();
}

// ---------------------------------------------------------------------------------------------
// Symlink safety
// ---------------------------------------------------------------------------------------------

/// Layout of a side: {SET}/m (mount), {SET}/L/0.. (lowers), {SET}/L/trap (trap), {SET}/u.
/// A relative symlink "../trap" at the root of a lower layer resolves in the merged namespace
/// to {SET}/trap (legitimate "outside" content), but on the host from the layer dir to
/// {SET}/L/trap (the trap, part of the lower snapshot: must never change; its contents differ
/// from the legit one so a daemon reading it would show different data).
fn symlink_layers() -> Layers {
    Layers::new()
        .outside(
            Layer::new()
                .file("canary", "legit canary")
                .dir("legitdir")
                .file("legitdir/f", "legit f")
                .dir("trap")
                .file("trap/secret", "outside, legit"),
        )
        .trap(
            Layer::new()
                .dir("trap")
                .file("trap/secret", "TRAP - must never be read or written")
                .dir("trap/sub"),
        )
        .lower(
            Layer::new()
                .symlink("esc", "../trap")
                .symlink("esc2", "../../canary")
                .symlink("abs", "{SET}/canary")
                .symlink("absdir", "{SET}/legitdir")
                .symlink("abstrap", "{SET}/L/trap")
                .dir("d")
                .file("d/a", "a in top layer dir")
                .symlink("sd", "../trap")
                .dir("cp")
                .file("cp/f", "copy me")
                .symlink("d/up2", "../../trap/secret"),
        )
        .lower(
            Layer::new()
                .symlink("d", "../trap")
                .dir("sd")
                .file("sd/x", "shadowed by a symlink")
                .symlink("cp", "{SET}/L/trap"),
        )
        .lower(
            Layer::new()
                .dir("d")
                .file("d/under_symlink", "hidden: a non-dir above stops the merge"),
        )
}

#[test]
fn symlink_safety_merge_never_follows_lower_symlinks() {
    let pair = Pair::new("symmerge", &symlink_layers());
    pair.step(|r| readdir(r.join("d")));
    pair.step(|r| lstat(r.join("d/secret")));
    pair.step(|r| lstat(r.join("d/under_symlink")));
    pair.step(|r| lstat(r.join("d/sub")));
    pair.step(|r| (lstat(r.join("cp")), readdir(r.join("cp"))));
    // Copy-up of dirs whose lower counterpart in a deeper layer is a symlink.
    pair.step(|r| append(r.join("cp/f"), " + written"));
    pair.step(|r| write_file(r.join("d/new"), "new in d"));
    pair.step(|r| mkdir(r.join("d/newdir"), 0o755));
    pair.step(|r| (readdir(r.join("d")), readdir(r.join("cp"))));
    pair.step_ctx(|s| (lstat(s.u("d")), lstat(s.u("cp"))));
    pair.step(|r| rm_rf(r.join("d")));
    pair.step(|r| mkdir(r.join("d"), 0o755));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

#[test]
fn symlink_safety_relative_and_absolute_links() {
    let pair = Pair::new("symlinks", &symlink_layers());
    for rel in ["esc", "esc2", "abs", "absdir", "abstrap", "sd", "d/up2"] {
        pair.step(|r| {
            (
                lstat(r.join(rel)),
                readlink(r.join(rel)).map(|t| norm_set(r, &t)),
            )
        });
        pair.step(|r| (stat(r.join(rel)), read(r.join(rel)), readdir(r.join(rel))));
    }
    pair.step(|r| read(r.join("esc/secret")));
    pair.step(|r| read(r.join("sd/secret")));
    pair.step(|r| read(r.join("d/up2")));
    // Operations on the links themselves copy up the link, never touching the target.
    pair.step(|r| lchown(r.join("esc"), 1, 1));
    pair.step(|r| lutimens(r.join("abs"), Ts::At(3, 0), Ts::At(4, 0)));
    pair.step(|r| lsetxattr(r.join("abstrap"), "trusted.mark", "1", 0));
    pair.step(|r| link(r.join("esc2"), r.join("esc2_link")));
    pair.step(|r| rename(r.join("absdir"), r.join("absdir_renamed")));
    pair.step(|r| unlink(r.join("sd")));
    pair.step(|r| {
        (
            lstat(r.join("esc")),
            lstat(r.join("abs")),
            lstat(r.join("esc2_link")),
        )
    });
    pair.step(|r| mtime(r.join("abs")));
    pair.step_ctx(|s| {
        (
            lstat(s.u("esc")),
            lstat(s.u("abs")),
            lstat(s.u("sd")).map(|st| st.kind),
        )
    });
    // Operations through the links follow them in the merged namespace (legit outside
    // content changes the same way on both sides; the trap never changes).
    pair.step(|r| append(r.join("abs"), " + via abs"));
    pair.step(|r| write_file(r.join("absdir_renamed/new"), "created via symlinked dir"));
    pair.step(|r| write_file(r.join("esc/created"), "created via relative link"));
    pair.step(|r| chmod(r.join("abs"), 0o600));
    pair.step(|r| {
        (
            read(r.join("abs")),
            readdir(r.join("absdir_renamed")),
            readdir(r.join("esc")),
        )
    });
    pair.step(|r| read(r.parent().unwrap().join("canary")));
    pair.finish();
}

//! Lookup and readdir semantics: layering, whiteouts, opaque dirs, OCI markers, merged readdir.

#![deny(unsafe_code)]

use e2e::*;
use std::os::fd::AsRawFd;

fn three_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("top_only", "top")
                .file("shadow", "from layer 0")
                .mode(0o600)
                .owner(1000, 1000)
                .file("x", "file over dir")
                .dir("y")
                .file("y/top", "t")
                .dir("d")
                .file("d/a", "a0")
                .symlink("d/link", "a"),
        )
        .lower(
            Layer::new()
                .file("mid_only", "mid")
                .file("shadow", "from layer 1")
                .dir("x")
                .file("x/hidden", "h")
                .file("y", "file under dir")
                .dir("d")
                .mode(0o700)
                .file("d/a", "a1")
                .file("d/b", "b1")
                .dir("d/sub")
                .file("d/sub/s1", "s1"),
        )
        .lower(
            Layer::new()
                .file("bottom_only", "bottom")
                .file("shadow", "from layer 2")
                .dir("d")
                .file("d/c", "c2")
                .dir("d/sub")
                .file("d/sub/s2", "s2")
                .xattr("user.k", "v"),
        )
}

const THREE_PATHS: &[&str] = &[
    "",
    "top_only",
    "mid_only",
    "bottom_only",
    "shadow",
    "x",
    "x/hidden",
    "y",
    "y/top",
    "d",
    "d/a",
    "d/b",
    "d/c",
    "d/link",
    "d/sub",
    "d/sub/s1",
    "d/sub/s2",
    "nonexistent",
    "d/nonexistent",
    "top_only/notadir",
];

#[test]
fn lookup_three_layers_top_down() {
    let pair = Pair::new("lk3", &three_layers());
    for rel in THREE_PATHS {
        pair.step(|r| observe(r.join(rel)));
    }
    pair.step(|r| read_str(r.join("shadow")));
    pair.step(|r| getxattr(r.join("d/sub/s2"), "user.k"));
    pair.step(|r| stat(r.join("d/link")));
    pair.finish();
}

#[test]
fn lookup_three_layers_readonly() {
    let pair = Pair::ro("lk3ro", &three_layers());
    for rel in THREE_PATHS {
        pair.step(|r| observe(r.join(rel)));
    }
    // Every modification fails with EROFS.
    pair.step(|r| write_file(r.join("new"), "x"));
    pair.step(|r| write_at(r.join("top_only"), 0, "x"));
    pair.step(|r| mkdir(r.join("nd"), 0o755));
    pair.step(|r| unlink(r.join("shadow")));
    pair.step(|r| rmdir(r.join("y")));
    pair.step(|r| rename(r.join("top_only"), r.join("t2")));
    pair.step(|r| chmod(r.join("shadow"), 0o644));
    pair.step(|r| setxattr(r.join("shadow"), "user.x", "1", 0));
    pair.step(|r| symlink("a", r.join("sl")));
    pair.step(|r| truncate(r.join("top_only"), 0));
    pair.step(|r| open_close(r.join("top_only"), libc::O_RDWR, 0));
    pair.step(|r| access(r.join("top_only"), libc::W_OK));
    pair.finish();
}

#[test]
fn lookup_hundred_lower_layers() {
    let mut layers = Layers::new();
    for i in 0..100 {
        let mut l = Layer::new()
            .dir("d")
            .file(&format!("d/f{i:02}"), format!("layer {i}"));
        if i == 99 {
            l = l
                .file("bottom.txt", "the bottom layer")
                .file("shadow", "99")
                .file("gone", "hidden by 50");
        }
        if [10, 40, 70].contains(&i) {
            l = l.file("shadow", i.to_string());
        }
        if i == 50 {
            l = l.whiteout("gone").whiteout("d/f80");
        }
        if i == 30 {
            l = l.opaque("o").file("o/from30", "30");
        }
        if i == 60 {
            l = l.dir("o").file("o/from60", "60");
        }
        layers = layers.lower(l);
    }
    let pair = Pair::new("lk100", &layers);
    pair.step(|r| read_str(r.join("bottom.txt")));
    pair.step(|r| read_str(r.join("shadow")));
    pair.step(|r| lstat(r.join("gone")));
    pair.step(|r| readdir(r.join("d")));
    pair.step(|r| readdir(r.join("o")));
    pair.step(|r| lstat(r.join("d/f80")));
    pair.step(|r| read_str(r.join("d/f99")));
    pair.step(|r| append(r.join("bottom.txt"), " + appended"));
    pair.step(|r| read_str(r.join("bottom.txt")));
    pair.step(|r| write_file(r.join("d/f00"), "rewritten"));
    pair.step(|r| unlink(r.join("d/f98")));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

#[test]
fn whiteout_hides_every_lower_entry() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .whiteout("w")
                .whiteout("d/w")
                .file("above", "a")
                .whiteout("wd"),
        )
        .lower(
            Layer::new()
                .file("w", "hidden file")
                .dir("d")
                .file("d/w", "hidden")
                .file("d/keep", "k")
                .dir("wd")
                .file("wd/inner", "i")
                .whiteout("above"),
        )
        .lower(
            Layer::new()
                .dir("w")
                .file("w/deep", "hidden dir")
                .file("d/w", "hidden too")
                .dir("wd/sub"),
        );
    let pair = Pair::new("wh", &layers);
    for rel in [
        "w", "w/deep", "d/w", "wd", "wd/inner", "wd/sub", "above", "d/keep",
    ] {
        pair.step(|r| observe(r.join(rel)));
    }
    pair.step(|r| readdir(r));
    pair.step(|r| readdir(r.join("d")));
    pair.step(|r| access(r.join("w"), libc::F_OK));
    pair.step(|r| open_close(r.join("w"), libc::O_RDONLY, 0));
    pair.finish();
}

#[test]
fn opaque_dir_hides_lower_contents() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .opaque("o")
                .file("o/a", "a")
                .dir("o2")
                .file("o2/top", "t"),
        )
        .lower(
            Layer::new()
                .file("o/b", "b")
                .dir("o/sub")
                .file("o/sub/x", "x")
                .opaque("o2")
                .file("o2/mid", "m"),
        )
        .lower(
            Layer::new()
                .file("o/c", "c")
                .file("o2/bottom", "b")
                .file("o2/mid", "older"),
        );
    let pair = Pair::new("opq", &layers);
    pair.step(|r| readdir(r.join("o")));
    pair.step(|r| readdir(r.join("o2")));
    for rel in [
        "o/b",
        "o/sub",
        "o/sub/x",
        "o/c",
        "o2/bottom",
        "o2/mid",
        "o2/top",
    ] {
        pair.step(|r| observe(r.join(rel)));
    }
    // The opaque xattr is overlay-private: not visible through the mount.
    pair.step(|r| listxattr(r.join("o")));
    pair.step(|r| getxattr(r.join("o"), "trusted.overlay.opaque"));
    pair.finish();
}

/// OCI markers are converted on the kernel side (the kernel shows them as plain files), so this
/// compares stratafs-with-OCI-markers against the kernel-with-real-whiteouts.
#[test]
fn oci_markers_honoured_and_hidden() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .oci_whiteout("gone")
                .oci_opaque("d")
                .file("d/new", "new")
                .oci_whiteout("e/x")
                .file("e/z", "z")
                .oci_whiteout("gonedir"),
        )
        .lower(
            Layer::new()
                .file("gone", "old")
                .file("d/old", "old")
                .dir("d/olddir")
                .file("e/x", "x")
                .file("e/y", "y")
                .dir("gonedir")
                .file("gonedir/f", "f")
                .oci_whiteout("deeper"),
        )
        .lower(
            Layer::new()
                .file("deeper", "hidden by layer 1")
                .file("d/older", "o"),
        );
    let pair = Pair::new("oci", &layers);
    pair.step(|r| readdir(r));
    pair.step(|r| readdir(r.join("d")));
    pair.step(|r| readdir(r.join("e")));
    for rel in [
        "gone",
        ".wh.gone",
        "d/old",
        "d/.wh..wh..opq",
        "e/x",
        "e/.wh.x",
        "gonedir",
        "gonedir/f",
        "deeper",
        ".wh.deeper",
    ] {
        pair.step(|r| observe(r.join(rel)));
    }
    // Re-creating a whited-out name, and a dir over a whited-out dir.
    pair.step(|r| write_file(r.join("gone"), "again"));
    pair.step(|r| mkdir(r.join("gonedir"), 0o755));
    pair.step(|r| readdir(r.join("gonedir")));
    pair.step(|r| write_file(r.join("d/new2"), "n"));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

#[test]
fn readdir_merged_each_name_once() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .file("both", "0")
                .dir("dir_over_file")
                .file("file_over_dir", "0")
                .whiteout("wh")
                .file("only0", "0")
                .symlink("lnk", "only0"),
        )
        .lower(
            Layer::new()
                .file("both", "1")
                .file("dir_over_file", "1")
                .dir("file_over_dir")
                .file("wh", "1")
                .file("only1", "1")
                .fifo("fifo1")
                .file("lnk", "1"),
        )
        .lower(Layer::new().file("both", "2").file("wh", "2").dir("only2"))
        .upper(
            Layer::new()
                .file("both", "u")
                .file("upper_only", "u")
                .whiteout("only1"),
        );
    let pair = Pair::new("rdonce", &layers);
    let names = pair.get(|r| {
        readdir_ordered(r).map(|mut v| {
            let n = v.len();
            v.sort();
            v.dedup();
            (v, n)
        })
    });
    let (list, n) = names.expect("readdir");
    assert_eq!(list.len(), n, "a name was listed twice: {list:?}");
    pair.step(|r| readdir_types(r));
    for name in list {
        pair.step(|r| observe(r.join(&name)));
    }
    pair.finish();
}

#[test]
fn readdir_telldir_seekdir_stable() {
    let mut l0 = Layer::new().dir("d");
    let mut l1 = Layer::new().dir("d");
    let mut up = Layer::new().dir("d");
    for i in 0..40 {
        l0 = l0.file(&format!("d/l0_{i:02}"), "x");
        l1 = l1.file(&format!("d/l1_{i:02}"), "x");
        if i % 3 == 0 {
            l1 = l1.file(&format!("d/l0_{i:02}"), "shadowed");
        }
        if i % 4 == 0 {
            up = up.file(&format!("d/u_{i:02}"), "u");
        }
        if i % 5 == 0 {
            up = up.whiteout(&format!("d/l1_{i:02}"));
        }
    }
    let pair = Pair::new("seekdir", &Layers::new().lower(l0).lower(l1).upper(up));
    // Read 25 names, remember the position, read the rest twice (after seekdir and after
    // rewinddir + seekdir): the continuation is identical; the whole listing has each name once.
    pair.step(|r| {
        let mut d = LibcDir::open(r.join("d"))?;
        let head = d.take(25);
        let pos = d.tell();
        let rest1 = d.rest();
        d.seek(pos);
        let rest2 = d.rest();
        d.rewind();
        let again = d.take(25);
        d.seek(pos);
        let rest3 = d.rest();
        let mut all: Vec<String> = head.iter().chain(rest1.iter()).cloned().collect();
        let total = all.len();
        all.sort();
        all.dedup();
        Ok::<_, Errno>((
            rest1 == rest2,
            rest1 == rest3,
            head == again,
            total == all.len(),
            all,
        ))
    });
    // Positions taken at every entry are stable too.
    pair.step(|r| {
        let mut d = LibcDir::open(r.join("d"))?;
        let mut marks = Vec::new();
        loop {
            let pos = d.tell();
            match d.next_name() {
                Some(n) => marks.push((pos, n)),
                None => break,
            }
        }
        let mut ok = true;
        for (pos, name) in marks.iter().rev() {
            d.seek(*pos);
            ok &= d.next_name().as_deref() == Some(name.as_str());
        }
        Ok::<_, Errno>((ok, marks.len()))
    });
    pair.finish();
}

/// getdents64 with a small buffer (a few entries per call), creating and removing fixed names
/// between calls. POSIX leaves it unspecified whether such names show up; names untouched
/// during the listing must appear exactly once. Compared, independently of the listing order:
/// whether any name created during the listing is returned, whether any name is returned after
/// its removal, and whether any name is returned twice.
#[test]
fn readdir_changed_while_listing() {
    let mut l0 = Layer::new().dir("merged").dir("loweronly");
    let mut up = Layer::new().dir("merged").dir("upperonly");
    for i in 0..30 {
        l0 = l0
            .file(&format!("merged/l{i:02}"), "x")
            .file(&format!("loweronly/l{i:02}"), "x");
        up = up
            .file(&format!("merged/u{i:02}"), "x")
            .file(&format!("upperonly/u{i:02}"), "x");
    }
    let pair = Pair::new("rdchg", &Layers::new().lower(l0).upper(up));
    for dir in ["merged", "loweronly", "upperonly"] {
        pair.step(|r| {
            let d = r.join(dir);
            let fd = open(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let mut seen: Vec<String> = Vec::new();
            let mut created: Vec<String> = Vec::new();
            // (name, number of names returned before it was removed)
            let mut removed: Vec<(String, usize)> = Vec::new();
            let mut round = 0;
            loop {
                let batch = getdents(fd.as_raw_fd(), 128)?;
                if batch.is_empty() {
                    break;
                }
                seen.extend(
                    batch
                        .into_iter()
                        .map(|(n, _, _)| n)
                        .filter(|n| n != "." && n != ".."),
                );
                round += 1;
                if round <= 3 {
                    let newname = format!("new{round}");
                    write_file(d.join(&newname), "n")?;
                    created.push(newname);
                    for v in [
                        format!("l{:02}", round * 9),
                        format!("u{:02}", round * 9 + 1),
                    ] {
                        match unlink(d.join(&v)) {
                            Ok(()) => removed.push((v, seen.len())),
                            Err(Errno::ENOENT) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            let count = |n: &String| seen.iter().filter(|s| *s == n).count();
            let final_list = readdir(&d)?;
            let untouched_once = final_list
                .iter()
                .filter(|n| !created.contains(n))
                .all(|n| count(n) == 1);
            let created_returned = created.iter().any(|n| count(n) > 0);
            let removed_returned_later = removed.iter().any(|(n, at)| seen[*at..].contains(n));
            let any_twice = seen.iter().any(|n| count(n) > 1);
            Ok::<_, Errno>((
                untouched_once,
                created_returned,
                removed_returned_later,
                any_twice,
                removed.len(),
                final_list.len(),
            ))
        });
    }
    pair.finish();
}

/// The order in which names are returned (not sorted). Deterministic for the kernel: the same
/// names on the same ext4 filesystem hash to the same order.
#[test]
fn readdir_order_matches_kernel() {
    let mut l0 = Layer::new().dir("merged").dir("loweronly");
    let mut l1 = Layer::new().dir("merged").dir("three");
    let mut up = Layer::new().dir("merged").dir("upperonly").dir("three");
    for i in 0..20 {
        l0 = l0
            .file(&format!("merged/l{i:02}"), "x")
            .file(&format!("loweronly/l{i:02}"), "x");
        l1 = l1
            .file(&format!("merged/b{i:02}"), "x")
            .file(&format!("three/b{i:02}"), "x");
        up = up
            .file(&format!("merged/u{i:02}"), "x")
            .file(&format!("upperonly/u{i:02}"), "x");
        if i % 2 == 0 {
            l1 = l1.file(&format!("merged/l{i:02}"), "shadowed");
            up = up.file(&format!("three/b{i:02}"), "shadowing");
        }
    }
    let pair = Pair::new("rdorder", &Layers::new().lower(l0).lower(l1).upper(up));
    for dir in ["", "merged", "loweronly", "upperonly", "three"] {
        pair.step(|r| readdir_ordered(r.join(dir)));
    }
    pair.finish();
}

#[test]
fn stat_of_merged_and_plain_dirs() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .dir("m")
                .mode(0o750)
                .owner(7, 8)
                .dir("m/s1")
                .dir("lo")
                .dir("lo/a")
                .dir("lo/b"),
        )
        .lower(
            Layer::new()
                .dir("m")
                .mode(0o700)
                .dir("m/s2")
                .dir("m/s3")
                .file("m/f", "f"),
        )
        .upper(Layer::new().dir("up").dir("up/x"));
    let pair = Pair::new("dirstat", &layers);
    for rel in ["", "m", "lo", "up", "m/s1", "m/s2"] {
        pair.step(|r| lstat(r.join(rel)));
        pair.step(|r| lstat_raw(r.join(rel)).map(|s| s.st_nlink));
    }
    pair.step(|r| mkdir(r.join("m/new"), 0o755));
    pair.step(|r| lstat_raw(r.join("m")).map(|s| s.st_nlink));
    pair.step(|r| lstat(r.join("m")));
    pair.finish();
}

#[test]
fn symlinks_resolve_in_merged_namespace() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .symlink("to_d", "d")
                .symlink("d/rel_up", "../top")
                .symlink("chain", "to_d/x"),
        )
        .lower(
            Layer::new()
                .dir("d")
                .file("d/x", "x in lower dir")
                .file("top", "top file"),
        )
        .upper(Layer::new().file("d/upx", "u").symlink("to_up", "d/upx"));
    let pair = Pair::new("symres", &layers);
    for rel in ["to_d", "to_d/x", "d/rel_up", "chain", "to_up"] {
        pair.step(|r| (lstat(r.join(rel)), stat(r.join(rel)), readlink(r.join(rel))));
    }
    pair.step(|r| read_str(r.join("chain")));
    pair.step(|r| read_str(r.join("d/rel_up")));
    pair.step(|r| readdir(r.join("to_d")));
    pair.step(|r| write_file(r.join("to_d/created_via_link"), "c"));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

//! unlink/rmdir and whiteouts, creation over whiteouts, opaque directories, rm -rf + mkdir
//! across remounts, ENOTEMPTY rules.

#![deny(unsafe_code)]

use e2e::*;

fn base_layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("lf", "lower file")
                .file("dir/lf2", "lower file in dir")
                .file("cu", "to be copied up")
                .dir("emptydir")
                .dir("ldir")
                .file("ldir/a", "a")
                .file("ldir/b", "b")
                .dir("ldir/sub")
                .file("ldir/sub/c", "c")
                .symlink("lsym", "lf")
                .fifo("lfifo"),
        )
        .lower(
            Layer::new()
                .file("ldir/from_below", "x")
                .dir("dir/belowdir"),
        )
        .upper(
            Layer::new()
                .file("uf", "upper only")
                .dir("udir")
                .file("udir/x", "x")
                .dir("uempty")
                .file("dir/uf2", "upper in merged dir"),
        )
}

#[test]
fn unlink_leaves_whiteout_only_where_lower_has_name() {
    let pair = Pair::new("unlinkwh", &base_layers());
    pair.step(|r| write_file(r.join("newf"), "new"));
    pair.step(|r| chmod(r.join("cu"), 0o600));
    for rel in [
        "lf", "dir/lf2", "uf", "dir/uf2", "newf", "cu", "lsym", "lfifo",
    ] {
        pair.step(|r| unlink(r.join(rel)));
        pair.step(|r| lstat(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)).map(|st| (st.kind, st.rdev)));
    }
    pair.step(|r| (readdir(r), readdir(r.join("dir"))));
    // Errors.
    pair.step(|r| unlink(r.join("lf")));
    pair.step(|r| unlink(r.join("ldir")));
    pair.step(|r| unlink(r.join("udir")));
    pair.step(|r| unlink(r.join("lf/x")));
    pair.step(|r| unlink(r.join("nothing/x")));
    pair.finish();
}

#[test]
fn rmdir_leaves_whiteout_only_where_lower_has_name() {
    let pair = Pair::new("rmdirwh", &base_layers());
    pair.step(|r| mkdir(r.join("newdir"), 0o755));
    pair.step(|r| chmod(r.join("emptydir"), 0o700));
    for rel in ["emptydir", "uempty", "newdir", "dir/belowdir"] {
        pair.step(|r| rmdir(r.join(rel)));
        pair.step(|r| lstat(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)).map(|st| (st.kind, st.rdev)));
    }
    pair.step(|r| (readdir(r), readdir(r.join("dir"))));
    pair.step(|r| rmdir(r.join("lf")));
    pair.step(|r| rmdir(r.join("emptydir")));
    pair.step(|r| rmdir(r.join("lsym")));
    pair.step(|r| rmdir(r.join(".")));
    pair.step(|r| rmdir(r.join("ldir/..")));
    pair.finish();
}

#[test]
fn create_over_whiteout_replaces_it() {
    let pair = Pair::new("overwh", &base_layers());
    for rel in ["lf", "dir/lf2", "lsym", "lfifo", "cu"] {
        pair.step(|r| unlink(r.join(rel)));
    }
    pair.step(|r| write_file(r.join("lf"), "new content"));
    pair.step(|r| symlink("somewhere", r.join("dir/lf2")));
    pair.step(|r| mkfifo(r.join("lsym"), 0o600));
    pair.step(|r| mkdir(r.join("lfifo"), 0o700));
    pair.step(|r| link(r.join("uf"), r.join("cu")));
    for rel in ["lf", "dir/lf2", "lsym", "lfifo", "cu", "uf"] {
        pair.step(|r| observe(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)));
    }
    // A whiteout in a lower layer is replaced the same way.
    pair.finish();
}

#[test]
fn create_over_lower_layer_whiteout() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .whiteout("gone")
                .whiteout("gonedir")
                .dir("d")
                .whiteout("d/x"),
        )
        .lower(
            Layer::new()
                .file("gone", "old")
                .dir("gonedir")
                .file("gonedir/old", "o")
                .file("d/x", "old x"),
        );
    let pair = Pair::new("overlwh", &layers);
    pair.step(|r| write_file(r.join("gone"), "new"));
    pair.step(|r| mkdir(r.join("gonedir"), 0o755));
    pair.step(|r| write_file(r.join("d/x"), "new x"));
    pair.step(|r| (readdir(r), readdir(r.join("gonedir")), readdir(r.join("d"))));
    pair.step_ctx(|s| {
        (
            lgetxattr(s.u("gonedir"), "trusted.overlay.opaque"),
            lstat(s.u("d/x")),
        )
    });
    pair.finish();
}

#[test]
fn mkdir_over_whited_out_dir_is_opaque() {
    let pair = Pair::new("mkdiropq", &base_layers());
    pair.step(|r| rm_rf(r.join("ldir")));
    pair.step(|r| lstat(r.join("ldir")));
    pair.step(|r| mkdir(r.join("ldir"), 0o750));
    pair.step(|r| (lstat(r.join("ldir")), readdir(r.join("ldir"))));
    pair.step(|r| (lstat(r.join("ldir/a")), lstat(r.join("ldir/from_below"))));
    pair.step_ctx(|s| lgetxattr(s.u("ldir"), "trusted.overlay.opaque"));
    pair.step(|r| write_file(r.join("ldir/a"), "fresh a"));
    pair.step(|r| (readdir(r.join("ldir")), read(r.join("ldir/a"))));
    // mkdir over the whiteout of a lower *file*.
    pair.step(|r| unlink(r.join("lf")));
    pair.step(|r| mkdir(r.join("lf"), 0o755));
    pair.step_ctx(|s| {
        (
            lstat(s.u("lf")),
            lgetxattr(s.u("lf"), "trusted.overlay.opaque"),
        )
    });
    // mkdir of a brand-new name is not opaque.
    pair.step(|r| mkdir(r.join("brandnew"), 0o755));
    pair.step_ctx(|s| lgetxattr(s.u("brandnew"), "trusted.overlay.opaque"));
    pair.finish();
}

#[test]
fn rm_rf_then_mkdir_survives_remount() {
    let mut pair = Pair::new("rmrfremount", &base_layers());
    pair.step(|r| rm_rf(r.join("ldir")));
    pair.step(|r| mkdir(r.join("ldir"), 0o755));
    pair.step(|r| write_file(r.join("ldir/new"), "new"));
    pair.step(|r| mkdir(r.join("ldir/sub"), 0o755));
    pair.step(|r| rm_rf(r.join("dir")));
    pair.step(|r| readdir(r));
    pair.remount();
    pair.step(|r| readdir(r));
    pair.step(|r| (readdir(r.join("ldir")), readdir(r.join("ldir/sub"))));
    pair.step(|r| {
        (
            lstat(r.join("ldir/a")),
            lstat(r.join("ldir/sub/c")),
            lstat(r.join("ldir/from_below")),
        )
    });
    pair.step(|r| (lstat(r.join("dir")), lstat(r.join("dir/lf2"))));
    pair.step(|r| read(r.join("ldir/new")));
    pair.finish();
}

#[test]
fn rmdir_nonempty_merged_dir_fails() {
    let layers = base_layers().lower(Layer::new().dir("onlybelow").file("onlybelow/f", "f"));
    let pair = Pair::new("notempty", &layers);
    // Entries only in lower, in upper and lower, only in upper, only in a deeper layer.
    for rel in ["ldir", "dir", "udir", "onlybelow", "ldir/sub"] {
        pair.step(|r| rmdir(r.join(rel)));
        pair.step(|r| readdir(r.join(rel)));
    }
    // Leaving one lower entry is still not empty.
    pair.step(|r| {
        (
            unlink(r.join("ldir/a")),
            unlink(r.join("ldir/b")),
            rm_rf(r.join("ldir/sub")),
        )
    });
    pair.step(|r| rmdir(r.join("ldir")));
    pair.step(|r| readdir(r.join("ldir")));
    pair.finish();
}

#[test]
fn rmdir_of_dir_with_all_lower_entries_whited_out() {
    let pair = Pair::new("rmdirwhited", &base_layers());
    pair.step(|r| {
        (
            unlink(r.join("ldir/a")),
            unlink(r.join("ldir/b")),
            unlink(r.join("ldir/from_below")),
        )
    });
    pair.step(|r| (unlink(r.join("ldir/sub/c")), rmdir(r.join("ldir/sub"))));
    pair.step(|r| readdir(r.join("ldir")));
    pair.step(|r| rmdir(r.join("ldir")));
    pair.step(|r| (lstat(r.join("ldir")), readdir(r)));
    pair.step_ctx(|s| lstat(s.u("ldir")).map(|st| st.kind));
    // Same with a dir containing files created (and deleted) through the mount.
    pair.step(|r| write_file(r.join("dir/tmp"), "t"));
    pair.step(|r| {
        (
            unlink(r.join("dir/tmp")),
            unlink(r.join("dir/lf2")),
            unlink(r.join("dir/uf2")),
        )
    });
    pair.step(|r| rmdir(r.join("dir/belowdir")));
    pair.step(|r| rmdir(r.join("dir")));
    pair.step(|r| lstat(r.join("dir")));
    pair.finish();
}

#[test]
fn rmdir_of_dir_emptied_by_lower_whiteouts() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .dir("d")
                .whiteout("d/x")
                .whiteout("d/y")
                .opaque("o"),
        )
        .lower(
            Layer::new()
                .dir("d")
                .file("d/x", "x")
                .dir("d/y")
                .file("d/y/z", "z")
                .dir("o")
                .file("o/hidden", "h"),
        );
    let pair = Pair::new("rmdirlwh", &layers);
    pair.step(|r| (readdir(r.join("d")), readdir(r.join("o"))));
    pair.step(|r| rmdir(r.join("d")));
    pair.step(|r| rmdir(r.join("o")));
    pair.step(|r| (lstat(r.join("d")), lstat(r.join("o")), readdir(r)));
    pair.step(|r| mkdir(r.join("d"), 0o755));
    pair.step(|r| readdir(r.join("d")));
    pair.finish();
}

#[test]
fn nested_create_and_delete_in_lower_dirs() {
    let pair = Pair::new("nested", &base_layers());
    pair.step(|r| mkdir(r.join("ldir/sub/new"), 0o755));
    pair.step(|r| write_file(r.join("ldir/sub/new/f"), "f"));
    pair.step(|r| mkdir_p(r.join("ldir/sub/p/q/r")));
    pair.step(|r| readdir(r.join("ldir/sub")));
    pair.step(|r| rm_rf(r.join("ldir/sub")));
    pair.step(|r| readdir(r.join("ldir")));
    pair.step(|r| mkdir(r.join("ldir/sub"), 0o755));
    pair.step(|r| readdir(r.join("ldir/sub")));
    pair.finish();
}

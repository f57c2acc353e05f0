//! rename(2) and renameat2(2): files from any layer, directories (upper-only vs lower/merged →
//! EXDEV), RENAME_NOREPLACE, RENAME_EXCHANGE, renames over whiteouts.

#![deny(unsafe_code)]

use e2e::*;

fn layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("la", "lower a")
                .mode(0o640)
                .owner(1000, 1000)
                .xattr("user.x", "1")
                .file("lb", "lower b")
                .file("lc", "lower c")
                .file("ld", "lower d")
                .dir("ldir")
                .file("ldir/f", "f in ldir")
                .dir("ldir/inner")
                .dir("lempty")
                .dir("mdir")
                .file("mdir/lower_part", "m")
                .symlink("lsym", "la")
                .file("hl1", "hard linked")
                .hardlink("hl2", "hl1"),
        )
        .lower(
            Layer::new()
                .file("ldir/below", "below")
                .dir("deepdir/x")
                .file("deepdir/x/y", "y"),
        )
        .upper(
            Layer::new()
                .file("ua", "upper a")
                .file("ub", "upper b")
                .dir("udir")
                .file("udir/f", "f in udir")
                .dir("udir2")
                .dir("uempty")
                .file("mdir/upper_part", "u"),
        )
}

/// Sorted listings of the directories the rename tests play with.
fn names(r: &std::path::Path) -> Vec<R<Vec<String>>> {
    ["", "ldir", "udir", "mdir"]
        .iter()
        .map(|d| readdir(r.join(d)))
        .collect()
}

#[test]
fn rename_files_from_every_layer() {
    let pair = Pair::new("renfiles", &layers());
    pair.step(|r| rename(r.join("la"), r.join("la_renamed")));
    pair.step(|r| {
        (
            lstat(r.join("la")),
            observe(r.join("la_renamed")),
            listxattr(r.join("la_renamed")),
        )
    });
    pair.step(|r| mtime(r.join("la_renamed")).map(|t| t == FIXED_TIME));
    pair.step(|r| rename(r.join("ua"), r.join("ua_renamed")));
    pair.step(|r| (lstat(r.join("ua")), observe(r.join("ua_renamed"))));
    pair.step(|r| write_file(r.join("new"), "new"));
    pair.step(|r| rename(r.join("new"), r.join("new_renamed")));
    pair.step(|r| rename(r.join("lsym"), r.join("lsym2")));
    pair.step(|r| (readlink(r.join("lsym2")), read(r.join("lsym2"))));
    // Renaming to itself is a no-op (no copy-up).
    pair.step(|r| rename(r.join("lc"), r.join("lc")));
    pair.step_ctx(|s| exists(s.u("lc")));
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_files_over_existing_files() {
    let pair = Pair::new("renover", &layers());
    pair.step(|r| rename(r.join("la"), r.join("lb")));
    pair.step(|r| rename(r.join("ua"), r.join("lc")));
    pair.step(|r| rename(r.join("ld"), r.join("ub")));
    pair.step(|r| write_file(r.join("n1"), "n1"));
    pair.step(|r| rename(r.join("n1"), r.join("ub")));
    for rel in ["la", "lb", "lc", "ld", "ua", "ub", "n1"] {
        pair.step(|r| observe(r.join(rel)));
    }
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_files_into_other_dirs() {
    let pair = Pair::new("rendirs", &layers());
    pair.step(|r| rename(r.join("la"), r.join("ldir/la")));
    pair.step(|r| rename(r.join("ldir/f"), r.join("udir/f_from_ldir")));
    pair.step(|r| rename(r.join("udir/f"), r.join("ldir/inner/f_from_udir")));
    pair.step(|r| rename(r.join("ldir/below"), r.join("deepdir/x/below")));
    pair.step(|r| rename(r.join("ub"), r.join("mdir/ub")));
    pair.step(|r| rename(r.join("mdir/lower_part"), r.join("lower_part")));
    pair.step(|r| rename(r.join("lb"), r.join("nodir/lb")));
    pair.step(|r| rename(r.join("lb"), r.join("la/lb")));
    for rel in ["ldir", "udir", "ldir/inner", "deepdir/x", "mdir"] {
        pair.step(|r| readdir(r.join(rel)));
    }
    pair.step(|r| {
        (
            read(r.join("ldir/la")),
            read(r.join("deepdir/x/below")),
            read(r.join("lower_part")),
        )
    });
    pair.finish();
}

#[test]
fn rename_upper_only_dirs() {
    let pair = Pair::new("renudir", &layers());
    pair.step(|r| rename(r.join("udir"), r.join("udir_renamed")));
    pair.step(|r| (readdir(r.join("udir_renamed")), lstat(r.join("udir"))));
    pair.step(|r| mkdir(r.join("fresh"), 0o755));
    pair.step(|r| write_file(r.join("fresh/f"), "f"));
    // Into a merged dir: the kernel marks it opaque.
    pair.step(|r| rename(r.join("fresh"), r.join("ldir/fresh")));
    pair.step_ctx(|s| lgetxattr(s.u("ldir/fresh"), "trusted.overlay.opaque"));
    pair.step(|r| readdir(r.join("ldir/fresh")));
    // Over an empty upper dir; over a non-empty one; over a file; file over dir.
    pair.step(|r| rename(r.join("udir_renamed"), r.join("uempty")));
    pair.step(|r| readdir(r.join("uempty")));
    pair.step(|r| mkdir(r.join("another"), 0o755));
    pair.step(|r| rename(r.join("another"), r.join("uempty")));
    pair.step(|r| rename(r.join("another"), r.join("ua")));
    pair.step(|r| rename(r.join("ua"), r.join("another")));
    // Over a lower (empty) dir and a merged dir.
    pair.step(|r| rename(r.join("another"), r.join("lempty")));
    pair.step(|r| (lstat(r.join("lempty")), readdir(r.join("lempty"))));
    pair.step(|r| rename(r.join("udir2"), r.join("mdir")));
    // A dir into its own subdirectory.
    pair.step(|r| rename(r.join("uempty"), r.join("uempty/newsub")));
    pair.step(|r| rename(r.join("ldir"), r.join("ldir/inner/x")));
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_lower_or_merged_dir_is_exdev() {
    let pair = Pair::new("renexdev", &layers());
    pair.step(|r| rename(r.join("ldir"), r.join("ldir_renamed")));
    pair.step(|r| rename(r.join("lempty"), r.join("lempty2")));
    pair.step(|r| rename(r.join("mdir"), r.join("mdir2")));
    pair.step(|r| rename(r.join("ldir/inner"), r.join("udir/inner")));
    pair.step(|r| rename(r.join("deepdir"), r.join("udir/deepdir")));
    // After copy-up (chmod) a lower dir is still not renamable.
    pair.step(|r| chmod(r.join("lempty"), 0o700));
    pair.step(|r| rename(r.join("lempty"), r.join("lempty3")));
    // A lower dir's name can be reused after rmdir.
    pair.step(|r| rmdir(r.join("lempty")));
    pair.step(|r| rename(r.join("uempty"), r.join("lempty")));
    pair.step_ctx(|s| lgetxattr(s.u("lempty"), "trusted.overlay.opaque"));
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_noreplace() {
    let pair = Pair::new("rennorepl", &layers());
    pair.step(|r| rename2(r.join("la"), r.join("lb"), RENAME_NOREPLACE));
    pair.step(|r| rename2(r.join("la"), r.join("ua"), RENAME_NOREPLACE));
    pair.step(|r| rename2(r.join("ua"), r.join("lb"), RENAME_NOREPLACE));
    pair.step(|r| rename2(r.join("udir"), r.join("ldir"), RENAME_NOREPLACE));
    pair.step(|r| rename2(r.join("la"), r.join("free"), RENAME_NOREPLACE));
    // Onto a whited-out name: the name does not exist, so it works.
    pair.step(|r| unlink(r.join("lc")));
    pair.step(|r| rename2(r.join("ua"), r.join("lc"), RENAME_NOREPLACE));
    pair.step(|r| rmdir(r.join("lempty")));
    pair.step(|r| rename2(r.join("udir2"), r.join("lempty"), RENAME_NOREPLACE));
    for rel in ["la", "lb", "lc", "ua", "free", "lempty", "udir2"] {
        pair.step(|r| observe(r.join(rel)));
    }
    pair.finish();
}

#[test]
fn rename_exchange() {
    let pair = Pair::new("renexch", &layers());
    pair.step(|r| rename2(r.join("la"), r.join("lb"), RENAME_EXCHANGE));
    pair.step(|r| (read(r.join("la")), read(r.join("lb"))));
    pair.step(|r| rename2(r.join("lc"), r.join("ua"), RENAME_EXCHANGE));
    pair.step(|r| (read(r.join("lc")), read(r.join("ua"))));
    pair.step(|r| rename2(r.join("ub"), r.join("udir"), RENAME_EXCHANGE));
    pair.step(|r| (lstat(r.join("ub")), lstat(r.join("udir"))));
    pair.step(|r| rename2(r.join("ld"), r.join("missing"), RENAME_EXCHANGE));
    pair.step(|r| rename2(r.join("ld"), r.join("ldir"), RENAME_EXCHANGE));
    pair.step(|r| rename2(r.join("udir2"), r.join("mdir"), RENAME_EXCHANGE));
    pair.step(|r| rename2(r.join("ld"), r.join("ldir/f"), RENAME_EXCHANGE));
    pair.step(|r| (read(r.join("ld")), read(r.join("ldir/f"))));
    pair.step(|r| {
        rename2(
            r.join("la"),
            r.join("lb"),
            RENAME_EXCHANGE | RENAME_NOREPLACE,
        )
    });
    // Exchange with a whited-out name fails like a missing name.
    pair.step(|r| unlink(r.join("hl2")));
    pair.step(|r| rename2(r.join("hl1"), r.join("hl2"), RENAME_EXCHANGE));
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_over_whiteout() {
    let pair = Pair::new("renoverwh", &layers());
    pair.step(|r| unlink(r.join("lb")));
    pair.step(|r| rename(r.join("la"), r.join("lb")));
    pair.step(|r| unlink(r.join("lc")));
    pair.step(|r| rename(r.join("ua"), r.join("lc")));
    pair.step(|r| rm_rf(r.join("ldir")));
    pair.step(|r| rename(r.join("udir"), r.join("ldir")));
    pair.step(|r| (readdir(r.join("ldir")), lstat(r.join("ldir/below"))));
    pair.step_ctx(|s| lgetxattr(s.u("ldir"), "trusted.overlay.opaque"));
    for rel in ["la", "lb", "lc", "ua", "udir"] {
        pair.step(|r| observe(r.join(rel)));
        pair.step_ctx(|s| lstat(s.u(rel)).map(|st| (st.kind, st.rdev)));
    }
    pair.finish();
}

#[test]
fn rename_whiteout_flag_and_bad_flags() {
    let pair = Pair::new("renflags", &layers());
    pair.step(|r| rename2(r.join("la"), r.join("lwh"), RENAME_WHITEOUT));
    pair.step(|r| rename2(r.join("ua"), r.join("uwh"), RENAME_WHITEOUT));
    pair.step(|r| rename2(r.join("ua"), r.join("x"), 0x100));
    pair.step(names);
    pair.finish();
}

#[test]
fn rename_hardlinked_lower_file() {
    let pair = Pair::new("renhl", &layers());
    pair.step(|r| rename(r.join("hl1"), r.join("hl1_renamed")));
    pair.step(|r| (lstat(r.join("hl1_renamed")), lstat(r.join("hl2"))));
    pair.step(|r| append(r.join("hl1_renamed"), "+x"));
    pair.step(|r| (read(r.join("hl1_renamed")), read(r.join("hl2"))));
    pair.finish();
}

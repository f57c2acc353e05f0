//! Regression tests: minimal reproducers of the bugs found by the randomized differential
//! tests (tests/tests/random_diff.rs, `e2e::random`), as printed by its shrinker (some tidied
//! by hand). A test marked `#[ignore = "stratafs bug: ..."]` documents an open bug: it fails
//! until the bug is fixed, then the `ignore` goes. Re-run one with
//! `cargo test -p e2e --test regressions -- --ignored NAME`, or its original sequence with
//! `RANDOM_REPLAY=SEED cargo test -p e2e --test random_diff`.

#![deny(unsafe_code)]

use e2e::random::*;
use e2e::*;

/// Found by random_diff (RANDOM_REPLAY=2678725202693368915, also 1309615453366410960 and many
/// more): copy-up breaks a lower hard link (the upper copy has nlink 1, as the kernel shows at
/// once), but stratafs keeps reporting the lower file's nlink (2) for the copied-up name.
#[test]
fn random_252cbe611d6cac53() {
    let layers = Layers::new()
        .lower(
            Layer::new()
                .dir("q")
                .file("q/a", "L0########")
                .dir("q/b")
                .dir("q/b/y")
                .hardlink("q/b/y/z", "q/a"),
        )
        .lower(Layer::new().dir("q"));
    replay(
        "random_252cbe611d6cac53",
        &layers,
        [Op::Append {
            path: "b/y/z".into(),
            data: Content::Text("".into()),
        }],
    );
}

/// Found by random_diff (RANDOM_REPLAY=591954602782686277; also 15343681094727372234,
/// 77528257934035286, 4857008708890212963, 2115148819562884359, 1214177357970863644): two
/// names of one upper inode (a hard link) are separate FUSE nodes. After a write (even of zero
/// bytes) through an fd of name b, a write through name d is not seen through b: b keeps its
/// old size and mtime, so reads through b are short. The other sequences show the same for
/// truncate, chmod and contents.
#[test]
fn random_08370b932e04fc45() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q"))
        .lower(Layer::new().dir("q"))
        .upper(
            Layer::new()
                .dir("q")
                .file("q/b", "U##########")
                .hardlink("q/d", "q/b"),
        );
    replay(
        "random_08370b932e04fc45",
        &layers,
        [
            Op::Open {
                path: "b".into(),
                flags: libc::O_RDWR,
                mode: 0o644,
                slot: Some(2),
            },
            Op::FdWrite {
                slot: 2,
                off: 70000,
                data: Content::Text("".into()),
            },
            Op::Write {
                path: "d".into(),
                off: 4096,
                data: Content::Text("d".into()),
            },
            Op::Stat { path: "b".into() },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=17349321207399112347; also 7751426038739279067 and
/// others): a MAP_SHARED write through an fd opened O_RDWR|O_APPEND is written back by
/// stratafs at the end of the file (its backing fd has O_APPEND, so the page's pwrite appends):
/// the 9-byte file becomes 18 bytes instead of having 5 bytes replaced at offset 4.
#[test]
fn random_f0c52bb7ad2cde9b() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q").file("q/a", "L1#######"))
        .lower(Layer::new().dir("q"));
    replay(
        "random_f0c52bb7ad2cde9b",
        &layers,
        [
            Op::Open {
                path: "a".into(),
                flags: libc::O_RDWR | libc::O_APPEND,
                mode: 0o644,
                slot: Some(1),
            },
            Op::FdMmapWrite {
                slot: 1,
                off: 4000,
                data: Content::Text("w15mm".into()),
            },
            Op::Stat { path: "a".into() },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=10940094668344101683): fstat of an open fifo whose name
/// was then replaced by a rename fails with ENOENT (the kernel returns the fifo's attributes).
#[test]
fn random_97d3062343cb8b33() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q").file("q/c", "L0###"))
        .lower(Layer::new().dir("q").fifo("q/b"));
    replay(
        "random_97d3062343cb8b33",
        &layers,
        [
            Op::Open {
                path: "b".into(),
                flags: libc::O_RDWR,
                mode: 0o644,
                slot: Some(2),
            },
            Op::Rename {
                from: "c".into(),
                to: "b".into(),
                flags: 0,
            },
            Op::FdStat { slot: 2 },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=79156532629140612): renaming an upper-only directory
/// over a non-empty directory fails with ENOTEMPTY on both, but the kernel has already marked
/// the source opaque (ovl_rename sets the opaque xattr before vfs_rename when a pure-upper
/// directory moves within a merged parent) and leaves the marker; stratafs does not. Invisible
/// in the merged view; the upper layers differ.
#[test]
fn random_011938727102f484() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q"))
        .lower(Layer::new().dir("q"))
        .upper(Layer::new().dir("q").dir("q/a").fifo("q/a/y").dir("q/c"));
    replay(
        "random_011938727102f484",
        &layers,
        [Op::Rename {
            from: "c".into(),
            to: "a".into(),
            flags: 0,
        }],
    );
}

/// Found by random_diff (RANDOM_REPLAY=6320021700785521234; also 4341952421108199927 and
/// 5293640001971304277, where only nlink differs: 1 instead of 0): an fd opened read-only on a lower
/// file follows the copy-up for reads ("xd" on both), but once the name is unlinked, fstat of
/// that fd reports the lower file (size 1, nlink 1, the old mtime) where the kernel reports
/// the copied-up file (size 2, nlink 0).
#[test]
fn random_57b53a408014c252() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q"))
        .lower(Layer::new().dir("q").file("q/c", "x"));
    replay(
        "random_57b53a408014c252",
        &layers,
        [
            Op::Open {
                path: "c".into(),
                flags: libc::O_RDONLY,
                mode: 0o644,
                slot: Some(3),
            },
            Op::Append {
                path: "c".into(),
                data: Content::Text("d".into()),
            },
            Op::Unlink { path: "c".into() },
            Op::FdRead {
                slot: 3,
                off: 0,
                len: 200000,
            },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=12771423085663347545): fstat of an open fifo after its
/// name was unlinked fails with ENOENT (the kernel: the fifo, nlink 0). Same family as
/// `random_97d3062343cb8b33` (renamed over) and `random_43899d7691a24d7d` (a directory).
#[test]
fn random_b13d35a1692fe359() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q"))
        .lower(Layer::new().dir("q"));
    replay(
        "random_b13d35a1692fe359",
        &layers,
        [
            Op::Mkfifo {
                path: "b".into(),
                mode: 0o600,
            },
            Op::Open {
                path: "b".into(),
                flags: libc::O_RDWR,
                mode: 0o644,
                slot: Some(2),
            },
            Op::Unlink { path: "b".into() },
            Op::FdWriteSeq {
                slot: 2,
                data: Content::Text("d".into()),
            },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=4866594004925566333; also 2887301550297236859,
/// 3668308801542366915; fifos: 6880790610393833406, 3813247498802548799): fstat of an open directory after
/// rmdir fails with ENOENT (the kernel returns the directory's attributes).
#[test]
fn random_43899d7691a24d7d() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q").dir("q/e"))
        .lower(Layer::new().dir("q"));
    replay(
        "random_43899d7691a24d7d",
        &layers,
        [
            Op::Open {
                path: "e".into(),
                flags: libc::O_RDONLY,
                mode: 0o644,
                slot: Some(0),
            },
            Op::Rmdir { path: "e".into() },
            Op::FdStat { slot: 0 },
        ],
    );
}

/// Found by random_diff (RANDOM_REPLAY=8718722407311893207, and some 250 more sequences of the
/// CI seed) once c9022ff ("Kernel caching": long timeouts, FOPEN_KEEP_CACHE) was in: the kernel
/// lists a merged directory's upper entries first, so copying `e` up (chown) moves it before
/// the lower-only `c`; stratafs still lists the directory in its pre-copy-up order ([c, e]).
#[test]
fn random_78ff1fd5ef1062d7() {
    let layers = Layers::new()
        .lower(Layer::new().dir("q").file("q/c", "L2###").file("q/e", "L2"))
        .lower(Layer::new().dir("q"));
    replay(
        "random_78ff1fd5ef1062d7",
        &layers,
        [
            Op::Readdir { path: "".into() },
            Op::Chown {
                path: "e".into(),
                uid: 1000,
                gid: u32::MAX,
            },
            Op::Readdir { path: "".into() },
        ],
    );
}

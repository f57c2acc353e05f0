//! Self-checks of the harness: the comparisons must catch differences, lower-layer changes must
//! be detected, and a failing test must still unmount and clean up.

#![deny(unsafe_code)]

use e2e::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn layers() -> Layers {
    Layers::new()
        .lower(
            Layer::new()
                .file("f", "lower")
                .dir("d")
                .file("d/x", "x")
                .oci_whiteout("gone"),
        )
        .lower(Layer::new().file("gone", "hidden"))
}

fn mounts_under(root: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| std::path::Path::new(m).starts_with(root))
        .collect()
}

/// Runs `f` on a fresh pair, expects a panic whose message contains `needle`, then checks that
/// everything was unmounted and removed.
fn expect_failure(name: &str, needle: &str, f: impl FnOnce(Pair)) {
    let pair = Pair::new(name, &layers());
    let root: PathBuf = pair.root.clone();
    let err = catch_unwind(AssertUnwindSafe(|| f(pair)))
        .expect_err("the harness did not detect the difference");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains(needle), "unexpected panic message: {msg}");
    assert_eq!(
        mounts_under(&root),
        Vec::<String>::new(),
        "mounts left behind"
    );
    assert!(!root.exists(), "temp root left behind: {}", root.display());
}

#[test]
fn harness_detects_different_step_results() {
    expect_failure("hs_step", "results differ", |pair| {
        pair.step_ctx(|s| s.label.to_string());
    });
}

#[test]
fn harness_detects_upper_differences() {
    expect_failure("hs_upper", "upper layers differ", |pair| {
        std::fs::write(pair.s.u("extra"), "x").unwrap();
        pair.check_uppers();
    });
    expect_failure("hs_upper2", "upper layers differ", |pair| {
        pair.step(|r| write_file(r.join("new"), "same"));
        chmod(pair.s.u("new"), 0o600).unwrap();
        pair.check_uppers();
    });
}

#[test]
fn harness_detects_lower_modifications() {
    expect_failure("hs_lower1", "lower layers modified", |pair| {
        write_at(pair.s.l(0, "f"), 0, "L").unwrap();
        pair.check_lowers();
    });
    expect_failure("hs_lower2", "lower layers modified", |pair| {
        chmod(pair.k.l(1, "gone"), 0o600).unwrap();
        pair.check_lowers();
    });
    expect_failure("hs_lower3", "lower layers modified", |pair| {
        // Same bytes, new mtime.
        utimens(pair.s.l(0, "d/x"), Ts::Omit, Ts::Now).unwrap();
        pair.check_lowers();
    });
    expect_failure("hs_lower4", "lower layers modified", |pair| {
        setxattr(pair.s.l(0, "d"), "user.added", "1", 0).unwrap();
        pair.check_lowers();
    });
    // Detected in Drop too when finish() is not called.
    expect_failure("hs_lower5", "lower layers modified", |pair| {
        std::fs::write(pair.s.l(1, "newfile"), "x").unwrap();
        drop(pair);
    });
}

#[test]
fn harness_detects_merged_view_differences_at_finish() {
    // A file put directly into one upper dir shows up in the view, upper and remount checks.
    expect_failure("hs_view", "differ", |pair| {
        std::fs::write(pair.s.u("sneaky"), "x").unwrap();
        pair.finish();
    });
}

#[test]
fn harness_materializes_specs() {
    let pair = Pair::new("hs_spec", &layers());
    // Kernel side: OCI markers converted; stratafs side: kept unless in selftest mode.
    let k = lstat(pair.k.l(0, "gone")).unwrap();
    assert_eq!((k.kind, k.rdev), (Kind::Char, Some((0, 0))));
    assert!(!exists(pair.k.l(0, ".wh.gone")));
    if selftest() {
        assert!(exists(pair.s.l(0, "gone")));
    } else {
        assert_eq!(lstat(pair.s.l(0, ".wh.gone")).unwrap().kind, Kind::File);
        assert!(!exists(pair.s.l(0, "gone")));
    }
    assert_eq!(mtime(pair.k.l(0, "f")).unwrap(), FIXED_TIME);
    assert_eq!(mtime(pair.s.l(1, "")).unwrap(), FIXED_TIME);
    // Mounts are what they should be.
    assert_eq!(statfs(&pair.k.mnt).unwrap().ftype, 0x794c_7630);
    let want = if selftest() { 0x794c_7630 } else { 0x6573_5546 };
    assert_eq!(statfs(&pair.s.mnt).unwrap().ftype, want);
    pair.step(|r| read_str(r.join("f")));
    pair.finish();
}

#[test]
fn harness_as_user_switches_credentials() {
    let ids = |_: ()| {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        let gid = status
            .lines()
            .find(|l| l.starts_with("Gid:"))
            .unwrap()
            .to_string();
        let caps = status
            .lines()
            .find(|l| l.starts_with("CapEff:"))
            .unwrap()
            .to_string();
        (uid, gid, caps)
    };
    let (uid, gid, caps) = as_user(65534, 65533, || ids(()));
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4]
    );
    assert_eq!(
        gid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65533"; 4]
    );
    assert!(caps.ends_with("0000000000000000"), "{caps}");
    // The calling thread is unaffected.
    let (uid, _, _) = ids(());
    assert_eq!(uid.split_whitespace().nth(1), Some("0"));
}

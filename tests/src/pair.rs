//! The pair: the kernel overlay and stratafs side by side on identical directory sets.

use crate::*;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// With E2E_TRACE=1, prints every step's (kernel) result with its location.
#[track_caller]
fn trace<T: fmt::Debug>(name: &str, v: &T) {
    if std::env::var_os("E2E_TRACE").is_some() {
        eprintln!("[{name}] {}: {v:?}", std::panic::Location::caller());
    }
}

pub(crate) fn panic_msg(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "check panicked".to_string())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Both sides' values of something.
#[derive(Debug)]
pub struct Both<T> {
    pub k: T,
    pub s: T,
}

impl<T> Both<T> {
    pub fn get(&self, side: &Side) -> &T {
        match side.label {
            "kernel" => &self.k,
            _ => &self.s,
        }
    }
}

/// The kernel overlay (`k`) and stratafs (`s`) mounted on two identical directory sets.
pub struct Pair {
    pub name: String,
    pub root: PathBuf,
    pub k: Side,
    pub s: Side,
    layers: Layers,
    lower_snap: Option<(Tree, Tree)>,
    finished: bool,
    rw: bool,
    /// E2E_SOFT=1: mismatches are recorded and reported together at the end.
    soft: bool,
    failures: std::sync::Mutex<Vec<String>>,
}

fn lower_opts() -> SnapOpts {
    SnapOpts {
        exact: true,
        ..SnapOpts::default()
    }
}

fn upper_opts(roots: &[String]) -> SnapOpts {
    SnapOpts {
        whiteouts: true,
        overlay_xattrs: true,
        roots: roots.to_vec(),
        ..SnapOpts::default()
    }
}

impl Pair {
    /// A read-write pair (lowers + upper + work).
    pub fn new(name: &str, layers: &Layers) -> Pair {
        Pair::build(name, layers, true)
    }

    /// A read-only pair (lowers only). The kernel needs at least two lower layers without an
    /// upper layer: an empty bottom layer is added when the spec has only one.
    pub fn ro(name: &str, layers: &Layers) -> Pair {
        let mut l = layers.clone();
        assert!(l.upper.is_none(), "read-only pair with an upper layer");
        while l.lowers.len() < 2 {
            l.lowers.push(Layer::new());
        }
        Pair::build(name, &l, false)
    }

    fn build(name: &str, layers: &Layers, rw: bool) -> Pair {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("e2e-{name}-{}-{n}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove stale temp root");
        }
        fs::create_dir_all(&root).expect("create temp root");
        let mut layers = layers.clone();
        if layers.lowers.is_empty() {
            layers.lowers.push(Layer::new());
        }
        let mk_side = |label: &'static str, imp: Impl| -> Side {
            let set = root.join(if label == "kernel" { "k" } else { "s" });
            let lowers: Vec<PathBuf> = (0..layers.lowers.len())
                .map(|i| set.join("L").join(i.to_string()))
                .collect();
            Side {
                label,
                imp,
                mnt: set.join("m"),
                upper: rw.then(|| set.join("u")),
                work: rw.then(|| set.join("w")),
                lowers,
                set,
                mounted: false,
                pids: Vec::new(),
                mounts: 0,
            }
        };
        let simp = if selftest() {
            Impl::Kernel
        } else {
            Impl::Strata
        };
        let mut pair = Pair {
            name: name.to_string(),
            root: root.clone(),
            k: mk_side("kernel", Impl::Kernel),
            s: mk_side("stratafs", simp),
            layers,
            lower_snap: None,
            finished: false,
            rw,
            soft: std::env::var("E2E_SOFT").map(|v| v == "1").unwrap_or(false),
            failures: std::sync::Mutex::new(Vec::new()),
        };
        // Materialize both sets (the Pair exists already, so a panic here still cleans up).
        // Order matters: materializing sets fixed times over the whole target dir, so the
        // outside content (set root) and the trap (set/L) come before the layers.
        for side in [&pair.k, &pair.s] {
            let oci_native = side.imp == Impl::Strata;
            fs::create_dir_all(&side.set).expect("mkdir set");
            if let Some(o) = &pair.layers.outside {
                o.materialize(&side.set, &side.set, false);
            }
            fs::create_dir_all(side.set.join("L")).expect("mkdir L");
            if let Some(t) = &pair.layers.trap {
                t.materialize(&side.set.join("L"), &side.set, false);
            }
            fs::create_dir_all(&side.mnt).expect("mkdir mnt");
            for (i, l) in pair.layers.lowers.iter().enumerate() {
                fs::create_dir_all(&side.lowers[i]).expect("mkdir lower");
                l.materialize(&side.lowers[i], &side.set, oci_native);
            }
            if let (Some(u), Some(w)) = (&side.upper, &side.work) {
                fs::create_dir_all(u).expect("mkdir upper");
                fs::create_dir_all(w).expect("mkdir work");
                if let Some(ul) = &pair.layers.upper {
                    ul.materialize(u, &side.set, false);
                }
            }
        }
        pair.lower_snap = Some((
            snapshot_with(&pair.k.set.join("L"), &lower_opts()),
            snapshot_with(&pair.s.set.join("L"), &lower_opts()),
        ));
        pair.k.mount();
        pair.s.mount();
        pair
    }

    fn roots(&self) -> Vec<String> {
        vec![
            self.k.set.to_str().unwrap().to_string(),
            self.s.set.to_str().unwrap().to_string(),
        ]
    }

    /// Runs `f` on both mount roots (kernel first) and asserts equal results.
    #[track_caller]
    pub fn step<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Path) -> T) {
        self.get_ctx(|s| f(&s.mnt));
    }

    /// Like [`Pair::step`], returning the (equal) result.
    #[track_caller]
    pub fn get<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Path) -> T) -> T {
        self.get_ctx(|s| f(&s.mnt))
    }

    /// Like [`Pair::step`], with the whole [`Side`] (mount, upper, lower paths, set root).
    #[track_caller]
    pub fn step_ctx<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Side) -> T) {
        self.get_ctx(f);
    }

    /// Like [`Pair::step_ctx`], returning the (equal) result.
    #[track_caller]
    pub fn get_ctx<T: PartialEq + fmt::Debug>(&self, f: impl Fn(&Side) -> T) -> T {
        let k = f(&self.k);
        let s = f(&self.s);
        self.agree(k, s)
    }

    /// Like [`Pair::step_ctx`] with per-side state (e.g. open fds from [`Pair::both`]).
    #[track_caller]
    pub fn step_with<S, T: PartialEq + fmt::Debug>(
        &self,
        st: &Both<S>,
        f: impl Fn(&Side, &S) -> T,
    ) {
        self.get_with(st, f);
    }

    /// Like [`Pair::step_with`], returning the (equal) result.
    #[track_caller]
    pub fn get_with<S, T: PartialEq + fmt::Debug>(
        &self,
        st: &Both<S>,
        f: impl Fn(&Side, &S) -> T,
    ) -> T {
        let k = f(&self.k, &st.k);
        let s = f(&self.s, &st.s);
        self.agree(k, s)
    }

    /// The kernel's result `k` of a step, after checking stratafs's `s` equals it (a mismatch
    /// fails the step at the caller's location).
    #[track_caller]
    fn agree<T: PartialEq + fmt::Debug>(&self, k: T, s: T) -> T {
        trace(&self.name, &k);
        if k != s {
            self.fail(format!(
                "[{}] step at {}: results differ\n  kernel:   {k:?}\n  stratafs: {s:?}",
                self.name,
                std::panic::Location::caller()
            ));
        }
        k
    }

    /// Records a failure (E2E_SOFT=1) or panics with it.
    pub fn fail(&self, msg: String) {
        if self.soft {
            eprintln!("{msg}");
            self.failures.lock().unwrap().push(msg);
        } else {
            panic!("{msg}");
        }
    }

    /// Runs a check; in soft mode a panic of the check is recorded instead.
    fn soft_check(&self, f: impl FnOnce()) {
        if !self.soft {
            return f();
        }
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.failures.lock().unwrap().push(panic_msg(&e));
        }
    }

    fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.failures.lock().unwrap())
    }

    /// Runs `f` on both sides without comparing (kernel first).
    pub fn both<T>(&self, f: impl Fn(&Side) -> T) -> Both<T> {
        Both {
            k: f(&self.k),
            s: f(&self.s),
        }
    }

    /// Compares the merged views now.
    #[track_caller]
    pub fn check_views(&self) {
        let roots = self.roots();
        let k = snapshot_with(&self.k.mnt, &self.k.merged_opts(&roots));
        let s = snapshot_with(&self.s.mnt, &self.s.merged_opts(&roots));
        assert_trees_eq(
            &format!("[{}] merged views differ", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Compares the upper layers now (normalised: kernel-private xattrs dropped, whiteouts by
    /// type only, no times, no directory sizes).
    #[track_caller]
    pub fn check_uppers(&self) {
        if !self.rw {
            return;
        }
        let roots = self.roots();
        let k = snapshot_with(self.k.upper.as_ref().unwrap(), &upper_opts(&roots));
        let s = snapshot_with(self.s.upper.as_ref().unwrap(), &upper_opts(&roots));
        assert_trees_eq(
            &format!("[{}] upper layers differ", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Asserts the lower layers (and the trap area) are unchanged since setup (contents,
    /// metadata, xattrs, mtime, ctime, inode numbers; not atime).
    #[track_caller]
    pub fn check_lowers(&self) {
        let (k0, s0) = self.lower_snap.as_ref().expect("lower snapshot");
        let k1 = snapshot_with(&self.k.set.join("L"), &lower_opts());
        let s1 = snapshot_with(&self.s.set.join("L"), &lower_opts());
        assert_trees_eq(
            &format!("[{}] kernel side: lower layers modified", self.name),
            "before",
            k0,
            "after",
            &k1,
        );
        assert_trees_eq(
            &format!("[{}] stratafs side: lower layers modified", self.name),
            "before",
            s0,
            "after",
            &s1,
        );
    }

    /// Compares what is outside the layers in each set (canaries, legit symlink targets).
    #[track_caller]
    pub fn check_outside(&self) {
        let roots = self.roots();
        let opts = |side: &Side| {
            let mut skip: Vec<String> = ["m", "u", "w", "w2", "L"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            for i in 0..=side.mounts {
                skip.push(format!("log{i}"));
            }
            SnapOpts {
                skip_top: skip,
                roots: roots.clone(),
                ..SnapOpts::default()
            }
        };
        let mut k = snapshot_with(&self.k.set, &opts(&self.k));
        let mut s = snapshot_with(&self.s.set, &opts(&self.s));
        k.remove("");
        s.remove("");
        assert_trees_eq(
            &format!("[{}] outside of the layers differs", self.name),
            "kernel",
            &k,
            "stratafs",
            &s,
        );
    }

    /// Unmounts both sides and mounts them again the same way (stratafs again on its side).
    pub fn remount(&mut self) {
        for side in [&mut self.k, &mut self.s] {
            side.umount()
                .unwrap_or_else(|e| panic!("[{}] {e}", side.label));
        }
        self.k.mount();
        self.s.mount();
    }

    /// Final checks: merged views, uppers, lowers unchanged, outside; then unmounts both and
    /// mounts the kernel overlay over each side's layers (fresh workdir) and compares those
    /// views. Also checks that stratafs's upper layer is accepted by the kernel.
    #[track_caller]
    pub fn finish(mut self) {
        self.soft_check(|| self.check_views());
        self.soft_check(|| self.check_uppers());
        self.soft_check(|| self.check_lowers());
        self.soft_check(|| self.check_outside());
        for side in [&mut self.k, &mut self.s] {
            side.umount()
                .unwrap_or_else(|e| panic!("[{}] {e}", side.label));
        }
        self.soft_check(|| self.check_lowers());
        if self.rw {
            let r = {
                let mut me = std::panic::AssertUnwindSafe(&mut self);
                std::panic::catch_unwind(move || me.kernel_remount_check())
            };
            if let Err(e) = r {
                if !self.soft {
                    std::panic::resume_unwind(e);
                }
                self.failures.lock().unwrap().push(panic_msg(&e));
            }
        }
        self.finished = true;
        let f = self.take_failures();
        if !f.is_empty() {
            panic!("[{}] {} failure(s):\n{}", self.name, f.len(), f.join("\n"));
        }
    }

    fn kernel_remount_check(&mut self) {
        let roots = self.roots();
        // With OCI markers the kernel would show the .wh. files: use the kernel side's
        // (converted, otherwise identical) lowers for both remounts.
        let oci = self.layers.has_oci();
        let klowers = self.k.lowers.clone();
        let mut trees = Vec::new();
        for side in [&mut self.k, &mut self.s] {
            let w2 = side.set.join("w2");
            if w2.exists() {
                fs::remove_dir_all(&w2).expect("rm w2");
            }
            fs::create_dir_all(&w2).expect("mkdir w2");
            let lowers = if oci {
                klowers.clone()
            } else {
                side.lowers.clone()
            };
            let upper = side.upper.clone().unwrap();
            kernel_mount(&lowers, Some((&upper, &w2)), &side.mnt).unwrap_or_else(|e| {
                panic!(
                    "kernel remount over the {} side's layers failed: {e}",
                    side.label
                )
            });
            side.mounted = true;
            let t = snapshot_with(&side.mnt, &side.merged_opts(&roots));
            let r = unmount(&side.mnt);
            side.mounted = false;
            r.unwrap_or_else(|e| panic!("{e}"));
            trees.push(t);
        }
        assert_trees_eq(
            &format!("[{}] kernel remount: merged views differ", self.name),
            "kernel-over-kernel-layers",
            &trees[0],
            "kernel-over-stratafs-layers",
            &trees[1],
        );
        // The other direction: stratafs's FUSE driver over the layers the kernel wrote shows
        // what the kernel shows.
        if selftest() {
            return;
        }
        let side = &mut self.k;
        let w3 = side.set.join("w3");
        if w3.exists() {
            fs::remove_dir_all(&w3).expect("rm w3");
        }
        fs::create_dir_all(&w3).expect("mkdir w3");
        let saved_work = side.work.replace(w3);
        side.mount_strata_with("fuse");
        side.mounted = true;
        let t = snapshot_with(&side.mnt, &side.merged_opts(&roots));
        let r = side.umount();
        side.work = saved_work;
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_trees_eq(
            &format!(
                "[{}] stratafs over the kernel's layers: merged views differ",
                self.name
            ),
            "kernel-over-kernel-layers",
            &trees[0],
            "stratafs-over-kernel-layers",
            &t,
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut errs = Vec::new();
        for side in [&mut self.k, &mut self.s] {
            if let Err(e) = side.umount() {
                errs.push(e);
            }
        }
        let panicking = std::thread::panicking();
        let mut lower_err = None;
        if !self.finished && !panicking {
            if let Err(e) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check_lowers()))
            {
                lower_err = Some(e);
            }
        }
        let still_mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .any(|m| Path::new(&m).starts_with(&self.root));
        if still_mounted {
            errs.push(format!(
                "mounts left under {}; not removing it",
                self.root.display()
            ));
        } else if std::env::var_os("E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
        if panicking {
            for e in errs {
                eprintln!("[{}] cleanup: {e}", self.name);
            }
            return;
        }
        if let Some(e) = lower_err {
            std::panic::resume_unwind(e);
        }
        let f = self.take_failures();
        if !f.is_empty() {
            panic!("[{}] {} failure(s):\n{}", self.name, f.len(), f.join("\n"));
        }
        if !errs.is_empty() {
            panic!("[{}] cleanup failed: {}", self.name, errs.join("; "));
        }
    }
}

/// Replaces the set root (the parent of the mount `root`) in `s` by "{SET}".
pub fn norm_set(root: &Path, s: &str) -> String {
    s.replace(root.parent().unwrap().to_str().unwrap(), "{SET}")
}

/// Convenience: `p(root, "a/b")` = root.join("a/b").
pub fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

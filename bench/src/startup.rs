//! Runtime start-up (issue 6, item 4): `strata run -- /bin/true` on a two-layer busybox stack
//! next to `crun run`, `runc run` and `bwrap`. Waits for the `strata` runtime binary (issue 5);
//! until it exists the comparison says so in its notes.

use std::path::PathBuf;

/// The `strata` binary: `STRATA_BIN`, else next to this executable.
pub fn strata_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("strata");
    p.is_file().then_some(p)
}

/// The line for the report's notes.
pub fn note() -> String {
    match strata_bin() {
        None => "runtime start-up (strata run vs crun, runc, bwrap) skipped: the `strata` runtime binary \
                 does not exist yet (build it with `cargo build --release -p runtime`, or set STRATA_BIN)"
            .to_string(),
        Some(p) => format!(
            "runtime start-up skipped: {} exists but the start-up comparison is not wired in yet",
            p.display()
        ),
    }
}

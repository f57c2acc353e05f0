//! `strata` as podman's OCI runtime: tests/oci/podman-test.sh drives it through podman and
//! conmon (run, -i, -it, exec, stop, rm, --ulimit) with a private podman setup, as it does
//! runc and crun. Run as root; skipped with a note where podman is not installed.

#![deny(unsafe_code)]

use std::path::Path;
use std::process::Command;

fn have_podman() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn podman_runs_containers_with_strata() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "podman-test.sh runs podman as root"
    );
    if !have_podman() {
        // .ci/run installs podman: there a missing one is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "runtime_podman: podman is not installed on CI"
        );
        eprintln!("runtime_podman: podman is not installed, skipped (apt-get install podman)");
        return;
    }
    let strata = e2e::target_bin("strata", "STRATA_BIN", "cargo build -p runtime -p unionfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oci/podman-test.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&strata)
        .output()
        .expect("run tests/oci/podman-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "podman-test.sh {} failed ({}):\n{stdout}\n{stderr}",
        strata.display(),
        out.status
    );
}

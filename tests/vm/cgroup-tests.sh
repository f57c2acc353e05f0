#!/usr/bin/env bash
# cgroup-tests.sh: builds strata, stratafs and the cgroup v2 test binary on the host, then runs
# the tests of tests/tests/runtime_cgroup.rs (all #[ignore]d on the host) in a throw-away VM
# with pure cgroup v2 (tests/vm/run-in-vm.sh). Extra arguments go to the test binary (a test
# name filter, --nocapture...). Must run as root. Takes about 1-2 minutes (TCG emulation).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
command -v busybox >/dev/null || [[ -x /bin/busybox ]] || {
  echo "cgroup-tests.sh: /bin/busybox missing: apt-get install busybox-static" >&2; exit 2; }
cargo build -q -p runtime -p unionfs
testbin=$(cargo test -q -p e2e --test runtime_cgroup --no-run 2>&1 \
  | sed -n 's/.*Executable tests\/runtime_cgroup.rs (\(.*\))/\1/p' | tail -n1)
[[ -x $testbin ]] || testbin=$(ls -t "$CARGO_TARGET_DIR"/debug/deps/runtime_cgroup-* 2>/dev/null | grep -v '\.d$' | head -n1)
[[ -x $testbin ]] || { echo "cgroup-tests.sh: cannot find the runtime_cgroup test binary" >&2; exit 2; }
export STRATA_VM=1 STRATA_BIN=$CARGO_TARGET_DIR/debug/strata STRATAFS_BIN=$CARGO_TARGET_DIR/debug/stratafs
exec "$here/run-in-vm.sh" --mem 1G --timeout 900 -- "$testbin" --ignored --test-threads=1 "$@"

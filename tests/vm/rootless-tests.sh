#!/usr/bin/env bash
# rootless-tests.sh: builds stratafs on the host, then runs tests/vm/rootless-in-vm.sh in a
# throw-away VM (tests/vm/run-in-vm.sh) where /dev/fuse is 0666 and unprivileged user
# namespaces are allowed, as on common distributions. Must run as root. About a minute (TCG).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build -q -p unionfs
export STRATAFS_BIN=$CARGO_TARGET_DIR/debug/stratafs
exec "$here/run-in-vm.sh" --mem 1G --timeout 600 -- bash "$here/rootless-in-vm.sh"

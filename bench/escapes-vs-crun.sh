#!/usr/bin/env bash
# escapes-vs-crun.sh: the escape attempts of tests/tests/runtime_escapes.rs, run side by side
# with crun (Debian's) and strata on the same busybox rootfs, one line per attempt and runtime.
# crun refuses hybrid cgroup hosts, so run it where cgroup v2 is pure, e.g. in the VM:
#   tests/vm/run-in-vm.sh -- bench/escapes-vs-crun.sh
# Needs root, crun (apt-get install crun), busybox-static, gcc + libc6-dev, script(1).
# crun gets the spec of `crun spec` with CAP_MKNOD added (what strata's --cap-add MKNOD gives).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
strata=${STRATA_BIN:-$root/target/debug/strata}
command -v crun >/dev/null || { echo "escapes-vs-crun.sh: crun missing (apt-get install crun)" >&2; exit 2; }
work=$(mktemp -d /tmp/escapes-XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$rootfs/bin/"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"; done
cat > "$work/tiocsti.c" <<'EOF'
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
int main(void) { char c = 'x';
  if (ioctl(0, TIOCSTI, &c) < 0) { printf("TIOCSTI: %s\n", strerror(errno)); return 1; }
  printf("TIOCSTI: done\n"); return 0; }
EOF
gcc -static -O -o "$rootfs/tiocsti" "$work/tiocsti.c"
mknod "$rootfs/kmsg-node" c 1 11
(cd "$work/bundle" && crun spec && python3 - <<'EOF'
import json
c = json.load(open('config.json'))
c['process']['terminal'] = False
for k, v in c['process']['capabilities'].items():
    v.append('CAP_MKNOD')
json.dump(c, open('config.json', 'w'))
EOF
)
export WORK=$work STRATA=$strata
crun_run() { # crun_run SCRIPT
  python3 -c "import json,sys;p='$WORK/bundle/config.json';c=json.load(open(p));c['process']['args']=['sh','-c',sys.argv[1]];json.dump(c,open(p,'w'))" "$1"
  (cd "$WORK/bundle" && crun run "esc$$-$RANDOM")
}
strata_run() { "$STRATA" run --layer "$WORK/bundle/rootfs" --cap-add MKNOD -- sh -c "$1"; }
export -f crun_run strata_run

attempts=(
  "kill -TERM 0 (caller survives?)|kill -TERM 0; sleep 1"
  "mknod c 1:11 in /dev + read|mknod /dev/k c 1 11 && head -c1 /dev/k >/dev/null && echo OPENED"
  "node carried by the rootfs + read|head -c1 /kmsg-node >/dev/null && echo OPENED"
  "nested user namespace|unshare -U true && echo ALLOWED"
  "controlling tty (tty_nr)|cut -d' ' -f7 /proc/self/stat"
)
printf '%-36s | %-28s | %s\n' attempt crun strata
for a in "${attempts[@]}"; do
  name=${a%%|*} cmd=${a#*|}
  row=()
  for rt in crun_run strata_run; do
    out=$(setsid -w bash -c "$rt \"\$1\"; echo \"status \$?\"; echo caller-alive" _ "$cmd" 2>&1 | tr '\n' ' ')
    row+=("$(echo "$out" | sed 's/  */ /g' | cut -c1-60)")
  done
  printf '%-36s | %-28s | %s\n' "$name" "${row[0]}" "${row[1]}"
done
for rt in crun_run strata_run; do
  out=$(SHELL=/bin/bash script -qec "bash -c '$rt /tiocsti'" /dev/null </dev/null | tr -d '\r' | tr '\n' ' ')
  row+=("$out")
  echo "TIOCSTI on the caller's terminal, $rt: $out"
done

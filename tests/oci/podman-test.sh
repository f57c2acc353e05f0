#!/usr/bin/env bash
# podman-test.sh RUNTIME: drives an OCI runtime (runc, crun, strata) through podman and conmon,
# as a user of `podman run` would: exit codes, files, a bind mount, piped stdin, a terminal,
# detached containers with exec, stop (SIGTERM, then SIGKILL) and rm, --ulimit.
# Prints one "ok"/"FAIL" line per check and exits 1 if any failed (2: could not set up).
#
# The podman setup is private and touches nothing global: storage, runroot, tmpdir, events
# log and network config live under one mktemp dir (removed at exit, overlays unmounted first),
# the configuration comes from files written there (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
# CONTAINERS_REGISTRIES_CONF), the image is imported from a busybox rootfs (no registry), and
# containers run with --network none. Must run as root. PODMAN_TEST_KEEP=1 keeps the dir.
set -euo pipefail

die() { echo "podman-test.sh: $*" >&2; exit 2; }
[[ $# == 1 ]] || die "usage: podman-test.sh RUNTIME"
[[ $(id -u) == 0 ]] || die "must run as root"
runtime=$(command -v "$1") || die "no runtime $1"
runtime=$(realpath "$runtime")
for tool in podman conmon script timeout; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install podman bsdutils)"
done
busybox=$(command -v busybox || echo /bin/busybox)
[[ -x $busybox ]] || die "busybox is missing: apt-get install busybox-static"

dir=$(mktemp -d /tmp/strata-podman.XXXXXX)
img=localhost/strata-podman-busybox:test

cleanup() {
  set +e
  if [[ -n ${PODMAN_TEST_KEEP:-} ]]; then echo "podman-test.sh: kept $dir"; return; fi
  # Containers first (podman stops them through the runtime), then whatever is left running
  # from this setup (conmon, a stuck container init), found by the dir in its command line.
  pm rm -a -f -t 0 >/dev/null 2>&1
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
      kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  pm rmi -a -f >/dev/null 2>&1
  # Overlays and shm mounts under the dir, deepest first, before removing it.
  local m
  for m in $(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  rm -rf --one-file-system "$dir"
}
trap cleanup EXIT

# Default ulimits within the hard limits the runtime inherits: podman's own defaults for
# root (nofile and nproc 1048576) are above them, and raising a hard limit is refused on some
# hosts. Podman 4.3 runs conmon and the runtime with RLIMIT_NPROC at most 32768 (seen on
# Debian 12), below the shell's, hence the cap.
hard_nofile=$(ulimit -Hn) hard_nproc=$(ulimit -Hu)
[[ $hard_nproc == unlimited || $hard_nproc -gt 32768 ]] && hard_nproc=32768
[[ $hard_nofile == unlimited || $hard_nofile -gt 1048576 ]] && hard_nofile=1048576
mkdir -p "$dir"/{root,runroot,tmp,net,vol}
cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=$hard_nproc:$hard_nproc"]
log_driver = "k8s-file"
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/tmp"
volume_path = "$dir/root/volumes"

[network]
network_config_dir = "$dir/net"
EOF
cat >"$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/root"
runroot = "$dir/runroot"
EOF
printf 'unqualified-search-registries = []\n' >"$dir/registries.conf"
export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf \
  CONTAINERS_REGISTRIES_CONF=$dir/registries.conf
# podman with this setup, as a script so that script(1) and bash -c can run it too.
cat >"$dir/pm" <<EOF
#!/bin/sh
exec podman --root "$dir/root" --runroot "$dir/runroot" --tmpdir "$dir/tmp" \\
  --cgroup-manager cgroupfs --events-backend file --runtime "$runtime" "\$@"
EOF
chmod +x "$dir/pm"
pm() { "$dir/pm" "$@"; }

# The image: a static busybox, its applets as symlinks, the few files podman expects.
rootfs=$dir/rootfs
mkdir -p "$rootfs"/{bin,dev,etc,proc,sys,tmp,root,vol}
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ -e $rootfs/bin/$applet ]] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
tar -C "$rootfs" -cf "$dir/rootfs.tar" .
pm import --quiet "$dir/rootfs.tar" "$img" >/dev/null || die "podman import failed"

fails=0
check() { # name, then a command that succeeds when the check passes
  local name=$1
  shift
  if "$@"; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    fails=$((fails + 1))
  fi
}
not() { ! "$@"; }
# cap CMD...: runs CMD with a timeout, its stdout+stderr in $out, its exit status in $rc.
out='' rc=0
cap() {
  [[ $1 == pm ]] && set -- "$dir/pm" "${@:2}"
  set +e
  out=$(timeout -k 5 60 "$@" 2>&1)
  rc=$?
  set -e
}
expect() { # what, expected rc, expected output (exact); prints the difference on a mismatch
  if [[ $rc == "$2" && $out == "$3" ]]; then return 0; fi
  echo "  $1: rc=$rc (want $2), output: $(printf %q "$out") (want $(printf %q "$3"))"
  return 1
}

run=(pm run --rm --network none)

cap "${run[@]}" "$img" sh -c 'exit 3'
check "run: exit code 3" expect "exit 3" 3 ""

cap "${run[@]}" "$img" sh -c 'echo data >/tmp/f && cat /tmp/f && cat /etc/hostname >/dev/null'
check "run: write and read a file" expect "file" 0 "data"

echo host-side >"$dir/vol/in"
cap "${run[@]}" -v "$dir/vol:/vol" "$img" sh -c 'cat /vol/in && echo container-side >/vol/out'
check "run: bind mount both ways" expect "bind" 0 "host-side"
check "run: bind mount write reaches the host" \
  test "$(cat "$dir/vol/out" 2>/dev/null)" == container-side

cap bash -c 'echo hi | "$@"' _ "$dir/pm" run --rm --network none -i "$img" cat
check "run -i: piped stdin" expect "stdin" 0 "hi"

cap "${run[@]}" "$img" sh -c 'cat; echo eof'
check "run without -i: stdin is empty" expect "no stdin" 0 "eof"

# A terminal: script(1) gives podman one; stdin is a pipe that feeds a line then stays open
# until the container is done (script would end the session at its EOF).
ttycmd="$dir/pm run -it --rm --network none $img sh -c 'tty; read -r x; echo \"got:\$x\"; exit 4'"
set +e
out=$( (echo typed; sleep 15) | timeout -k 5 60 script -qec "$ttycmd" /dev/null 2>&1)
rc=$?
set -e
check "run -it: a terminal" grep -q '^/dev/pts/[0-9]' <<<"${out//$'\r'/}"
check "run -it: input reaches it" grep -q '^got:typed' <<<"${out//$'\r'/}"
check "run -it: exit code 4" test "$rc" == 4
[[ $rc == 4 ]] || echo "  tty: rc=$rc, output: $(printf %q "$out")"

# Detached: exec (output, exit code, stdin), then stop. PID 1 without a SIGTERM handler
# ignores SIGTERM, so podman stop kills it after -t seconds (exit 137); with a handler it
# exits on SIGTERM at once (143 here, as a shell reports it).
cap pm run -d --name sleeper --network none "$img" sleep 1000
check "run -d: starts" test "$rc" == 0
cap pm exec sleeper sh -c 'echo in-exec; exit 5'
check "exec: output and exit code 5" expect "exec" 5 "in-exec"
cap bash -c 'echo piped | "$@"' _ "$dir/pm" exec -i sleeper cat
check "exec -i: piped stdin" expect "exec -i" 0 "piped"
cap pm exec sleeper sh -c 'test "$(cat /proc/1/comm)" = sleep && echo pid1-is-sleep'
check "exec: joins the container's pid namespace" expect "exec pidns" 0 "pid1-is-sleep"
cap pm ps --format '{{.Names}} {{.Status}}'
check "ps: shows it running" grep -q '^sleeper Up' <<<"$out"

start=$(date +%s)
cap pm stop -t 2 sleeper
took=$(($(date +%s) - start))
check "stop -t 2: SIGTERM ignored, killed after the timeout (${took}s)" \
  test "$rc" == 0 -a "$took" -ge 2 -a "$took" -le 15
cap pm inspect --format '{{.State.Status}} {{.State.ExitCode}}' sleeper
check "stop: exited with 137 (SIGKILL)" expect "inspect" 0 "exited 137"
cap pm rm sleeper
check "rm: removes it" test "$rc" == 0
check "rm: gone" not pm container exists sleeper

cap pm run -d --name trapper --network none "$img" \
  sh -c 'trap "echo got-TERM; exit 143" TERM; echo ready; while :; do sleep 0.1; done'
check "run -d with a TERM handler: starts" test "$rc" == 0
for _ in $(seq 50); do pm logs trapper 2>/dev/null | grep -q ready && break; sleep 0.1; done
start=$(date +%s)
cap pm stop -t 20 trapper
took=$(($(date +%s) - start))
check "stop -t 20: SIGTERM handled at once (${took}s)" test "$rc" == 0 -a "$took" -le 10
cap pm inspect --format '{{.State.Status}} {{.State.ExitCode}}' trapper
check "stop: exited with 143" expect "inspect" 0 "exited 143"
cap pm logs trapper
check "logs: the handler ran" expect "logs" 0 $'ready\ngot-TERM'
cap pm rm trapper
check "rm: removes a stopped container" test "$rc" == 0

# A --ulimit replaces default_ulimits, and podman then adds nproc at its own default (above
# the hard limit), so nproc is given too.
cap "${run[@]}" --ulimit nofile=1024:1024 --ulimit "nproc=$hard_nproc:$hard_nproc" "$img" sh -c 'echo $(ulimit -Sn) $(ulimit -Hn)'
check "--ulimit nofile=1024:1024" expect "ulimit" 0 "1024 1024"
cap "${run[@]}" "$img" sh -c 'echo $(ulimit -Hn)'
check "default ulimit nofile from containers.conf" expect "default ulimit" 0 "$hard_nofile"

cap pm ps -a --format '{{.Names}}'
check "no containers left" expect "ps -a" 0 ""

echo "podman-test.sh: RUNTIME=$runtime: $fails failed"
[[ $fails == 0 ]]

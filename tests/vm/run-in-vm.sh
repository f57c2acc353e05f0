#!/usr/bin/env bash
# run-in-vm.sh: run one command as root inside a throw-away QEMU VM whose cgroup hierarchy is
# pure cgroup v2 (cpu, memory, pids, io, cpuset), with FUSE, overlayfs, unprivileged user
# namespaces and a small scratch disk (/dev/vda, for io.max). This is strata's own copy of the
# approach of the workplace's reference tool `run-in-vm`, so a checkout can run its cgroup v2
# tests without it.
#
# Why: many development and CI machines mount cgroups in "hybrid" mode, where the v2 hierarchy
# has no cpu/memory/pids controllers; cgroup v2 limits can only be observed in a kernel booted
# with cgroup_no_v1=all. This boots Debian's stock kernel under QEMU in a few seconds.
#
# Inside the VM:
#   * the host's / is the root, read-only (9p); /tmp, /run, /var/tmp, /root are fresh tmpfs;
#   * the current directory (and each --share DIR) is shared read-write at the same path: build
#     on the host, run the built binaries in the VM;
#   * you are root; /sys/fs/cgroup is cgroup2 with +cpu +memory +pids +io +cpuset for children;
#   * /dev/fuse is 0666 (as udev sets it), unprivileged user namespaces are allowed, so
#     `setpriv --reuid=1000 --regid=1000 --clear-groups CMD` tests the rootless path;
#   * /dev/vda is a 64 MiB scratch disk (virtio), for io.max.
# Environment variables RUST_*, CARGO_TARGET_DIR, STRATA_* and STRATAFS_* are passed on.
# Output streams back; the exit status is the command's (124: timed out, 125: the VM died).
# Emulated (TCG) code runs about 10x slower than on the host: run tests here, not benchmarks.
#
# Usage: tests/vm/run-in-vm.sh [--mem 2G] [--cpus 2] [--timeout 600] [--share DIR]...
#                              [--kernel-append ARGS] -- CMD [ARG...]
# First use installs qemu-system-x86, busybox-static and cpio with apt-get and downloads
# Debian's kernel package once into $STRATA_VM_CACHE (default /var/cache/strata-vm).
set -euo pipefail

mem=2G cpus=2 tmo=600 append="" shares=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --timeout) tmo=$2; shift 2 ;;
    --share) shares+=("$(realpath "$2")"); shift 2 ;;
    --kernel-append) append=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "run-in-vm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "run-in-vm.sh: no command given (see --help)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run-in-vm.sh: must run as root (it shares / with the VM)" >&2; exit 2; }

cache=${STRATA_VM_CACHE:-/var/cache/strata-vm}
mkdir -p "$cache"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [[ ${#need[@]} -gt 0 ]]; then
  echo "run-in-vm.sh: installing ${need[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >"$cache/apt.log" 2>&1 \
    || { cat "$cache/apt.log" >&2; echo "run-in-vm.sh: apt-get install failed" >&2; exit 2; }
fi

# --- kernel: Debian's stock image, downloaded once ---------------------------------------------
kdir=$(ls -d "$cache"/kernel/lib/modules/* 2>/dev/null | head -n1 || true)
if [[ -z $kdir ]]; then
  ( exec 9>"$cache/.lock"; flock 9
    if ! ls -d "$cache"/kernel/lib/modules/* >/dev/null 2>&1; then
      [[ -n $(apt-cache policy linux-image-amd64 2>/dev/null | grep Candidate) ]] || apt-get update -qq
      pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
      [[ -n $pkg ]] || { echo "run-in-vm.sh: cannot resolve the kernel package" >&2; exit 2; }
      echo "run-in-vm.sh: downloading $pkg (once)" >&2
      tmp=$(mktemp -d); chmod 755 "$tmp"; chown _apt "$tmp" 2>/dev/null || true
      (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
      rm -rf "$cache/kernel.new" && dpkg-deb -x "$tmp"/*.deb "$cache/kernel.new" && rm -rf "$tmp"
      rm -rf "$cache/kernel" && mv "$cache/kernel.new" "$cache/kernel"
    fi )
  kdir=$(ls -d "$cache"/kernel/lib/modules/* | head -n1)
fi
kver=${kdir##*/}
vmlinuz=$cache/kernel/boot/vmlinuz-$kver

# --- initramfs: busybox + the modules to mount the host over 9p, FUSE, overlay, the disk --------
initrd=$cache/initrd-$kver-strata3.cpio.gz
if [[ ! -s $initrd ]]; then
  ird=$(mktemp -d)
  mkdir -p "$ird"/{bin,proc,sys,dev,newroot,modules}
  cp /bin/busybox "$ird/bin/busybox"
  n=10  # load order is dependency order; a module built into the kernel is simply absent
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache \
           9pnet 9pnet_virtio 9p fuse overlay virtio_blk crc16 crc32c_generic mbcache jbd2 ext4; do
    f=$(find "$kdir/kernel" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
    if [[ -n $f ]]; then
      case $f in *.xz) xz -dc "$f" >"$ird/modules/$n-$m.ko" ;; *) cp "$f" "$ird/modules/$n-$m.ko" ;; esac
    fi
    n=$((n+1))
  done
  cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in /modules/*.ko; do /bin/busybox insmod "$m" 2>/dev/null; done
arg() { /bin/busybox sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot || { echo "VM: cannot mount host root"; /bin/busybox poweroff -f; }
cd /newroot
/bin/busybox mount -t proc proc proc
/bin/busybox mount -t sysfs sys sys
/bin/busybox mount -t devtmpfs dev dev
/bin/busybox mkdir -p dev/pts dev/shm 2>/dev/null
/bin/busybox mount -t devpts devpts dev/pts
/bin/busybox mount -t tmpfs tmpfs dev/shm
for d in tmp run var/tmp root; do /bin/busybox mount -t tmpfs tmpfs "$d"; done
[ -f proc/sys/kernel/unprivileged_userns_clone ] && echo 1 > proc/sys/kernel/unprivileged_userns_clone  # Debian's knob
/bin/busybox chmod 666 dev/fuse
/bin/busybox mount -t cgroup2 cgroup2 sys/fs/cgroup
echo "+cpu +memory +pids +io +cpuset" > sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
i=0
while :; do
  p=$(arg "share$i"); [ -n "$p" ] || break
  /bin/busybox mkdir -p "/newroot$p" 2>/dev/null
  /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 "share$i" "/newroot$p" || echo "VM: cannot mount share $p"
  i=$((i+1))
done
# switch_root, not chroot: a chrooted process may not create user namespaces (rootless tests).
cmd=$(arg cmdfile)
exec /bin/busybox switch_root /newroot /bin/sh -c ". $cmd; /bin/busybox poweroff -f" </dev/null
INIT
  chmod +x "$ird/init"
  (cd "$ird" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$initrd.tmp") && mv "$initrd.tmp" "$initrd"
  rm -rf "$ird"
fi

# --- the command, written to a share so the VM can read it --------------------------------------
cwd=$(pwd -P)
shares=("$cwd" "${shares[@]}")
job=$(mktemp -d "$cwd/.run-in-vm.XXXXXX")
trap 'rm -rf "$job"' EXIT
truncate -s 64M "$job/scratch.img"
{
  printf 'export PATH=%q HOME=/root TERM=dumb' "$PATH"
  while IFS='=' read -r v _; do
    case $v in RUST_*|CARGO_TARGET_DIR|STRATA_*|STRATAFS_*) printf ' %s=%q' "$v" "${!v}" ;; esac
  done < <(env)
  printf '\ncd %q || exit 1\n' "$cwd"
  printf '%q ' "$@"; printf '\n'
  printf 'echo "RUN-IN-VM-EXIT=$?"\n'
  printf '/bin/busybox poweroff -f\n'
} >"$job/cmd"

qargs=(-nographic -no-reboot -m "$mem" -smp "$cpus" -kernel "$vmlinuz" -initrd "$initrd"
       -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap"
       -drive "file=$job/scratch.img,format=raw,if=virtio")
karg="console=ttyS0 quiet loglevel=3 panic=-1 edd=off cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
i=0
for s in "${shares[@]}"; do
  qargs+=(-virtfs "local,path=$s,mount_tag=share$i,security_model=passthrough,multidevs=remap")
  karg+=" share$i=$s"; i=$((i+1))
done
karg+=" $append"
# KVM hangs early in boot on the nested hosts seen here, so TCG is the default.
accel=${RUN_IN_VM_ACCEL:-tcg}
qargs+=(-accel "$accel")
[[ $accel == kvm ]] && qargs+=(-cpu host)

out=$job/console.log
set +e
timeout --foreground "$tmo" qemu-system-x86_64 "${qargs[@]}" -append "$karg cmdfile=$job/cmd" 2>&1 | tee "$out" \
  | sed -u -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e 's/\r$//' -e '/RUN-IN-VM-EXIT=/d' \
           -e 's/^Booting from ROM\.*//' -e '/^SeaBIOS\|^iPXE\|^Press Ctrl-B\|reboot: Power down/d' -e '/^[[:space:]]*$/d'
rc=${PIPESTATUS[0]}
set -e
if [[ $rc == 124 ]]; then echo "run-in-vm.sh: timed out after ${tmo}s" >&2; exit 124; fi
code=$(grep -ao "RUN-IN-VM-EXIT=[0-9]*" "$out" | tail -n1 | cut -d= -f2 || true)
[[ -n $code ]] || { echo "run-in-vm.sh: the VM stopped without reporting an exit status" >&2; exit 125; }
exit "$code"

#!/usr/bin/env bash
# rootless-in-vm.sh: runs INSIDE the VM (as root there), driven by tests/vm/rootless-tests.sh.
# Checks stratafs's rootless paths for real, as uid 1000 with no capabilities:
#   1. the FUSE driver mounted by an unprivileged user (via fusermount3), with markers in
#      user.overlay.* and 0/0 whiteouts (allowed to unprivileged users since Linux 5.8);
#   2. the kernel driver, inside a user namespace with userxattr, honours what the FUSE driver
#      wrote (same merged view);
#   3. driver=auto inside `unshare --user --map-root-user --mount` picks the kernel driver with
#      userxattr;
#   4. driver=kernel outside a user namespace fails with a clear reason, exit status 2.
# Prints "ok:"/"FAIL:" per check and a closing "N passed, N failed" line.
set -u
bin=${STRATAFS_BIN:?STRATAFS_BIN must name the stratafs binary}
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAIL: $1"; fail=$((fail + 1)); }
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
U() { setpriv --reuid=1000 --regid=1000 --clear-groups --inh-caps=-all "$@"; }

# ext4 on the VM's scratch disk: its /tmp is tmpfs, which has no user.* xattrs on Debian's 6.1,
# and the shared checkout (9p) has no rename flags.
mkfs.ext4 -q -F /dev/vda && mkdir -p /tmp/scratch && mount -t ext4 /dev/vda /tmp/scratch \
  || { echo "FAIL: an ext4 scratch filesystem"; echo "0 passed, 1 failed"; exit 1; }
B=/tmp/scratch/rl
mkdir -p $B/l1 $B/l2/d $B/u $B/w $B/m $B/k $B/kw $B/k2 $B/kw2
echo base >$B/l2/a; echo top >$B/l1/a; echo gone >$B/l2/b; echo c >$B/l2/d/c; echo keep >$B/l2/keep
chown -R 1000:1000 $B

echo "kernel $(uname -r), /dev/fuse $(stat -c %a /dev/fuse)"
# 1. FUSE driver as uid 1000.
if U "$bin" -o lowerdir=$B/l1:$B/l2,upperdir=$B/u,workdir=$B/w $B/m; then
  ok "uid 1000 mounts the stack"
  check "it is the FUSE driver" test "$(findmnt -n -o FSTYPE $B/m)" = fuse.stratafs
  U sh -c "echo more >>$B/m/a && rm $B/m/b && rm -r $B/m/d && mkdir $B/m/d && echo n >$B/m/d/n" \
    && ok "uid 1000 writes, removes, recreates" || bad "uid 1000 writes, removes, recreates"
  check "merged view through FUSE" test "$(U sh -c "cd $B/m && ls -A" | tr '\n' ' ')" = "a d keep "
  U fusermount3 -u $B/m && ok "fusermount3 -u by uid 1000" || bad "fusermount3 -u by uid 1000"
else
  bad "uid 1000 mounts the stack"
fi
check "whiteout is a 0/0 char device" test "$(stat -c '%F %t:%T' $B/u/b 2>&1)" = "character special file 0:0"
check "opaque dir marked in user.overlay.*" test "$(getfattr --only-values -n user.overlay.opaque $B/u/d 2>/dev/null)" = y
check "no trusted.overlay.* written" sh -c "! getfattr -R -d -m '^trusted' $B/u 2>/dev/null | grep -q overlay"
check "lower layers untouched" test "$(cat $B/l1/a $B/l2/b $B/l2/d/c)" = "$(printf 'top\ngone\nc')"

# 2. The kernel driver in a user namespace shows what the FUSE driver wrote.
out=$(U unshare --user --map-root-user --mount sh -c \
  "mount -t overlay overlay -o lowerdir=$B/l1:$B/l2,upperdir=$B/u,workdir=$B/kw,userxattr $B/k && cd $B/k && ls -A | tr '\n' ' ' && ls -A d | tr '\n' ' ' && cat a" 2>&1)
check "kernel overlay (userns, userxattr) honours FUSE-written layers" test "$out" = "$(printf 'a d keep n top\nmore')"

# 3. driver=auto inside a user namespace picks the kernel with userxattr.
out=$(U unshare --user --map-root-user --mount sh -c \
  "$bin -v -o lowerdir=$B/l1:$B/l2,upperdir=$B/u,workdir=$B/kw2 $B/k2 2>&1 && grep \" $B/k2 \" /proc/self/mountinfo && ls -A $B/k2 | tr '\n' ' '" 2>&1)
echo "$out" | sed 's/^/    /'
check "auto picks the kernel driver in a user namespace" sh -c "echo '$out' | grep -q 'driver: kernel'"
check "with userxattr" sh -c "echo '$out' | grep \" - overlay \" | grep -q userxattr"
check "and shows the same merged view" sh -c "echo '$out' | tail -n1 | grep -qx 'a d keep '"

# 4. driver=kernel where it is not permitted.
out=$(U "$bin" -o driver=kernel,lowerdir=$B/l1:$B/l2 $B/k 2>&1); rc=$?
check "driver=kernel as uid 1000: exit 2" test $rc = 2
check "driver=kernel as uid 1000: says why" sh -c "echo '$out' | grep -q 'not root'"

umount $B/m 2>/dev/null; umount /tmp/scratch
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]

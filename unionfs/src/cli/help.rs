//! The `--help` and `--version` texts.

pub fn help_text() -> String {
    format!(
        "stratafs {version}: a union filesystem over FUSE with the semantics of Linux overlayfs

Usage:
  stratafs [-f] [-d] [-v...] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W][,OPTS] MOUNTPOINT
  stratafs SOURCE MOUNTPOINT -o OPTS   form used by mount.fuse3 and /etc/fstab
                                        (mount -t fuse.stratafs SOURCE MOUNTPOINT -o OPTS)
  stratafs demo                         build a small stack in a temp dir and show it working
  stratafs --help | --version

Flags:
  -f, --foreground    stay in the foreground (default: return once the mount is ready)
  -d, --debug         log every request; implies -f
  -v, --verbose       more logging (-v info, -vv debug); RUST_LOG is honoured too
  -o OPTS             comma separated options; may be given several times

Layer options:
  lowerdir=L1:L2:...  read-only layers, leftmost on top; '\\:' escapes a ':', '\\,' a ','
                      and '\\\\' a '\\' in any path
  upperdir=DIR        writable layer; needs workdir
  workdir=DIR         scratch directory on the same filesystem as upperdir
                      (without upperdir and workdir the mount is read-only)
  userxattr           keep overlay markers in user.overlay.* instead of trusted.overlay.*
  threads=N           threads serving requests (default 4)
  timeout=SECS        how long the kernel caches names and attributes (default 86400: the
                      layers must change only through the mount while it is mounted)
  driver=auto|fuse|kernel
                      who serves the stack: the kernel's overlay or stratafs over FUSE;
                      auto (default) takes the kernel where it permits the mount and can
                      honour the stack, FUSE otherwise (-v says which and why)
  xwhiteouts          FUSE driver: write whiteouts as empty files with the overlay.whiteout
                      xattr (what it does anyway where 0/0 devices cannot be made)
  volatile            as the kernel's: never sync the upper layer (no fsync of copied-up
                      data; fsync, fdatasync and O_SYNC return at once), for throwaway
                      uppers. Needs upperdir. Marks workdir/work/incompat/volatile, which
                      stays after unmount: later mounts of that workdir (either driver)
                      refuse with EINVAL until it is removed; after a crash, discard the
                      upper layer instead
  passthrough=off|upper|all
                      FUSE driver as root: hand opened files to the kernel (FUSE
                      passthrough), reads and writes then skip the daemon. upper
                      (default): files in the upper layer, the kernel overlay's semantics
                      exactly. all: lower files opened read-only too; while one is open
                      that way, opening it for writing or truncating it fails with
                      ETXTBSY. nopassthrough is passthrough=off
  uring               FUSE driver: take requests through FUSE over io_uring, one queue per
                      CPU answered on the caller's CPU (about twice as fast for metadata on
                      a VM). Needs Linux >= 6.14 with the fuse module's enable_uring set
                      (echo Y > /sys/module/fuse/parameters/enable_uring); /dev/fuse
                      otherwise

Generic options (as passed by mount(8)):
  ro rw nodev dev nosuid suid noexec exec noatime atime relatime strictatime
  allow_other allow_root default_permissions (always on) fsname=NAME subtype=NAME
  accepted without effect: nodiratime sync async dirsync auto noauto user nouser users
                           _netdev nofail defaults x-*

Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`; SIGTERM, SIGINT or SIGHUP to
the daemon unmount too.
Exit status: 0 once the mount serves requests, 2 on bad input or a failed mount.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

pub fn version_text() -> String {
    format!("stratafs {}", env!("CARGO_PKG_VERSION"))
}

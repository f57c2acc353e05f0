//! Every raw system call and every `unsafe` block of the runtime, behind safe wrappers.
//!
//! The rest of the crate uses these functions (and the safe functions of `nix`); nothing else
//! calls `libc` for a system call or contains `unsafe`. Each wrapper returns `Errno` on failure
//! so callers can attach what they were doing (see `error`).

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Pid, Uid};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

pub type SysResult<T> = Result<T, Errno>;

// Constants of the new mount API (stable kernel ABI; spelled out so we do not depend on which
// libc release exports them).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_ATIME: u64 = 0x70;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x20_0000;
/// MS_NOSYMFOLLOW (Linux 5.10), which nix does not name.
pub const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(256);
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn cstring(bytes: &[u8]) -> SysResult<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

fn cpath(path: &Path) -> SysResult<CString> {
    cstring(path.as_os_str().as_bytes())
}

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Result of [`fork`].
pub enum Fork {
    Parent(Pid),
    Child,
}

/// fork(2). Only called while the process has a single thread (see `process`), so the child
/// may allocate and run ordinary Rust code. The child must leave through [`exit_now`], never by
/// returning, so that no destructor of the parent's state runs twice.
pub fn fork() -> SysResult<Fork> {
    // SAFETY: the runtime forks only while single-threaded (documented in `process`), so the
    // child has a consistent heap and no lock held by another thread.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Fork::Child),
    }
}

/// _exit(2): ends the process without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

pub fn unshare(flags: CloneFlags) -> SysResult<()> {
    nix::sched::unshare(flags)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> SysResult<()> {
    // SAFETY: the prctl options used here take plain integer arguments.
    let ret = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// PR_SET_PDEATHSIG: `sig` is sent to this process when the thread that forked it ends.
pub fn set_parent_death_signal(sig: Signal) -> SysResult<()> {
    prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong)
}

/// PR_SET_DUMPABLE 0: other processes (even root in the container without CAP_SYS_PTRACE)
/// cannot open this process's /proc files such as /proc/PID/exe.
pub fn set_not_dumpable() -> SysResult<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

pub fn set_no_new_privs() -> SysResult<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments, all but the first zero.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER): installs the BPF program `prog` on this thread (it needs
/// no_new_privs or CAP_SYS_ADMIN; execve keeps it).
pub fn seccomp_set_filter(prog: &[libc::sock_filter], flags: u32) -> SysResult<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| Errno::E2BIG)?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies the program.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_uint,
            &fprog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

/// Drops capability `cap` from the bounding set.
pub fn drop_bounding_cap(cap: u32) -> SysResult<()> {
    prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
}

pub fn clear_ambient_caps() -> SysResult<()> {
    // SAFETY: PR_CAP_AMBIENT with PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Whether walking up from the working directory with ".." reaches this process's "/"
/// (a working directory outside the root reaches another top).
pub fn cwd_reaches_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::metadata("/") else {
        return false;
    };
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
    let Ok(mut dir) = std::fs::File::open(".") else {
        return false;
    };
    for _ in 0..4096 {
        let Ok(here) = dir.metadata() else {
            return false;
        };
        if id(&here) == id(&root) {
            return true;
        }
        let up = nix::fcntl::openat(
            std::os::fd::AsFd::as_fd(&dir),
            "..",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        let Ok(up) = up else {
            return false;
        };
        let up = std::fs::File::from(up);
        match up.metadata() {
            Ok(m) if id(&m) == id(&here) => return false,
            Ok(_) => dir = up,
            Err(_) => return false,
        }
    }
    false
}

/// This thread's capability sets (capget, version 3).
fn capget() -> SysResult<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capget(2) expects for version 3.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    Ok(data)
}

/// One set of capget's two words as a mask (bit N: capability N).
fn cap_mask(data: &[CapData; 2], set: fn(&CapData) -> u32) -> u64 {
    u64::from(set(&data[0])) | (u64::from(set(&data[1])) << 32)
}

/// The permitted capability set of this thread.
pub fn permitted_caps() -> SysResult<u64> {
    let data = capget()?;
    Ok(cap_mask(&data, |d| d.permitted))
}

/// Empties the inheritable capability set (keeps effective and permitted).
pub fn clear_inheritable_caps() -> SysResult<()> {
    let data = capget()?;
    set_caps(
        cap_mask(&data, |d| d.effective),
        cap_mask(&data, |d| d.permitted),
        0,
    )
}

/// Highest capability number the kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

pub fn set_ids(uid: Uid, gid: Gid, clear_groups: bool) -> SysResult<()> {
    if clear_groups {
        match nix::unistd::setgroups(&[]) {
            // /proc/PID/setgroups is "deny" in a user namespace mapped without newgidmap.
            Ok(()) | Err(Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)
}

/// Sets every catchable signal back to its default action and unblocks all signals, as a
/// freshly exec'd program expects (Rust's runtime ignores SIGPIPE, for instance).
pub fn reset_signals() -> SysResult<()> {
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

pub fn block_signals(set: &SigSet) -> SysResult<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), None)
}

/// What [`wait_signal`] returns: the signal and whether a process sent it (kill, sigqueue)
/// rather than the kernel (a terminal's Ctrl-C, which reaches the whole process group anyway).
pub struct SigInfo {
    pub signal: Signal,
    pub from_process: bool,
}

/// sigwaitinfo(2) on a set of blocked signals.
pub fn wait_signal(set: &SigSet) -> SysResult<SigInfo> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: the set is a valid sigset_t and info a writable siginfo_t.
        let ret = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        if ret < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        // SAFETY: sigwaitinfo succeeded and filled in the structure.
        let info = unsafe { info.assume_init() };
        let signal = Signal::try_from(ret)?;
        return Ok(SigInfo {
            signal,
            from_process: info.si_code <= 0,
        });
    }
}

/// Spawns `cmd` so that it receives `sig` when this thread ends.
pub fn spawn_with_parent_death_signal(cmd: &mut Command, sig: Signal) -> io::Result<Child> {
    let sig = sig as libc::c_ulong;
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                sig,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Marks every file descriptor from `first` on close-on-exec (close_range with
/// CLOSE_RANGE_CLOEXEC, Linux 5.11); falls back to walking /proc/self/fd.
pub fn cloexec_from(first: u32) -> SysResult<()> {
    // SAFETY: close_range only changes descriptor flags.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|_| Errno::last())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|&fd| fd >= first as i32) {
        // SAFETY: F_SETFD on a number that may or may not be open; EBADF is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Closes `fd`, a descriptor this process got through fork and must not hold (the runtime's
/// lock: held by the children too, it would outlive the runtime).
pub fn close_inherited(fd: std::os::fd::RawFd) {
    // SAFETY: the caller names a descriptor it owns and never uses again (the object that
    // owned it in the parent is not dropped in this process, which ends with exit_now).
    unsafe { libc::close(fd) };
}

/// Closes every file descriptor from `first` on.
pub fn close_from(first: u32) {
    // SAFETY: closes descriptors this process owns and no longer uses (callers own them all).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if ret != 0 {
        for fd in first as i32..1024 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

pub fn execve(path: &CStr, args: &[CString], env: &[CString]) -> Errno {
    match nix::unistd::execve(path, args, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

pub fn cstring_of(s: &OsStr) -> SysResult<CString> {
    cstring(s.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> SysResult<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

pub fn umount(target: &Path, flags: MntFlags) -> SysResult<()> {
    nix::mount::umount2(target, flags)
}

/// Makes the current directory the root of the mount namespace and detaches the old root
/// (`pivot_root(".", ".")` then `umount2(".", MNT_DETACH)`, as runc does).
pub fn pivot_to_cwd() -> SysResult<()> {
    nix::unistd::pivot_root(".", ".")?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
}

/// open_tree(OPEN_TREE_CLONE): a detached copy of the mount (tree) at `path`, to be attached
/// later with [`move_mount`], for instance after pivot_root has hidden `path`.
pub fn open_tree(path: &Path, recursive: bool) -> SysResult<OwnedFd> {
    let c = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: valid C string; the kernel returns a new descriptor that we own.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the detached tree `tree` on the file or directory open as `target` (O_PATH).
pub fn move_mount(tree: &OwnedFd, target: &impl AsFd) -> SysResult<()> {
    let empty = c"";
    // SAFETY: both descriptors are open; empty paths with the *_EMPTY_PATH flags.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_fd().as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Attributes to add to every mount of a tree.
#[derive(Clone, Copy, Default)]
pub struct TreeAttrs {
    pub read_only: bool,
    pub nodev: bool,
}

/// Adds `attrs` to the (detached or attached) mount tree open as `tree` (a tree from
/// [`open_tree`], or an O_PATH descriptor of a mount's root), recursively.
pub fn set_tree_attrs(tree: &impl AsFd, attrs: TreeAttrs) -> SysResult<()> {
    let mut attr_set = 0;
    if attrs.read_only {
        attr_set |= MOUNT_ATTR_RDONLY;
    }
    if attrs.nodev {
        attr_set |= MOUNT_ATTR_NODEV;
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, attr of the size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// A mount_setattr(2) change in terms of MsFlags: the per-mount flags of `set` added, those
/// of `clear` removed (an atime flag in either resets the atime mode: relatime unless `set`
/// names another), and the propagation type (one of MS_SHARED, MS_SLAVE, MS_PRIVATE,
/// MS_UNBINDABLE; empty: unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountChange {
    pub set: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
}

impl Default for MountChange {
    fn default() -> MountChange {
        MountChange {
            set: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: MsFlags::empty(),
        }
    }
}

impl MountChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.clear.is_empty() && self.propagation.is_empty()
    }
}

fn mount_attr_bits(flags: MsFlags) -> u64 {
    let mut bits = 0;
    for (f, b) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
        (MS_NOSYMFOLLOW, MOUNT_ATTR_NOSYMFOLLOW),
    ] {
        if flags.contains(f) {
            bits |= b;
        }
    }
    bits
}

/// Applies `change` to the (detached or attached) mount open as `fd` (a tree from
/// [`open_tree`], or an O_PATH descriptor of a mount's root), and to every mount below it
/// when `recursive`.
pub fn mount_setattr(fd: &impl AsFd, change: MountChange, recursive: bool) -> SysResult<()> {
    let atime = MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME | MsFlags::MS_RELATIME;
    let mut attr_set = mount_attr_bits(change.set);
    let mut attr_clr = mount_attr_bits(change.clear);
    if change.set.intersects(atime) || change.clear.intersects(atime) {
        // The atime mode is one field: cleared as a whole, then set (0 is relatime).
        attr_clr |= MOUNT_ATTR_ATIME;
        if change.set.contains(MsFlags::MS_NOATIME) {
            attr_set |= MOUNT_ATTR_NOATIME;
        } else if change.set.contains(MsFlags::MS_STRICTATIME) {
            attr_set |= MOUNT_ATTR_STRICTATIME;
        }
    }
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: change.propagation.bits(),
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, attr of the size passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Mount flags (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC...) of the mount holding `path`, to
/// keep the locked ones when remounting in a user namespace.
pub fn mount_flags_of(path: &Path) -> SysResult<MsFlags> {
    let st = nix::sys::statvfs::statvfs(path)?;
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// eBPF (the device cgroup)
// ---------------------------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel takes a shorter attr as long as
/// what it leaves out is zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Loads `insns` (encoded `struct bpf_insn`s) as a cgroup device program.
pub fn load_device_program(insns: &[u64]) -> SysResult<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..6].copy_from_slice(b"strata");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| Errno::E2BIG)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: attr points to live instructions and a C string for the whole call; the size
    // passed is the structure's.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    })?;
    // SAFETY: a new descriptor returned by the kernel, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the device program `prog` to the cgroup (v2) directory open as `cgroup`; the
/// cgroup keeps it until the cgroup is removed. ALLOW_MULTI: programs of the cgroups above
/// (systemd's) keep applying, as with runc.
pub fn attach_device_program(cgroup: &impl AsFd, prog: &impl AsFd) -> SysResult<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_fd().as_raw_fd() as u32,
        attach_bpf_fd: prog.as_fd().as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: attr is a valid bpf_attr head of the size passed; both descriptors are open.
    check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Terminals and passing descriptors
// ---------------------------------------------------------------------------------------------

/// A new pty pair from `/dev/ptmx` of the current root (the container's devpts): (master,
/// slave, the slave's number). The slave comes from TIOCGPTPEER, not from a path, so no
/// other devpts can be substituted.
pub fn open_pty() -> SysResult<(OwnedFd, OwnedFd, u32)> {
    let ptmx = c"/dev/ptmx";
    // SAFETY: valid C string; the result is checked and owned below.
    let fd = check(unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: a fresh descriptor returned by open(2).
    let master = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } as libc::c_long)?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to the pointer.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } as libc::c_long)?;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let sfd = check(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: a fresh descriptor returned by the kernel.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd as i32) };
    Ok((master, slave, n))
}

/// Makes the terminal open as `fd` the controlling terminal of this session (whose leader
/// the caller must be).
pub fn set_controlling_tty(fd: &impl AsFd) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal it from another session).
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0) } as libc::c_long)
        .map(drop)
}

/// dup2(fd, target) for the standard descriptors 0, 1, 2.
pub fn dup_onto_stdio(fd: &impl AsFd) -> SysResult<()> {
    for target in 0..3 {
        // SAFETY: dup2 on an open descriptor; replacing 0-2 is what the caller wants.
        check(unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) } as libc::c_long)?;
    }
    Ok(())
}

/// Copies the window size of the terminal `from` to the terminal `to` (which sends SIGWINCH
/// to the foreground process group of `to` when it changes).
pub fn copy_window_size(from: &impl AsFd, to: &impl AsFd) -> SysResult<()> {
    // SAFETY: winsize is plain old data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize to the pointer.
    let got = unsafe { libc::ioctl(from.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    check(got as libc::c_long)?;
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    check(unsafe { libc::ioctl(to.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } as libc::c_long)
        .map(drop)
}

/// Sends `msg` on the socket with `fd` attached (SCM_RIGHTS).
pub fn send_with_fd(sock: &impl AsFd, msg: &[u8], fd: &impl AsFd) -> SysResult<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(msg)];
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// Receives one message and the descriptor attached to it, if any (CMSG_CLOEXEC).
pub fn recv_with_fd(sock: &impl AsFd, buf: &mut [u8]) -> SysResult<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor for us with the message;
                // nothing else owns it. Extra ones are closed when dropped.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, fd))
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: plain socket(2) call; the result is owned below.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: fd was just returned by socket(2).
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } as libc::c_long)?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } as libc::c_long)?;
    Ok(())
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: &impl AsFd) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// The OCI container process's wait for `strata start`: opens the fifo (held as the O_PATH
/// descriptor `fifo`) for writing, which blocks until `start` opens it for reading, and
/// writes one byte. Through /proc/self/fd: the fifo's path is outside the new root.
pub fn wait_for_start(fifo: std::os::fd::RawFd) -> SysResult<()> {
    let path = format!("/proc/self/fd/{fifo}");
    let fd = loop {
        match nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    nix::unistd::write(&fd, b"0")?;
    close_inherited(fifo);
    // Kept open until execve closes it (O_CLOEXEC): `strata start` reads EOF then, and runs
    // poststart hooks only once the user's process runs.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
    Ok(())
}

/// Sets the effective, permitted and inheritable sets (bit N: capability N).
pub fn set_caps(effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |m: u64, i: usize| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: a version-3 header and a two-element data array, as capset(2) expects.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
}

/// Raises capability `cap` in the ambient set (it must be permitted and inheritable).
pub fn raise_ambient_cap(cap: u32) -> SysResult<()> {
    // SAFETY: PR_CAP_AMBIENT with PR_CAP_AMBIENT_RAISE takes integer arguments.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// PR_SET_KEEPCAPS: the permitted set survives a switch away from uid 0.
pub fn set_keep_caps(on: bool) -> SysResult<()> {
    prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong)
}

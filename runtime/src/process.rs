//! The process sequence of `strata run`, in one place.
//!
//! ```text
//!  strata (parent, host namespaces)                 never forks once it has a second thread
//!  │ 1. block the forwarded signals (HUP INT QUIT USR1 USR2 ALRM TERM; a thread forwards them)
//!  │ 2. collect what dead runtimes left (state::collect); take the container's lock and
//!  │    make the state directory with the temporary upper (stack::Workspace); create the
//!  │    cgroup and write the limits (cgroups); choose the driver; FUSE: start
//!  │    `stratafs -f` and wait for its mount
//!  │ 3. fork ─────────────┐
//!  │                      intermediate (host pid namespace)
//!  │                      │ a. parent-death signal SIGKILL; setsid (out of the caller's
//!  │                      │    session and process group); join the cgroup (write 0 to
//!  │                      │    cgroup.procs), so all that follows is born inside it
//!  │                      │    (cgroup v1: see below, the parent moves init instead)
//!  │                      │ b. rootless: unshare(CLONE_NEWUSER), say "U"; the parent writes
//!  │  4. "U": write the   │    the uid/gid maps (newuidmap/newgidmap or the one-line maps)
//!  │     maps, answer "M" │    and answers "M"; become root in the namespace
//!  │                      │ c. unshare mount, uts, ipc, cgroup, pid (+ net) namespaces
//!  │                      │ d. fork ──────────┐
//!  │  5. "I<pid>": from   │ leave the cgroup, init: pid 1 of the new pid namespace
//!  │     now on forward   │ say "I<pid>",     │ parent-death signal SIGKILL; not dumpable (its
//!  │     signals to init  │ wait for init,    │ /proc/1/exe, the runtime binary, is unreachable)
//!  │                      │ exit with its     │ hostname, lo up, the root filesystem (rootfs)
//!  │                      │ status            │
//!  │                      │                   │ fork ────────────┐
//!  │                      │                   │                  command (pid 2)
//!  │                      │                   │                  │ setsid; -t: the pty; default
//!  │                      │                   │                  │ signals; capability bounding
//!  │                      │                   │                  │ set reduced; --ulimit;
//!  │                      │                   │                  │ --user; chdir and check the
//!  │                      │                   │                  │ cwd is inside the root;
//!  │                      │                   │                  │ no_new_privs; every fd above
//!  │                      │                   │                  │ 2 close-on-exec; the seccomp
//!  │                      │                   │                  │ filter (before --user with
//!  │                      │                   │                  │ no-new-privileges=false);
//!  │                      │                   │                  │ execve
//!  │                      │                   │ reap zombies; forward the signals that the
//!  │                      │                   │ parent forwards to the command; exit with
//!  │                      │                   │ the command's status (128+N if killed by N),
//!  │                      │                   │ which makes the kernel kill what is left
//!  │  6. read messages until every copy of the channel is closed (the command's closes
//!  │     at execve), wait for the intermediate, read memory.events for OOM kills
//!  │  7. clean up whatever happened: cgroup.kill and rmdir of the cgroup, unmount and reap
//!  │     stratafs, remove the state directory (temporary upper); exit with the status
//! ```
//!
//! The three processes share a `SOCK_SEQPACKET` channel: `U`, `M`, `X` (abort), `I<pid>`, and
//! `E<code>\t<message>` for a failure on the container side (a mount, a missing command...),
//! which the parent prints as its one line and whose code it exits with.
//!
//! On cgroup v1 (hybrid hosts, or a v1 fallback) step 3a does not join: a move into a v1
//! cgroup waits for an RCU grace period, most of a start-up there. The parent moves init
//! instead when "I<pid>" comes, while init builds the root filesystem, and answers `C`; init
//! waits for `C` before the command (so the command and all it forks are born inside) and
//! only then creates the cgroup namespace, rooted at the container's cgroup as before.
//!
//! Nothing is left behind: the kernel overlay lives only in the container's mount namespace;
//! every child has a parent-death signal (SIGKILL for the container side, SIGTERM for
//! stratafs, which then unmounts) so even a SIGKILL of `strata` takes the container and the
//! daemon down; the parent's `Resources` guard releases the cgroup, the daemon and the
//! state directory on every path out of [`run`].

use crate::cgroups::{self, Cgroup};
use crate::config::{Config, Net};
use crate::error::{self, Error, ProcessError};
use crate::idmap::IdMap;
use crate::namespaces::{self, Namespaces};
use crate::rootfs::{self, RootfsSpec};
use crate::stack::{self, FuseDaemon, StackMount, Workspace};
use crate::{sys, tty};
use log::{debug, error, info};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

/// The signals `strata` passes on to the container instead of dying of them (Docker's
/// sig-proxy set less SIGPIPE, which a write of `strata` itself raises, and SIGWINCH, the
/// terminal's). Blocked so that none of them ends `strata` before it has cleaned up.
pub(crate) const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
];

/// The pty master of `-t`, once the container has sent it.
type Console = Arc<OnceLock<Arc<std::fs::File>>>;

fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(*sig);
    }
    s
}

/// The channel between the parent and the container side.
pub(crate) struct Channel(OwnedFd);

impl Channel {
    pub(crate) fn pair() -> Result<(Channel, Channel), Errno> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    pub(crate) fn send(&self, msg: &[u8]) -> Result<(), Errno> {
        socket::send(self.0.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL).map(drop)
    }

    fn send_fd(&self, msg: &[u8], fd: &impl AsFd) -> Result<(), Errno> {
        sys::send_with_fd(&self.0, msg, fd)
    }

    /// The next message; empty at end of stream.
    fn recv(&self) -> Result<Vec<u8>, Errno> {
        self.recv_with_fd().map(|(m, _)| m)
    }

    /// The next message and the descriptor it carries, if any.
    pub(crate) fn recv_with_fd(&self) -> Result<(Vec<u8>, Option<OwnedFd>), Errno> {
        let mut buf = [0u8; 4096];
        loop {
            match sys::recv_with_fd(&self.0, &mut buf) {
                Ok((n, fd)) => return Ok((buf[..n].to_vec(), fd)),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reports a failure to the parent (best effort) and returns its exit status.
    pub(crate) fn fail(&self, code: i32, err: &dyn std::fmt::Display) -> i32 {
        let _ = self.send(format!("E{code}\t{err}").as_bytes());
        code
    }
}

/// Answers a request of the container side: `ok` ("M": the maps are written, "C": init is
/// in the cgroup) when `r` is, "X" (abort) and the failure when not.
fn answer(
    chan: &Channel,
    ok: &[u8],
    r: Result<(), impl std::fmt::Display>,
) -> Option<(i32, String)> {
    match r {
        Ok(()) => {
            let _ = chan.send(ok);
            None
        }
        Err(e) => {
            let _ = chan.send(b"X");
            Some((error::EXIT_RUNTIME, e.to_string()))
        }
    }
}

/// The pid of an `I<pid>` message (without its `I`); 0 when it is not one.
pub(crate) fn parse_pid(body: &[u8]) -> i32 {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The code and message of an `E<code>\t<message>` message (without its `E`).
pub(crate) fn parse_failure(body: &[u8]) -> (i32, String) {
    let text = String::from_utf8_lossy(body).into_owned();
    text.split_once('\t')
        .and_then(|(c, m)| Some((c.parse().ok()?, m.to_string())))
        .unwrap_or((error::EXIT_RUNTIME, text))
}

/// Resources the parent must release, whatever happens.
#[derive(Default)]
struct Resources {
    cgroup: Option<Cgroup>,
    daemon: Option<FuseDaemon>,
    ws: Option<Workspace>,
}

impl Resources {
    /// Releases everything, in order: processes (cgroup), the FUSE mount, the directories.
    fn release(&mut self) -> Vec<Error> {
        let mut errors = Vec::new();
        if let Some(cg) = &mut self.cgroup {
            if let Err(e) = cg.destroy() {
                errors.push(e.into());
            }
        }
        if let Some(d) = &mut self.daemon {
            if let Err(e) = d.stop() {
                errors.push(e.into());
            }
        }
        if let Some(ws) = &mut self.ws {
            if let Err(e) = ws.remove() {
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        for e in self.release() {
            error!("cleanup: {e}");
        }
    }
}

/// What the container side needs (borrowed from the parent's memory, copied by fork).
struct Child<'a> {
    cfg: &'a Config,
    stack: &'a StackMount,
    root: &'a Path,
    cgroup: Option<&'a Cgroup>,
    namespaces: Namespaces,
    /// Set in a new uts namespace.
    hostname: Option<String>,
    cgroup2_in_container: bool,
    parent: Pid,
    /// The runtime's lock, which the container side must not hold.
    lock_fd: Option<std::os::fd::RawFd>,
    /// The OCI form: the command is pid 1 itself (no reaping init), outlives `strata create`
    /// and waits on `exec.fifo` (open O_PATH as this descriptor) until `strata start`.
    fifo_fd: Option<std::os::fd::RawFd>,
    /// cgroup v1: the parent moves init into the cgroup ("C" when done) instead of the
    /// intermediate joining it first; init waits for "C" before the command, and creates the
    /// cgroup namespace then (`late_cgroup_ns`), rooted at the container's cgroup.
    defer_join: bool,
    late_cgroup_ns: bool,
}

impl Child<'_> {
    /// On cgroup v1 (the grace period of a v1 move is most of a start-up there), moves the
    /// cgroup join from the intermediate to the parent, and the cgroup namespace to init.
    fn defer_cgroup_join(mut self) -> Self {
        if self.cgroup.is_some_and(Cgroup::is_v1) && !self.cgroup2_in_container {
            self.defer_join = true;
            if self
                .namespaces
                .others
                .contains(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            {
                self.namespaces
                    .others
                    .remove(nix::sched::CloneFlags::CLONE_NEWCGROUP);
                self.late_cgroup_ns = true;
            }
        }
        self
    }
}

/// The parent's answer to "I<pid>" when the join is deferred: init moved into the cgroup
/// ("C"), or abort ("X") and the failure.
fn attach_init(chan: &Channel, cgroup: Option<&Cgroup>, pid: i32) -> Option<(i32, String)> {
    let r = match cgroup {
        Some(cg) if pid > 0 => cg.attach(pid).map_err(|e| e.to_string()),
        _ => Err("no cgroup or no pid for the container".to_string()),
    };
    answer(chan, b"C", r)
}

/// init, with the join deferred: waits until the parent has moved it into the cgroup, then
/// creates the cgroup namespace (rooted there).
fn await_cgroup(c: &Child, chan: &Channel) -> Result<(), i32> {
    if !c.defer_join {
        return Ok(());
    }
    match chan.recv() {
        Ok(m) if m == b"C" => {}
        _ => return Err(error::EXIT_RUNTIME),
    }
    if c.late_cgroup_ns {
        if let Err(errno) = sys::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
            return Err(chan.fail(
                error::EXIT_RUNTIME,
                &crate::error::NamespaceError::Unshare {
                    what: "cgroup".into(),
                    errno,
                },
            ));
        }
    }
    Ok(())
}

fn new_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let pid = std::process::id().to_le_bytes();
    for (b, p) in bytes.iter_mut().zip(pid) {
        *b ^= p;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the container described by `cfg`; returns the exit status `strata` should end with.
pub fn run(cfg: &Config) -> Result<i32, Error> {
    let mut signals = stop_signals();
    // Not forwarded: the window size goes to the container's terminal (see forward_signals).
    signals.add(Signal::SIGWINCH);
    sys::block_signals(&signals).map_err(|errno| ProcessError::Setup {
        what: "blocking signals",
        errno,
    })?;
    let rootless = !nix::unistd::geteuid().is_root();
    let idmap = rootless.then(IdMap::for_current_user);
    if let (Some(m), Some((uid, gid))) = (&idmap, cfg.user) {
        if !m.maps_uid(uid) || !m.maps_gid(gid) {
            return Err(crate::error::ConfigError::Conflict(format!(
                "--user {uid}:{gid}: a rootless container has only uid/gid 0 unless /etc/subuid and /etc/subgid give this user a range (and newuidmap/newgidmap are installed)"
            ))
            .into());
        }
    }
    let id = new_id();
    info!(
        "container {id}{}",
        if rootless { " (rootless)" } else { "" }
    );

    let mut res = Resources::default();
    // The workspace first: its lock marks the id as live before a cgroup is named after it.
    res.ws = Some(Workspace::create(&id, cfg)?);
    res.cgroup = Cgroup::create(&id, &cfg.limits, cfg.cgroup_v1_fallback)?;
    let ws = res.ws.as_ref().ok_or(ProcessError::Setup {
        what: "state directory",
        errno: Errno::EINVAL,
    })?;
    let stack_mount = stack::plan(cfg, ws, rootless);
    if matches!(stack_mount, StackMount::Fuse) {
        res.daemon = Some(FuseDaemon::start(ws)?);
    }
    let root = ws.root.clone();

    let (parent_end, child_end) =
        Channel::pair().map_err(|e| ProcessError::Channel(e.desc().into()))?;
    let child = Child {
        cfg,
        stack: &stack_mount,
        root: &root,
        cgroup: res.cgroup.as_ref(),
        namespaces: Namespaces::all(rootless, cfg.net == Net::None),
        hostname: Some(cfg.hostname.clone().unwrap_or_else(|| id.clone())),
        cgroup2_in_container: cgroups::is_pure_v2(),
        parent: nix::unistd::getpid(),
        lock_fd: ws.lock_fd(),
        fifo_fd: None,
        defer_join: false,
        late_cgroup_ns: false,
    }
    .defer_cgroup_join();
    let defer_join = child.defer_join;

    // Still single-threaded here: the forwarding thread starts below, after the fork.
    let pid = match sys::fork().map_err(ProcessError::Fork)? {
        sys::Fork::Child => {
            drop(parent_end);
            if let Some(fd) = child.lock_fd {
                sys::close_inherited(fd);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                intermediate(&child, &child_end)
            }))
            .unwrap_or(error::EXIT_RUNTIME);
            sys::exit_now(code)
        }
        sys::Fork::Parent(pid) => pid,
    };
    drop(child_end);

    let init_pid = Arc::new(AtomicI32::new(0));
    let pending = Arc::new(AtomicI32::new(0));
    let console: Console = Arc::new(OnceLock::new());
    {
        let (init_pid, pending, console) = (init_pid.clone(), pending.clone(), console.clone());
        std::thread::spawn(move || forward_signals(&signals, &init_pid, &pending, &console));
    }
    // -t: the caller's terminal in raw mode and the relay, from the "T" message on.
    let mut raw_mode: Option<tty::RawMode> = None;
    let mut relay: Option<tty::Relay> = None;

    let mut failure: Option<(i32, String)> = None;
    loop {
        let (msg, fd) = match parent_end.recv_with_fd() {
            Ok((m, _)) if m.is_empty() => break,
            Ok(m) => m,
            Err(e) => {
                failure.get_or_insert((error::EXIT_RUNTIME, format!("channel: {}", e.desc())));
                break;
            }
        };
        match msg[0] {
            b'T' => {
                let Some(master) = fd.map(|f| Arc::new(std::fs::File::from(f))) else {
                    continue;
                };
                raw_mode = tty::RawMode::enter();
                let _ = sys::copy_window_size(&std::io::stdin(), &*master);
                match tty::Relay::start(master.clone()) {
                    Ok(r) => relay = Some(r),
                    Err(e) => {
                        failure.get_or_insert((error::EXIT_RUNTIME, format!("tty relay: {e}")));
                    }
                }
                let _ = console.set(master);
            }
            b'U' => {
                let r = idmap
                    .as_ref()
                    .map(|m| m.apply(pid.as_raw()))
                    .unwrap_or(Ok(()));
                if let Some(f) = answer(&parent_end, b"M", r) {
                    failure.get_or_insert(f);
                }
            }
            b'I' => {
                let p = parse_pid(&msg[1..]);
                debug!("init is pid {p} on the host");
                if defer_join {
                    if let Some(f) = attach_init(&parent_end, res.cgroup.as_ref(), p) {
                        failure.get_or_insert(f);
                    }
                }
                init_pid.store(p, Ordering::SeqCst);
                let sig = pending.swap(0, Ordering::SeqCst);
                if p > 0 && sig > 0 {
                    if let Ok(s) = Signal::try_from(sig) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(p), s);
                    }
                }
            }
            b'E' => {
                failure.get_or_insert(parse_failure(&msg[1..]));
            }
            _ => {}
        }
    }
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    init_pid.store(-1, Ordering::SeqCst);
    // The terminal's last output, then the caller's terminal as it was, before any message.
    if let Some(r) = relay.take() {
        r.finish(std::time::Duration::from_secs(2));
    }
    drop(raw_mode);
    let code = match status {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => error::EXIT_RUNTIME,
    };
    info!("container exited with status {code}");
    if let Some(cg) = &res.cgroup {
        let kills = cg.oom_kills();
        if kills > 0 {
            let limit = cfg
                .limits
                .memory
                .map(|m| format!(" (memory limit {})", human(m)))
                .unwrap_or_default();
            eprintln!(
                "strata: out of memory: the kernel's OOM killer killed {kills} process{} of the container{limit}",
                if kills == 1 { "" } else { "es" }
            );
        }
    }
    let cleanup = res.release();
    for e in &cleanup {
        eprintln!("strata: cleanup: {e}");
    }
    if let Some((code, message)) = failure {
        return Err(ProcessError::Child { code, message }.into());
    }
    if !cleanup.is_empty() && code == 0 {
        return Ok(error::EXIT_RUNTIME);
    }
    Ok(code)
}

/// `strata create`'s options beyond the bundle.
pub struct CreateOptions<'a> {
    /// `<--root>/<id>`, the container's directory (made by the caller, empty).
    pub dir: &'a Path,
    /// `--console-socket`: where the terminal's master goes (process.terminal).
    pub console_socket: Option<&'a Path>,
}

/// A container `strata create` made: its process waits on the fifo for `strata start`.
pub struct Created {
    /// The container process, on the host.
    pub pid: i32,
    /// The cgroup directories, for `delete`.
    pub cgroups: Vec<PathBuf>,
    /// The terminal's master when there was no console socket (`strata run` in the
    /// foreground relays it).
    pub console: Option<OwnedFd>,
}

/// The OCI form's create: the same sequence as [`run`] up to the command's execve, where the
/// command waits until `strata start` opens `exec.fifo`; returns once it waits there.
/// Everything it made is released if it fails, and kept (for `strata delete`) if not.
pub fn create(cfg: &Config, opts: &CreateOptions) -> Result<Created, Error> {
    let oci = cfg.oci.as_ref().ok_or(ProcessError::Setup {
        what: "an OCI container without a bundle",
        errno: Errno::EINVAL,
    })?;
    let rootless = !nix::unistd::geteuid().is_root();
    let new_user = oci.create.contains(nix::sched::CloneFlags::CLONE_NEWUSER);
    let idmap = (rootless && new_user && oci.uid_map.is_empty()).then(IdMap::for_current_user);
    let mut res = Resources::default();
    res.ws = Some(Workspace::create_oci(opts.dir.to_path_buf(), &oci.id, cfg)?);
    res.cgroup = Cgroup::create_at(
        &oci.id,
        oci.cgroups_path.as_deref().filter(|_| !rootless),
        &cfg.limits,
        cfg.cgroup_v1_fallback,
    )?;
    let ws = res.ws.as_ref().ok_or(ProcessError::Setup {
        what: "state directory",
        errno: Errno::EINVAL,
    })?;
    let stack_mount = stack::plan(cfg, ws, rootless);
    if matches!(stack_mount, StackMount::Fuse) {
        return Err(crate::error::ConfigError::Conflict(format!(
            "the FUSE driver cannot serve an OCI container yet (its daemon would have to outlive strata create): use {}=kernel where the kernel's overlay may be mounted",
            crate::oci::bundle::DRIVER_ANNOTATION
        ))
        .into());
    }
    let fifo_path = ws.dir.join("exec.fifo");
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622)).map_err(
        |errno| ProcessError::Setup {
            what: "creating exec.fifo",
            errno,
        },
    )?;
    // mkfifo's mode goes through the umask; the container's user must be able to write it.
    let _ = std::fs::set_permissions(
        &fifo_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    );
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| ProcessError::Setup {
        what: "opening exec.fifo",
        errno,
    })?;
    let root = ws.root.clone();
    let (parent_end, child_end) =
        Channel::pair().map_err(|e| ProcessError::Channel(e.desc().into()))?;
    let mut others = oci.create;
    others.remove(nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET);
    let child = Child {
        cfg,
        stack: &stack_mount,
        root: &root,
        cgroup: res.cgroup.as_ref(),
        namespaces: Namespaces {
            user: new_user,
            net: oci.create.contains(nix::sched::CloneFlags::CLONE_NEWNET),
            others,
            join: oci.join.clone(),
        },
        hostname: cfg.hostname.clone(),
        cgroup2_in_container: cgroups::is_pure_v2()
            && oci.create.contains(nix::sched::CloneFlags::CLONE_NEWCGROUP),
        parent: nix::unistd::getpid(),
        lock_fd: None,
        fifo_fd: Some(fifo.as_raw_fd()),
        defer_join: false,
        late_cgroup_ns: false,
    }
    .defer_cgroup_join();
    let defer_join = child.defer_join;
    let pid = match sys::fork().map_err(ProcessError::Fork)? {
        sys::Fork::Child => {
            drop(parent_end);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                intermediate(&child, &child_end)
            }))
            .unwrap_or(error::EXIT_RUNTIME);
            sys::exit_now(code)
        }
        sys::Fork::Parent(pid) => pid,
    };
    drop(child_end);
    drop(fifo);

    let mut init_pid = 0;
    let mut console = None;
    let mut failure: Option<(i32, String)> = None;
    let mut ready = false;
    // Both messages: the intermediate's "I" may come after init's "R" (it can be descheduled
    // between its fork and its send while init does all of its setup).
    while !(ready && init_pid > 0) {
        let (msg, fd) = match parent_end.recv_with_fd() {
            Ok((m, _)) if m.is_empty() => break,
            Ok(m) => m,
            Err(e) => {
                failure.get_or_insert((error::EXIT_RUNTIME, format!("channel: {}", e.desc())));
                break;
            }
        };
        match msg[0] {
            b'R' => ready = true,
            b'T' => match (fd, opts.console_socket) {
                (Some(master), Some(sock)) => {
                    if let Err(e) = tty::send_to_console_socket(sock, &master) {
                        failure.get_or_insert((
                            error::EXIT_RUNTIME,
                            format!("--console-socket {}: {e}", sock.display()),
                        ));
                    }
                }
                (master, None) => console = master,
                (None, _) => {}
            },
            b'U' => {
                let r = if let Some(m) = &idmap {
                    m.apply(pid.as_raw())
                } else {
                    crate::idmap::write_maps(pid.as_raw(), &oci.uid_map, &oci.gid_map)
                };
                if let Some(f) = answer(&parent_end, b"M", r) {
                    failure.get_or_insert(f);
                }
            }
            b'I' => {
                init_pid = parse_pid(&msg[1..]);
                debug!("the container process is pid {init_pid} on the host");
                if defer_join {
                    if let Some(f) = attach_init(&parent_end, res.cgroup.as_ref(), init_pid) {
                        failure.get_or_insert(f);
                    }
                }
            }
            b'E' => {
                failure.get_or_insert(parse_failure(&msg[1..]));
            }
            _ => {}
        }
        if failure.is_some() {
            break;
        }
    }
    // The intermediate has left (or leaves now) after naming the container process.
    let _ = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    if !ready || init_pid <= 0 {
        if init_pid > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(init_pid), Signal::SIGKILL);
        }
        let (code, message) = failure.unwrap_or((
            error::EXIT_RUNTIME,
            "the container process ended before it was ready".into(),
        ));
        return Err(ProcessError::Child { code, message }.into());
    }
    let cgroups = res.cgroup.as_ref().map(|c| c.paths()).unwrap_or_default();
    // Kept for `strata delete`.
    if let Some(ws) = res.ws.take() {
        ws.keep();
    }
    res.cgroup.take();
    Ok(Created {
        pid: init_pid,
        cgroups,
        console,
    })
}

fn human(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// The parent's signal thread: forwards the signals `strata` gets (from a process or from
/// its terminal: the container has its own session, so a Ctrl-C reaches only `strata`) to
/// the container's init. A signal that comes before init exists is kept and sent once it does.
fn forward_signals(set: &SigSet, init_pid: &AtomicI32, pending: &AtomicI32, console: &Console) {
    while let Ok(info) = sys::wait_signal(set) {
        if info.signal == Signal::SIGWINCH {
            // The caller's window changed: the container's terminal follows (-t).
            if let Some(master) = console.get() {
                let _ = sys::copy_window_size(&std::io::stdin(), &**master);
            }
            continue;
        }
        let pid = init_pid.load(Ordering::SeqCst);
        if pid == 0 {
            pending.store(info.signal as i32, Ordering::SeqCst);
            // init may have been named between the load and the store: whichever side
            // swaps the pending signal out sends it, so it is sent once and never lost.
            let pid = init_pid.load(Ordering::SeqCst);
            if pid > 0 {
                let sig = pending.swap(0, Ordering::SeqCst);
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), s);
                }
            }
        } else if pid > 0 {
            debug!("forwarding {} to the container", info.signal);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), info.signal);
        }
    }
}

/// The intermediate process; returns its exit status.
fn intermediate(c: &Child, chan: &Channel) -> i32 {
    if sys::set_parent_death_signal(Signal::SIGKILL).is_err() || nix::unistd::getppid() != c.parent
    {
        return error::EXIT_RUNTIME;
    }
    // Out of the caller's session and process group: nothing in the container can signal
    // them (`kill -TERM 0`), and the caller's terminal cannot become its controlling tty.
    if let Err(errno) = nix::unistd::setsid() {
        return chan.fail(
            error::EXIT_RUNTIME,
            &ProcessError::Setup {
                what: "starting a new session",
                errno,
            },
        );
    }
    let origin = c
        .cgroup
        .filter(|_| !c.defer_join)
        .map(Cgroup::origin)
        .unwrap_or_default();
    if let Some(cg) = c.cgroup.filter(|_| !c.defer_join) {
        if let Err(e) = cg.join() {
            return chan.fail(error::EXIT_RUNTIME, &e);
        }
    }
    if let Err(e) = c.namespaces.join(true) {
        return chan.fail(error::EXIT_RUNTIME, &e);
    }
    if c.namespaces.user {
        if let Err(e) = c.namespaces.unshare_user() {
            return chan.fail(error::EXIT_RUNTIME, &e);
        }
        if chan.send(b"U").is_err() {
            return error::EXIT_RUNTIME;
        }
        match chan.recv() {
            Ok(m) if m == b"M" => {}
            _ => return error::EXIT_RUNTIME,
        }
        if let Err(e) = c.namespaces.become_root() {
            return chan.fail(error::EXIT_RUNTIME, &e);
        }
        // Credentials changed: set the parent-death signal again, and check the parent.
        if sys::set_parent_death_signal(Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != c.parent
        {
            return error::EXIT_RUNTIME;
        }
    }
    if let Err(e) = c.namespaces.join(false) {
        return chan.fail(error::EXIT_RUNTIME, &e);
    }
    if let Err(e) = c.namespaces.unshare_container() {
        return chan.fail(error::EXIT_RUNTIME, &e);
    }
    // Open while this process lives: init checks it once its parent-death signal is set,
    // since this process may have died (with the runtime) before that.
    let (alive_r, alive_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(errno) => {
            return chan.fail(
                error::EXIT_RUNTIME,
                &ProcessError::Setup {
                    what: "creating a pipe",
                    errno,
                },
            )
        }
    };
    match sys::fork() {
        Err(e) => chan.fail(error::EXIT_RUNTIME, &ProcessError::Fork(e)),
        Ok(sys::Fork::Child) => {
            drop(alive_w);
            let code =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| init(c, chan, alive_r)))
                    .unwrap_or(error::EXIT_RUNTIME);
            sys::exit_now(code)
        }
        Ok(sys::Fork::Parent(init_pid)) => {
            drop(alive_r);
            let _alive = alive_w;
            // Only the container counts in its limits: this process goes back.
            cgroups::leave(&origin);
            drop(origin);
            let _ = chan.send(format!("I{init_pid}").as_bytes());
            if c.fifo_fd.is_some() {
                // OCI: the container outlives the runtime; its process goes to the nearest
                // subreaper (conmon, containerd's shim) or to the host's init.
                return 0;
            }
            loop {
                match nix::sys::wait::waitpid(init_pid, None) {
                    Err(Errno::EINTR) => continue,
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                    Ok(_) => continue,
                    Err(_) => return error::EXIT_RUNTIME,
                }
            }
        }
    }
}

/// The container's init (pid 1); returns its exit status (the command's).
fn init(c: &Child, chan: &Channel, parent_alive: OwnedFd) -> i32 {
    // (getppid() is 0 here: the parent is outside the new pid namespace; the pipe tells
    // whether it still lives.)
    // OCI: the intermediate leaves at once and this process outlives the runtime.
    if c.fifo_fd.is_none() {
        if sys::set_parent_death_signal(Signal::SIGKILL).is_err() {
            return error::EXIT_RUNTIME;
        }
        let mut fds = [nix::poll::PollFd::new(
            parent_alive.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
            Ok(0) => {}
            _ => return error::EXIT_RUNTIME,
        }
    }
    drop(parent_alive);
    let _ = sys::set_not_dumpable();
    if let Some(h) = &c.hostname {
        if let Err(e) = namespaces::set_hostname(h) {
            return chan.fail(error::EXIT_RUNTIME, &e);
        }
    }
    if c.namespaces.net {
        if let Err(e) = namespaces::loopback_up() {
            return chan.fail(error::EXIT_RUNTIME, &e);
        }
    }
    let spec = RootfsSpec {
        root: c.root,
        stack: c.stack,
        binds: &c.cfg.binds,
        tmpfs: &c.cfg.tmpfs,
        read_only: c.cfg.read_only,
        rootless: c.namespaces.user,
        net_none: c.namespaces.net,
        cgroup2: c.cgroup2_in_container,
        workdir: &c.cfg.workdir,
        oci: c.cfg.oci.as_ref().map(|o| &o.rootfs),
    };
    if let Err(e) = rootfs::setup(&spec) {
        return chan.fail(error::EXIT_RUNTIME, &e);
    }
    if let Err(code) = await_cgroup(c, chan) {
        return code;
    }
    if c.fifo_fd.is_some() {
        // OCI: the command is pid 1 (as with runc and crun), so its status is the
        // container's as its parent (a subreaper) sees it.
        let err = exec_command(c.cfg, c.fifo_fd, true, chan);
        let code = err.exit_code();
        // After start nobody reads the channel: say it where the container's output goes,
        // as runc's init does ("exec /x: no such file or directory" in the engine's logs).
        if chan.send(format!("E{code}\t{err}").as_bytes()).is_err() {
            eprintln!("strata: {err}");
        }
        return code;
    }
    let mut set = stop_signals();
    set.add(Signal::SIGCHLD);
    if let Err(errno) = sys::block_signals(&set) {
        return chan.fail(
            error::EXIT_RUNTIME,
            &ProcessError::Setup {
                what: "blocking signals",
                errno,
            },
        );
    }
    let cmd = match sys::fork() {
        Err(e) => return chan.fail(error::EXIT_RUNTIME, &ProcessError::Fork(e)),
        Ok(sys::Fork::Child) => {
            let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exec_command(c.cfg, c.fifo_fd, true, chan)
            }))
            .unwrap_or(Error::Process(ProcessError::Setup {
                what: "starting the command",
                errno: Errno::EIO,
            }));
            let code = chan.fail(err.exit_code(), &err);
            sys::exit_now(code)
        }
        Ok(sys::Fork::Parent(pid)) => pid,
    };
    info!("init: command started (pid {cmd} in the container)");
    reap_until(cmd, &set)
}

/// init's loop: reaps every child, forwards stop signals that a process sent (the parent's
/// forwarding) to the command, and returns the command's status when it ends.
fn reap_until(cmd: Pid, set: &SigSet) -> i32 {
    loop {
        let info = match sys::wait_signal(set) {
            Ok(i) => i,
            Err(_) => return error::EXIT_RUNTIME,
        };
        if info.signal != Signal::SIGCHLD {
            if info.from_process {
                let _ = nix::sys::signal::kill(cmd, info.signal);
            }
            continue;
        }
        loop {
            match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == cmd => return code,
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == cmd => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return error::EXIT_RUNTIME,
            }
        }
    }
}

/// The command's process: last settings, then execve. Returns only on failure.
/// `console`: the terminal is bound on /dev/console too (the container's first process; not
/// `strata exec`'s).
pub(crate) fn exec_command(
    cfg: &Config,
    fifo_fd: Option<std::os::fd::RawFd>,
    console: bool,
    chan: &Channel,
) -> Error {
    let setup =
        |what: &'static str| move |errno| Error::Process(ProcessError::Setup { what, errno });
    if let Some(o) = &cfg.oci {
        if let Some(adj) = o.oom_score_adj {
            if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
                return setup("setting oom_score_adj")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ));
            }
        }
        if let Some(m) = o.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
    }
    // A session of its own: `kill 0` inside reaches only the command's own group, not init.
    if let Err(e) = nix::unistd::setsid() {
        return setup("starting a new session")(e);
    }
    if cfg.tty {
        match tty::attach_console(console) {
            Ok(master) => {
                if let Err(e) = chan.send_fd(b"T", &master) {
                    return setup("sending the terminal to strata")(e);
                }
            }
            Err((what, e)) => return setup(what)(e),
        }
    }
    if let Err(e) = sys::reset_signals() {
        return setup("resetting signals")(e);
    }
    for cap in 0..=sys::last_cap() {
        if !cfg.caps.contains(cap) {
            match sys::drop_bounding_cap(cap) {
                Ok(()) | Err(Errno::EINVAL) => {}
                Err(e) => return setup("reducing the capability bounding set")(e),
            }
        }
    }
    if let Err(e) = sys::clear_ambient_caps().and_then(|()| sys::clear_inheritable_caps()) {
        return setup("clearing capabilities")(e);
    }
    // While CAP_SYS_RESOURCE is still effective (raising a hard limit needs it).
    for u in &cfg.ulimits {
        if let Err(line) = u.apply() {
            return ProcessError::Refused(line).into();
        }
    }
    let load_seccomp = || match &cfg.seccomp {
        Some(filter) => filter.load().map_err(setup("loading the seccomp filter")),
        None => Ok(()),
    };
    // Without no_new_privs only a process with CAP_SYS_ADMIN may install a filter: before
    // --user drops it (as runc does); the filter then covers the steps below.
    if !cfg.no_new_privs {
        if let Err(e) = load_seccomp() {
            return e;
        }
    }
    let (uid, gid) = cfg.user.unwrap_or((0, 0));
    let groups: Vec<Gid> = cfg
        .oci
        .as_ref()
        .map(|o| {
            o.additional_gids
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect()
        })
        .unwrap_or_default();
    if !groups.is_empty() {
        if let Err(e) = nix::unistd::setgroups(&groups) {
            return setup("setting the additional groups")(e);
        }
    }
    let oci_caps = cfg.oci.as_ref().map(|o| o.caps);
    // Before the switch, which empties the permitted set of a non-root user.
    let had = match oci_caps {
        Some(_) => sys::permitted_caps().unwrap_or(u64::MAX),
        None => u64::MAX,
    };
    if oci_caps.is_some() {
        if let Err(e) = sys::set_keep_caps(true) {
            return setup("keeping capabilities across the user switch")(e);
        }
    }
    if let Err(e) = sys::set_ids(Uid::from_raw(uid), Gid::from_raw(gid), groups.is_empty()) {
        return setup("switching to --user")(e);
    }
    // OCI: the bundle's sets, as runc sets them after the switch.
    if let Some(c) = oci_caps {
        let r = sys::set_keep_caps(false).and_then(|()| {
            sys::set_caps(c.effective.mask(), c.permitted.mask(), c.inheritable.mask())
        });
        if let Err(e) = r {
            // Name what the runtime itself lacks (this host's root has no CAP_SYS_RESOURCE,
            // for one) rather than a bare EPERM.
            let wanted = c.effective.mask() | c.permitted.mask() | c.inheritable.mask();
            let missing = wanted & !had;
            if e == Errno::EPERM && missing != 0 {
                let names: Vec<&str> = (0..64)
                    .filter(|i| missing & (1 << i) != 0)
                    .map(|i| crate::capabilities::name(i).unwrap_or("an unknown capability"))
                    .collect();
                return crate::error::ConfigError::Conflict(format!(
                    "config.json asks for capabilities that strata itself does not have here: {}",
                    names.join(", ")
                ))
                .into();
            }
            return setup("setting the capability sets")(e);
        }
        // The kernel raises an ambient capability only where it is permitted and
        // inheritable too; runc warns about the others and goes on (here: -v) (`strata spec`'s
        // default lists ambient capabilities with an empty inheritable set), so do we.
        for cap in c.ambient.numbers() {
            if let Err(e) = sys::raise_ambient_cap(cap) {
                debug!("ambient capability {cap} not raised: {}", e.desc());
            }
        }
    }
    if let Err(errno) = nix::unistd::chdir(&cfg.workdir) {
        return ProcessError::Workdir {
            path: cfg.workdir.clone(),
            errno,
        }
        .into();
    }
    // The working directory must be inside the new root (runc CVE-2024-21626).
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => {}
        // getcwd refused (the bundle's seccomp profile may deny it, loaded already when
        // no_new_privs is off): walk up with "..", which reaches "/" only from inside.
        Err(e) if e != Errno::ENOENT && sys::cwd_reaches_root() => {}
        _ => {
            return ProcessError::Workdir {
                path: cfg.workdir.clone(),
                errno: Errno::ENOENT,
            }
            .into()
        }
    }
    if cfg.no_new_privs {
        if let Err(e) = sys::set_no_new_privs() {
            return setup("setting no_new_privs")(e);
        }
    }
    let path_env = cfg
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let name = cfg.command[0].as_os_str();
    let shown = name.to_string_lossy().into_owned();
    // OCI: a missing command fails at start, not create (runtime-tools' misc_props creates
    // bundles without one); the error then goes to the container's stderr.
    let program = find_program(name, path_env);
    if program.is_none() && fifo_fd.is_none() {
        return ProcessError::NotFound { command: shown }.into();
    }
    let bad = |_| {
        Error::Process(ProcessError::Exec {
            command: shown.clone(),
            errno: Errno::EINVAL,
        })
    };
    let prog = match program.map(|p| sys::cstring_of(p.as_os_str())).transpose() {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let args: Result<Vec<CString>, _> = cfg.command.iter().map(|a| sys::cstring_of(a)).collect();
    let env: Result<Vec<CString>, _> = cfg
        .env
        .iter()
        .map(|(k, v)| sys::cstring_of(OsStr::new(&format!("{k}={v}"))))
        .collect();
    let (args, env) = match (args, env) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let keep = cfg.oci.as_ref().map(|o| o.preserve_fds).unwrap_or(0);
    if let Err(e) = sys::cloexec_from(3 + keep) {
        return setup("closing file descriptors")(e);
    }
    if let Some(fifo) = fifo_fd {
        // OCI: set up; `strata create` returns on "R", and `strata start` opens the fifo.
        // The hooks the spec runs in the container's namespaces run here, their paths
        // resolved in the container (the pid in their state is 0: this process does not
        // know its number on the host).
        if let Err(e) = container_hooks(cfg, "createContainer", "created") {
            return e;
        }
        if chan.send(b"R").is_err() {
            return setup("telling strata create")(Errno::EPIPE);
        }
        if let Err(e) = sys::wait_for_start(fifo) {
            return setup("waiting for strata start on exec.fifo")(e);
        }
        if let Err(e) = container_hooks(cfg, "startContainer", "running") {
            return e;
        }
    }
    let Some(prog) = prog else {
        return ProcessError::NotFound { command: shown }.into();
    };
    // Last: from here on only execve runs, under the filter.
    if cfg.no_new_privs {
        if let Err(e) = load_seccomp() {
            return e;
        }
    }
    match sys::execve(&prog, &args, &env) {
        Errno::ENOENT => ProcessError::NotFound { command: shown }.into(),
        errno => ProcessError::Exec {
            command: shown,
            errno,
        }
        .into(),
    }
}

/// Runs the bundle's createContainer or startContainer hooks from inside the container.
fn container_hooks(cfg: &Config, phase: &'static str, status: &str) -> Result<(), Error> {
    let Some(o) = &cfg.oci else { return Ok(()) };
    let Some(h) = &o.hooks else { return Ok(()) };
    let list = match phase {
        "createContainer" => h.create_container(),
        _ => h.start_container(),
    };
    let Some(list) = list else { return Ok(()) };
    let state = serde_json::json!({
        "ociVersion": crate::oci::container::OCI_VERSION,
        "id": o.id,
        "status": status,
        "pid": 0,
        "bundle": o.bundle,
        "annotations": o.annotations,
    });
    let bytes = serde_json::to_vec(&state).unwrap_or_default();
    crate::hooks::run_hooks(list, &bytes, phase).map_err(Error::from)
}

/// The program to execute: `name` itself when it has a '/', else the first regular file
/// called `name` in the directories of `path` (in the container's root).
fn find_program(name: &OsStr, path: &str) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        // Checked here, before anything runs.
        return std::fs::symlink_metadata(name)
            .is_ok()
            .then(|| PathBuf::from(name));
    }
    if name.is_empty() {
        return None;
    }
    path.split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(64 << 20), "64M");
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(1000), "1000 bytes");
    }

    #[test]
    fn ids_are_12_hex_digits() {
        let id = new_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn program_lookup() {
        assert_eq!(
            find_program(OsStr::new("/bin/sh"), ""),
            Some(PathBuf::from("/bin/sh"))
        );
        // A path is checked too (`strata run` fails before anything runs).
        assert_eq!(find_program(OsStr::new("/no/such/x"), ""), None);
        assert!(find_program(OsStr::new("sh"), "/bin:/usr/bin").is_some());
        assert_eq!(find_program(OsStr::new("no-such-program-x"), "/bin"), None);
    }
}

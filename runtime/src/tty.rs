//! `-t/--tty`: a terminal of the container's own, relayed to the caller's.
//!
//! The command process (after pivot_root, as the leader of its own session) opens a pty pair
//! in the container's devpts, so the slave is `/dev/pts/N` there; binds the slave on
//! `/dev/console`, makes it its controlling terminal and its stdin/stdout/stderr, and sends
//! the master to the parent over the channel with SCM_RIGHTS (the console-socket pattern of
//! runc and crun). The parent puts its own terminal in raw mode (restored on every way out:
//! [`RawMode`] is a guard), copies stdin to the master and the master to stdout in one thread
//! ([`Relay`]), and copies its window size to the pty at start and on every SIGWINCH.
//!
//! Without `-t` the container gets no terminal: it inherits the caller's descriptors, but,
//! in a session of its own, the caller's terminal can never become its controlling tty.

use crate::sys;
use log::debug;
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Creates the container's terminal (in the command process) and returns the master, to be
/// sent to the parent; the slave is this process's controlling tty and stdio from here on.
/// With `bind`, the terminal is also bound on /dev/console (the container's first process).
pub fn attach_console(bind: bool) -> Result<OwnedFd, (&'static str, Errno)> {
    let (master, slave, n) = sys::open_pty().map_err(|e| ("opening /dev/ptmx", e))?;
    let console = Path::new("/dev/console");
    if bind {
        if !console.exists() {
            File::create(console).map_err(|e| ("creating /dev/console", errno_of(&e)))?;
        }
        let pts = format!("/dev/pts/{n}");
        sys::mount(Some(Path::new(&pts)), console, None, MsFlags::MS_BIND, None)
            .map_err(|e| ("binding the terminal on /dev/console", e))?;
    }
    sys::set_controlling_tty(&slave).map_err(|e| ("making the terminal controlling", e))?;
    sys::dup_onto_stdio(&slave).map_err(|e| ("making the terminal stdio", e))?;
    Ok(master)
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The caller's terminal in raw mode while it lives; the saved settings come back on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin, if stdin is a terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        if !sys::is_terminal(&stdin) {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: what the relay wrote is shown with the settings it was written for.
        if let Err(e) = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.saved) {
            debug!("restoring the terminal: {e}");
        }
    }
}

/// The thread that copies stdin to the pty's master and the master to stdout.
pub struct Relay {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// ASCII EOT: the line discipline's end-of-file, sent when stdin ends.
const VEOF: u8 = 0x04;

impl Relay {
    pub fn start(master: Arc<File>) -> io::Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tty-relay".into())
            .spawn(move || relay(&master, &flag))?;
        Ok(Relay {
            thread: Some(thread),
            stop,
        })
    }

    /// Waits for the relay to drain the terminal's output (it ends by itself once the
    /// container has closed every descriptor of the slave); asks it to stop after `grace`.
    pub fn finish(mut self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(master: &File, stop: &AtomicBool) {
    let stdin = io::stdin();
    let mut stdout = io::stdout();
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let (master_ready, stdin_ready) = {
            let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    debug!("tty relay: poll: {e}");
                    return;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if master_ready {
            match (&*master).read(&mut buf) {
                // EIO: every descriptor of the slave is closed (the container is gone).
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }
            continue;
        }
        if stdin_ready {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = (&*master).write_all(&[VEOF]);
                }
                Ok(n) => {
                    if (&*master).write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Sends the terminal's master to the OCI `--console-socket` (a unix stream socket that the
/// caller listens on, e.g. conmon's), as runc does: one message with the descriptor.
pub fn send_to_console_socket(path: &Path, master: &OwnedFd) -> io::Result<()> {
    let sock = std::os::unix::net::UnixStream::connect(path)?;
    sys::send_with_fd(&sock, b"/dev/ptmx", master).map_err(io::Error::from)
}

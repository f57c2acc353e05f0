//! FUSE passthrough: which opens of a node the kernel serves from a layer file directly.
//!
//! The kernel's rules (fs/fuse/iomode.c) shape this module: the opens of one inode that are
//! alive together either all pass through, to one backing id, or none does (a mix fails the
//! user's open with ETXTBSY or EINVAL). So the choice is made per node by its first open and
//! followed by every open until the last one is released.
//!
//! A lower file opened read-only may pass through only with `passthrough=all`: a reader bound
//! to the lower file would not see a copy-up made meanwhile (the kernel's overlay switches its
//! readers to the copy), and an open for writing would be bound to the lower file and write
//! into it. While such a reader is open, opens for writing and truncations get ETXTBSY.

use crate::inodes::NodeId;
use crate::options::Passthrough;
use fuser::BackingId;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an open for writing waits for the releases of lower readers: a close reaches the
/// daemon after the closing program has moved on (RELEASE is asynchronous), so a program that
/// closes its reader and then writes must not get ETXTBSY for that.
const RELEASE_WAIT: Duration = Duration::from_millis(500);

struct NodeIo {
    /// The node's backing file while its opens pass through.
    backing: Option<Arc<BackingId>>,
    /// The backing file is in a lower layer.
    lower: bool,
    opens: usize,
}

pub struct Table {
    mode: Passthrough,
    /// Set once the kernel accepted passthrough; cleared if it refuses a backing file for want
    /// of privilege.
    enabled: AtomicBool,
    nodes: Mutex<HashMap<NodeId, NodeIo>>,
    released: Condvar,
}

/// What the opener is.
pub struct Open<'a> {
    pub ino: NodeId,
    pub fd: BorrowedFd<'a>,
    /// `fd` is in the upper layer.
    pub upper: bool,
    /// Opened for writing (or truncating).
    pub write: bool,
    pub st_mode: u32,
}

impl Table {
    pub fn new(mode: Passthrough) -> Table {
        Table {
            mode,
            enabled: AtomicBool::new(false),
            nodes: Mutex::new(HashMap::new()),
            released: Condvar::new(),
        }
    }

    /// Whether to ask the kernel for passthrough at all.
    pub fn wanted(&self) -> bool {
        self.mode != Passthrough::Off
    }

    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether opens are to be registered.
    pub fn active(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// ETXTBSY when `ino` has a lower file open through passthrough: it may not change.
    pub fn check_writable(&self, ino: NodeId) -> io::Result<()> {
        if !self.active() {
            return Ok(());
        }
        let nodes = self.nodes.lock();
        self.wait_lower_released(nodes, ino).map(drop)
    }

    /// Waits (a while) until `ino` has no lower file open through passthrough.
    fn wait_lower_released<'a>(
        &'a self,
        mut nodes: MutexGuard<'a, HashMap<NodeId, NodeIo>>,
        ino: NodeId,
    ) -> io::Result<MutexGuard<'a, HashMap<NodeId, NodeIo>>> {
        let deadline = Instant::now() + RELEASE_WAIT;
        while nodes.get(&ino).is_some_and(|n| n.lower && n.opens > 0) {
            if self.released.wait_until(&mut nodes, deadline).timed_out() {
                return Err(io::Error::from_raw_os_error(libc::ETXTBSY));
            }
        }
        Ok(nodes)
    }

    /// Registers an open (call `release` when the kernel releases it, if this returned `Ok`);
    /// returns the backing file to reply with, `None` for an open served by the daemon.
    pub fn open(
        &self,
        o: &Open,
        register: impl FnOnce(BorrowedFd) -> io::Result<BackingId>,
    ) -> io::Result<Option<Arc<BackingId>>> {
        if !self.active() {
            return Ok(None);
        }
        let mut nodes = self.nodes.lock();
        if o.write {
            nodes = self.wait_lower_released(nodes, o.ino)?;
        }
        if let Some(n) = nodes.get_mut(&o.ino).filter(|n| n.opens > 0) {
            n.opens += 1;
            return Ok(n.backing.clone());
        }
        let regular = o.st_mode & libc::S_IFMT == libc::S_IFREG;
        // Set-id files are served by the daemon, which clears the bits on a write by the
        // caller's rights; a backing file is written with ours.
        let setid = o.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0;
        let layer_ok = o.upper || (self.mode == Passthrough::All && !o.write);
        let mut backing = None;
        if regular && !setid && layer_ok {
            match register(o.fd) {
                Ok(id) => backing = Some(Arc::new(id)),
                Err(e) => {
                    log::debug!("passthrough refused for node {}: {e}", o.ino);
                    if e.raw_os_error() == Some(libc::EPERM) {
                        self.enabled.store(false, Ordering::Release);
                    }
                }
            }
        }
        let lower = backing.is_some() && !o.upper;
        nodes.insert(
            o.ino,
            NodeIo {
                backing: backing.clone(),
                lower,
                opens: 1,
            },
        );
        Ok(backing)
    }

    /// An open registered by `open` was released; the last one closes the backing id.
    pub fn release(&self, ino: NodeId) {
        let mut nodes = self.nodes.lock();
        if let Some(n) = nodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
            if n.opens == 0 {
                nodes.remove(&ino);
                self.released.notify_all();
            }
        }
    }
}

//! strata patch: FUSE over io_uring (Linux >= 6.14, module parameter `fuse.enable_uring=Y`).
//!
//! One queue per possible CPU, each served by a thread pinned to that CPU: the kernel puts a
//! request on the queue of the CPU its caller runs on, so the daemon thread that answers is
//! woken on the caller's CPU. Requests arrive in ring entries (a header and a payload buffer);
//! they are rebuilt in the /dev/fuse layout for the usual parser and dispatch, the reply is
//! captured and written back into the entry, and COMMIT_AND_FETCH both answers and asks for
//! the next request. FORGET, INTERRUPT and notifications keep using /dev/fuse.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::Mutex;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use log::{debug, warn};

use crate::channel::ChannelSender;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;
use crate::Filesystem;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// struct fuse_uring_req_header: in_out[128], op_in[128], struct fuse_uring_ent_in_out.
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const HEADER_SZ: usize = 256 + 32;
/// struct fuse_in_header.
const IN_HEADER_SZ: usize = 40;
/// Ring entries per queue.
const DEPTH: usize = 4;

/// Size of the per-opcode header the kernel puts in `op_in` (the request's first argument).
fn op_header_size(opcode: u32) -> Option<usize> {
    Some(match opcode {
        1 | 5 | 6 | 10 | 11 | 17 | 24 | 38 => 0, // LOOKUP READLINK SYMLINK UNLINK RMDIR STATFS REMOVEXATTR DESTROY
        3 => 16,                                  // GETATTR
        4 => 88,                                  // SETATTR
        8 => 16,                                  // MKNOD
        9 => 8,                                   // MKDIR
        12 => 8,                                  // RENAME
        13 => 8,                                  // LINK
        14 | 27 => 8,                             // OPEN OPENDIR
        15 | 16 | 28 | 44 => 40,                  // READ WRITE READDIR READDIRPLUS
        18 | 25 | 29 => 24,                       // RELEASE FLUSH RELEASEDIR
        20 | 30 => 16,                            // FSYNC FSYNCDIR
        21 | 22 | 23 => 8,                        // SETXATTR GETXATTR LISTXATTR
        31..=33 => 48,                            // GETLK SETLK SETLKW
        34 => 8,                                  // ACCESS
        35 | 51 => 16,                            // CREATE TMPFILE
        37 => 16,                                 // BMAP
        39 => 32,                                 // IOCTL
        40 => 24,                                 // POLL
        43 => 32,                                 // FALLOCATE
        45 => 16,                                 // RENAME2
        46 => 24,                                 // LSEEK
        47 => 56,                                 // COPY_FILE_RANGE
        50 => 8,                                  // SYNCFS
        52 => 24,                                 // STATX
        _ => return None,
    })
}

/// Possible CPUs (the kernel makes one queue per possible CPU).
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.split('-').next_back()?.parse::<usize>().ok())
                .max()
        })
        .map(|m| m + 1)
        .unwrap_or(1)
}

#[repr(C, align(64))]
struct Header([u8; HEADER_SZ]);

struct Entry {
    header: Box<Header>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

fn sqe(fd: RawFd, op: u32, qid: u16, commit_id: u64, idx: usize, iov: Option<&[libc::iovec; 2]>) -> squeue::Entry128 {
    let mut b = opcode::UringCmd80::new(types::Fd(fd), op).cmd(cmd_req(qid, commit_id));
    if let Some(iov) = iov {
        b = b.addr(Some(iov.as_ptr() as u64));
    }
    let mut e = b.build().user_data(idx as u64);
    if iov.is_some() {
        // sqe->len (offset 24): the number of iovecs; UringCmd80 has no setter for it.
        // SAFETY: Entry128 is repr(C) and starts with the 64-byte io_uring_sqe.
        unsafe {
            let p = (&mut e as *mut squeue::Entry128).cast::<u8>().add(24).cast::<u32>();
            p.write_unaligned(2);
        }
    }
    e
}

/// Starts the queue threads; they end when the connection does.
pub(crate) fn start<FS: Filesystem + Send + Sync + 'static>(
    template: &SessionEventLoop<FS>,
    payload_sz: usize,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let n = possible_cpus();
    let mut threads = Vec::with_capacity(n);
    for qid in 0..n {
        let se = SessionEventLoop {
            thread_name: format!("fuser-uring-{qid}"),
            ch: template.ch.clone(),
            filesystem: template.filesystem.clone(),
            allowed: template.allowed,
            session_owner: template.session_owner,
        };
        threads.push(
            std::thread::Builder::new()
                .name(se.thread_name.clone())
                .spawn(move || {
                    if let Err(e) = serve_queue(&se, qid, payload_sz) {
                        debug!("io_uring queue {qid} ended: {e}");
                    }
                })?,
        );
    }
    Ok(threads)
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn serve_queue<FS: Filesystem>(se: &SessionEventLoop<FS>, qid: usize, payload_sz: usize) -> io::Result<()> {
    pin_to(qid);
    let fd = std::os::fd::AsFd::as_fd(&se.ch).as_raw_fd();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        IoUring::builder().setup_cqsize((DEPTH * 2) as u32).build(DEPTH as u32)?;
    let mut ents: Vec<Entry> = (0..DEPTH)
        .map(|_| {
            let mut header = Box::new(Header([0u8; HEADER_SZ]));
            let mut payload = vec![0u8; payload_sz];
            let iov = Box::new([
                libc::iovec { iov_base: header.0.as_mut_ptr().cast(), iov_len: HEADER_SZ },
                libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload_sz },
            ]);
            Entry { header, payload, iov }
        })
        .collect();
    for (i, e) in ents.iter().enumerate() {
        let s = sqe(fd, CMD_REGISTER, qid as u16, 0, i, Some(&e.iov));
        // SAFETY: the iovecs and buffers live in `ents` for as long as the ring.
        unsafe { ring.submission().push(&s).map_err(|_| io::Error::other("sq full"))? };
    }
    ring.submit()?;
    let capture = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sender = ChannelSender::capturing(&se.ch, capture.clone());
    let mut buf: Vec<u8> = Vec::with_capacity(IN_HEADER_SZ + 128 + payload_sz);
    loop {
        ring.submit_and_wait(1)?;
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (i, res) in done {
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            let e = &mut ents[i];
            let h = &mut e.header.0;
            let opcode = u32::from_ne_bytes(h[IN_OUT + 4..IN_OUT + 8].try_into().unwrap_or([0; 4]));
            let unique = u64::from_ne_bytes(h[IN_OUT + 8..IN_OUT + 16].try_into().unwrap_or([0; 8]));
            let commit_id =
                u64::from_ne_bytes(h[ENT_IN_OUT + 8..ENT_IN_OUT + 16].try_into().unwrap_or([0; 8]));
            let payload_len =
                u32::from_ne_bytes(h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].try_into().unwrap_or([0; 4]))
                    as usize;
            let reply = match op_header_size(opcode) {
                Some(hs) if payload_len <= e.payload.len() => {
                    buf.clear();
                    buf.extend_from_slice(&h[IN_OUT..IN_OUT + IN_HEADER_SZ]);
                    buf.extend_from_slice(&h[OP_IN..OP_IN + hs]);
                    buf.extend_from_slice(&e.payload[..payload_len]);
                    let len = buf.len() as u32;
                    buf[0..4].copy_from_slice(&len.to_ne_bytes());
                    capture.lock().map(|mut c| c.clear()).ok();
                    if let Some(req) = RequestWithSender::new(sender.clone(), &buf) {
                        req.dispatch(se);
                    }
                    capture.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
                }
                _ => {
                    warn!("io_uring: opcode {opcode} not understood");
                    Vec::new()
                }
            };
            // The out header goes to in_out, its arguments to the payload.
            let (out_hdr, args): ([u8; 16], &[u8]) = if reply.len() >= 16 {
                (reply[..16].try_into().unwrap_or([0; 16]), &reply[16..])
            } else {
                let mut o = [0u8; 16];
                o[0..4].copy_from_slice(&16u32.to_ne_bytes());
                o[4..8].copy_from_slice(&(-libc::ENOSYS).to_ne_bytes());
                o[8..16].copy_from_slice(&unique.to_ne_bytes());
                (o, &[][..])
            };
            let n = args.len().min(e.payload.len());
            e.payload[..n].copy_from_slice(&args[..n]);
            let h = &mut e.header.0;
            h[IN_OUT..IN_OUT + 16].copy_from_slice(&out_hdr);
            h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(n as u32).to_ne_bytes());
            let s = sqe(fd, CMD_COMMIT_AND_FETCH, qid as u16, commit_id, i, None);
            // SAFETY: as above.
            unsafe { ring.submission().push(&s).map_err(|_| io::Error::other("sq full"))? };
        }
    }
}

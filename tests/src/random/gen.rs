//! Generation: a sequence from its seed, and the normalisation of its layers.

use super::*;

const L1: &[&str] = &["a", "b", "c", "d", "e"];
const L2: &[&str] = &["x", "y"];
const TARGETS: &[&str] = &["a", "b", "c/x", "d", "zz", "a/x", "e/y/z", "b/y"];

/// Layer entry kinds, in the order of the weights of `rand_entry`.
const NODE_NAMES: &[&str] = &[
    "File", "Sparse", "Dir", "Opaque", "Symlink", "Hardlink", "Fifo", "Whiteout",
];
/// Operation kinds, in the order of the weights of `gen_op`.
const OP_NAMES: &[&str] = &[
    "Open",
    "Read",
    "Write",
    "Append",
    "Truncate",
    "Fsync",
    "FdRead",
    "FdWrite",
    "FdWriteSeq",
    "FdTruncate",
    "FdStat",
    "FdSync",
    "FdMmapWrite",
    "Close",
    "FdSameIno",
    "Rename",
    "Link",
    "Unlink",
    "Mkdir",
    "Rmdir",
    "Symlink",
    "Mkfifo",
    "Chmod",
    "Chown",
    "Utimens",
    "SetXattr",
    "RemoveXattr",
    "Readdir",
    "Stat",
    "SameIno",
];

/// `RANDOM_EXCLUDE=Name,Name`: operation and layer entry kinds not generated (a triage aid to
/// look past a known bug; the names are those of [`Op::kind`] and [`LNode`]).
fn excluded(w: &[u64], names: &[&str]) -> Vec<u64> {
    let ex = std::env::var("RANDOM_EXCLUDE").unwrap_or_default();
    let ex: Vec<&str> = ex.split(',').map(str::trim).collect();
    w.iter()
        .zip(names)
        .map(|(w, n)| if ex.contains(n) { 0 } else { *w })
        .collect()
}

fn rand_path(r: &mut Rng) -> String {
    let a = r.pick(L1);
    match r.below(100) {
        0..=54 => a.to_string(),
        55..=94 => format!("{a}/{}", r.pick(L2)),
        _ => format!("{a}/{}/z", r.pick(L2)),
    }
}

fn rand_text(r: &mut Rng, tag: &str) -> Content {
    match r.below(10) {
        0 => Content::Pattern(r.pick(&[4096, 5000, 70_000]), r.below(26) as u8),
        1 => Content::Text(String::new()),
        _ => Content::Text(format!("{tag}{}", "#".repeat(r.below(12) as usize))),
    }
}

fn rand_mode(r: &mut Rng) -> u32 {
    r.pick(&[
        0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750, 0o1777, 0o000, 0o640,
    ])
}

fn rand_entry(r: &mut Rng, layer: &[LEnt], path: String, depth: usize, tag: &str) -> LEnt {
    // File, Sparse, Dir, Opaque, Symlink, Hardlink, Fifo, Whiteout
    let w: [u64; 8] = if depth < 3 {
        [30, 5, 25, 5, 10, 8, 4, 13]
    } else {
        [40, 5, 0, 0, 15, 10, 5, 15]
    };
    let files: Vec<&LEnt> = layer
        .iter()
        .filter(|e| matches!(e.node, LNode::File(_) | LNode::Sparse(..)))
        .collect();
    let w = excluded(&w, NODE_NAMES);
    let node = match r.weighted(&w) {
        0 => LNode::File(rand_text(r, tag)),
        1 => {
            let size = r.pick(&[8192u64, 100_000, 1 << 20]);
            let mut ext = Vec::new();
            for off in [0u64, 12288, 65536, 1 << 19] {
                if off < size && r.chance(50) {
                    ext.push((off, format!("{tag}@{off}")));
                }
            }
            LNode::Sparse(size, ext)
        }
        2 => LNode::Dir,
        3 => LNode::Opaque,
        4 => LNode::Symlink(r.pick(TARGETS).to_string()),
        5 if !files.is_empty() => LNode::Hardlink(r.pick(&files).path.clone()),
        5 => LNode::File(rand_text(r, tag)),
        6 => LNode::Fifo,
        _ => LNode::Whiteout,
    };
    let mut e = LEnt {
        path,
        node,
        mode: None,
        owner: None,
        xattr: None,
    };
    let plain = matches!(
        e.node,
        LNode::File(_) | LNode::Sparse(..) | LNode::Dir | LNode::Opaque
    );
    if (plain || e.node == LNode::Fifo) && r.chance(20) {
        e.mode = Some(rand_mode(r));
    }
    if e.node != LNode::Whiteout && !matches!(e.node, LNode::Hardlink(_)) && r.chance(15) {
        e.owner = Some((1000, 1000));
    }
    if plain && r.chance(15) {
        e.xattr = Some((r.pick(&["user.a", "user.b"]).to_string(), tag.to_string()));
    }
    e
}

fn gen_layer(r: &mut Rng, tag: &str) -> Vec<LEnt> {
    let mut out: Vec<LEnt> = Vec::new();
    for a in L1 {
        if !r.chance(45) {
            continue;
        }
        let e = rand_entry(r, &out, a.to_string(), 1, tag);
        let is_dir = matches!(e.node, LNode::Dir | LNode::Opaque);
        out.push(e);
        if !is_dir {
            continue;
        }
        for b in L2 {
            if !r.chance(50) {
                continue;
            }
            let p = format!("{a}/{b}");
            let e = rand_entry(r, &out, p.clone(), 2, tag);
            let is_dir = matches!(e.node, LNode::Dir | LNode::Opaque);
            out.push(e);
            if is_dir && r.chance(40) {
                let e = rand_entry(r, &out, format!("{p}/z"), 3, tag);
                out.push(e);
            }
        }
    }
    out
}

fn rand_time(r: &mut Rng) -> Ts {
    match r.below(4) {
        0 => Ts::Now,
        1 => Ts::Omit,
        _ => Ts::At(
            1_000_000_000 + r.below(1000) as i64,
            r.pick(&[0, 5, 999_999_999]),
        ),
    }
}

fn gen_op(r: &mut Rng, i: usize) -> Op {
    let tag = format!("w{i}");
    let slot = r.below(SLOTS as u64) as usize;
    // Relative weights of the operations, in the order of the match below.
    let w = [
        14, 5, 5, 4, 3, 2, 6, 6, 3, 2, 3, 2, 3, 3, 2, 8, 3, 5, 4, 3, 3, 1, 3, 2, 2, 3, 2, 4, 3, 2,
    ];
    match r.weighted(&excluded(&w, OP_NAMES)) {
        0 => {
            let acc = r.pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]);
            let mut flags = acc;
            for f in [libc::O_APPEND, libc::O_TRUNC, libc::O_CREAT, libc::O_EXCL] {
                if r.chance(if f == libc::O_CREAT { 40 } else { 25 }) {
                    flags |= f;
                }
            }
            if r.chance(4) {
                flags |= libc::O_DIRECTORY;
            }
            if r.chance(4) {
                flags |= libc::O_NOFOLLOW;
            }
            Op::Open {
                path: rand_path(r),
                flags,
                mode: rand_mode(r),
                slot: if r.chance(75) { Some(slot) } else { None },
            }
        }
        1 => Op::Read { path: rand_path(r) },
        2 => Op::Write {
            path: rand_path(r),
            off: r.pick(&[0, 1, 3, 4096, 8190, 70_000]),
            data: rand_text(r, &tag),
        },
        3 => Op::Append {
            path: rand_path(r),
            data: rand_text(r, &tag),
        },
        4 => Op::Truncate {
            path: rand_path(r),
            len: r.pick(&[0, 2, 10, 4096, 100_000]),
        },
        5 => Op::Fsync { path: rand_path(r) },
        6 => Op::FdRead {
            slot,
            off: r.pick(&[0, 0, 2, 4095, 12288]),
            len: r.pick(&[1, 16, 5000, 200_000]),
        },
        7 => Op::FdWrite {
            slot,
            off: r.pick(&[0, 1, 3, 4096, 8190, 70_000]),
            data: rand_text(r, &tag),
        },
        8 => Op::FdWriteSeq {
            slot,
            data: rand_text(r, &tag),
        },
        9 => Op::FdTruncate {
            slot,
            len: r.pick(&[0, 2, 10, 4096, 100_000]),
        },
        10 => Op::FdStat { slot },
        11 => Op::FdSync {
            slot,
            data_only: r.chance(50),
        },
        12 => Op::FdMmapWrite {
            slot,
            off: r.pick(&[0, 1, 4000, 5000]),
            data: Content::Text(format!("{tag}mm")),
        },
        13 => Op::Close { slot },
        14 => Op::FdSameIno {
            slot,
            path: rand_path(r),
        },
        15 => Op::Rename {
            from: rand_path(r),
            to: rand_path(r),
            flags: r.pick(&[0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
        },
        16 => Op::Link {
            from: rand_path(r),
            to: rand_path(r),
        },
        17 => Op::Unlink { path: rand_path(r) },
        18 => Op::Mkdir {
            path: rand_path(r),
            mode: r.pick(&[0o755, 0o700, 0o1777]),
        },
        19 => Op::Rmdir { path: rand_path(r) },
        20 => Op::Symlink {
            target: r.pick(TARGETS).to_string(),
            path: rand_path(r),
        },
        21 => Op::Mkfifo {
            path: rand_path(r),
            mode: r.pick(&[0o644, 0o600]),
        },
        22 => Op::Chmod {
            path: rand_path(r),
            mode: rand_mode(r),
        },
        23 => {
            let (uid, gid) = r.pick(&[(1000, 1000), (0, 0), (u32::MAX, 1000), (1000, u32::MAX)]);
            Op::Chown {
                path: rand_path(r),
                uid,
                gid,
            }
        }
        24 => Op::Utimens {
            path: rand_path(r),
            atime: rand_time(r),
            mtime: rand_time(r),
            nofollow: r.chance(30),
        },
        25 => Op::SetXattr {
            path: rand_path(r),
            name: r.pick(&["user.a", "user.b"]).to_string(),
            value: r.pick(&["1", "22", ""]).to_string() + &tag,
            flags: r.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        26 => Op::RemoveXattr {
            path: rand_path(r),
            name: r.pick(&["user.a", "user.b"]).to_string(),
        },
        27 => Op::Readdir {
            path: if r.chance(40) {
                String::new()
            } else {
                rand_path(r)
            },
        },
        28 => Op::Stat {
            path: if r.chance(20) {
                String::new()
            } else {
                rand_path(r)
            },
        },
        _ => Op::SameIno {
            a: rand_path(r),
            b: rand_path(r),
        },
    }
}

impl Seq {
    /// The sequence of a seed: 2-4 lower layers, sometimes a pre-populated upper layer, 8-40
    /// operations.
    pub fn generate(seed: u64) -> Seq {
        let mut r = Rng::new(seed);
        let nl = 2 + r.below(3) as usize;
        let lowers = (0..nl)
            .map(|i| gen_layer(&mut r, &format!("L{i}")))
            .collect();
        let upper = r.chance(30).then(|| gen_layer(&mut r, "U"));
        let nops = 8 + r.below(33) as usize;
        let ops = (0..nops).map(|i| gen_op(&mut r, i)).collect();
        let mut seq = Seq {
            seed,
            lowers,
            upper,
            ops,
        };
        normalize(&mut seq);
        seq
    }

    /// The layer stack top first: the upper layer (if any), then the lowers.
    fn stack(&self) -> Vec<&[LEnt]> {
        let mut v: Vec<&[LEnt]> = Vec::new();
        if let Some(u) = &self.upper {
            v.push(u);
        }
        v.extend(self.lowers.iter().map(|l| l.as_slice()));
        v
    }
}

fn node_at<'a>(layer: &'a [LEnt], path: &str) -> Option<&'a LNode> {
    layer.iter().find(|e| e.path == path).map(|e| &e.node)
}

/// The layers (indices into `stack`, from `from` down) that contribute to directory `dir` of
/// the stack `stack[from..]`.
fn dir_layers(stack: &[&[LEnt]], from: usize, dir: &str) -> Vec<usize> {
    if dir.is_empty() {
        return (from..stack.len()).collect();
    }
    let mut out = Vec::new();
    for l in dir_layers(stack, from, parent_of(dir)) {
        match node_at(stack[l], dir) {
            Some(LNode::Dir) => out.push(l),
            Some(LNode::Opaque) => {
                out.push(l);
                break;
            }
            Some(_) => break,
            None => {}
        }
    }
    out
}

/// Drops entries that cannot be materialized or that fall under the known, deliberate
/// difference, until nothing changes: entries whose parent is not a directory entry of the
/// same layer; hard links whose target is not an earlier file entry; duplicates; whiteouts in
/// a directory that is not merged (in the stack from their own layer down).
pub fn normalize(seq: &mut Seq) {
    loop {
        let mut removed = false;
        let n_up = usize::from(seq.upper.is_some());
        let snapshot: Vec<Vec<LEnt>> = seq.stack().iter().map(|l| l.to_vec()).collect();
        let refs: Vec<&[LEnt]> = snapshot.iter().map(|l| l.as_slice()).collect();
        for (li, layer) in snapshot.iter().enumerate() {
            let mut keep = Vec::new();
            for (i, e) in layer.iter().enumerate() {
                let earlier = &layer[..i];
                let parent = parent_of(&e.path);
                let ok_parent = parent.is_empty()
                    || matches!(node_at(earlier, parent), Some(LNode::Dir | LNode::Opaque));
                let dup = node_at(earlier, &e.path).is_some();
                let ok = ok_parent
                    && !dup
                    && match &e.node {
                        LNode::Hardlink(t) => {
                            matches!(
                                node_at(earlier, t),
                                Some(LNode::File(_) | LNode::Sparse(..))
                            )
                        }
                        LNode::Whiteout => dir_layers(&refs, li, parent).len() >= 2,
                        _ => true,
                    };
                if ok {
                    keep.push(e.clone());
                } else {
                    removed = true;
                }
            }
            if li < n_up {
                seq.upper = Some(keep);
            } else {
                seq.lowers[li - n_up] = keep;
            }
        }
        if !removed {
            return;
        }
    }
}

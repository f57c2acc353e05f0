//! Layer specs: declarative layer contents, materialized into directories.

use crate::*;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Sparse {
        size: u64,
        extents: Vec<(u64, Vec<u8>)>,
    },
    Dir,
    Opaque,
    Symlink(String),
    Hardlink(String),
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
    Whiteout,
    OciWhiteout,
    OciOpaque,
    Deep {
        levels: usize,
        name_len: usize,
        leaf: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct Item {
    path: String,
    node: Node,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: Option<(i64, i64)>,
}

/// Declarative content of one layer. Paths are relative ("a/b/c"); missing parent directories
/// are created (0755 root:root). Modifiers (`mode`, `owner`, `xattr`, `mtime`) apply to the entry
/// added last. Every entry gets the mtime/atime [`FIXED_TIME`] unless `mtime` says otherwise.
/// Symlink targets may contain "{SET}", replaced by the side's directory-set root.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    items: Vec<Item>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    fn push(mut self, path: &str, node: Node) -> Layer {
        self.items.push(Item {
            path: path.trim_matches('/').to_string(),
            node,
            mode: None,
            owner: None,
            xattrs: Vec::new(),
            mtime: None,
        });
        self
    }

    fn last(&mut self) -> &mut Item {
        self.items.last_mut().expect("modifier without an entry")
    }

    /// Regular file with contents (mode 0644).
    pub fn file(self, path: &str, data: impl AsRef<[u8]>) -> Layer {
        self.push(path, Node::File(data.as_ref().to_vec()))
    }

    /// Sparse file of `size` bytes with data at the given offsets (holes elsewhere).
    pub fn sparse(self, path: &str, size: u64, extents: &[(u64, &[u8])]) -> Layer {
        let extents = extents.iter().map(|(o, d)| (*o, d.to_vec())).collect();
        self.push(path, Node::Sparse { size, extents })
    }

    /// Directory (mode 0755). The path "" designates the layer root (for modifiers).
    pub fn dir(self, path: &str) -> Layer {
        self.push(path, Node::Dir)
    }

    /// Opaque directory: xattr trusted.overlay.opaque=y.
    pub fn opaque(self, path: &str) -> Layer {
        self.push(path, Node::Opaque)
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Node::Symlink(target.to_string()))
    }

    /// Hard link `path` to the existing entry `existing` of this layer.
    pub fn hardlink(self, path: &str, existing: &str) -> Layer {
        self.push(path, Node::Hardlink(existing.to_string()))
    }

    pub fn fifo(self, path: &str) -> Layer {
        self.push(path, Node::Fifo)
    }

    pub fn socket(self, path: &str) -> Layer {
        self.push(path, Node::Socket)
    }

    pub fn chardev(self, path: &str, major: u32, minor: u32) -> Layer {
        self.push(path, Node::Char(major, minor))
    }

    pub fn blockdev(self, path: &str, major: u32, minor: u32) -> Layer {
        self.push(path, Node::Block(major, minor))
    }

    /// Overlay whiteout: char device 0/0.
    pub fn whiteout(self, path: &str) -> Layer {
        self.push(path, Node::Whiteout)
    }

    /// OCI whiteout of `dir/NAME`: the file `dir/.wh.NAME` on the stratafs side; converted to an
    /// overlay whiteout on the kernel side (the kernel does not honour OCI markers).
    pub fn oci_whiteout(self, path: &str) -> Layer {
        self.push(path, Node::OciWhiteout)
    }

    /// OCI opaque marker: `dir/.wh..wh..opq` on the stratafs side; an opaque xattr on the kernel
    /// side. Creates the directory if needed.
    pub fn oci_opaque(self, dir: &str) -> Layer {
        self.push(dir, Node::OciOpaque)
    }

    /// A chain of `levels` nested directories with `name_len`-character names (see
    /// [`deep_names`]) below `path`, with a file "leaf" in the deepest one; created with
    /// fd-relative syscalls, so the total path may exceed PATH_MAX.
    pub fn deep(self, path: &str, levels: usize, name_len: usize, leaf: impl AsRef<[u8]>) -> Layer {
        self.push(
            path,
            Node::Deep {
                levels,
                name_len,
                leaf: leaf.as_ref().to_vec(),
            },
        )
    }

    /// Permission bits (including setuid/setgid/sticky) of the last entry.
    pub fn mode(mut self, mode: u32) -> Layer {
        self.last().mode = Some(mode);
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Layer {
        self.last().owner = Some((uid, gid));
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Layer {
        self.last()
            .xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn mtime(mut self, sec: i64, nsec: i64) -> Layer {
        self.last().mtime = Some((sec, nsec));
        self
    }

    pub(crate) fn has_oci(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.node, Node::OciWhiteout | Node::OciOpaque))
    }

    /// Creates the layer's contents in `dir` (which must exist). `oci_native`: keep OCI markers
    /// as `.wh.` files (stratafs side) instead of converting them (kernel side).
    pub(crate) fn materialize(&self, dir: &Path, set_root: &Path, oci_native: bool) {
        let set = set_root.to_str().expect("non-UTF-8 temp path");
        for it in &self.items {
            let p = if it.path.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(&it.path)
            };
            let parent = p.parent().expect("parent").to_path_buf();
            mkdir_p(&parent).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
            let ctx =
                |what: &str, e: Errno| -> ! { panic!("materialize {what} {}: {e}", p.display()) };
            let mut target = p.clone();
            match &it.node {
                Node::File(data) => {
                    write_file(&p, data).unwrap_or_else(|e| ctx("file", e));
                    chmod(&p, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Sparse { size, extents } => {
                    let fd = open(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)
                        .unwrap_or_else(|e| ctx("sparse", e));
                    for (off, d) in extents {
                        pwrite(&fd, *off, d).unwrap_or_else(|e| ctx("sparse write", e));
                    }
                    ftruncate(&fd, *size).unwrap_or_else(|e| ctx("sparse truncate", e));
                    chmod(&p, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Dir | Node::Opaque => {
                    if !it.path.is_empty() {
                        mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    }
                    chmod(&p, 0o755).unwrap_or_else(|e| ctx("chmod", e));
                    if matches!(it.node, Node::Opaque) {
                        lsetxattr(&p, "trusted.overlay.opaque", "y", 0)
                            .unwrap_or_else(|e| ctx("opaque", e));
                    }
                }
                Node::Symlink(t) => {
                    symlink(&t.replace("{SET}", set), &p).unwrap_or_else(|e| ctx("symlink", e));
                }
                Node::Hardlink(existing) => {
                    link(dir.join(existing), &p).unwrap_or_else(|e| ctx("link", e));
                }
                Node::Fifo => mkfifo(&p, 0o644).unwrap_or_else(|e| ctx("mkfifo", e)),
                Node::Socket => {
                    mksock(&p).unwrap_or_else(|e| ctx("socket", e));
                    chmod(&p, 0o755).unwrap_or_else(|e| ctx("chmod", e));
                }
                Node::Char(ma, mi) => {
                    mknod(&p, libc::S_IFCHR | 0o644, *ma, *mi).unwrap_or_else(|e| ctx("mknod", e))
                }
                Node::Block(ma, mi) => {
                    mknod(&p, libc::S_IFBLK | 0o644, *ma, *mi).unwrap_or_else(|e| ctx("mknod", e))
                }
                Node::Whiteout => {
                    mknod(&p, libc::S_IFCHR, 0, 0).unwrap_or_else(|e| ctx("whiteout", e))
                }
                Node::OciWhiteout => {
                    if oci_native {
                        let name = p.file_name().unwrap().to_string_lossy().into_owned();
                        target = parent.join(format!(".wh.{name}"));
                        write_file(&target, b"").unwrap_or_else(|e| ctx("oci whiteout", e));
                        chmod(&target, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                    } else {
                        mknod(&p, libc::S_IFCHR, 0, 0).unwrap_or_else(|e| ctx("whiteout", e));
                    }
                }
                Node::OciOpaque => {
                    mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    if oci_native {
                        target = p.join(".wh..wh..opq");
                        write_file(&target, b"").unwrap_or_else(|e| ctx("oci opaque", e));
                        chmod(&target, 0o644).unwrap_or_else(|e| ctx("chmod", e));
                    } else {
                        lsetxattr(&p, "trusted.overlay.opaque", "y", 0)
                            .unwrap_or_else(|e| ctx("opaque", e));
                    }
                }
                Node::Deep {
                    levels,
                    name_len,
                    leaf,
                } => {
                    mkdir_p(&p).unwrap_or_else(|e| ctx("mkdir", e));
                    let names = deep_names(*levels, *name_len);
                    mkdir_chain(&p, &names).unwrap_or_else(|e| ctx("deep chain", e));
                    let d = open_chain(&p, &names).unwrap_or_else(|e| ctx("deep open", e));
                    let f = openat(
                        d.as_raw_fd(),
                        "leaf",
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                        0o644,
                    )
                    .unwrap_or_else(|e| ctx("deep leaf", e));
                    write_fd(&f, leaf).unwrap_or_else(|e| ctx("deep leaf write", e));
                }
            }
            if let Some((u, g)) = it.owner {
                lchown(&target, u, g).unwrap_or_else(|e| ctx("chown", e));
            }
            if let Some(m) = it.mode {
                chmod(&target, m).unwrap_or_else(|e| ctx("chmod", e));
            }
            for (n, v) in &it.xattrs {
                lsetxattr(&target, n, v, 0).unwrap_or_else(|e| ctx("setxattr", e));
            }
        }
        // Fixed times everywhere, then per-entry overrides.
        set_times_tree(dir, FIXED_TIME);
        for it in &self.items {
            if let Some(t) = it.mtime {
                let p = if it.path.is_empty() {
                    dir.to_path_buf()
                } else {
                    dir.join(&it.path)
                };
                lutimens(&p, Ts::At(t.0, t.1), Ts::At(t.0, t.1))
                    .unwrap_or_else(|e| panic!("mtime {}: {e}", p.display()));
            }
        }
    }
}

fn set_times_at(dirfd: RawFd, t: (i64, i64)) {
    for (name, _) in ops::list_fd(dirfd).expect("list") {
        if name == "." || name == ".." {
            continue;
        }
        let st = ops::fstatat_raw(dirfd, &name, libc::AT_SYMLINK_NOFOLLOW).expect("fstatat");
        if Kind::of_mode(st.st_mode) == Kind::Dir {
            let fd = ops::openat(
                dirfd,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .expect("open dir");
            set_times_at(fd.as_raw_fd(), t);
        }
        let c = cstr(&name);
        let ts = [
            libc::timespec {
                tv_sec: t.0,
                tv_nsec: t.1,
            },
            libc::timespec {
                tv_sec: t.0,
                tv_nsec: t.1,
            },
        ];
        if let Err(e) = utimensat(dirfd, &c, &ts, libc::AT_SYMLINK_NOFOLLOW) {
            panic!("utimensat {name}: {e}");
        }
    }
}

fn set_times_tree(dir: &Path, t: (i64, i64)) {
    let fd = ops::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).expect("open layer");
    set_times_at(fd.as_raw_fd(), t);
    lutimens(dir, Ts::At(t.0, t.1), Ts::At(t.0, t.1)).expect("utimens layer root");
}

/// The layers of a pair: lowers (the first one added is the top, like `lowerdir=`), an
/// optional pre-populated upper, and "outside" content created next to the layers (canaries).
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub(crate) lowers: Vec<Layer>,
    pub(crate) upper: Option<Layer>,
    pub(crate) outside: Option<Layer>,
    pub(crate) trap: Option<Layer>,
}

impl Layers {
    pub fn new() -> Layers {
        Layers::default()
    }

    /// Adds a lower layer below the ones already added (the first is the top).
    pub fn lower(mut self, l: Layer) -> Layers {
        self.lowers.push(l);
        self
    }

    /// Pre-populated upper layer.
    pub fn upper(mut self, l: Layer) -> Layers {
        self.upper = Some(l);
        self
    }

    /// Content created in the side's set root ("{SET}/..."), outside of all layers: legitimate
    /// targets of symlinks resolved in the merged namespace. Compared between the sides at
    /// finish. Top-level names must not be "m", "u", "w", "w2", "L" or start with "log".
    pub fn outside(mut self, l: Layer) -> Layers {
        self.outside = Some(l);
        self
    }

    /// Content created in "{SET}/L" next to the lower layer dirs "{SET}/L/0".."{SET}/L/n": what a
    /// daemon that wrongly resolves a lower layer's relative symlinks on the host would reach.
    /// It is part of the lower snapshot, so it must never change.
    pub fn trap(mut self, l: Layer) -> Layers {
        self.trap = Some(l);
        self
    }

    pub(crate) fn has_oci(&self) -> bool {
        self.lowers.iter().any(Layer::has_oci)
    }
}

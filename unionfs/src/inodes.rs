//! The FUSE inode table. One node per name in the merged tree (as the kernel's overlay keeps one
//! inode per name when `index=off`); node ids are never reused. The identity map (node id to
//! node, (parent, name) to node id) is kept apart from the lookup counts the kernel drives.

use crate::layers::LayerIdx;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

pub const ROOT: u64 = 1;

/// What a node is, as of the last lookup or change made through the mount.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub parent: u64,
    pub name: OsString,
    /// Topmost first; `layers[0]` holds the entry. More than one only for merged directories.
    pub layers: Vec<LayerIdx>,
    pub is_dir: bool,
    /// Removed from the tree (unlinked or replaced) while the kernel still holds it.
    pub unlinked: bool,
}

struct Entry {
    info: NodeInfo,
    nlookup: u64,
    /// Nodes whose `parent` is this one: a parent outlives its children in the table.
    children: u64,
}

struct Table {
    nodes: HashMap<u64, Entry>,
    names: HashMap<(u64, OsString), u64>,
    next: u64,
}

pub struct Inodes {
    t: RwLock<Table>,
}

impl Inodes {
    pub fn new(root_layers: Vec<LayerIdx>) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Entry {
                info: NodeInfo {
                    parent: ROOT,
                    name: OsString::new(),
                    layers: root_layers,
                    is_dir: true,
                    unlinked: false,
                },
                nlookup: 1,
                children: 0,
            },
        );
        Inodes {
            t: RwLock::new(Table {
                nodes,
                names: HashMap::new(),
                next: ROOT + 1,
            }),
        }
    }

    pub fn get(&self, ino: u64) -> Option<NodeInfo> {
        self.t.read().nodes.get(&ino).map(|e| e.info.clone())
    }

    /// The node and its path relative to the layer roots ("" for the root).
    pub fn path(&self, ino: u64) -> Option<(OsString, NodeInfo)> {
        let t = self.t.read();
        let e = t.nodes.get(&ino)?;
        let info = e.info.clone();
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = t.nodes.get(&cur)?;
            parts.push(&n.info.name);
            cur = n.info.parent;
        }
        let mut p = OsString::new();
        for (i, part) in parts.iter().rev().enumerate() {
            if i > 0 {
                p.push("/");
            }
            p.push(part);
        }
        Some((p, info))
    }

    /// Records that `name` in `parent` resolves to an entry in `layers`, and counts one kernel
    /// lookup of it; returns the node id.
    pub fn insert(&self, parent: u64, name: &OsStr, layers: Vec<LayerIdx>, is_dir: bool) -> u64 {
        let mut t = self.t.write();
        let key = (parent, name.to_os_string());
        if let Some(&ino) = t.names.get(&key) {
            if let Some(e) = t.nodes.get_mut(&ino) {
                // A name that changed kind (replaced behind a kept node) gets a fresh node.
                if e.info.is_dir == is_dir {
                    // A lookup that raced with a copy-up must not send the node back down: an
                    // entry never leaves the upper layer (index 0) while keeping its name.
                    if !(e.info.layers.first() == Some(&0) && layers.first() != Some(&0)) {
                        e.info.layers = layers;
                    }
                    e.nlookup += 1;
                    return ino;
                }
                e.info.unlinked = true;
            }
            t.names.remove(&key);
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(
            ino,
            Entry {
                info: NodeInfo {
                    parent,
                    name: name.to_os_string(),
                    layers,
                    is_dir,
                    unlinked: false,
                },
                nlookup: 1,
                children: 0,
            },
        );
        if let Some(p) = t.nodes.get_mut(&parent) {
            p.children += 1;
        }
        t.names.insert(key, ino);
        ino
    }

    /// The node id currently bound to `name` in `parent`, if the kernel holds one.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.t
            .read()
            .names
            .get(&(parent, name.to_os_string()))
            .copied()
    }

    pub fn set_layers(&self, ino: u64, layers: Vec<LayerIdx>) {
        if let Some(e) = self.t.write().nodes.get_mut(&ino) {
            e.info.layers = layers;
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.t.write();
        if let Some(e) = t.nodes.get_mut(&ino) {
            e.nlookup = e.nlookup.saturating_sub(n);
        }
        Self::reap(&mut t, ino);
    }

    /// Drops nodes that neither the kernel nor a child references, walking up the parents.
    fn reap(t: &mut Table, mut ino: u64) {
        while ino != ROOT {
            let Some(e) = t.nodes.get(&ino) else { return };
            if e.nlookup > 0 || e.children > 0 {
                return;
            }
            let parent = e.info.parent;
            let key = (parent, e.info.name.clone());
            if t.names.get(&key) == Some(&ino) {
                t.names.remove(&key);
            }
            t.nodes.remove(&ino);
            match t.nodes.get_mut(&parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            ino = parent;
        }
    }

    /// `name` in `parent` is gone from the tree; a node the kernel holds stays, marked unlinked.
    pub fn unlink(&self, parent: u64, name: &OsStr) {
        let mut t = self.t.write();
        if let Some(ino) = t.names.remove(&(parent, name.to_os_string())) {
            if let Some(e) = t.nodes.get_mut(&ino) {
                e.info.unlinked = true;
            }
        }
    }

    /// Moves node `ino` to `newname` in `newparent`, unbinding whatever was there.
    pub fn rename(&self, ino: u64, newparent: u64, newname: &OsStr) {
        let mut t = self.t.write();
        let newkey = (newparent, newname.to_os_string());
        if let Some(old) = t.names.remove(&newkey) {
            if old != ino {
                if let Some(e) = t.nodes.get_mut(&old) {
                    e.info.unlinked = true;
                }
            }
        }
        let Some(e) = t.nodes.get_mut(&ino) else {
            return;
        };
        let oldkey = (e.info.parent, e.info.name.clone());
        let oldparent = e.info.parent;
        e.info.parent = newparent;
        e.info.name = newname.to_os_string();
        if t.names.get(&oldkey) == Some(&ino) {
            t.names.remove(&oldkey);
        }
        t.names.insert(newkey, ino);
        if oldparent != newparent {
            if let Some(p) = t.nodes.get_mut(&newparent) {
                p.children += 1;
            }
            if let Some(p) = t.nodes.get_mut(&oldparent) {
                p.children = p.children.saturating_sub(1);
            }
            Self::reap(&mut t, oldparent);
        }
    }

    /// Swaps the places of two nodes (RENAME_EXCHANGE).
    pub fn exchange(&self, a: u64, b: u64) {
        let mut t = self.t.write();
        let (Some(ea), Some(eb)) = (t.nodes.get(&a), t.nodes.get(&b)) else {
            return;
        };
        let (pa, na) = (ea.info.parent, ea.info.name.clone());
        let (pb, nb) = (eb.info.parent, eb.info.name.clone());
        if let Some(e) = t.nodes.get_mut(&a) {
            e.info.parent = pb;
            e.info.name = nb.clone();
        }
        if let Some(e) = t.nodes.get_mut(&b) {
            e.info.parent = pa;
            e.info.name = na.clone();
        }
        t.names.insert((pb, nb), a);
        t.names.insert((pa, na), b);
    }

    /// Number of nodes held (for tests of resource bounds and for logging).
    pub fn len(&self) -> usize {
        self.t.read().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

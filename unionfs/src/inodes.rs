//! The FUSE inode table. One node per name in the merged tree (as the kernel's overlay keeps one
//! inode per name when `index=off`); node ids are never reused. The identity map (node id to
//! node, (parent, name) to node id) is kept apart from the lookup counts the kernel drives.

use crate::layers::LayerIdx;
use crate::layers::UPPER;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

/// A FUSE node id: the kernel's handle for a node of this table. Not an inode number (those
/// are `st_ino` values of the layers, kept as `u64`); converted only at the FUSE boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// The mount's root, node id 1 in FUSE.
    pub const ROOT: NodeId = NodeId(1);

    /// The raw FUSE node id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<fuser::INodeNo> for NodeId {
    fn from(n: fuser::INodeNo) -> Self {
        NodeId(n.0)
    }
}

impl From<NodeId> for fuser::INodeNo {
    fn from(n: NodeId) -> Self {
        fuser::INodeNo(n.0)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub const ROOT: NodeId = NodeId::ROOT;

/// What a node is, as of the last lookup or change made through the mount.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub parent: NodeId,
    pub name: OsString,
    /// Topmost first; `layers[0]` holds the entry. More than one only for merged directories.
    pub layers: Vec<LayerIdx>,
    pub is_dir: bool,
    /// Removed from the tree (unlinked or replaced) while the kernel still holds it.
    pub unlinked: bool,
    /// The inode number reported instead of the real one: a copied-up entry keeps its lower
    /// inode number, as with the kernel's overlay on one filesystem.
    pub ino: Option<u64>,
}

struct Entry {
    info: NodeInfo,
    nlookup: u64,
    /// Names of this node besides `info.parent`/`info.name`: hard links made through the
    /// mount share the node, as they share the kernel's inode.
    extra: Vec<(NodeId, OsString)>,
    /// Names bound in this directory node: a parent outlives its children in the table.
    children: u64,
}

struct Table {
    nodes: HashMap<NodeId, Entry>,
    names: HashMap<(NodeId, OsString), NodeId>,
    next: NodeId,
    /// The most nodes held since memory was last given back.
    peak: usize,
}

impl Table {
    /// Moves every live node into fresh allocations and drops the old ones: after a mass
    /// forget, the few survivors would otherwise pin the pages of the many freed nodes.
    fn compact(&mut self) {
        let fresh_name = |n: &OsStr| OsString::from(n.to_os_string().as_os_str());
        let nodes: HashMap<NodeId, Entry> = self
            .nodes
            .drain()
            .map(|(k, e)| {
                let info = NodeInfo {
                    name: fresh_name(&e.info.name),
                    layers: e.info.layers.to_vec(),
                    ..e.info
                };
                let extra = e.extra.iter().map(|(p, n)| (*p, fresh_name(n))).collect();
                (
                    k,
                    Entry {
                        info,
                        nlookup: e.nlookup,
                        extra,
                        children: e.children,
                    },
                )
            })
            .collect();
        let names: HashMap<(NodeId, OsString), NodeId> = self
            .names
            .drain()
            .map(|((p, n), v)| ((p, fresh_name(&n)), v))
            .collect();
        self.nodes = nodes;
        self.names = names;
    }

    fn add_child(&mut self, parent: NodeId) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    fn drop_child(&mut self, parent: NodeId) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.reap(parent);
    }

    /// Drops nodes that neither the kernel nor a child references, walking up the parents.
    fn reap(&mut self, mut ino: NodeId) {
        while ino != ROOT {
            let Some(e) = self.nodes.get(&ino) else {
                return;
            };
            if e.nlookup > 0 || e.children > 0 {
                return;
            }
            let Some(e) = self.nodes.remove(&ino) else {
                return;
            };
            let mut parents = vec![(e.info.parent, e.info.name)];
            parents.extend(e.extra);
            for (p, n) in &parents {
                let key = (*p, n.clone());
                if self.names.get(&key) == Some(&ino) {
                    self.names.remove(&key);
                }
            }
            for (p, _) in &parents[1..] {
                self.drop_child(*p);
            }
            let parent = parents[0].0;
            match self.nodes.get_mut(&parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            ino = parent;
        }
    }

    /// Removes the binding of `key`; the node loses that name (and becomes unlinked when it
    /// was its last). Returns the node id that was bound.
    fn unbind(&mut self, key: &(NodeId, OsString)) -> Option<NodeId> {
        let ino = self.names.remove(key)?;
        let e = self.nodes.get_mut(&ino)?;
        if e.info.parent == key.0 && e.info.name == key.1 {
            if let Some((p, n)) = e.extra.pop() {
                e.info.parent = p;
                e.info.name = n;
                self.drop_child(key.0);
            } else {
                // The node keeps its last parent reference for as long as the kernel holds it.
                e.info.unlinked = true;
            }
        } else {
            e.extra.retain(|x| x != key);
            self.drop_child(key.0);
        }
        Some(ino)
    }

    /// Renames one name of node `ino` from `old` to `new` (which must be unbound).
    fn move_name(&mut self, ino: NodeId, old: &(NodeId, OsString), new: (NodeId, OsString)) {
        let Some(e) = self.nodes.get_mut(&ino) else {
            return;
        };
        if e.info.parent == old.0 && e.info.name == old.1 {
            e.info.parent = new.0;
            e.info.name = new.1.clone();
        } else if let Some(x) = e.extra.iter_mut().find(|x| *x == old) {
            *x = new.clone();
        }
        if self.names.get(old) == Some(&ino) {
            self.names.remove(old);
        }
        self.names.insert(new.clone(), ino);
        if old.0 != new.0 {
            self.add_child(new.0);
            self.drop_child(old.0);
        }
    }
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
                    ino: None,
                },
                nlookup: 1,
                extra: Vec::new(),
                children: 0,
            },
        );
        Inodes {
            t: RwLock::new(Table {
                nodes,
                names: HashMap::new(),
                next: NodeId(ROOT.0 + 1),
                peak: 1,
            }),
        }
    }

    pub fn get(&self, ino: NodeId) -> Option<NodeInfo> {
        self.t.read().nodes.get(&ino).map(|e| e.info.clone())
    }

    /// The layer holding node `ino`'s entry.
    pub fn top_layer(&self, ino: NodeId) -> Option<LayerIdx> {
        self.t
            .read()
            .nodes
            .get(&ino)
            .and_then(|e| e.info.layers.first().copied())
    }

    /// The node and its path relative to the layer roots ("" for the root).
    pub fn path(&self, ino: NodeId) -> Option<(OsString, NodeInfo)> {
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
    pub fn insert(
        &self,
        parent: NodeId,
        name: &OsStr,
        layers: Vec<LayerIdx>,
        is_dir: bool,
        ino_override: Option<u64>,
    ) -> NodeId {
        let mut t = self.t.write();
        let key = (parent, name.to_os_string());
        if let Some(&ino) = t.names.get(&key) {
            if let Some(e) = t.nodes.get_mut(&ino) {
                // A name that changed kind (replaced behind a kept node) gets a fresh node.
                if e.info.is_dir == is_dir {
                    // A lookup that raced with a copy-up must not send the node back down: an
                    // entry never leaves the upper layer (index 0) while keeping its name.
                    if !(e.info.layers.first() == Some(&UPPER) && layers.first() != Some(&UPPER)) {
                        e.info.layers = layers;
                        if ino_override.is_some() {
                            e.info.ino = ino_override;
                        }
                    }
                    e.nlookup += 1;
                    return ino;
                }
            }
            t.unbind(&key);
        }
        let ino = t.next;
        t.next = NodeId(ino.0 + 1);
        t.nodes.insert(
            ino,
            Entry {
                info: NodeInfo {
                    parent,
                    name: name.to_os_string(),
                    layers,
                    is_dir,
                    unlinked: false,
                    ino: ino_override,
                },
                nlookup: 1,
                extra: Vec::new(),
                children: 0,
            },
        );
        t.add_child(parent);
        t.names.insert(key, ino);
        ino
    }

    /// A hard link made through the mount: `name` in `parent` becomes another name of `ino`,
    /// and the kernel counts one more lookup of it.
    pub fn link(&self, ino: NodeId, parent: NodeId, name: &OsStr) {
        let mut t = self.t.write();
        let key = (parent, name.to_os_string());
        t.unbind(&key);
        let Some(e) = t.nodes.get_mut(&ino) else {
            return;
        };
        e.nlookup += 1;
        if e.info.unlinked {
            e.info.unlinked = false;
            let old = e.info.parent;
            e.info.parent = parent;
            e.info.name = name.to_os_string();
            t.add_child(parent);
            t.drop_child(old);
        } else {
            e.extra.push(key.clone());
            t.add_child(parent);
        }
        t.names.insert(key, ino);
    }

    /// The node id currently bound to `name` in `parent`, if the kernel holds one.
    pub fn child(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        self.t
            .read()
            .names
            .get(&(parent, name.to_os_string()))
            .copied()
    }

    /// After a copy-up: the node now lives in `layers` and reports `keep_ino` if given.
    pub fn set_layers(&self, ino: NodeId, layers: Vec<LayerIdx>, keep_ino: Option<u64>) {
        if let Some(e) = self.t.write().nodes.get_mut(&ino) {
            e.info.layers = layers;
            if keep_ino.is_some() {
                e.info.ino = keep_ino;
            }
        }
    }

    /// The kernel dropped `n` references to `ino`.
    /// Returns whether most of a large table was just forgotten (and compacted): the moment
    /// for the caller to drop its own caches and give memory back.
    pub fn forget(&self, ino: NodeId, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let mut t = self.t.write();
        if let Some(e) = t.nodes.get_mut(&ino) {
            e.nlookup = e.nlookup.saturating_sub(n);
        }
        t.reap(ino);
        let len = t.nodes.len();
        t.peak = t.peak.max(len);
        // Once the kernel has forgotten most of a large tree (a walk, then memory pressure),
        // give the tables' room and the allocator's free memory back to the system.
        if t.peak >= 64 && len < t.peak / 4 {
            t.compact();
            t.peak = len.max(1);
            log::debug!("forgotten down to {len} nodes");
            return true;
        }
        false
    }

    /// `name` in `parent` is gone from the tree; a node the kernel holds stays, marked unlinked
    /// once it has no name left.
    pub fn unlink(&self, parent: NodeId, name: &OsStr) {
        self.t.write().unbind(&(parent, name.to_os_string()));
    }

    /// Moves whatever `name` in `parent` names to `newname` in `newparent`, unbinding what was
    /// there.
    pub fn rename(&self, parent: NodeId, name: &OsStr, newparent: NodeId, newname: &OsStr) {
        let mut t = self.t.write();
        let old = (parent, name.to_os_string());
        let new = (newparent, newname.to_os_string());
        let Some(&ino) = t.names.get(&old) else {
            t.unbind(&new);
            return;
        };
        if t.names.get(&new) != Some(&ino) {
            t.unbind(&new);
        }
        t.move_name(ino, &old, new);
    }

    /// Swaps what two names name (RENAME_EXCHANGE).
    pub fn exchange(&self, parent: NodeId, name: &OsStr, newparent: NodeId, newname: &OsStr) {
        let mut t = self.t.write();
        let ka = (parent, name.to_os_string());
        let kb = (newparent, newname.to_os_string());
        let a = t.names.remove(&ka);
        let b = t.names.remove(&kb);
        // No node has this id: a name bound nowhere, while the two are swapped.
        let tmp = (NodeId(u64::MAX), OsString::new());
        if let Some(a) = a {
            t.names.insert(ka.clone(), a);
            t.move_name(a, &ka, tmp.clone());
        }
        if let Some(b) = b {
            t.names.insert(kb.clone(), b);
            t.move_name(b, &kb, ka.clone());
        }
        if let Some(a) = a {
            t.move_name(a, &tmp, kb);
        }
    }

    /// Number of nodes held (for tests of resource bounds and for logging).
    pub fn len(&self) -> usize {
        self.t.read().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

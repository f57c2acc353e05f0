//! Raw syscalls for mounting and unmounting (owned by the mount lifecycle).

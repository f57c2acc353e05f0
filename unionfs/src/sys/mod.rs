//! Every raw syscall and every `unsafe` block of stratafs lives under this module, behind safe
//! functions that return `io::Result`.

pub mod mount;

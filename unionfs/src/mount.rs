//! Mounting, daemonizing and unmounting.

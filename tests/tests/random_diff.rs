//! Randomized differential testing against the kernel overlay (see `e2e::random`).
//!
//! CI: a fixed base seed and 2,000 sequences (10 per mount pair, 2 threads):
//! `cargo test -p e2e --test random_diff`.
//!
//! Environment:
//! * `RANDOM_SEED=N` (decimal or 0x hex): base seed (default `e2e::random::DEFAULT_SEED`).
//! * `RANDOM_SEQUENCES=N`: number of sequences (default 2000).
//! * `RANDOM_SOAK_SECS=S`: run batches until S seconds are over, with a random base seed
//!   (printed) unless RANDOM_SEED is given. Soak (one hour):
//!   `RANDOM_SOAK_SECS=3600 cargo test -p e2e --release --test random_diff -- --nocapture`
//! * `RANDOM_REPLAY=SEED`: run the one sequence of that seed alone and shrink it if it fails
//!   (the seeds of failing sequences are printed).
//! * `RANDOM_FIRST=N`: start at sequence number N (with RANDOM_SEQUENCES and RANDOM_BATCH, re-runs
//!   one batch of sequences sharing a mount).
//! * `RANDOM_THREADS=N` (default 2), `RANDOM_BATCH=N` (sequences per mount pair, default 10),
//!   `RANDOM_SHRINK_SECS=S` (time budget of the shrinking of one failure, default 60; at most 4 distinct failures are shrunk per run).
//! * `RANDOM_EXCLUDE=Kind,Kind`: operation kinds (`Op::kind`) and layer entry kinds (`LNode`)
//!   not generated, to look past a known bug while triaging (e.g. `Link,Hardlink`).
//! * The harness's switches apply too (E2E_TRACE=1 prints every step, E2E_SELFTEST=1 runs the
//!   kernel against itself).
//!
//! A failure prints the failing sequences' seeds and their shrunk reproducers as Rust tests to
//! paste into tests/tests/regressions.rs.

#![deny(unsafe_code)]

#[test]
fn random_sequences() {
    e2e::random::main();
}

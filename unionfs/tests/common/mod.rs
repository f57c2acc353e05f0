//! Shared by the property-based tests (`fuzz_*.rs`).

use proptest::test_runner::Config as ProptestConfig;

/// 1024 cases per property (PROPTEST_CASES overrides): the targets are pure and fast.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
}

pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // No regression files in the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

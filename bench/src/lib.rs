//! Benchmarks of stratafs side by side with the kernel overlay. Not built yet: see the bench issue.

//! `strata run`, the container runtime. Not built yet: see the runtime issue.

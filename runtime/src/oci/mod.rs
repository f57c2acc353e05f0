pub mod features;
pub mod spec_default;

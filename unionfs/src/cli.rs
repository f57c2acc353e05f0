//! Command line parsing and validation.

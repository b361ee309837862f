//! `berth load | images | rmi | image prune | pull` (owned by the image-store work).
use crate::cli::{ImageCmd, ImagesArgs, LoadArgs, ProjectOpts, RmiArgs, ServicesArg};

pub fn load(_args: &LoadArgs) -> anyhow::Result<u8> {
    anyhow::bail!("load: not implemented yet")
}
pub fn images(_p: &ProjectOpts, _args: &ImagesArgs) -> anyhow::Result<u8> {
    anyhow::bail!("images: not implemented yet")
}
pub fn rmi(_args: &RmiArgs) -> anyhow::Result<u8> {
    anyhow::bail!("rmi: not implemented yet")
}
pub fn image_cmd(_cmd: &ImageCmd) -> anyhow::Result<u8> {
    anyhow::bail!("image: not implemented yet")
}
pub fn pull(_p: &ProjectOpts, _args: &ServicesArg) -> anyhow::Result<u8> {
    anyhow::bail!("pull: not implemented yet")
}

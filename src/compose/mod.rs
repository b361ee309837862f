//! The Compose side's loader: discovery, .env, interpolation, merge, extends/include/profiles,
//! normalisation to the long form, validation, the service graph and config hashes.
//! Pure: no syscalls beyond reading files.

pub mod convert;
pub mod dotenv;
pub mod error;
pub mod extends;
pub mod graph;
pub mod hash;
pub mod interp;
pub mod load;
pub mod merge;
pub mod model;
pub mod render;
pub mod yaml;

#[allow(unused_imports)] // the API other modules use
pub use error::LoadError;
pub use load::load;
pub use model::*;

#[cfg(test)]
pub(crate) mod corpus_tests;
#[cfg(test)]
mod tests;

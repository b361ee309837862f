//! `build:`: images from Dockerfiles, built by berth itself (parser, `.dockerignore`,
//! executor on overlay snapshots, layer cache).

pub mod cache;
pub mod cacheio;
pub mod dockerfile;
pub mod exec;
pub mod filestore;
pub mod fsutil;
pub mod ignore;

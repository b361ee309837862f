//! The orchestration engine: turns the project model into containers, networks and volumes,
//! and removes them again. Used by the supervisor (async) and by commands that must work
//! without one (`down` after a supervisor crash).

pub mod proc;
pub mod restart;
pub mod runtime;
pub mod volumes;

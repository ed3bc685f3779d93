//! berthd as a library: the daemon's modules, so tests and the benchmarks can
//! drive them directly.

pub mod config;
pub mod cri;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod hosts;
pub mod images;
pub mod metadata;
mod mountinfo;
pub mod network;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod runtime_spec;
pub mod server;
pub mod shim;
pub mod streaming;
pub mod tasks;

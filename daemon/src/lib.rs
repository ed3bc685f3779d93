//! berthd as a library: the daemon's modules, so tests and the benchmarks can
//! drive them directly.

/// berthd's version, as Version and the logs report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod config;
pub(crate) mod cri;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod images;
pub mod metadata;
pub(crate) mod metrics;
pub mod notify;
pub(crate) mod runtime_spec;
pub mod server;
pub(crate) mod shim;
pub(crate) mod system;
pub(crate) mod tasks;

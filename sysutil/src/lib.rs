//! Host helpers that berthd, berth-shim and the storage crates share, so each
//! exists once: crash-safe file replacement, the mount table, and a lock that
//! survives a panicked holder.

pub mod fs;
pub mod mount;
pub mod sync;
pub mod testing;
pub mod text;
pub mod time;

pub use fs::write_atomic;
pub use mount::is_mount_point;
pub use sync::lock;
pub use text::echo;
pub use time::now_nanos;

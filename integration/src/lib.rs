//! Test support for berth's end-to-end tests: offline OCI image fixtures, a real local
//! registry (docker-registry), a misbehaving fake registry and a berthd process harness.

pub mod bench;
pub mod bench_cri;
pub mod chaos;
pub mod containerd;
pub mod cri;
pub mod crictl;
pub mod daemon;
pub mod fake_registry;
pub mod fixtures;
pub mod registry;
pub mod spdy_client;
pub mod util;

pub use daemon::{Daemon, DaemonOpts};
pub use fake_registry::{Behavior, FakeRegistry, RecordedRequest};
pub use fixtures::{Image, LayerDesc, ManifestDesc};
pub use registry::{Registry, RegistryOpts};
pub use util::{HttpResponse, MANIFEST_ACCEPT};

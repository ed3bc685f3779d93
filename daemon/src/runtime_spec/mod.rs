//! The OCI runtime spec (a bundle's config.json) as a typed
//! `oci_spec::runtime::Spec`, and what every container path shares to make
//! one: the [`SpecBuilder`] (one step per concern), the [`user`] resolver
//! (CRI semantics for the CRI and the native Tasks API alike) and the
//! [`Bundle`] writer.
//!
//! Where a CRI field becomes a spec field: `cri::spec::container`. The
//! native Tasks API's spec: `tasks::spec`. Nothing here needs berth's own
//! structs: every field berth writes has an oci-spec type. (The seccomp
//! profiles are built as JSON in `cri::seccomp` and parsed into
//! `LinuxSeccomp`, so a localhost profile oci-spec cannot represent is
//! refused at create, naming the field, rather than by the runtime.)

pub mod builder;
pub mod bundle;
pub mod defaults;
pub mod user;

pub use builder::SpecBuilder;
pub use bundle::{Bundle, BundleError};
pub use oci_spec::runtime::Spec;

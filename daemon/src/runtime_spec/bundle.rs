//! The one bundle writer: every path that hands a container to the shim
//! (native tasks, CRI containers, pause containers) lays out its OCI bundle
//! here: the bundle directory, the rootfs mount point, and config.json
//! written atomically (temp, fsync, rename, fsync dir) so a crash never
//! leaves a half-written spec a restart would trust.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// The file name of the runtime spec in a bundle.
pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the runtime spec: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An OCI bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Creates (if missing) the bundle directory and its `rootfs` mount
    /// point, mode 0711: the runtime's user-namespaced children must be able
    /// to traverse them, nobody list them. Blocking.
    pub fn create(dir: &Path) -> Result<Bundle, BundleError> {
        let rootfs = dir.join("rootfs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&rootfs)
            .map_err(|source| BundleError::Create {
                path: rootfs.clone(),
                source,
            })?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the container's root filesystem is mounted (`root.path` of
    /// the spec is this, relative to the bundle).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Writes `config.json` atomically. Blocking.
    pub fn write_spec(&self, spec: &Spec) -> Result<(), BundleError> {
        let body = serde_json::to_vec_pretty(spec)?;
        let path = self.dir.join(CONFIG_FILE);
        berth_sysutil::write_atomic(&path, &body)
            .map_err(|source| BundleError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_spec::SpecBuilder;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_the_layout_and_writes_the_spec_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::create(&dir.path().join("c1")).unwrap();
        assert!(b.rootfs().is_dir());
        let mode = std::fs::metadata(&b.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711);
        // Idempotent: a retried create finds the layout in place.
        Bundle::create(&b.dir).unwrap();
        let spec = SpecBuilder::new().hostname(Some("h".into())).build();
        b.write_spec(&spec).unwrap();
        let back = Spec::load(b.dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(back, spec);
        let names: Vec<_> = std::fs::read_dir(&b.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_bundle_under_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = Bundle::create(&f.join("c1")).unwrap_err();
        assert!(matches!(e, BundleError::Create { .. }), "{e:?}");
        assert!(e.to_string().contains("file/c1/rootfs"), "{e}");
    }
}

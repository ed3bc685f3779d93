//! The on-disk cache of ADD results, which DEL and CHECK need (the spec
//! requires keeping it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Cni, CniError, NetworkConfigList};

/// What is kept per attachment between ADD and DEL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    pub(super) kind: String,
    #[serde(rename = "containerId")]
    pub(super) container_id: String,
    #[serde(rename = "ifName")]
    pub(super) ifname: String,
    #[serde(rename = "networkName")]
    pub(super) network_name: String,
    pub(super) config: NetworkConfigList,
    #[serde(rename = "capabilityArgs")]
    pub(super) capability_args: Map<String, Value>,
    pub(super) result: Value,
}

impl Cni {
    fn cache_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{container_id}-{ifname}.json"))
    }

    pub(super) fn write_cache(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.cache_path(&entry.container_id, &entry.ifname);
        let err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| err(e.into()))?;
        berth_sysutil::write_atomic(&path, &bytes).map_err(err)
    }

    pub(super) fn read_cache(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, CniError> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(e) => Ok(Some(e)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt CNI result cache");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    pub(super) fn remove_cache(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }
}

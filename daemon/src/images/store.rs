//! Image records (name -> target descriptor) in the metadata DB, mirrored in
//! an in-memory index so that list calls never touch the disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::metadata::{MetaError, MetaStore, Op, IMAGES};
use berth_distribution::oci::Descriptor;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Normalised reference, e.g. docker.io/library/busybox:latest.
    pub name: String,
    pub target: Descriptor,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Bytes of the host platform's manifest, config and layers.
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub config_digest: String,
}

pub use berth_sysutil::now_nanos;

#[derive(Clone)]
pub struct ImageStore {
    meta: Arc<dyn MetaStore>,
    index: Arc<RwLock<BTreeMap<String, ImageRecord>>>,
}

impl ImageStore {
    /// Loads every record; a corrupt record is logged and skipped (quarantined
    /// in place) rather than stopping the daemon.
    pub fn load(meta: Arc<dyn MetaStore>) -> Result<ImageStore, MetaError> {
        let mut index = BTreeMap::new();
        for (key, value) in meta.list(IMAGES)? {
            match serde_json::from_slice::<ImageRecord>(&value) {
                Ok(rec) => {
                    index.insert(key, rec);
                }
                Err(e) => {
                    tracing::error!(image = %key, error = %e, "skipping corrupt image record")
                }
            }
        }
        Ok(ImageStore {
            meta,
            index: Arc::new(RwLock::new(index)),
        })
    }

    pub fn get(&self, name: &str) -> Option<ImageRecord> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ImageRecord>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ImageRecord>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces records, durably, keeping the created time of a
    /// name that already existed.
    pub fn put_all(&self, records: Vec<ImageRecord>) -> Result<Vec<ImageRecord>, MetaError> {
        let mut ops = Vec::with_capacity(records.len());
        let mut out = Vec::with_capacity(records.len());
        {
            let index = self.read();
            for mut rec in records {
                if let Some(old) = index.get(&rec.name) {
                    rec.created_at = old.created_at;
                }
                let bytes = serde_json::to_vec(&rec).map_err(|e| MetaError::Corrupt {
                    bucket: IMAGES.0,
                    key: rec.name.clone(),
                    reason: e.to_string(),
                })?;
                ops.push(Op::Put(rec.name.clone(), bytes));
                out.push(rec);
            }
        }
        self.meta.apply(IMAGES, ops)?;
        self.meta.flush()?;
        let mut index = self.write();
        for rec in &out {
            index.insert(rec.name.clone(), rec.clone());
        }
        Ok(out)
    }

    pub fn put(&self, record: ImageRecord) -> Result<ImageRecord, MetaError> {
        let mut v = self.put_all(vec![record])?;
        Ok(v.remove(0))
    }

    /// Removes a name durably; false if it did not exist.
    pub fn remove(&self, name: &str) -> Result<bool, MetaError> {
        if !self.read().contains_key(name) {
            return Ok(false);
        }
        self.meta.delete(IMAGES, name)?;
        self.meta.flush()?;
        Ok(self.write().remove(name).is_some())
    }
}

//! The metadata database behind a narrow trait of berth's own, so that sled can
//! be replaced (redb is the fallback) without touching the services. Values are
//! opaque bytes; the typed records live with their owners (images, leases).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("metadata database {op} in {bucket}: {source}")]
    Op {
        op: &'static str,
        bucket: &'static str,
        source: sled::Error,
    },
    #[error("metadata record {bucket}/{key} is corrupt: {reason}")]
    Corrupt {
        bucket: &'static str,
        key: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// A named keyspace. Static names keep the set of buckets visible in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket(pub &'static str);

pub const IMAGES: Bucket = Bucket("images");
pub const LEASES: Bucket = Bucket("leases");
/// Task records (`berthctl run`): one per container, keyed by its id.
pub const TASKS: Bucket = Bucket("tasks");
/// CRI pod sandboxes, keyed by id.
pub const SANDBOXES: Bucket = Bucket("sandboxes");
/// Records recovery could not read, kept aside under `<bucket>/<key>`.
pub const QUARANTINE: Bucket = Bucket("quarantine");

pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// What berth needs from a metadata store: keyed records per bucket, atomic
/// batches within a bucket, and an explicit durability point.
pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Vec<u8>>>;
    fn list(&self, bucket: Bucket) -> Result<Vec<(String, Vec<u8>)>>;
    /// Applies all ops or none.
    fn apply(&self, bucket: Bucket, ops: Vec<Op>) -> Result<()>;
    /// Makes every applied op durable; call before replying to a request
    /// whose effect must survive kill -9.
    fn flush(&self) -> Result<()>;

    fn put(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<()> {
        self.apply(bucket, vec![Op::Put(key.to_string(), value)])
    }
    fn delete(&self, bucket: Bucket, key: &str) -> Result<()> {
        self.apply(bucket, vec![Op::Delete(key.to_string())])
    }
}

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(path)
            // Durability comes from explicit flushes before replies; the
            // background flush only bounds the loss window for the rest.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| MetaError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SledStore { db })
    }

    fn tree(&self, bucket: Bucket) -> Result<sled::Tree> {
        self.db.open_tree(bucket.0).map_err(|source| MetaError::Op {
            op: "open tree",
            bucket: bucket.0,
            source,
        })
    }
}

impl MetaStore for SledStore {
    fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let v = self
            .tree(bucket)?
            .get(key.as_bytes())
            .map_err(|source| MetaError::Op {
                op: "get",
                bucket: bucket.0,
                source,
            })?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn list(&self, bucket: Bucket) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.tree(bucket)?.iter() {
            let (k, v) = item.map_err(|source| MetaError::Op {
                op: "scan",
                bucket: bucket.0,
                source,
            })?;
            let key = String::from_utf8(k.to_vec()).map_err(|e| MetaError::Corrupt {
                bucket: bucket.0,
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, bucket: Bucket, ops: Vec<Op>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k.as_bytes(), v),
                Op::Delete(k) => batch.remove(k.as_bytes()),
            }
        }
        self.tree(bucket)?
            .apply_batch(batch)
            .map_err(|source| MetaError::Op {
                op: "write",
                bucket: bucket.0,
                source,
            })
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|source| MetaError::Op {
            op: "flush",
            bucket: "*",
            source,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        db.put(IMAGES, "a", b"1".to_vec()).unwrap();
        db.apply(
            IMAGES,
            vec![Op::Put("b".into(), b"2".to_vec()), Op::Delete("a".into())],
        )
        .unwrap();
        assert_eq!(db.get(IMAGES, "a").unwrap(), None);
        assert_eq!(db.get(IMAGES, "b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(db.list(IMAGES).unwrap().len(), 1);
        assert!(db.list(LEASES).unwrap().is_empty());
        db.flush().unwrap();
        drop(db);
        let db = SledStore::open(&dir.path().join("meta")).unwrap();
        assert_eq!(db.get(IMAGES, "b").unwrap(), Some(b"2".to_vec()));
    }
}

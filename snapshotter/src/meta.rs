//! Snapshot metadata in a sled database owned by the snapshotter.
//!
//! One tree maps snapshot key -> JSON [`Record`]. Parent/child links live in
//! the records themselves (the parent lists its children's ids) so every
//! change is a handful of point reads and writes inside one sled transaction:
//! sled transactions cannot scan, so a separate "children" index could not be
//! checked atomically. Ids are numeric and never reused, like containerd's,
//! so directory names and overlay lowerdir strings stay short.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};

use crate::error::{Error, Result};
use crate::{Info, Kind, Usage};

/// What is stored per snapshot key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Filled in at commit; active snapshots are measured on demand.
    pub usage: Option<Usage>,
    /// Ids of the snapshots whose parent this is.
    #[serde(default)]
    pub children: Vec<u64>,
}

impl Record {
    pub fn info(&self, key: &str) -> Info {
        Info {
            kind: self.kind,
            name: key.to_string(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        }
    }
}

/// How long [`MetaStore::open`] waits for another handle to release the
/// database lock before reporting it as held.
const LOCK_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct MetaStore {
    db: sled::Db,
    snapshots: sled::Tree,
}

type TxResult<T> = ConflictableTransactionResult<T, Error>;

fn decode(key: &[u8], bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::metadata(
            format!(
                "decode record of snapshot {:?}",
                String::from_utf8_lossy(key)
            ),
            e,
        )
    })
}

fn encode(rec: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(rec).map_err(|e| Error::metadata("encode snapshot record", e))
}

fn tx_get(t: &TransactionalTree, key: &str) -> TxResult<Option<Record>> {
    match t.get(key.as_bytes())? {
        Some(v) => decode(key.as_bytes(), &v)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn tx_put(t: &TransactionalTree, key: &str, rec: &Record) -> TxResult<()> {
    let bytes = encode(rec).map_err(ConflictableTransactionError::Abort)?;
    t.insert(key.as_bytes(), bytes)?;
    Ok(())
}

fn abort<T>(e: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self> {
        // sled holds an exclusive file lock until its last background
        // thread lets go, which can lag a moment behind dropping the
        // previous handle in this process: retry that one error briefly.
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(Error::metadata(
                        format!("open database {}", path.display()),
                        e,
                    ))
                }
            }
        };
        let snapshots = db
            .open_tree("snapshots")
            .map_err(|e| Error::metadata("open snapshots tree", e))?;
        Ok(MetaStore { db, snapshots })
    }

    /// Make every change so far durable (sled otherwise syncs in the
    /// background, and a kill -9 would lose the last few hundred ms).
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| Error::metadata("flush database", e))
    }

    fn tx<T>(&self, context: &str, f: impl Fn(&TransactionalTree) -> TxResult<T>) -> Result<T> {
        self.snapshots.transaction(f).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Error::metadata(context.to_string(), e),
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        match self
            .snapshots
            .get(key.as_bytes())
            .map_err(|e| Error::metadata(format!("read snapshot {key:?}"), e))?
        {
            Some(v) => decode(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    pub fn require(&self, key: &str) -> Result<Record> {
        self.get(key)?.ok_or_else(|| Error::not_found(key))
    }

    /// All records, sorted by key.
    pub fn list(&self) -> Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        for item in self.snapshots.iter() {
            let (k, v) = item.map_err(|e| Error::metadata("list snapshots", e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            out.push((key, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Ids of `rec`'s ancestors, nearest first.
    pub fn parent_ids(&self, key: &str, rec: &Record) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = rec.parent.clone();
        while let Some(p) = next {
            let parent = self.get(&p)?.ok_or_else(|| {
                Error::precondition(key, format!("ancestor snapshot {p:?} is missing"))
            })?;
            ids.push(parent.id);
            next = parent.parent;
            if ids.len() > 100_000 {
                return Err(Error::precondition(key, "parent chain loops"));
            }
        }
        Ok(ids)
    }

    pub fn next_id(&self) -> Result<u64> {
        // generate_id starts at 0 and is persisted monotonically (it may
        // skip after a crash, never repeat); start ids at 1 like containerd.
        self.db
            .generate_id()
            .map(|id| id + 1)
            .map_err(|e| Error::metadata("generate snapshot id", e))
    }

    /// Insert a new active or view record under `key` with id `id`,
    /// checking atomically that the key is free and the parent committed.
    pub fn create(
        &self,
        key: &str,
        id: u64,
        kind: Kind,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Record> {
        self.tx("create snapshot", |t| {
            if tx_get(t, key)?.is_some() {
                return abort(Error::exists(key));
            }
            if let Some(p) = parent {
                let Some(mut prec) = tx_get(t, p)? else {
                    return abort(Error::not_found(p));
                };
                if prec.kind != Kind::Committed {
                    return abort(Error::precondition(
                        key,
                        format!("parent {p:?} is not a committed snapshot"),
                    ));
                }
                prec.children.push(id);
                tx_put(t, p, &prec)?;
            }
            let now = SystemTime::now();
            let rec = Record {
                id,
                kind,
                parent: parent.map(str::to_string),
                labels: labels.clone(),
                created: now,
                updated: now,
                usage: None,
                children: Vec::new(),
            };
            tx_put(t, key, &rec)?;
            Ok(rec)
        })
    }

    /// Rename active `key` to committed `name`, keeping its id.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Record> {
        self.tx("commit snapshot", |t| {
            let Some(mut rec) = tx_get(t, key)? else {
                return abort(Error::not_found(key));
            };
            if rec.kind != Kind::Active {
                return abort(Error::precondition(
                    key,
                    format!(
                        "only active snapshots can be committed, this one is {:?}",
                        rec.kind
                    ),
                ));
            }
            if tx_get(t, name)?.is_some() {
                return abort(Error::exists(name));
            }
            let now = SystemTime::now();
            rec.kind = Kind::Committed;
            rec.labels = labels.clone();
            rec.created = now;
            rec.updated = now;
            rec.usage = Some(usage);
            t.remove(key.as_bytes())?;
            tx_put(t, name, &rec)?;
            Ok(rec)
        })
    }

    /// Delete `key`'s record, refusing while it has children.
    pub fn remove(&self, key: &str) -> Result<Record> {
        self.tx("remove snapshot", |t| {
            let Some(rec) = tx_get(t, key)? else {
                return abort(Error::not_found(key));
            };
            if !rec.children.is_empty() {
                return abort(Error::precondition(
                    key,
                    format!(
                        "cannot remove a snapshot with {} child snapshot(s)",
                        rec.children.len()
                    ),
                ));
            }
            if let Some(p) = &rec.parent {
                if let Some(mut prec) = tx_get(t, p)? {
                    prec.children.retain(|c| *c != rec.id);
                    tx_put(t, p, &prec)?;
                }
            }
            t.remove(key.as_bytes())?;
            Ok(rec)
        })
    }

    pub fn update_labels(&self, key: &str, labels: &BTreeMap<String, String>) -> Result<Record> {
        self.tx("update snapshot labels", |t| {
            let Some(mut rec) = tx_get(t, key)? else {
                return abort(Error::not_found(key));
            };
            rec.labels = labels.clone();
            rec.updated = SystemTime::now();
            tx_put(t, key, &rec)?;
            Ok(rec)
        })
    }

    /// Drop `keys` (recovery of snapshots whose directory is gone), fixing
    /// the children lists of surviving parents.
    pub fn drop_records(&self, keys: &[String]) -> Result<()> {
        self.tx("drop snapshot records", |t| {
            let mut dropped_ids = Vec::new();
            let mut parents = Vec::new();
            for key in keys {
                if let Some(rec) = tx_get(t, key)? {
                    dropped_ids.push(rec.id);
                    if let Some(p) = rec.parent {
                        parents.push(p);
                    }
                    t.remove(key.as_bytes())?;
                }
            }
            for p in &parents {
                if let Some(mut prec) = tx_get(t, p)? {
                    prec.children.retain(|c| !dropped_ids.contains(c));
                    tx_put(t, p, &prec)?;
                }
            }
            Ok(())
        })
    }

    /// Replace a record's children list (recovery repairs stale links).
    pub fn set_children(&self, key: &str, children: &[u64]) -> Result<()> {
        self.tx("repair snapshot children", |t| {
            if let Some(mut rec) = tx_get(t, key)? {
                rec.children = children.to_vec();
                tx_put(t, key, &rec)?;
            }
            Ok(())
        })
    }
}

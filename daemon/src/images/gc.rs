//! Leases and garbage collection of content.
//!
//! GC is mark and sweep: the roots are every image's target and every digest
//! held by a lease; manifests and indexes are walked to their children; blobs
//! not marked are deleted. A pull adds a digest to its lease *before* writing
//! it, under the read side of the GC lock, so a sweep can never remove what a
//! running pull has just written.
//!
//! A lease belongs to an operation of one berthd process (a pull, an import,
//! the unpacks they run), which releases it when it ends. One whose process
//! died (kill -9, a crash, a power cut) can never be released by its owner: it
//! is dropped at the next start, whose GC then collects what only it held.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use content_store::{ContentStore, Digest};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tracing::{debug, info, warn};

use super::store::{now_nanos, ImageStore};
use crate::metadata::{MetaStore, LEASES};
use berth_distribution::oci::{self, Descriptor};

/// Lease entries for snapshots carry this prefix; the rest are digests.
pub const SNAPSHOT_LEASE_PREFIX: &str = "snapshot:";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    created_at: i64,
    /// The berthd process that took the lease (its `Leases::instance`, new
    /// at every start; empty in records written before it existed).
    #[serde(default)]
    instance: String,
    digests: BTreeSet<String>,
}

pub struct Leases {
    meta: Arc<dyn MetaStore>,
    /// This process's id, random per start: its leases carry it.
    instance: String,
    live: Mutex<HashMap<String, LeaseRecord>>,
    /// Read: adding to a lease. Write: a GC mark+sweep.
    gc_lock: RwLock<()>,
}

/// A live lease; dropping it releases what it protects.
pub struct Lease {
    id: String,
    leases: Arc<Leases>,
}

impl Leases {
    /// Opens the leases of a new berthd process. Every lease in the database
    /// was taken by a previous process, whose operations are gone: none can
    /// ever be released by its owner, so all are dropped (if they stayed, what
    /// they hold would be pinned for good). The GC berthd runs at start then
    /// collects what only they held: the blobs and snapshots of a pull or an
    /// import cut short. Partial ingests are not held by leases: a pull's stay
    /// for a retried pull to resume, until `gc.partial_ingest_keep_secs`.
    pub fn load(meta: Arc<dyn MetaStore>) -> Arc<Leases> {
        let instance = format!("{:016x}", rand::random::<u64>());
        Self::load_as(meta, instance)
    }

    fn load_as(meta: Arc<dyn MetaStore>, instance: String) -> Arc<Leases> {
        let mut live = HashMap::new();
        let mut dropped = 0usize;
        match meta.list(LEASES) {
            Ok(items) => {
                for (id, v) in items {
                    match serde_json::from_slice::<LeaseRecord>(&v) {
                        Ok(rec) if rec.instance == instance => {
                            live.insert(id, rec);
                            continue;
                        }
                        Ok(rec) => info!(
                            lease = %id,
                            instance = %rec.instance,
                            entries = rec.digests.len(),
                            "dropping a lease of a previous berthd"
                        ),
                        Err(e) => warn!(lease = %id, error = %e, "dropping a corrupt lease"),
                    }
                    match meta.delete(LEASES, &id) {
                        Ok(()) => dropped += 1,
                        Err(e) => warn!(lease = %id, error = %e, "cannot drop lease"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read leases"),
        }
        if dropped > 0 {
            if let Err(e) = meta.flush() {
                warn!(error = %e, "cannot flush dropped leases");
            }
        }
        Arc::new(Leases {
            meta,
            instance,
            live: Mutex::new(live),
            gc_lock: RwLock::new(()),
        })
    }

    pub fn create(self: &Arc<Self>, purpose: &str) -> Lease {
        let id = format!("{purpose}-{}-{:08x}", now_nanos(), rand::random::<u32>());
        let rec = LeaseRecord {
            created_at: now_nanos(),
            instance: self.instance.clone(),
            digests: BTreeSet::new(),
        };
        self.lock_live().insert(id.clone(), rec);
        Lease {
            id,
            leases: self.clone(),
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaseRecord>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, id: &str) {
        let rec = self.lock_live().get(id).cloned();
        let res = match rec {
            Some(rec) => match serde_json::to_vec(&rec) {
                Ok(v) => self.meta.put(LEASES, id, v),
                Err(_) => Ok(()),
            },
            None => self.meta.delete(LEASES, id),
        };
        if let Err(e) = res {
            warn!(lease = %id, error = %e, "cannot persist lease");
        }
    }

    pub fn protected(&self) -> HashSet<String> {
        self.lock_live()
            .values()
            .flat_map(|r| r.digests.iter().cloned())
            .collect()
    }
}

impl Lease {
    /// Protects a digest from GC; call before writing it.
    pub async fn add(&self, digest: &str) {
        let _g = self.leases.gc_lock.read().await;
        self.insert(digest);
    }
}

impl Lease {
    /// [`Lease::add`] for blocking threads.
    pub fn add_blocking(&self, digest: &str) {
        let _g = self.leases.gc_lock.blocking_read();
        self.insert(digest);
    }

    fn insert(&self, digest: &str) {
        let added = self
            .leases
            .lock_live()
            .get_mut(&self.id)
            .map(|r| r.digests.insert(digest.to_string()))
            .unwrap_or(false);
        if added {
            self.leases.persist(&self.id);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.lock_live().remove(&self.id);
        self.leases.persist(&self.id);
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub bytes_freed: u64,
    pub snapshots_removed: Vec<String>,
}

/// The children a manifest or index references (empty for other blobs, and
/// for a document missing from the store: a platform never pulled).
pub fn children(content: &ContentStore, desc: &Descriptor, limit: u64) -> Vec<Descriptor> {
    let mt = desc.media_type.as_str();
    if !oci::is_index(mt) && !oci::is_manifest(mt) {
        return Vec::new();
    }
    let Ok(digest) = Digest::parse(&desc.digest) else {
        return Vec::new();
    };
    let Ok(body) = content.read_all(&digest, limit) else {
        return Vec::new();
    };
    if oci::is_index(mt) {
        serde_json::from_slice::<oci::Index>(&body)
            .map(|i| i.manifests)
            .unwrap_or_default()
    } else {
        serde_json::from_slice::<oci::Manifest>(&body)
            .map(|m| std::iter::once(m.config).chain(m.layers).collect())
            .unwrap_or_default()
    }
}

/// Runs one mark and sweep. Blocking: call from a blocking thread.
pub fn collect(
    content: &ContentStore,
    images: &ImageStore,
    leases: &Leases,
    snapshotter: &dyn snapshotter::Snapshotter,
    manifest_limit: u64,
) -> Result<GcReport, content_store::Error> {
    let _g = leases.gc_lock.blocking_write();
    // Snapshots first: which ones images need is read from their content.
    let keep = super::snapshots::referenced_snapshots(
        content,
        images,
        &leases.protected(),
        manifest_limit,
    );
    let snapshots_removed = super::snapshots::collect_snapshots(snapshotter, &keep);
    let marked = referenced(content, images, leases, manifest_limit);
    let mut report = GcReport {
        snapshots_removed,
        ..Default::default()
    };
    for info in content.list()? {
        if marked.contains(info.digest.as_str()) {
            continue;
        }
        match content.delete(&info.digest) {
            Ok(()) => {
                debug!(digest = %info.digest, "collected blob");
                report.bytes_freed += info.size;
                report.removed.push(info.digest.to_string());
            }
            Err(e) => warn!(digest = %info.digest, error = %e, "cannot remove blob"),
        }
    }
    let metrics = crate::metrics::global();
    metrics.gc_runs.inc();
    metrics.gc_reclaimed_bytes.inc_by(report.bytes_freed);
    metrics
        .gc_snapshots_removed
        .inc_by(report.snapshots_removed.len() as u64);
    crate::events::publish(
        "/gc/run",
        "",
        [
            ("blobs_removed", report.removed.len().to_string()),
            ("bytes_freed", report.bytes_freed.to_string()),
            (
                "snapshots_removed",
                report.snapshots_removed.len().to_string(),
            ),
        ],
    );
    if !report.removed.is_empty() || !report.snapshots_removed.is_empty() {
        info!(
            snapshots = report.snapshots_removed.len(),
            blobs = report.removed.len(),
            bytes = report.bytes_freed,
            "garbage collection removed content"
        );
    }
    Ok(report)
}

/// The set of referenced digests, for `content ls`.
pub fn referenced(
    content: &ContentStore,
    images: &ImageStore,
    leases: &Leases,
    manifest_limit: u64,
) -> HashSet<String> {
    let mut marked: HashSet<String> = leases.protected();
    let mut visited: HashSet<String> = HashSet::new();
    let mut queue: Vec<Descriptor> = images.list().into_iter().map(|i| i.target).collect();
    while let Some(desc) = queue.pop() {
        marked.insert(desc.digest.clone());
        if visited.insert(desc.digest.clone()) {
            queue.extend(children(content, &desc, manifest_limit));
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::SledStore;

    fn records(meta: &Arc<dyn MetaStore>) -> Vec<(String, LeaseRecord)> {
        meta.list(LEASES)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
            .collect()
    }

    #[test]
    fn leases_of_a_previous_instance_are_dropped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(SledStore::open(&dir.path().join("meta")).unwrap());

        // A berthd killed in the middle of a pull: its lease is on disk and
        // its owner is gone (the lease is never dropped, never released).
        let previous = Leases::load(meta.clone());
        let cut_short = previous.create("pull");
        cut_short.add_blocking("sha256:aa");
        cut_short.add_blocking(&format!("{SNAPSHOT_LEASE_PREFIX}sha256:bb"));
        std::mem::forget(cut_short);
        // A lease written before leases named their process, and a corrupt one.
        let legacy = format!(
            r#"{{"created_at":{},"digests":["sha256:cc"]}}"#,
            now_nanos()
        );
        meta.put(LEASES, "pull-legacy", legacy.into_bytes())
            .unwrap();
        meta.put(LEASES, "pull-corrupt", b"{".to_vec()).unwrap();
        let on_disk = records_len(&meta);
        assert_eq!(on_disk, 3);

        // The next start drops them all: nothing is protected any more.
        let leases = Leases::load(meta.clone());
        assert_ne!(leases.instance, previous.instance);
        assert!(leases.protected().is_empty(), "{:?}", leases.protected());
        assert_eq!(records_len(&meta), 0);

        // A lease of the running process protects its content and is
        // recorded with this process's id, until it is released.
        let running = leases.create("pull");
        running.add_blocking("sha256:dd");
        assert!(leases.protected().contains("sha256:dd"));
        let recs = records(&meta);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].1.instance, leases.instance);
        // Only another process's leases go: loading as this one keeps it.
        let same = Leases::load_as(meta.clone(), leases.instance.clone());
        assert!(same.protected().contains("sha256:dd"));
        drop(running);
        assert!(leases.protected().is_empty());
        assert_eq!(records_len(&meta), 0);
    }

    fn records_len(meta: &Arc<dyn MetaStore>) -> usize {
        meta.list(LEASES).unwrap().len()
    }
}

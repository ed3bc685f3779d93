//! Leases and garbage collection of content.
//!
//! GC is mark and sweep: the roots are every image's target and every digest
//! held by a lease; manifests and indexes are walked to their children; blobs
//! not marked are deleted. A pull adds a digest to its lease *before* writing
//! it, under the read side of the GC lock, so a sweep can never remove what a
//! running pull has just written.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use content_store::{ContentStore, Digest};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tracing::{debug, info, warn};

use super::store::{now_nanos, ImageStore};
use crate::metadata::{MetaStore, LEASES};
use crate::oci::{self, Descriptor};

/// How long a lease left by a crashed daemon still protects its content, so
/// that a re-pull after a crash can reuse the layers already committed.
/// Lease entries for snapshots carry this prefix; the rest are digests.
pub const SNAPSHOT_LEASE_PREFIX: &str = "snapshot:";

const ORPHAN_LEASE_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    created_at: i64,
    digests: BTreeSet<String>,
}

pub struct Leases {
    meta: Arc<dyn MetaStore>,
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
    /// Loads leases left by a previous run: recent ones keep protecting their
    /// content for a while, old ones are dropped.
    pub fn load(meta: Arc<dyn MetaStore>) -> Arc<Leases> {
        let mut live = HashMap::new();
        let cutoff = now_nanos() - ORPHAN_LEASE_TTL.as_nanos() as i64;
        match meta.list(LEASES) {
            Ok(items) => {
                for (id, v) in items {
                    match serde_json::from_slice::<LeaseRecord>(&v) {
                        Ok(rec) if rec.created_at > cutoff => {
                            live.insert(id, rec);
                        }
                        _ => {
                            if let Err(e) = meta.delete(LEASES, &id) {
                                warn!(lease = %id, error = %e, "cannot drop expired lease");
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read leases"),
        }
        Arc::new(Leases {
            meta,
            live: Mutex::new(live),
            gc_lock: RwLock::new(()),
        })
    }

    pub fn create(self: &Arc<Self>, purpose: &str) -> Lease {
        let id = format!("{purpose}-{}-{:08x}", now_nanos(), rand::random::<u32>());
        let rec = LeaseRecord {
            created_at: now_nanos(),
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

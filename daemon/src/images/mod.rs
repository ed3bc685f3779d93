//! The image service: the image records, pulls, tags, removal and GC over the
//! content store. Both berth's native API and (later) the CRI ImageService are
//! thin layers over it.

pub mod archive;
pub mod error;
pub mod gc;
pub mod grpc;
pub mod pull;
pub mod push;
pub mod snapshots;
pub mod store;
pub mod unpack;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use content_store::{ContentStore, Digest};
use tokio::sync::Notify;
use tracing::warn;

use error::blocking;
pub use error::ImageError;
use gc::{GcReport, Leases};
use store::{now_nanos, ImageRecord, ImageStore};

use crate::config::Config;
use berth_distribution::oci::{self, Descriptor, Platform};
use berth_distribution::reference::Reference;
use berth_distribution::registry::RegistryClient;

pub struct ImageService {
    pub config: Arc<Config>,
    pub content: ContentStore,
    pub images: ImageStore,
    pub leases: Arc<Leases>,
    pub registry: Arc<RegistryClient>,
    pub unpacker: Arc<unpack::Unpacker>,
    inflight: Mutex<HashMap<String, Arc<pull::InflightPull>>>,
    gc_wanted: Notify,
}

/// The documents behind an image for one platform.
pub struct ResolvedImage {
    pub record: ImageRecord,
    pub index: Option<Vec<u8>>,
    pub manifest_desc: Descriptor,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
}

impl ImageService {
    pub fn new(
        config: Arc<Config>,
        content: ContentStore,
        images: ImageStore,
        leases: Arc<Leases>,
        unpacker: Arc<unpack::Unpacker>,
    ) -> Arc<ImageService> {
        let registry = Arc::new(RegistryClient::new(
            config.pull.connect_timeout(),
            config.pull.no_progress_timeout(),
            config.pull.min_transfer_rate,
            config.pull.max_manifest_bytes,
        ));
        Arc::new(ImageService {
            config,
            content,
            images,
            leases,
            registry,
            unpacker,
            inflight: Mutex::new(HashMap::new()),
            gc_wanted: Notify::new(),
        })
    }

    /// Finds an image by name (normalised as a reference), by exact stored
    /// name, or by an unambiguous prefix of its config or target digest.
    pub fn lookup(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ImageError::InvalidArgument("image name is empty".into()));
        }
        if let Some(rec) = self.images.get(name) {
            return Ok(rec);
        }
        if let Ok(r) = Reference::parse_normalized(name) {
            if let Some(rec) = self.images.get(&r.to_string()) {
                return Ok(rec);
            }
            // `repo@digest` names an image pulled by tag too: its repo digest
            // (CRI `repoDigests`, as containerd resolves it).
            if let Some(digest) = r.digest() {
                let repo = r.repository();
                let found = self.images.list().into_iter().find(|i| {
                    i.target.digest == digest
                        && Reference::parse_normalized(&i.name)
                            .is_ok_and(|n| n.repository() == repo)
                });
                if let Some(rec) = found {
                    return Ok(rec);
                }
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let matches: Vec<ImageRecord> = self
                .images
                .list()
                .into_iter()
                .filter(|i| {
                    i.config_digest
                        .strip_prefix("sha256:")
                        .is_some_and(|d| d.starts_with(hex))
                        || i.target
                            .digest
                            .strip_prefix("sha256:")
                            .is_some_and(|d| d.starts_with(hex))
                })
                .collect();
            let distinct: std::collections::HashSet<&str> =
                matches.iter().map(|m| m.target.digest.as_str()).collect();
            if distinct.len() == 1 {
                return Ok(matches[0].clone());
            }
            if distinct.len() > 1 {
                return Err(ImageError::InvalidArgument(format!(
                    "image id prefix {name} is ambiguous ({} images)",
                    distinct.len()
                )));
            }
        }
        Err(ImageError::NotFound(name.to_string()))
    }

    pub fn list(&self, filters: &[String]) -> Vec<ImageRecord> {
        let mut out = self.images.list();
        if !filters.is_empty() {
            out.retain(|img| {
                filters.iter().any(|f| match f.strip_suffix('*') {
                    Some(prefix) => img.name.starts_with(prefix),
                    None => {
                        img.name == *f
                            || Reference::parse_normalized(f)
                                .map(|r| r.to_string() == img.name)
                                .unwrap_or(false)
                    }
                })
            });
        }
        out
    }

    /// Reads the index (if any), platform manifest and config of an image.
    pub async fn resolve(
        &self,
        record: ImageRecord,
        platform: Option<Platform>,
    ) -> Result<ResolvedImage, ImageError> {
        let content = self.content.clone();
        let limit = self.config.pull.max_manifest_bytes;
        let config_limit = self.config.pull.max_config_bytes;
        blocking(move || {
            let name = record.name.clone();
            let read = |d: &str, limit: u64| -> Result<Vec<u8>, ImageError> {
                let digest = Digest::parse(d).map_err(ImageError::content(&name))?;
                content
                    .read_all(&digest, limit)
                    .map_err(ImageError::content(&name))
            };
            let top = read(&record.target.digest, limit)?;
            let (index, manifest_desc, manifest) = if oci::is_index(&record.target.media_type) {
                let idx: oci::Index =
                    serde_json::from_slice(&top).map_err(|e| ImageError::BadImage {
                        image: name.clone(),
                        reason: format!("index is not valid: {e}"),
                    })?;
                let want = platform.unwrap_or_else(oci::host_platform);
                // Prefer the wanted platform; else any entry present locally.
                let desc = pull::select_platform(&idx, &want)
                    .filter(|d| Digest::parse(&d.digest).is_ok_and(|dg| content.exists(&dg)))
                    .or_else(|| {
                        idx.manifests
                            .iter()
                            .find(|d| Digest::parse(&d.digest).is_ok_and(|dg| content.exists(&dg)))
                            .cloned()
                    })
                    .ok_or_else(|| ImageError::BadImage {
                        image: name.clone(),
                        reason: "no platform manifest of the index is present locally".into(),
                    })?;
                let m = read(&desc.digest, limit)?;
                (Some(top), desc, m)
            } else {
                (None, record.target.clone(), top)
            };
            let parsed: oci::Manifest =
                serde_json::from_slice(&manifest).map_err(|e| ImageError::BadImage {
                    image: name.clone(),
                    reason: format!("manifest {} is not valid: {e}", manifest_desc.digest),
                })?;
            let config = read(&parsed.config.digest, config_limit)?;
            Ok(ResolvedImage {
                record,
                index,
                manifest_desc,
                manifest,
                config,
            })
        })
        .await
    }

    /// Gives an existing image a second name.
    pub async fn tag(&self, source: &str, target: &str) -> Result<ImageRecord, ImageError> {
        let src = self.lookup(source)?;
        let dst = Reference::parse_normalized(target)
            .map_err(|e| ImageError::InvalidArgument(e.to_string()))?;
        let now = now_nanos();
        let rec = ImageRecord {
            name: dst.to_string(),
            created_at: now,
            updated_at: now,
            ..src
        };
        let images = self.images.clone();
        let rec = blocking(move || images.put(rec).map_err(ImageError::from)).await?;
        crate::events::publish("/images/tag", &rec.name, [("source", source.to_string())]);
        Ok(rec)
    }

    /// Removes a name; content nothing references any more is collected in
    /// the background (or now, with `sync`).
    pub async fn remove(&self, name: &str, sync: bool) -> Result<(), ImageError> {
        let rec = self.lookup(name)?;
        let images = self.images.clone();
        let key = rec.name.clone();
        let removed = blocking(move || images.remove(&key).map_err(ImageError::from)).await?;
        if !removed {
            return Err(ImageError::NotFound(name.to_string()));
        }
        crate::events::publish(
            "/images/delete",
            &rec.name,
            [("digest", rec.target.digest.clone())],
        );
        if sync {
            self.collect_garbage().await?;
        } else {
            self.gc_wanted.notify_one();
        }
        Ok(())
    }

    pub async fn collect_garbage(&self) -> Result<GcReport, ImageError> {
        let content = self.content.clone();
        let images = self.images.clone();
        let leases = self.leases.clone();
        let snapshotter = self.unpacker.snapshotter.clone();
        let limit = self.config.pull.max_manifest_bytes;
        blocking(move || {
            gc::collect(&content, &images, &leases, snapshotter.as_ref(), limit)
                .map_err(ImageError::content("gc"))
        })
        .await
    }

    /// Asks the background collector for a run (e.g. at start, to sweep
    /// what a crash left unreferenced).
    pub fn request_gc(&self) {
        self.gc_wanted.notify_one();
    }

    /// The background collector: runs after removals, coalescing bursts.
    pub fn spawn_gc_loop(self: &Arc<Self>) {
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(s) = svc.upgrade() else { return };
                // Waiting holds the service alive; the loop ends with the daemon.
                s.gc_wanted.notified().await;
                drop(s);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let Some(s) = svc.upgrade() else { return };
                if let Err(e) = s.collect_garbage().await {
                    warn!(error = %e, "background garbage collection failed");
                }
            }
        });
    }
}

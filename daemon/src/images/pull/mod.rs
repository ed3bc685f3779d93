//! Pulling an image: resolve, pick the platform, fetch config and layers
//! concurrently into the content store (verified while streaming, resumable),
//! then record the image. Concurrent pulls of the same reference share one
//! task; the task is cancelled when its last subscriber goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_distribution::oci::{self, Descriptor, Platform};
use berth_distribution::reference::Reference;
use berth_distribution::registry::{Credentials, RegistryError, Repository};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::{blocking, ImageError};
use super::gc::SNAPSHOT_LEASE_PREFIX;
use super::snapshots::ChainLayer;
use super::store::{now_nanos, ImageRecord};
use super::unpack::chain_ids;
use super::ImageService;
use crate::error::Kind;

mod fetch;
mod manifest;

pub use fetch::FETCH_INGEST_PREFIX;
use manifest::platforms_of;
pub use manifest::select_platform;

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub creds: Option<Credentials>,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStage {
    Waiting,
    Downloading,
    Exists,
    Done,
    Failed,
}

#[derive(Debug, Clone)]
pub struct LayerState {
    pub digest: String,
    pub media_type: String,
    pub done: u64,
    pub total: u64,
    pub stage: LayerStage,
}

impl LayerState {
    /// A blob not started yet (pull and push list them all up front).
    pub fn waiting(desc: &Descriptor) -> LayerState {
        LayerState {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            done: 0,
            total: desc.size.max(0) as u64,
            stage: LayerStage::Waiting,
        }
    }
}

/// What subscribers of a pull see: the latest progress, then the result.
#[derive(Debug, Clone, Default)]
pub struct PullSnapshot {
    pub reference: String,
    pub status: String,
    pub layers: Vec<LayerState>,
    pub result: Option<Result<ImageRecord, (Kind, String)>>,
}

pub(super) struct InflightPull {
    tx: watch::Sender<PullSnapshot>,
    subscribers: AtomicUsize,
    cancel: CancellationToken,
}

/// A subscription to a (possibly shared) pull.
pub struct PullHandle {
    pub rx: watch::Receiver<PullSnapshot>,
    inflight: Arc<InflightPull>,
}

impl Drop for PullHandle {
    fn drop(&mut self) {
        if self.inflight.subscribers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inflight.cancel.cancel();
        }
    }
}

impl PullHandle {
    /// Waits for the pull to finish.
    pub async fn wait(mut self) -> Result<ImageRecord, ImageError> {
        loop {
            if let Some(res) = self.rx.borrow_and_update().result.clone() {
                return res.map_err(|(kind, message)| ImageError::Joined { kind, message });
            }
            if self.rx.changed().await.is_err() {
                return Err(ImageError::Internal(
                    "pull task ended without a result".into(),
                ));
            }
        }
    }
}

type Progress = Arc<Mutex<Vec<LayerState>>>;

fn set_layer(progress: &Progress, idx: usize, f: impl FnOnce(&mut LayerState)) {
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = p.get_mut(idx) {
        f(l);
    }
}

impl ImageService {
    /// Starts (or joins) a pull of `reference`.
    pub fn pull(
        self: &Arc<Self>,
        reference: &str,
        opts: PullOptions,
    ) -> Result<PullHandle, ImageError> {
        let r = Reference::parse_normalized(reference)
            .map_err(|e| ImageError::InvalidArgument(e.to_string()))?;
        let platform = opts.platform.clone().unwrap_or_else(oci::host_platform);
        let key = format!(
            "{r}|{}/{}|{}|{}",
            platform.os, platform.architecture, opts.plain_http, opts.skip_verify
        );
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inflight) = map.get(&key) {
            if !inflight.cancel.is_cancelled() {
                inflight.subscribers.fetch_add(1, Ordering::SeqCst);
                debug!(image = %r, "joining a pull already under way");
                return Ok(PullHandle {
                    rx: inflight.tx.subscribe(),
                    inflight: inflight.clone(),
                });
            }
        }
        let (tx, rx) = watch::channel(PullSnapshot {
            reference: r.to_string(),
            status: "resolving".into(),
            ..Default::default()
        });
        let inflight = Arc::new(InflightPull {
            tx,
            subscribers: AtomicUsize::new(1),
            cancel: CancellationToken::new(),
        });
        map.insert(key.clone(), inflight.clone());
        drop(map);

        let svc = self.clone();
        let task_inflight = inflight.clone();
        tokio::spawn(async move {
            let progress: Progress = Arc::new(Mutex::new(Vec::new()));
            let name = r.to_string();
            let started = Instant::now();
            let work = svc.do_pull(&r, &opts, platform, &progress, &task_inflight.tx);
            tokio::pin!(work);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let result = loop {
                tokio::select! {
                    res = &mut work => break res,
                    _ = task_inflight.cancel.cancelled() => break Err(ImageError::Cancelled { image: name.clone() }),
                    _ = tick.tick() => {
                        let layers = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        task_inflight.tx.send_modify(|s| s.layers = layers);
                    }
                }
            };
            // Forget the pull before publishing, so a later call starts afresh.
            {
                let mut map = svc.inflight.lock().unwrap_or_else(|e| e.into_inner());
                if map
                    .get(&key)
                    .is_some_and(|p| Arc::ptr_eq(p, &task_inflight))
                {
                    map.remove(&key);
                }
            }
            let metrics = crate::metrics::global();
            match &result {
                Ok(img) => {
                    info!(image = %img.name, digest = %img.target.digest, "pulled image");
                    metrics.pulls.with_label_values(&["ok"]).inc();
                    crate::events::publish(
                        "/images/pull",
                        &img.name,
                        [("digest", img.target.digest.clone())],
                    );
                    metrics
                        .pull_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    warn!(image = %name, error = %e, "pull failed");
                    metrics.pulls.with_label_values(&["error"]).inc();
                }
            }
            let layers = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
            task_inflight.tx.send_modify(|s| {
                s.layers = layers;
                s.status = if result.is_ok() { "done" } else { "failed" }.into();
                s.result = Some(result.map_err(|e| (e.kind(), e.to_string())));
            });
        });
        Ok(PullHandle { rx, inflight })
    }

    pub(super) fn repository_for(
        &self,
        r: &Reference,
        opts: &PullOptions,
        push: bool,
    ) -> Result<Repository, ImageError> {
        let cfg = &self.config.registry;
        let config_path =
            (!cfg.config_path.as_os_str().is_empty()).then_some(cfg.config_path.as_path());
        let mut hosts = berth_distribution::hosts::load_hosts(config_path, r.domain())
            .map_err(|e| ImageError::InvalidArgument(format!("{r}: {e}")))?;
        for h in &mut hosts {
            if opts.plain_http {
                h.scheme = "http".into();
            }
            if opts.skip_verify {
                h.skip_verify = true;
            }
        }
        let creds = opts.creds.clone().filter(|c| !c.is_empty()).or_else(|| {
            cfg.auths.get(r.domain()).map(|a| Credentials {
                username: a.username.clone(),
                password: a.password.clone(),
                identity_token: a.identity_token.clone(),
            })
        });
        Ok(self
            .registry
            .repository(hosts, r.path(), creds.unwrap_or_default(), push))
    }

    async fn do_pull(
        self: &Arc<Self>,
        r: &Reference,
        opts: &PullOptions,
        platform: Platform,
        progress: &Progress,
        tx: &watch::Sender<PullSnapshot>,
    ) -> Result<ImageRecord, ImageError> {
        let name = r.to_string();
        let reg_err = |source: RegistryError| ImageError::Registry {
            image: name.clone(),
            source,
        };
        let repo = self.repository_for(r, opts, false)?;
        let lease = self.leases.create("pull");

        let (media_type, digest, body) = repo
            .get_manifest(r.object(), &name)
            .await
            .map_err(reg_err)?;
        crate::metrics::global()
            .pull_bytes
            .inc_by(body.len() as u64);
        if !oci::is_index(&media_type) && !oci::is_manifest(&media_type) {
            return Err(ImageError::UnsupportedMediaType {
                image: name.clone(),
                what: "the manifest".into(),
                media_type,
            });
        }
        let top = Descriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: body.len() as i64,
            urls: None,
            annotations: None,
            platform: None,
        };
        self.store_document(&lease, &name, &digest, body.clone())
            .await?;

        let (manifest_desc, manifest_body) = if oci::is_index(&media_type) {
            let index: oci::Index =
                serde_json::from_slice(&body).map_err(|e| ImageError::BadImage {
                    image: name.clone(),
                    reason: format!("index {digest} is not valid JSON: {e}"),
                })?;
            let chosen = select_platform(&index, &platform).ok_or_else(|| {
                ImageError::NotFound(format!(
                    "{name}: no manifest for platform {}/{} (index has: {})",
                    platform.os,
                    platform.architecture,
                    platforms_of(&index)
                ))
            })?;
            if !oci::is_manifest(&chosen.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    image: name.clone(),
                    what: format!("index entry {}", chosen.digest),
                    media_type: chosen.media_type.clone(),
                });
            }
            let body = self.fetch_document(&repo, &lease, &name, &chosen).await?;
            (chosen, body)
        } else {
            (top.clone(), body)
        };

        let manifest: oci::Manifest =
            serde_json::from_slice(&manifest_body).map_err(|e| ImageError::BadImage {
                image: name.clone(),
                reason: format!("manifest {} is not valid: {e}", manifest_desc.digest),
            })?;
        if !oci::is_config(&manifest.config.media_type) {
            return Err(ImageError::UnsupportedMediaType {
                image: name.clone(),
                what: "the image config".into(),
                media_type: manifest.config.media_type.clone(),
            });
        }
        for l in &manifest.layers {
            if oci::layer_compression(&l.media_type).is_none() {
                return Err(ImageError::UnsupportedMediaType {
                    image: name.clone(),
                    what: format!("layer {}", l.digest),
                    media_type: l.media_type.clone(),
                });
            }
        }

        tx.send_modify(|s| s.status = "fetching".into());
        let config_body = self
            .fetch_document(&repo, &lease, &name, &manifest.config)
            .await?;
        let config: oci::ImageConfig =
            serde_json::from_slice(&config_body).map_err(|e| ImageError::BadImage {
                image: name.clone(),
                reason: format!("config {} is not valid: {e}", manifest.config.digest),
            })?;
        let diff_ids = config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.len())
            .unwrap_or(0);
        if diff_ids != manifest.layers.len() {
            return Err(ImageError::BadImage {
                image: name.clone(),
                reason: format!(
                    "config {} lists {diff_ids} diff_ids for {} layers",
                    manifest.config.digest,
                    manifest.layers.len()
                ),
            });
        }

        {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            *p = manifest.layers.iter().map(LayerState::waiting).collect();
        }
        let diff_ids: Vec<String> = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        let chain: Vec<ChainLayer> = manifest
            .layers
            .iter()
            .zip(diff_ids.iter())
            .zip(chain_ids(&diff_ids))
            .map(|((layer, diff_id), chain_id)| ChainLayer {
                layer: layer.clone(),
                diff_id: diff_id.clone(),
                chain_id,
            })
            .collect();
        for c in &chain {
            lease
                .add(&format!("{SNAPSHOT_LEASE_PREFIX}{}", c.chain_id))
                .await;
        }

        // Layers download concurrently; each is unpacked as soon as it and
        // every layer below it are in: a layer needs its parent committed.
        let limit = self.config.pull.max_concurrent_downloads.max(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
        let fetches: Vec<_> = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(idx, layer)| {
                let repo = &repo;
                let lease = &lease;
                let name = &name;
                let done_tx = done_tx.clone();
                async move {
                    let res = self
                        .fetch_blob(repo, lease, name, layer, Some((progress, idx)))
                        .await;
                    if res.is_err() {
                        set_layer(progress, idx, |l| l.stage = LayerStage::Failed);
                    } else {
                        let _ = done_tx.send(idx);
                    }
                    res
                }
            })
            .collect();
        drop(done_tx);
        let fetch_all = async {
            let results: Vec<Result<(), ImageError>> = futures::stream::iter(fetches)
                .buffer_unordered(limit)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, ImageError>>()
        };
        let unpack_all = async {
            let mut fetched = vec![false; chain.len()];
            let mut next = 0;
            while next < chain.len() {
                match done_rx.recv().await {
                    Some(i) => fetched[i] = true,
                    None => {
                        return Err(ImageError::Internal(format!(
                            "{name}: layer {next} was never fetched"
                        )))
                    }
                }
                while next < chain.len() && fetched[next] {
                    let svc = self.clone();
                    let image = name.clone();
                    let c = chain[next].clone();
                    let parent = next.checked_sub(1).map(|p| chain[p].chain_id.clone());
                    // A cancelled pull (inflight.cancel) drops this future, and the
                    // guard with it: the blocking unpack then stops and removes its
                    // snapshot instead of running on for minutes.
                    let stop = super::unpack::CancelOnDrop::new();
                    let cancel = stop.flag();
                    blocking(move || {
                        svc.unpacker
                            .unpack_layer(
                                &image,
                                &c.layer,
                                &c.diff_id,
                                &c.chain_id,
                                parent.as_deref(),
                                &cancel,
                            )
                            .map(|_| ())
                    })
                    .await?;
                    drop(stop);
                    next += 1;
                }
            }
            Ok(())
        };
        tokio::try_join!(fetch_all, unpack_all)?;

        let size = manifest_desc.size
            + manifest.config.size
            + manifest.layers.iter().map(|l| l.size).sum::<i64>();
        let now = now_nanos();
        let record = ImageRecord {
            name: name.clone(),
            target: top,
            labels: HashMap::new(),
            created_at: now,
            updated_at: now,
            size,
            config_digest: manifest.config.digest.clone(),
        };
        let images = self.images.clone();
        let record = blocking(move || images.put(record).map_err(ImageError::from)).await?;
        drop(lease);
        Ok(record)
    }
}

#[cfg(test)]
mod tests;

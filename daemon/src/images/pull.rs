//! Pulling an image: resolve, pick the platform, fetch config and layers
//! concurrently into the content store (verified while streaming, resumable),
//! then record the image. Concurrent pulls of the same reference share one
//! task; the task is cancelled when its last subscriber goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use content_store::{Digest, Expected};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::{blocking, ImageError};
use super::gc::{Lease, SNAPSHOT_LEASE_PREFIX};
use super::snapshots::ChainLayer;
use super::store::{now_nanos, ImageRecord};
use super::unpack::chain_ids;
use super::ImageService;
use crate::error::Kind;
use berth_distribution::oci::{self, Descriptor, Platform};
use berth_distribution::reference::Reference;
use berth_distribution::registry::{Credentials, RegistryError, Repository};

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
            *p = manifest
                .layers
                .iter()
                .map(|l| LayerState {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                    done: 0,
                    total: l.size.max(0) as u64,
                    stage: LayerStage::Waiting,
                })
                .collect();
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

    /// Writes a small document (already fetched and verified) to the store.
    async fn store_document(
        &self,
        lease: &Lease,
        name: &str,
        digest: &str,
        body: Bytes,
    ) -> Result<(), ImageError> {
        lease.add(digest).await;
        let d = Digest::parse(digest).map_err(ImageError::content(name))?;
        let content = self.content.clone();
        let image = name.to_string();
        blocking(move || {
            content
                .write_blob(&body, Some(&d))
                .map(|_| ())
                .map_err(ImageError::content(&image))
        })
        .await
    }

    /// Fetches a manifest or config by descriptor (local copy first), verified
    /// and size-limited.
    async fn fetch_document(
        &self,
        repo: &Repository,
        lease: &Lease,
        name: &str,
        desc: &Descriptor,
    ) -> Result<Bytes, ImageError> {
        let (limit, key) = if oci::is_config(&desc.media_type) {
            (self.config.pull.max_config_bytes, "pull.max_config_bytes")
        } else {
            (
                self.config.pull.max_manifest_bytes,
                "pull.max_manifest_bytes",
            )
        };
        if desc.size < 0 {
            return Err(ImageError::BadImage {
                image: name.into(),
                reason: format!("{} declares a negative size {}", desc.digest, desc.size),
            });
        }
        // A bound like every other: ResourceExhausted, as the registry's own
        // answer past it (RegistryError::TooLarge) is.
        if desc.size as u64 > limit {
            return Err(ImageError::OverLimit {
                image: name.into(),
                reason: format!(
                    "{} of {} bytes is larger than the limit of {limit} ({key})",
                    desc.digest, desc.size
                ),
            });
        }
        let d = Digest::parse(&desc.digest).map_err(ImageError::content(name))?;
        lease.add(&desc.digest).await;
        if !self.content.exists(&d) && !oci::is_config(&desc.media_type) {
            // A manifest arrives whole and verified: keep it, no need to read it back.
            let (_, digest, body) =
                repo.get_manifest(&desc.digest, name)
                    .await
                    .map_err(|source| ImageError::Registry {
                        image: name.into(),
                        source,
                    })?;
            crate::metrics::global()
                .pull_bytes
                .inc_by(body.len() as u64);
            self.store_document(lease, name, &digest, body.clone())
                .await?;
            return Ok(body);
        }
        if !self.content.exists(&d) {
            self.fetch_blob(repo, lease, name, desc, None).await?;
        }
        let content = self.content.clone();
        let image = name.to_string();
        let body = blocking(move || {
            content
                .read_all(&d, limit)
                .map_err(ImageError::content(&image))
        })
        .await?;
        Ok(Bytes::from(body))
    }

    /// Streams one blob into the content store, resuming a previous partial
    /// ingest where the registry allows ranges. Retries a transfer that broke
    /// after making progress; one that stalls from the start fails.
    ///
    /// Bounded: a blob declared larger than `pull.max_blob_bytes`, or than the
    /// free space, is refused before a byte is fetched; a registry that sends
    /// more than the declared size is cut off there. The partial ingest is
    /// kept for a retry only after a transient failure from a registry that
    /// serves ranges (swept after `gc.partial_ingest_keep_secs`); a cancelled
    /// pull (this future dropped) or any other failure removes it.
    async fn fetch_blob(
        &self,
        repo: &Repository,
        lease: &Lease,
        name: &str,
        desc: &Descriptor,
        progress: Option<(&Progress, usize)>,
    ) -> Result<(), ImageError> {
        let what = format!("{name}: blob {}", desc.digest);
        let digest = Digest::parse(&desc.digest).map_err(ImageError::content(name))?;
        let size = u64::try_from(desc.size).map_err(|_| ImageError::BadImage {
            image: name.into(),
            reason: format!(
                "blob {} declares a negative size {}",
                desc.digest, desc.size
            ),
        })?;
        let max = self.config.pull.max_blob_bytes;
        if size > max {
            return Err(ImageError::OverLimit {
                image: name.into(),
                reason: format!(
                    "blob {} declares {size} bytes, more than pull.max_blob_bytes ({max})",
                    desc.digest
                ),
            });
        }
        lease.add(&desc.digest).await;
        let ingest_ref = format!("{FETCH_INGEST_PREFIX}{}", desc.digest);
        let keep_partial = self.config.gc.partial_ingest_keep_secs > 0;
        let t0 = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let content = self.content.clone();
            let (r, d) = (ingest_ref.clone(), digest.clone());
            let opened = tokio::task::spawn_blocking(move || {
                let w = content.writer(&r, Some(Expected::new(d, Some(size))))?;
                let space = content.space();
                Ok::<_, content_store::Error>((w, space))
            })
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))?;
            let (writer, space) = match opened {
                Ok(w) => w,
                Err(content_store::Error::AlreadyExists { .. }) => {
                    if let Some((p, i)) = progress {
                        set_layer(p, i, |l| {
                            l.stage = LayerStage::Exists;
                            l.done = l.total;
                        });
                    }
                    return Ok(());
                }
                Err(content_store::Error::Locked { .. }) => {
                    // Another pull is writing the same blob: wait for it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    attempts -= 1;
                    continue;
                }
                Err(e) => return Err(ImageError::content(name)(e)),
            };
            // From here until the writer thread owns it, a cancel (this future
            // dropped) removes the ingest.
            let mut ingest = Ingest(Some(writer));
            let offset = ingest.offset();
            match space {
                Ok(space) => {
                    // What a resumed ingest already holds needs no more room.
                    let need = size.saturating_sub(offset);
                    let reserve = (space.total / 100).min(SPACE_RESERVE);
                    let usable = space.available.saturating_sub(reserve);
                    if need > usable {
                        ingest.discard().await;
                        return Err(ImageError::NoSpace {
                            image: name.into(),
                            reason: format!(
                                "blob {} needs {need} more bytes, only {} are free in {} \
                                 (keeping {reserve} in reserve): no space",
                                desc.digest,
                                space.available,
                                self.content.root().display()
                            ),
                        });
                    }
                }
                // Not knowing the free space is no reason to refuse a pull: a
                // full disk still fails the write (ResourceExhausted).
                Err(e) => warn!(digest = %desc.digest, error = %e, "cannot check free space"),
            }
            let body = match repo.get_blob(&desc.digest, offset, &what).await {
                Ok(b) => b,
                Err(source) => {
                    // Nothing new was written; a resumable prefix stays only
                    // if the failure may pass.
                    if !(keep_partial && offset > 0 && source.is_transient()) {
                        ingest.discard().await;
                    } else {
                        ingest.keep();
                    }
                    return Err(ImageError::Registry {
                        image: name.into(),
                        source,
                    });
                }
            };
            let start = body.offset;
            if start == 0 && offset > 0 {
                debug!(digest = %desc.digest, "registry ignored the range; fetching from 0");
            }
            if let Some((p, i)) = progress {
                set_layer(p, i, |l| {
                    l.stage = LayerStage::Downloading;
                    l.done = start;
                    // The descriptor's size, not the registry's Content-Length.
                    l.total = size;
                });
            }
            let Some(mut writer) = ingest.take() else {
                return Err(ImageError::Internal(format!("{what}: ingest lost")));
            };
            // The writer lives on a blocking thread fed through a bounded
            // channel: backpressure without blocking async workers. It ends
            // the ingest as told; if the channel closes without a word (the
            // pull was cancelled) it removes it.
            let (chunk_tx, mut chunk_rx) = mpsc::channel::<ToWriter>(16);
            let writer_task = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                if start == 0 && writer.offset() > 0 {
                    if let Err(e) = writer.truncate(0) {
                        discard(writer);
                        return Err(e);
                    }
                }
                loop {
                    match chunk_rx.blocking_recv() {
                        Some(ToWriter::Chunk(b)) => {
                            if let Err(e) = writer.write_all(&b) {
                                // A full disk or a failing one: a partial blob
                                // kept for a resume would only keep it full.
                                let path = std::path::PathBuf::from(writer.reference());
                                discard(writer);
                                return Err(content_store::Error::Io {
                                    context: "writing ingest".into(),
                                    path,
                                    source: e,
                                });
                            }
                        }
                        Some(ToWriter::Commit) => return writer.commit(None, None).map(|_| true),
                        Some(ToWriter::Keep) => return Ok(false),
                        Some(ToWriter::Discard) | None => {
                            discard(writer);
                            return Ok(false);
                        }
                    }
                }
            });
            let mut stream = body.stream;
            let mut done = start;
            let mut stream_err = None;
            let mut last = Instant::now();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(b) => {
                        // Counted here, whatever Content-Length said: not one
                        // byte past the declared size reaches the disk.
                        if done.saturating_add(b.len() as u64) > size {
                            stream_err = Some(RegistryError::Overlong {
                                host: body.host.clone(),
                                what: what.clone(),
                                declared: size,
                            });
                            break;
                        }
                        done += b.len() as u64;
                        crate::metrics::global().pull_bytes.inc_by(b.len() as u64);
                        if chunk_tx.send(ToWriter::Chunk(b)).await.is_err() {
                            break;
                        }
                        if let Some((p, i)) = progress {
                            if last.elapsed() > Duration::from_millis(50) {
                                last = Instant::now();
                                set_layer(p, i, |l| l.done = done);
                            }
                        }
                    }
                    Err(e) => {
                        stream_err = Some(e);
                        break;
                    }
                }
            }
            // Stop reading (an endless body is not drained) before deciding.
            drop(stream);
            let retry = stream_err.as_ref().is_some_and(|e| {
                done > start
                    && attempts < 3
                    && !matches!(
                        e,
                        RegistryError::DigestMismatch { .. } | RegistryError::Overlong { .. }
                    )
            });
            let end = match &stream_err {
                None => ToWriter::Commit,
                Some(_) if retry => ToWriter::Keep,
                Some(e) if keep_partial && body.ranges && done > 0 && e.is_transient() => {
                    ToWriter::Keep
                }
                Some(_) => ToWriter::Discard,
            };
            let kept = matches!(end, ToWriter::Keep);
            let _ = chunk_tx.send(end).await;
            drop(chunk_tx);
            let written = writer_task
                .await
                .map_err(|e| ImageError::Internal(e.to_string()))?;
            match (stream_err, written) {
                (None, Ok(true)) => {
                    debug!(digest = %desc.digest, bytes = done, ms = t0.elapsed().as_millis() as u64, "fetched blob");
                    if let Some((p, i)) = progress {
                        set_layer(p, i, |l| {
                            l.stage = LayerStage::Done;
                            l.done = done;
                        });
                    }
                    return Ok(());
                }
                (Some(e), _) => {
                    if retry {
                        warn!(digest = %desc.digest, error = %e, "transfer broke; resuming");
                        continue;
                    }
                    if kept {
                        info!(digest = %desc.digest, bytes = done, error = %e,
                            "keeping the partial download for a retry to resume");
                    }
                    return Err(ImageError::Registry {
                        image: name.into(),
                        source: e,
                    });
                }
                (None, Ok(false)) => {
                    return Err(ImageError::Internal(format!(
                        "{what}: writer stopped early"
                    )))
                }
                (None, Err(e)) => {
                    return Err(match e {
                        content_store::Error::DigestMismatch {
                            expected, actual, ..
                        } => ImageError::Registry {
                            image: name.into(),
                            source: RegistryError::DigestMismatch {
                                what: format!("{name}: blob {}", desc.digest),
                                expected: expected.to_string(),
                                actual: actual.to_string(),
                            },
                        },
                        other => ImageError::content(name)(other),
                    })
                }
            }
        }
    }

    /// Removes the pulls' partial downloads that no retry came for within
    /// `gc.partial_ingest_keep_secs`, every half of that (at least each
    /// second, at most each minute) while the service lives.
    pub fn spawn_partial_ingest_sweep(self: &Arc<Self>) {
        let keep = Duration::from_secs(self.config.gc.partial_ingest_keep_secs);
        let every = (keep / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(s) = svc.upgrade() else { return };
                let content = s.content.clone();
                drop(s);
                let swept = tokio::task::spawn_blocking(move || {
                    content.remove_idle_ingests(FETCH_INGEST_PREFIX, keep)
                })
                .await;
                match swept {
                    Ok(Ok(refs)) => {
                        for r in refs {
                            info!(reference = %r, keep_secs = keep.as_secs(), "removed a partial download no retry came for");
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot sweep partial downloads"),
                    Err(e) => warn!(error = %e, "partial download sweep failed"),
                }
            }
        });
    }
}

/// The ingest reference prefix of a pull's blob downloads.
pub const FETCH_INGEST_PREFIX: &str = "fetch-";

/// The free space a blob download leaves at least (or 1% of a smaller
/// filesystem): the unpack and the metadata still need room.
const SPACE_RESERVE: u64 = 64 << 20;

/// What a fetch tells the thread that writes a blob's ingest.
enum ToWriter {
    Chunk(Bytes),
    /// Every byte sent: verify and commit.
    Commit,
    /// Stop and keep the bytes so far for a resume.
    Keep,
    /// Stop and remove the ingest.
    Discard,
}

/// Removes an ingest on a blocking thread; the pull's own error is what
/// counts, a failed removal is logged (the sweep at start gets it).
fn discard(writer: content_store::Writer) {
    let reference = writer.reference().to_string();
    if let Err(e) = writer.abort() {
        warn!(%reference, error = %e, "cannot remove a partial download");
    }
}

/// A blob's ingest between its opening and the writer thread: dropped
/// without [`Ingest::keep`] or [`Ingest::take`] (a cancelled pull), it is
/// removed.
struct Ingest(Option<content_store::Writer>);

impl Ingest {
    fn offset(&self) -> u64 {
        self.0.as_ref().map_or(0, |w| w.offset())
    }

    fn take(&mut self) -> Option<content_store::Writer> {
        self.0.take()
    }

    /// Keeps the ingest on disk for a resume.
    fn keep(&mut self) {
        self.0.take();
    }

    /// Removes the ingest and waits for it to be gone.
    async fn discard(&mut self) {
        if let Some(w) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || discard(w)).await;
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || discard(w));
                }
                Err(_) => discard(w),
            }
        }
    }
}

/// Picks the index entry for a platform: an exact variant match first.
pub fn select_platform(index: &oci::Index, want: &Platform) -> Option<Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| oci::platform_matches(want, p))
        })
        .collect();
    candidates
        .iter()
        .find(|m| m.platform.as_ref().and_then(|p| p.variant.as_ref()) == want.variant.as_ref())
        .or_else(|| candidates.first())
        .map(|d| (*d).clone())
}

/// The platforms an index offers, for an error: each once, escaped and cut,
/// at most [`PLATFORMS_SHOWN`] (an index of 10,000 entries made an error too
/// large for a client's header limit).
fn platforms_of(index: &oci::Index) -> String {
    let mut seen: Vec<String> = Vec::new();
    let mut more = 0;
    for p in index.manifests.iter().filter_map(|m| m.platform.as_ref()) {
        let shown = format!("{}/{}", p.os, p.architecture);
        let shown = berth_sysutil::echo(&shown);
        if seen.contains(&shown) {
            continue;
        }
        if seen.len() < PLATFORMS_SHOWN {
            seen.push(shown);
        } else {
            more += 1;
        }
    }
    let mut out = seen.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// How many platforms a "no manifest for platform" error names.
const PLATFORMS_SHOWN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platforms_named_in_an_error_are_bounded() {
        let manifests: Vec<serde_json::Value> = (0..10_000)
            .map(|i| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{:064x}", i),
                    "size": 1,
                    "platform": {"os": "linux", "architecture": format!("arch{i}\u{1b}[31m")},
                })
            })
            .collect();
        let index: oci::Index = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": manifests,
        }))
        .unwrap();
        let s = platforms_of(&index);
        assert!(s.len() < 1024, "{} bytes", s.len());
        assert!(s.ends_with("and 9984 more"), "{s}");
        assert!(!s.contains('\u{1b}'), "{s}");
        assert!(s.starts_with("\"linux/arch0\\u{1b}[31m\""), "{s}");
    }
}

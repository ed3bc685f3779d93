//! Fetching one blob into the content store: resumable ingests, the disk
//! space check, progress, and the sweep of partial ingests left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_distribution::oci::Descriptor;
use berth_distribution::registry::{RegistryError, Repository};
use bytes::Bytes;
use content_store::{Digest, Expected};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{set_layer, LayerStage, Progress};
use crate::images::error::ImageError;
use crate::images::gc::Lease;
use crate::images::ImageService;

impl ImageService {
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
    pub(super) async fn fetch_blob(
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

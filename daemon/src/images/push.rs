//! Pushing an image: every blob the registry lacks, then manifests children
//! first, then the top manifest or index under the tag.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::images::v1 as pb;
use bytes::Bytes;
use content_store::Digest;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::info;

use super::error::{blocking, ImageError};
use super::gc::children;
use super::grpc::{creds_from_pb, layer_to_pb};
use super::pull::{LayerStage, LayerState, PullOptions};
use super::ImageService;
use berth_distribution::oci::{self, Descriptor};
use berth_distribution::reference::Reference;

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::PushProgress, Status>> + Send>>;

impl ImageService {
    pub async fn push(self: Arc<Self>, req: pb::PushRequest) -> Result<PushStream, ImageError> {
        let rec = self.lookup(&req.reference)?;
        let dest_s = if req.destination.is_empty() {
            rec.name.clone()
        } else {
            req.destination.clone()
        };
        let dest = Reference::parse_normalized(&dest_s)
            .map_err(|e| ImageError::InvalidArgument(e.to_string()))?;
        let opts = PullOptions {
            creds: creds_from_pb(req.credentials),
            plain_http: req.plain_http,
            skip_verify: req.skip_verify,
            platform: None,
        };
        let repo = self.repository_for(&dest, &opts, true)?;

        // Walk what is present locally: blobs first, manifests after their
        // children, the top document last.
        let content = self.content.clone();
        let limit = self.config.pull.max_manifest_bytes;
        let target = rec.target.clone();
        let (blobs, manifests) = blocking(move || {
            let mut blobs: Vec<Descriptor> = Vec::new();
            let mut manifests: Vec<Descriptor> = Vec::new();
            fn walk(
                content: &content_store::ContentStore,
                d: &Descriptor,
                limit: u64,
                blobs: &mut Vec<Descriptor>,
                manifests: &mut Vec<Descriptor>,
            ) {
                let present = Digest::parse(&d.digest).is_ok_and(|dg| content.exists(&dg));
                if !present {
                    return;
                }
                if oci::is_index(&d.media_type) || oci::is_manifest(&d.media_type) {
                    for c in children(content, d, limit) {
                        walk(content, &c, limit, blobs, manifests);
                    }
                    if !manifests.iter().any(|m| m.digest == d.digest) {
                        manifests.push(d.clone());
                    }
                } else if !blobs.iter().any(|b| b.digest == d.digest) {
                    blobs.push(d.clone());
                }
            }
            walk(&content, &target, limit, &mut blobs, &mut manifests);
            Ok((blobs, manifests))
        })
        .await?;
        if manifests.is_empty() {
            return Err(ImageError::BadImage {
                image: rec.name.clone(),
                reason: "its manifest is missing from the content store".into(),
            });
        }

        let (tx, rx) = mpsc::channel::<Result<pb::PushProgress, Status>>(16);
        let name = dest.to_string();
        let svc = self.clone();
        tokio::spawn(async move {
            let mut layers: Vec<LayerState> = blobs.iter().map(LayerState::waiting).collect();
            let send = |layers: &[LayerState], status: &str| pb::PushProgress {
                reference: name.clone(),
                status: status.into(),
                layers: layers.iter().map(layer_to_pb).collect(),
            };
            let result: Result<(), ImageError> = async {
                let reg = |source| ImageError::Registry {
                    image: name.clone(),
                    source,
                };
                for (i, b) in blobs.iter().enumerate() {
                    let what = format!("{name}: blob {}", b.digest);
                    if repo.blob_exists(&b.digest, &what).await.map_err(reg)? {
                        layers[i].stage = LayerStage::Exists;
                        layers[i].done = layers[i].total;
                    } else {
                        layers[i].stage = LayerStage::Downloading;
                        let _ = tx.send(Ok(send(&layers, "pushing"))).await;
                        let path = svc.content.blob_path(
                            &Digest::parse(&b.digest).map_err(ImageError::content(&name))?,
                        );
                        let file = tokio::fs::File::open(&path).await.map_err(|e| {
                            ImageError::Internal(format!("{name}: opening {}: {e}", path.display()))
                        })?;
                        let body = reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10),
                        );
                        repo.put_blob(&b.digest, b.size.max(0) as u64, body, &what)
                            .await
                            .map_err(reg)?;
                        layers[i].stage = LayerStage::Done;
                        layers[i].done = layers[i].total;
                    }
                    let _ = tx.send(Ok(send(&layers, "pushing"))).await;
                }
                let last = manifests.len() - 1;
                for (i, m) in manifests.iter().enumerate() {
                    let d = Digest::parse(&m.digest).map_err(ImageError::content(&name))?;
                    let content = svc.content.clone();
                    let limit = svc.config.pull.max_manifest_bytes;
                    let img = name.clone();
                    let body = blocking(move || {
                        content
                            .read_all(&d, limit)
                            .map_err(ImageError::content(&img))
                    })
                    .await?;
                    // The top document goes under the tag, children by digest.
                    let reference = if i == last {
                        dest.tag()
                            .map(str::to_string)
                            .unwrap_or_else(|| m.digest.clone())
                    } else {
                        m.digest.clone()
                    };
                    repo.put_manifest(&reference, &m.media_type, Bytes::from(body), &name)
                        .await
                        .map_err(reg)?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    info!(image = %name, "pushed image");
                    let _ = tx.send(Ok(send(&layers, "done"))).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

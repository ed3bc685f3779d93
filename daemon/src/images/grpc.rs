//! berth's native gRPC API over the image service: `berth.images.v1.Images`
//! and `berth.content.v1.Content`.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::content::v1 as cpb;
use berth_api::images::v1 as pb;
use content_store::Digest;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::error::{blocking, ImageError};
use super::pull::{LayerStage, LayerState, PullOptions};
use super::store::ImageRecord;
use super::ImageService;
use berth_distribution::oci;
use berth_distribution::registry::Credentials;

pub struct ImagesApi {
    pub svc: Arc<ImageService>,
}

pub struct ContentApi {
    pub svc: Arc<ImageService>,
}

type GrpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub fn descriptor_to_pb(d: &oci::Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d
            .annotations
            .clone()
            .map(|a| a.into_iter().collect())
            .unwrap_or_default(),
    }
}

pub fn image_to_pb(r: &ImageRecord) -> pb::Image {
    pb::Image {
        name: r.name.clone(),
        target: Some(descriptor_to_pb(&r.target)),
        labels: r.labels.clone().into_iter().collect(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        size: r.size,
        config_digest: r.config_digest.clone(),
    }
}

pub fn layer_to_pb(l: &LayerState) -> pb::LayerProgress {
    use pb::layer_progress::State;
    pb::LayerProgress {
        digest: l.digest.clone(),
        media_type: l.media_type.clone(),
        done: l.done as i64,
        total: l.total as i64,
        state: match l.stage {
            LayerStage::Waiting => State::Waiting,
            LayerStage::Downloading => State::Downloading,
            LayerStage::Exists => State::Exists,
            LayerStage::Done => State::Done,
            LayerStage::Failed => State::Failed,
        } as i32,
    }
}

pub fn creds_from_pb(c: Option<pb::Credentials>) -> Option<Credentials> {
    c.map(|c| Credentials {
        username: c.username,
        password: c.password,
        identity_token: c.identity_token,
    })
    .filter(|c| !c.is_empty())
}

fn platform_from_pb(s: &str) -> Result<Option<oci::Platform>, ImageError> {
    if s.is_empty() {
        return Ok(None);
    }
    oci::parse_platform(s).map(Some).ok_or_else(|| {
        ImageError::InvalidArgument(format!("invalid platform {s:?}: want os/arch[/variant]"))
    })
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesApi {
    type PullStream = GrpcStream<pb::PullProgress>;
    type PushStream = GrpcStream<pb::PushProgress>;
    type ExportStream = GrpcStream<pb::ExportChunk>;

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let req = req.into_inner();
        let opts = PullOptions {
            creds: creds_from_pb(req.credentials),
            plain_http: req.plain_http,
            skip_verify: req.skip_verify,
            platform: platform_from_pb(&req.platform)?,
        };
        let handle = self.svc.pull(&req.reference, opts)?;
        // The stream owns the handle: a client that goes away drops it, which
        // cancels the pull unless another caller shares it.
        let stream = async_stream::try_stream! {
            let mut handle = handle;
            loop {
                let snap = handle.rx.borrow_and_update().clone();
                let done = snap.result.clone();
                let mut ev = pb::PullProgress {
                    reference: snap.reference.clone(),
                    status: snap.status.clone(),
                    layers: snap.layers.iter().map(layer_to_pb).collect(),
                    image: None,
                };
                match done {
                    Some(Ok(img)) => {
                        ev.image = Some(image_to_pb(&img));
                        yield ev;
                        break;
                    }
                    Some(Err((kind, message))) => {
                        Err(ImageError::Joined { kind, message })?;
                    }
                    None => yield ev,
                }
                if handle.rx.changed().await.is_err() {
                    Err(ImageError::Internal("pull task ended without a result".into()))?;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.svc.list(&req.into_inner().filters);
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(image_to_pb).collect(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let req = req.into_inner();
        let rec = self.svc.lookup(&req.name)?;
        let mut resp = pb::GetImageResponse {
            image: Some(image_to_pb(&rec)),
            ..Default::default()
        };
        if req.verbose {
            let r = self.svc.resolve(rec, None).await?;
            resp.index_json = r.index.unwrap_or_default();
            resp.manifest_json = r.manifest;
            resp.config_json = r.config;
        }
        Ok(Response::new(resp))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let req = req.into_inner();
        self.svc.remove(&req.name, req.sync).await?;
        info!(image = %req.name, "removed image");
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    async fn tag(
        &self,
        req: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::TagImageResponse>, Status> {
        let req = req.into_inner();
        let rec = self.svc.tag(&req.source, &req.target).await?;
        info!(image = %rec.name, source = %req.source, "tagged image");
        Ok(Response::new(pb::TagImageResponse {
            image: Some(image_to_pb(&rec)),
        }))
    }

    async fn push(
        &self,
        req: Request<pb::PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let req = req.into_inner();
        let stream = self.svc.clone().push(req).await?;
        Ok(Response::new(stream))
    }

    async fn import(
        &self,
        req: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let images = self.svc.import(req.into_inner()).await?;
        Ok(Response::new(pb::ImportResponse {
            images: images.iter().map(image_to_pb).collect(),
        }))
    }

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let req = req.into_inner();
        let stream = self.svc.export(req.names, req.all_platforms).await?;
        Ok(Response::new(stream))
    }

    async fn mount(
        &self,
        req: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        let req = req.into_inner();
        if !req.platform.is_empty() {
            platform_from_pb(&req.platform)?;
        }
        let snapshot = self.svc.mount_image(&req.name, &req.target).await?;
        Ok(Response::new(pb::MountResponse { snapshot }))
    }

    async fn unmount(
        &self,
        req: Request<pb::UnmountRequest>,
    ) -> Result<Response<pb::UnmountResponse>, Status> {
        self.svc.unmount_image(&req.into_inner().target).await?;
        Ok(Response::new(pb::UnmountResponse {}))
    }

    async fn usage(
        &self,
        req: Request<pb::ImageUsageRequest>,
    ) -> Result<Response<pb::ImageUsageResponse>, Status> {
        let images = self.svc.image_usage(&req.into_inner().names).await?;
        Ok(Response::new(pb::ImageUsageResponse { images }))
    }
}

fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl cpb::content_server::Content for ContentApi {
    async fn list(
        &self,
        _req: Request<cpb::ListContentRequest>,
    ) -> Result<Response<cpb::ListContentResponse>, Status> {
        let svc = self.svc.clone();
        let resp = blocking(move || {
            let referenced = super::gc::referenced(
                &svc.content,
                &svc.images,
                &svc.leases,
                svc.config.pull.max_manifest_bytes,
            );
            let blobs = svc
                .content
                .list()
                .map_err(ImageError::content("content store"))?
                .into_iter()
                .map(|i| cpb::Info {
                    referenced: referenced.contains(i.digest.as_str()),
                    digest: i.digest.to_string(),
                    size: i.size as i64,
                    created_at: nanos(i.created),
                })
                .collect();
            let ingests = svc
                .content
                .list_ingests()
                .map_err(ImageError::content("content store"))?
                .into_iter()
                .map(|i| cpb::Ingest {
                    r#ref: i.reference,
                    offset: i.offset as i64,
                    total: i.total.map(|t| t as i64).unwrap_or(-1),
                })
                .collect();
            Ok(cpb::ListContentResponse { blobs, ingests })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn info(
        &self,
        req: Request<cpb::InfoRequest>,
    ) -> Result<Response<cpb::InfoResponse>, Status> {
        let digest = parse_digest(&req.into_inner().digest)?;
        let svc = self.svc.clone();
        let info = blocking(move || {
            let info = svc
                .content
                .info(&digest)
                .map_err(ImageError::content(digest.as_str()))?;
            let referenced = super::gc::referenced(
                &svc.content,
                &svc.images,
                &svc.leases,
                svc.config.pull.max_manifest_bytes,
            );
            Ok(cpb::Info {
                referenced: referenced.contains(info.digest.as_str()),
                digest: info.digest.to_string(),
                size: info.size as i64,
                created_at: nanos(info.created),
            })
        })
        .await?;
        Ok(Response::new(cpb::InfoResponse { info: Some(info) }))
    }

    async fn delete(
        &self,
        req: Request<cpb::DeleteContentRequest>,
    ) -> Result<Response<cpb::DeleteContentResponse>, Status> {
        let digest = parse_digest(&req.into_inner().digest)?;
        let svc = self.svc.clone();
        blocking(move || {
            // Deleting a blob an image needs would break the image: refuse.
            let referenced = super::gc::referenced(
                &svc.content,
                &svc.images,
                &svc.leases,
                svc.config.pull.max_manifest_bytes,
            );
            if referenced.contains(digest.as_str()) {
                return Err(ImageError::InUse(format!(
                    "blob {digest} is in use by an image or a running pull; remove the image first"
                )));
            }
            svc.content
                .delete(&digest)
                .map_err(ImageError::content(digest.as_str()))
        })
        .await?;
        Ok(Response::new(cpb::DeleteContentResponse {}))
    }

    async fn usage(
        &self,
        _req: Request<cpb::UsageRequest>,
    ) -> Result<Response<cpb::UsageResponse>, Status> {
        let content = self.svc.content.clone();
        let u = blocking(move || {
            content
                .usage()
                .map_err(ImageError::content("content store"))
        })
        .await?;
        Ok(Response::new(cpb::UsageResponse {
            blobs: u.blobs as i64,
            bytes: u.bytes as i64,
            ingests: u.ingests as i64,
            ingest_bytes: u.ingest_bytes as i64,
        }))
    }

    async fn prune(
        &self,
        _req: Request<cpb::PruneRequest>,
    ) -> Result<Response<cpb::PruneResponse>, Status> {
        let report = self.svc.collect_garbage().await?;
        Ok(Response::new(cpb::PruneResponse {
            removed: report.removed,
            bytes_freed: report.bytes_freed as i64,
            snapshots_removed: report.snapshots_removed,
        }))
    }
}

fn parse_digest(s: &str) -> Result<Digest, ImageError> {
    Digest::parse(s).map_err(|e| ImageError::InvalidArgument(e.to_string()))
}

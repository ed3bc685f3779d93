//! The CRI `runtime.v1.ImageService` over [`ImageService`], with the semantics
//! of containerd's CRI plugin (`internal/cri/server/images`):
//!
//! - an image's id is its config digest (`sha256:…`), which is also what
//!   PullImage returns as `image_ref`; the berth names (image records) that
//!   share a config digest are one CRI image, with the tagged names as
//!   `repo_tags` and `repository@target-digest` as `repo_digests`;
//! - ImageStatus of a missing image answers an empty response, not an error;
//! - RemoveImage removes every name of the image (by id or by any of its
//!   names) and succeeds when the image is already gone;
//! - the sandbox config of PullImage is ignored.
//!
//! Lists are answered from the in-memory image index; the only disk read is
//! an image config's `User`, once per config digest (content is immutable by
//! digest), then cached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use berth_api::runtime::v1 as cri;
use content_store::Digest;
use futures::Stream;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::error::CriError;
use crate::images::error::{blocking, ImageError};
use crate::images::pull::PullOptions;
use crate::images::store::{now_nanos, ImageRecord};
use crate::images::unpack::chain_ids;
use crate::images::ImageService;
use berth_distribution::reference::Reference;
use berth_distribution::registry::Credentials;

/// How long a measured image filesystem usage is reused.
const FS_USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Images per StreamImages message.
const STREAM_CHUNK: usize = 256;

type GrpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The user an image config names (`config.User`), as CRI reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ImageUser {
    pub(crate) uid: Option<i64>,
    pub(crate) username: String,
}

pub struct CriImageApi {
    svc: Arc<ImageService>,
    /// Config digest -> the config's user.
    users: Mutex<HashMap<String, ImageUser>>,
    /// The last snapshotter usage measured: (when, bytes, inodes).
    fs_usage: Mutex<Option<(std::time::Instant, u64, u64)>>,
}

impl CriImageApi {
    pub fn new(svc: Arc<ImageService>) -> CriImageApi {
        CriImageApi {
            svc,
            users: Mutex::new(HashMap::new()),
            fs_usage: Mutex::new(None),
        }
    }

    /// Every CRI image, by id: the records grouped by config digest.
    fn groups(&self) -> BTreeMap<String, Vec<ImageRecord>> {
        let mut out: BTreeMap<String, Vec<ImageRecord>> = BTreeMap::new();
        for rec in self.svc.images.list() {
            out.entry(image_id(&rec)).or_default().push(rec);
        }
        out
    }

    /// The records of the image `name` (a name, an id or an id prefix)
    /// resolves to; `None` when there is no such image.
    fn resolve_local(&self, name: &str) -> Result<Option<(String, Vec<ImageRecord>)>, CriError> {
        match self.svc.lookup(name) {
            Ok(rec) => {
                let id = image_id(&rec);
                let records = self
                    .svc
                    .images
                    .list()
                    .into_iter()
                    .filter(|r| image_id(r) == id)
                    .collect();
                Ok(Some((id, records)))
            }
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The config's user, read once per config digest.
    async fn user(&self, id: &str) -> ImageUser {
        if let Some(u) = self.lock_users().get(id) {
            return u.clone();
        }
        let content = self.svc.content.clone();
        let limit = self.svc.config.pull.max_config_bytes;
        let digest = id.to_string();
        let read = blocking(move || {
            let d = Digest::parse(&digest).map_err(ImageError::content(&digest))?;
            let bytes = content
                .read_all(&d, limit)
                .map_err(ImageError::content(&digest))?;
            Ok(serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        })
        .await;
        match read {
            Ok(config) => {
                let user = user_from_config(&config);
                self.lock_users().insert(id.to_string(), user.clone());
                user
            }
            Err(e) => {
                // Not cached: the config may yet appear (e.g. a pull racing).
                warn!(image = %id, error = %e, "cannot read image config for its user");
                ImageUser::default()
            }
        }
    }

    /// Whether one of these names is the configured sandbox image, which
    /// kubelet's image GC must keep (CRI `pinned`, as containerd).
    fn is_sandbox_image(&self, records: &[ImageRecord]) -> bool {
        let configured = self.svc.config.cri.sandbox_image.trim();
        let Ok(sandbox) = Reference::parse_normalized(configured).map(|r| r.to_string()) else {
            return false;
        };
        records
            .iter()
            .any(|r| Reference::parse_normalized(&r.name).is_ok_and(|n| n.to_string() == sandbox))
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, ImageUser>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn to_cri(&self, id: &str, records: &[ImageRecord]) -> cri::Image {
        let user = self.user(id).await;
        let mut image = to_cri_image(id, records, user);
        image.pinned = self.is_sandbox_image(records);
        image
    }

    /// The images a list filter selects (all without a filter).
    async fn list_filtered(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, Status> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image.trim().to_string())
            .filter(|s| !s.is_empty());
        let groups: Vec<(String, Vec<ImageRecord>)> = match wanted {
            Some(name) => self.resolve_local(&name)?.into_iter().collect(),
            None => self.groups().into_iter().collect(),
        };
        let mut out = Vec::with_capacity(groups.len());
        for (id, records) in groups {
            out.push(self.to_cri(&id, &records).await);
        }
        Ok(out)
    }
}

/// The CRI image id: the config digest (a record from before config digests
/// were recorded falls back to its target digest).
pub fn image_id(rec: &ImageRecord) -> String {
    if rec.config_digest.is_empty() {
        rec.target.digest.clone()
    } else {
        rec.config_digest.clone()
    }
}

/// containerd's `getUserFromImage`: `User` may be `uid`, `name`, `uid:gid`
/// or `name:group`; a numeric user is a uid, anything else a user name.
pub(crate) fn user_from_config(config: &Value) -> ImageUser {
    let user = config
        .get("config")
        .and_then(|c| c.get("User"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if user.is_empty() {
        return ImageUser::default();
    }
    let user = user.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(uid) => ImageUser {
            uid: Some(uid),
            username: String::new(),
        },
        Err(_) => ImageUser {
            uid: None,
            username: user.to_string(),
        },
    }
}

/// One CRI image from the records sharing its id, like containerd's
/// `toCRIImage` + `ParseImageReferences`: tagged names are repo tags, and
/// every name contributes `repository@digest` to the repo digests.
fn to_cri_image(id: &str, records: &[ImageRecord], user: ImageUser) -> cri::Image {
    let mut tags = BTreeSet::new();
    let mut digests = BTreeSet::new();
    let mut size = 0i64;
    for rec in records {
        size = size.max(rec.size);
        let Ok(r) = Reference::parse_normalized(&rec.name) else {
            continue;
        };
        match r.digest() {
            Some(d) => {
                digests.insert(format!("{}@{d}", r.repository()));
            }
            None => {
                if r.tag().is_some() {
                    tags.insert(rec.name.clone());
                }
                digests.insert(format!("{}@{}", r.repository(), rec.target.digest));
            }
        }
    }
    cri::Image {
        id: id.to_string(),
        repo_tags: tags.into_iter().collect(),
        repo_digests: digests.into_iter().collect(),
        size: size.max(0) as u64,
        uid: user.uid.map(|value| cri::Int64Value { value }),
        username: user.username,
        spec: Some(cri::ImageSpec {
            image: id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image named by a request's spec; InvalidArgument when missing/empty.
fn spec_image(spec: Option<&cri::ImageSpec>) -> Result<String, CriError> {
    let name = spec.map(|s| s.image.trim()).unwrap_or("");
    if name.is_empty() {
        return Err(CriError::invalid("image spec", "missing or names no image"));
    }
    Ok(name.to_string())
}

/// containerd's `ParseAuth`: credentials for `host` from a CRI AuthConfig.
/// Auth for another server (`server_address`) is not sent; a username wins
/// over an identity token, which wins over `auth` (base64 `user:pass`); a
/// registry token is a ready bearer token.
fn creds_from_auth(
    auth: Option<&cri::AuthConfig>,
    host: &str,
) -> Result<Option<Credentials>, CriError> {
    let Some(a) = auth else { return Ok(None) };
    if !a.server_address.is_empty() && !same_registry(&a.server_address, host) {
        debug!(server = %a.server_address, host, "auth config is for another registry; ignored");
        return Ok(None);
    }
    let creds = if !a.username.is_empty() {
        Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            identity_token: String::new(),
        }
    } else if !a.identity_token.is_empty() {
        Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: a.identity_token.clone(),
        }
    } else if !a.auth.is_empty() {
        let decoded = base64_decode(a.auth.trim())
            .ok_or_else(|| CriError::invalid("auth config", "auth is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| CriError::invalid("auth config", "auth is not valid UTF-8"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| CriError::invalid("auth config", "auth is not user:password"))?;
        Credentials {
            username: user.to_string(),
            password: pass.trim_matches('\0').to_string(),
            identity_token: String::new(),
        }
    } else if !a.registry_token.is_empty() {
        Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: a.registry_token.clone(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(creds).filter(|c| !c.is_empty()))
}

/// Whether a `server_address` (`host`, `host:port`, a URL) names `host`;
/// Docker Hub's aliases count as docker.io.
fn same_registry(server: &str, host: &str) -> bool {
    let s = server
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(server);
    let s = s.split('/').next().unwrap_or(s);
    let hub = |h: &str| {
        matches!(
            h,
            "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
        )
    };
    s == host || (hub(s) && hub(host))
}

/// Standard or URL-safe base64, padding optional (Docker's `auth` field).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::{alphabet, Engine};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if s.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(s).ok()
}

/// The snapshotter's directory: the image filesystem CRI reports.
fn snapshotter_root(svc: &ImageService) -> PathBuf {
    svc.config
        .root
        .join("snapshotter")
        .join(svc.unpacker.snapshotter.backend().to_string())
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for CriImageApi {
    type StreamImagesStream = GrpcStream<cri::StreamImagesResponse>;

    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = self.list_filtered(req.into_inner().filter).await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.list_filtered(req.into_inner().filter).await?;
        // Each message carries at least one image; none at all is just EOF.
        let chunks: Vec<Result<cri::StreamImagesResponse, Status>> = images
            .chunks(STREAM_CHUNK)
            .map(|c| Ok(cri::StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?;
        let Some((id, records)) = self.resolve_local(&name)? else {
            // CRI: a missing image is an empty answer, not an error.
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let image = self.to_cri(&id, &records).await;
        let mut info = HashMap::new();
        if req.verbose {
            let rec = records[0].clone();
            let resolved = self.svc.resolve(rec, None).await?;
            let config: Value = serde_json::from_slice(&resolved.config).unwrap_or(Value::Null);
            let diff_ids: Vec<String> = config
                .pointer("/rootfs/diff_ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let chain_id = chain_ids(&diff_ids).pop().unwrap_or_default();
            let manifest: Value = serde_json::from_slice(&resolved.manifest).unwrap_or(Value::Null);
            let blob = json!({
                "chainID": chain_id,
                "imageSpec": config,
                "manifestDigest": resolved.manifest_desc.digest,
                "manifest": manifest,
                "names": records.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                "target": resolved.record.target,
            });
            info.insert("info".to_string(), blob.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(image),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?;
        let r = Reference::parse_normalized(&name).map_err(|e| {
            CriError::invalid(
                format!("image reference {}", super::limits::echo(&name)),
                format!("cannot be parsed: {e}"),
            )
        })?;
        let creds = creds_from_auth(req.auth.as_ref(), r.domain())?;
        let reference = r.to_string();
        // The caller going away drops the handle, which cancels the pull
        // unless another caller shares it.
        let handle = self.svc.pull(
            &reference,
            PullOptions {
                creds,
                ..Default::default()
            },
        )?;
        let rec = handle.wait().await?;
        let id = image_id(&rec);
        info!(image = %reference, id = %id, "CRI pulled image");
        Ok(Response::new(cri::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = spec_image(req.into_inner().image.as_ref())?;
        let Some((id, records)) = self.resolve_local(&name)? else {
            // Idempotent: already gone is success.
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        let images = self.svc.images.clone();
        let names: Vec<String> = records.into_iter().map(|r| r.name).collect();
        let removed = names.clone();
        blocking(move || {
            for n in &names {
                images.remove(n)?;
            }
            Ok(())
        })
        .await?;
        self.lock_users().remove(&id);
        // Content and snapshots go in the background, as CRI allows.
        self.svc.request_gc();
        info!(image = %name, id = %id, names = ?removed, "CRI removed image");
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let snapshotter = self.svc.unpacker.snapshotter.clone();
        let mountpoint = snapshotter_root(&self.svc).display().to_string();
        let cached = *self.fs_usage.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, inodes) = match cached {
            // kubelet asks every few seconds; the walk runs at most once per
            // FS_USAGE_TTL (containerd's snapshot syncer keeps a similar cache).
            Some((at, b, i)) if at.elapsed() < FS_USAGE_TTL => (b, i),
            _ => self.measure_fs(snapshotter).await?,
        };
        let usage = cri::FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            // Container writable layers are snapshots of the same
            // snapshotter, on the same filesystem.
            container_filesystems: vec![usage.clone()],
            image_filesystems: vec![usage],
        }))
    }
}

impl CriImageApi {
    async fn measure_fs(
        &self,
        snapshotter: Arc<dyn snapshotter::Snapshotter>,
    ) -> Result<(u64, u64), CriError> {
        let content = self.svc.content.clone();
        let (bytes, inodes) = blocking(move || {
            // Blobs and downloads in progress fill the same disk as the
            // snapshots: kubelet's image GC must see them (a failed pull's
            // partial blobs once filled a disk that reported 0 bytes used).
            let (mut bytes, mut inodes) = match content.usage() {
                Ok(u) => (u.bytes + u.ingest_bytes, u.blobs + 2 * u.ingests),
                Err(e) => {
                    warn!(error = %e, "cannot measure the content store");
                    (0, 0)
                }
            };
            let infos = snapshotter
                .walk(&|_| true)
                .map_err(|source| ImageError::Snapshot {
                    image: "snapshotter".into(),
                    source,
                })?;
            for i in infos {
                // A snapshot removed since the walk simply no longer counts.
                if let Ok(u) = snapshotter.usage(&i.name) {
                    bytes += u.size;
                    inodes += u.inodes;
                }
            }
            Ok((bytes, inodes))
        })
        .await?;
        *self.fs_usage.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), bytes, inodes));
        Ok((bytes, inodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        assert!(base64_decode("a b").is_none());
        // URL-safe, as some clients write it.
        assert_eq!(base64_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn auth_config_precedence() {
        let a = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        let c = creds_from_auth(Some(&a), "r:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        let a = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        let c = creds_from_auth(Some(&a), "r:5000").unwrap().unwrap();
        assert_eq!(c.username, "u");
        let a = cri::AuthConfig {
            registry_token: "tok".into(),
            ..Default::default()
        };
        let c = creds_from_auth(Some(&a), "r:5000").unwrap().unwrap();
        assert_eq!(c.identity_token, "tok");
        let a = cri::AuthConfig {
            username: "u".into(),
            server_address: "https://other:5000".into(),
            ..Default::default()
        };
        assert!(creds_from_auth(Some(&a), "r:5000").unwrap().is_none());
        let a = cri::AuthConfig {
            username: "u".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Default::default()
        };
        assert!(creds_from_auth(Some(&a), "docker.io").unwrap().is_some());
        assert!(creds_from_auth(None, "docker.io").unwrap().is_none());
    }

    #[test]
    fn users_from_config() {
        let u = |s: &str| user_from_config(&json!({"config": {"User": s}}));
        assert_eq!(u(""), ImageUser::default());
        assert_eq!(u("1000").uid, Some(1000));
        assert_eq!(u("1000:1000").uid, Some(1000));
        assert_eq!(u("nobody:nogroup").username, "nobody");
        assert_eq!(user_from_config(&json!({})), ImageUser::default());
    }

    #[test]
    fn cri_image_names() {
        let (aa, bb, cc) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "c".repeat(64)),
        );
        let rec = |name: &str| ImageRecord {
            name: name.into(),
            target: berth_distribution::oci::Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 1,
                urls: None,
                annotations: None,
                platform: None,
            },
            labels: Default::default(),
            created_at: 1,
            updated_at: 1,
            size: 42,
            config_digest: cc.clone(),
        };
        let img = to_cri_image(
            &cc,
            &[
                rec("docker.io/library/busybox:1"),
                rec("example.com/x/y:2"),
                rec(&format!("example.com/x/y@{bb}")),
            ],
            ImageUser::default(),
        );
        assert_eq!(
            img.repo_tags,
            vec!["docker.io/library/busybox:1", "example.com/x/y:2"]
        );
        assert_eq!(
            img.repo_digests,
            vec![
                format!("docker.io/library/busybox@{aa}"),
                format!("example.com/x/y@{aa}"),
                format!("example.com/x/y@{bb}"),
            ]
        );
        assert_eq!(img.size, 42);
        assert_eq!(img.id, cc);
        assert!(!img.pinned);
    }
}

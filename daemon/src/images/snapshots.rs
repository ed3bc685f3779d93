//! Images and their snapshots: the layer chain of an image, read-only mounts
//! of an image's root filesystem, per-image usage, snapshot GC, and the
//! `berth.snapshots.v1` API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use berth_api::snapshots::v1 as pb;
use content_store::{ContentStore, Digest};
use snapshotter::{Kind, Snapshotter};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::error::{blocking, ImageError};
use super::gc::{children, SNAPSHOT_LEASE_PREFIX};
use super::store::{ImageRecord, ImageStore};
use super::unpack::chain_ids;
use super::ImageService;
use berth_distribution::oci::{self, Descriptor};
use berth_sysutil::is_mount_point;

/// Label naming the directory a view snapshot is mounted on.
pub const MOUNT_TARGET_LABEL: &str = "berth.io/mount-target";
pub const MOUNT_PREFIX: &str = "mount-";

/// One layer of an image, with what unpacking needs.
#[derive(Debug, Clone)]
pub struct ChainLayer {
    pub layer: Descriptor,
    pub diff_id: String,
    pub chain_id: String,
}

/// The layer chains of every platform of an image present locally.
pub fn image_chains(
    content: &ContentStore,
    target: &Descriptor,
    limit: u64,
) -> Vec<Vec<ChainLayer>> {
    let manifests: Vec<Descriptor> = if oci::is_index(&target.media_type) {
        children(content, target, limit)
            .into_iter()
            .filter(|d| oci::is_manifest(&d.media_type))
            .collect()
    } else {
        vec![target.clone()]
    };
    let mut out = Vec::new();
    for m in manifests {
        let parts = children(content, &m, limit);
        let Some((config, layers)) = parts.split_first() else {
            continue;
        };
        let Ok(d) = Digest::parse(&config.digest) else {
            continue;
        };
        let Ok(body) = content.read_all(&d, 8 << 20) else {
            continue;
        };
        let Ok(cfg) = serde_json::from_slice::<oci::ImageConfig>(&body) else {
            continue;
        };
        let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != layers.len() {
            continue;
        }
        let chain = chain_ids(&diff_ids);
        out.push(
            layers
                .iter()
                .zip(diff_ids)
                .zip(chain)
                .map(|((layer, diff_id), chain_id)| ChainLayer {
                    layer: layer.clone(),
                    diff_id,
                    chain_id,
                })
                .collect(),
        );
    }
    out
}

/// Snapshot names images and leases keep alive.
pub fn referenced_snapshots(
    content: &ContentStore,
    images: &ImageStore,
    leased: &HashSet<String>,
    limit: u64,
) -> HashSet<String> {
    let mut keep: HashSet<String> = leased
        .iter()
        .filter_map(|l| l.strip_prefix(SNAPSHOT_LEASE_PREFIX).map(str::to_string))
        .collect();
    for img in images.list() {
        for chain in image_chains(content, &img.target, limit) {
            keep.extend(chain.into_iter().map(|c| c.chain_id));
        }
    }
    keep
}

/// Removes committed snapshots nothing keeps, leaves first, until none is
/// left to remove. Active snapshots (containers, running unpacks) and views
/// (mounts) are never collected here. Blocking.
pub fn collect_snapshots(snapshotter: &dyn Snapshotter, keep: &HashSet<String>) -> Vec<String> {
    let mut removed = Vec::new();
    loop {
        let Ok(all) = snapshotter.walk(&|_| true) else {
            return removed;
        };
        let parents: HashSet<String> = all.iter().filter_map(|i| i.parent.clone()).collect();
        let victims: Vec<String> = all
            .iter()
            .filter(|i| {
                i.kind == Kind::Committed && !keep.contains(&i.name) && !parents.contains(&i.name)
            })
            .map(|i| i.name.clone())
            .collect();
        if victims.is_empty() {
            return removed;
        }
        let mut progressed = false;
        for v in victims {
            match snapshotter.remove(&v) {
                Ok(()) => {
                    progressed = true;
                    removed.push(v);
                }
                Err(e) => warn!(snapshot = %v, error = %e, "cannot remove snapshot"),
            }
        }
        if !progressed {
            return removed;
        }
    }
}

fn mount_key(target: &Path) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(target.as_os_str().as_encoded_bytes());
    format!("{MOUNT_PREFIX}{}", &hex::encode(h)[..24])
}

impl ImageService {
    fn snap_err(image: &str) -> impl FnOnce(snapshotter::Error) -> ImageError + '_ {
        move |source| ImageError::Snapshot {
            image: image.to_string(),
            source,
        }
    }

    /// Snapshot names images and running pulls need right now. Blocking.
    pub fn referenced_snapshots(&self) -> HashSet<String> {
        referenced_snapshots(
            &self.content,
            &self.images,
            &self.leases.protected(),
            self.config.pull.max_manifest_bytes,
        )
    }

    /// The host-platform layer chain of an image.
    pub async fn platform_chain(&self, rec: &ImageRecord) -> Result<Vec<ChainLayer>, ImageError> {
        let resolved = self.resolve(rec.clone(), None).await?;
        let content = self.content.clone();
        let limit = self.config.pull.max_manifest_bytes;
        let desc = resolved.manifest_desc.clone();
        let name = rec.name.clone();
        blocking(move || {
            image_chains(&content, &desc, limit)
                .into_iter()
                .next()
                .ok_or_else(|| ImageError::BadImage {
                    image: name,
                    reason: "its layers do not match its config's diff_ids".into(),
                })
        })
        .await
    }

    /// Unpacks whatever layers of the chain are missing (content must be
    /// present). Blocking.
    pub fn unpack_chain(&self, image: &str, chain: &[ChainLayer]) -> Result<(), ImageError> {
        self.unpack_chain_until(image, chain, &AtomicBool::new(false))
    }

    /// [`Self::unpack_chain`] that stops, removing the layer it was unpacking,
    /// once `cancel` is set. Blocking.
    pub fn unpack_chain_until(
        &self,
        image: &str,
        chain: &[ChainLayer],
        cancel: &AtomicBool,
    ) -> Result<(), ImageError> {
        let mut parent: Option<&str> = None;
        for c in chain {
            self.unpacker
                .unpack_layer(image, &c.layer, &c.diff_id, &c.chain_id, parent, cancel)?;
            parent = Some(&c.chain_id);
        }
        Ok(())
    }

    /// Mounts a read-only view of an image's root filesystem at `target`.
    pub async fn mount_image(
        self: &Arc<Self>,
        name: &str,
        target: &str,
    ) -> Result<String, ImageError> {
        let target = PathBuf::from(target);
        if !target.is_absolute() {
            return Err(ImageError::InvalidArgument(format!(
                "mount target {} must be an absolute path",
                target.display()
            )));
        }
        if !target.is_dir() {
            return Err(ImageError::InvalidArgument(format!(
                "mount target {} is not a directory",
                target.display()
            )));
        }
        let rec = self.lookup(name)?;
        let chain = self.platform_chain(&rec).await?;
        let svc_name = rec.name.clone();
        let key = mount_key(&target);
        let snapshotter = self.unpacker.snapshotter.clone();
        let this = self.clone();
        blocking(move || {
            this.unpack_chain(&svc_name, &chain)?;
            if is_mount_point(&target) {
                return Err(ImageError::InvalidArgument(format!(
                    "{} is already a mount point",
                    target.display()
                )));
            }
            // A view left by a crash for the same target is replaced.
            if snapshotter.stat(&key).is_ok() {
                let _ = snapshotter.remove(&key);
            }
            let mut labels = BTreeMap::new();
            labels.insert(MOUNT_TARGET_LABEL.to_string(), target.display().to_string());
            labels.insert("berth.io/image".to_string(), svc_name.clone());
            let top = chain.last().map(|c| c.chain_id.as_str());
            let mounts = snapshotter
                .view(&key, top, labels)
                .map_err(Self::snap_err(&svc_name))?;
            if let Err(e) = snapshotter::mount_all(&mounts, &target) {
                let _ = snapshotter.remove(&key);
                return Err(Self::snap_err(&svc_name)(e));
            }
            info!(image = %svc_name, target = %target.display(), snapshot = %key, "mounted image");
            Ok(key)
        })
        .await
    }

    /// Unmounts a directory `mount_image` mounted and drops its view.
    pub async fn unmount_image(&self, target: &str) -> Result<(), ImageError> {
        let target = PathBuf::from(target);
        let key = mount_key(&target);
        let snapshotter = self.unpacker.snapshotter.clone();
        blocking(move || {
            if snapshotter.stat(&key).is_err() {
                return Err(ImageError::NotFound(format!(
                    "no image is mounted at {}",
                    target.display()
                )));
            }
            if is_mount_point(&target) {
                snapshotter::unmount(&target)
                    .map_err(Self::snap_err(&target.display().to_string()))?;
            }
            snapshotter
                .remove(&key)
                .map_err(Self::snap_err(&target.display().to_string()))?;
            info!(target = %target.display(), "unmounted image");
            Ok(())
        })
        .await
    }

    /// Drops views whose mount is gone (a reboot, or an unmount by hand).
    pub fn sweep_stale_views(&self) {
        let snapshotter = &self.unpacker.snapshotter;
        let Ok(views) =
            snapshotter.walk(&|i| i.kind == Kind::View && i.name.starts_with(MOUNT_PREFIX))
        else {
            return;
        };
        for v in views {
            let mounted = v
                .labels
                .get(MOUNT_TARGET_LABEL)
                .is_some_and(|t| is_mount_point(Path::new(t)));
            if !mounted {
                match snapshotter.remove(&v.name) {
                    Ok(()) => info!(snapshot = %v.name, "removed view of a vanished mount"),
                    Err(e) => warn!(snapshot = %v.name, error = %e, "cannot remove stale view"),
                }
            }
        }
    }

    /// Unique and shared unpacked bytes per image.
    pub async fn image_usage(
        &self,
        names: &[String],
    ) -> Result<Vec<berth_api::images::v1::ImageUsage>, ImageError> {
        let records = if names.is_empty() {
            self.images.list()
        } else {
            names
                .iter()
                .map(|n| self.lookup(n))
                .collect::<Result<Vec<_>, _>>()?
        };
        let all = self.images.list();
        let content = self.content.clone();
        let snapshotter = self.unpacker.snapshotter.clone();
        let limit = self.config.pull.max_manifest_bytes;
        blocking(move || {
            // How many images use each chain ID.
            let mut users: HashMap<String, usize> = HashMap::new();
            for img in &all {
                let mut seen = HashSet::new();
                for chain in image_chains(&content, &img.target, limit) {
                    for c in chain {
                        if seen.insert(c.chain_id.clone()) {
                            *users.entry(c.chain_id).or_default() += 1;
                        }
                    }
                }
            }
            let mut out = Vec::new();
            for rec in records {
                let mut u = berth_api::images::v1::ImageUsage {
                    name: rec.name.clone(),
                    unpacked: true,
                    ..Default::default()
                };
                let chains = image_chains(&content, &rec.target, limit);
                let Some(chain) = chains.into_iter().next() else {
                    u.unpacked = false;
                    out.push(u);
                    continue;
                };
                for c in chain {
                    match snapshotter.usage(&c.chain_id) {
                        Ok(usage) => {
                            let size = usage.size as i64;
                            u.size += size;
                            if users.get(&c.chain_id).copied().unwrap_or(0) > 1 {
                                u.shared += size;
                            } else {
                                u.unique += size;
                            }
                        }
                        Err(_) => u.unpacked = false,
                    }
                }
                out.push(u);
            }
            Ok(out)
        })
        .await
    }
}

pub struct SnapshotsApi {
    pub svc: Arc<ImageService>,
}

fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn snapshot_to_pb(
    i: &snapshotter::Info,
    usage: snapshotter::Usage,
    referenced: bool,
) -> pb::Snapshot {
    pb::Snapshot {
        name: i.name.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: match i.kind {
            Kind::View => pb::snapshot::Kind::View,
            Kind::Active => pb::snapshot::Kind::Active,
            Kind::Committed => pb::snapshot::Kind::Committed,
        } as i32,
        labels: i.labels.clone().into_iter().collect(),
        created_at: nanos(i.created),
        updated_at: nanos(i.updated),
        size: usage.size as i64,
        inodes: usage.inodes as i64,
        referenced,
    }
}

impl SnapshotsApi {
    /// Names an image, a lease or a child keeps, plus views and actives.
    fn in_use(svc: &ImageService, all: &[snapshotter::Info]) -> HashSet<String> {
        let mut keep = svc.referenced_snapshots();
        keep.extend(all.iter().filter_map(|i| i.parent.clone()));
        keep.extend(
            all.iter()
                .filter(|i| i.kind != Kind::Committed)
                .map(|i| i.name.clone()),
        );
        keep
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsApi {
    async fn list(
        &self,
        _req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let svc = self.svc.clone();
        let resp = blocking(move || {
            let snap = &svc.unpacker.snapshotter;
            let all = snap
                .walk(&|_| true)
                .map_err(ImageService::snap_err("snapshots"))?;
            let keep = Self::in_use(&svc, &all);
            let snapshots = all
                .iter()
                .map(|i| {
                    let usage = snap.usage(&i.name).unwrap_or_default();
                    snapshot_to_pb(i, usage, keep.contains(&i.name))
                })
                .collect();
            Ok(pb::ListSnapshotsResponse {
                snapshots,
                backend: snap.backend().to_string(),
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn info(
        &self,
        req: Request<pb::SnapshotInfoRequest>,
    ) -> Result<Response<pb::SnapshotInfoResponse>, Status> {
        let name = req.into_inner().name;
        let svc = self.svc.clone();
        let snapshot = blocking(move || {
            let snap = &svc.unpacker.snapshotter;
            let info = snap.stat(&name).map_err(ImageService::snap_err(&name))?;
            let all = snap
                .walk(&|_| true)
                .map_err(ImageService::snap_err(&name))?;
            let keep = Self::in_use(&svc, &all);
            let usage = snap.usage(&name).unwrap_or_default();
            Ok(snapshot_to_pb(&info, usage, keep.contains(&name)))
        })
        .await?;
        Ok(Response::new(pb::SnapshotInfoResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn usage(
        &self,
        _req: Request<pb::SnapshotUsageRequest>,
    ) -> Result<Response<pb::SnapshotUsageResponse>, Status> {
        let svc = self.svc.clone();
        let resp = blocking(move || {
            let snap = &svc.unpacker.snapshotter;
            let all = snap
                .walk(&|_| true)
                .map_err(ImageService::snap_err("snapshots"))?;
            let mut resp = pb::SnapshotUsageResponse {
                snapshots: all.len() as i64,
                ..Default::default()
            };
            for i in &all {
                let u = snap.usage(&i.name).unwrap_or_default();
                resp.size += u.size as i64;
                resp.inodes += u.inodes as i64;
            }
            Ok(resp)
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<pb::RemoveSnapshotResponse>, Status> {
        let name = req.into_inner().name;
        let svc = self.svc.clone();
        blocking(move || {
            let keep = svc.referenced_snapshots();
            if keep.contains(&name) {
                return Err(ImageError::InUse(format!(
                    "snapshot {name} is in use by an image or a running pull; remove the image first"
                )));
            }
            svc.unpacker
                .snapshotter
                .remove(&name)
                .map_err(ImageService::snap_err(&name))
        })
        .await?;
        Ok(Response::new(pb::RemoveSnapshotResponse {}))
    }
}

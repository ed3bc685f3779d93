//! The pod and container state machines driven through the CRI service
//! functions, without root: the shims are [`FakeShims`], the host side of
//! pods (namespaces, /dev/shm, CNI) a [`FakeHost`]; the metadata store, the
//! content store and the (native) snapshotter are real, on a tempdir. A
//! [`Node`] outlives the daemons started on it, so a test can stop one
//! (dropping its runtime, as a killed berthd) and recover with the next.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod container;
mod recovery;
mod sandbox;

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use berth_distribution::oci::{self, Descriptor};
use content_store::ContentStore;

use super::sandbox::fake_host::FakeHost;
use super::CriRuntime;
use crate::config::Config;
use crate::images::gc::Leases;
use crate::images::store::{ImageRecord, ImageStore};
use crate::images::unpack::Unpacker;
use crate::images::ImageService;
use crate::metadata::{MetaStore, SledStore};
use crate::shim::fake::{FakeShim, FakeShims};
use crate::tasks::TaskService;

/// The image every test container runs (no layers: an empty rootfs).
pub const IMAGE: &str = "docker.io/library/fake:latest";

/// A native snapshotter whose snapshots are used unmounted: the rootfs of a
/// fake container is never looked at, and mounting needs root.
struct UnmountedSnapshots(Box<dyn snapshotter::Snapshotter>);

impl snapshotter::Snapshotter for UnmountedSnapshots {
    fn backend(&self) -> snapshotter::Backend {
        self.0.backend()
    }
    fn stat(&self, key: &str) -> snapshotter::Result<snapshotter::Info> {
        self.0.stat(key)
    }
    fn update_labels(
        &self,
        key: &str,
        labels: snapshotter::Labels,
    ) -> snapshotter::Result<snapshotter::Info> {
        self.0.update_labels(key, labels)
    }
    fn usage(&self, key: &str) -> snapshotter::Result<snapshotter::Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> snapshotter::Result<Vec<snapshotter::Mount>> {
        self.0.mounts(key).map(|_| Vec::new())
    }
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: snapshotter::Labels,
    ) -> snapshotter::Result<Vec<snapshotter::Mount>> {
        self.0.prepare(key, parent, labels).map(|_| Vec::new())
    }
    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: snapshotter::Labels,
    ) -> snapshotter::Result<Vec<snapshotter::Mount>> {
        self.0.view(key, parent, labels).map(|_| Vec::new())
    }
    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: snapshotter::Labels,
    ) -> snapshotter::Result<()> {
        self.0.commit(name, key, labels)
    }
    fn remove(&self, key: &str) -> snapshotter::Result<()> {
        self.0.remove(key)
    }
    fn walk(
        &self,
        filter: &dyn Fn(&snapshotter::Info) -> bool,
    ) -> snapshotter::Result<Vec<snapshotter::Info>> {
        self.0.walk(filter)
    }
    fn cleanup(&self) -> snapshotter::Result<snapshotter::CleanupReport> {
        self.0.cleanup()
    }
    fn upper_dir(&self, key: &str) -> snapshotter::Result<PathBuf> {
        self.0.upper_dir(key)
    }
}

/// What outlives a berthd: the disk (a tempdir), the shims, the host.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub shims: Arc<FakeShims>,
    pub host: Arc<FakeHost>,
    /// Changes to the default test config, for every berthd on the node.
    tweak: fn(&mut Config),
}

/// One berthd on a [`Node`].
pub struct Daemon {
    pub cri: Arc<CriRuntime>,
    pub tasks: Arc<TaskService>,
    pub meta: Arc<dyn MetaStore>,
    pub config: Arc<Config>,
}

impl Node {
    pub fn new() -> Node {
        Node::with_config(|_| {})
    }

    /// A node whose berthds run with `tweak` applied to the test config.
    pub fn with_config(tweak: fn(&mut Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::new(&dir.path().join("netns")));
        Node {
            dir,
            shims: FakeShims::new(),
            host,
            tweak,
        }
    }

    pub fn config(&self) -> Config {
        let mut c = Config {
            root: self.dir.path().join("root"),
            state: self.dir.path().join("state"),
            ..Default::default()
        };
        // Pinned namespaces only: no pause container to pull.
        c.cri.sandbox_image = String::new();
        (self.tweak)(&mut c);
        c
    }

    /// Starts a berthd: opens the stores and recovers, as `Daemon::open` and
    /// `serve` do, with the fakes in place of shims and host.
    pub async fn start(&self) -> Daemon {
        let config = self.config();
        for d in [&config.root, &config.state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let meta: Arc<dyn MetaStore> =
            Arc::new(SledStore::open(&config.root.join("meta")).unwrap());
        let content = ContentStore::open(config.root.join("content")).unwrap();
        let images = ImageStore::load(meta.clone()).unwrap();
        let leases = Leases::load(meta.clone());
        let snap_root = config.root.join("snapshotter");
        std::fs::create_dir_all(&snap_root).unwrap();
        let native = snapshotter::open(&snap_root, snapshotter::Backend::Native).unwrap();
        let snap: Arc<dyn snapshotter::Snapshotter> = Arc::new(UnmountedSnapshots(native));
        let work = config.state.join("unpack");
        std::fs::create_dir_all(&work).unwrap();
        let unpacker = Arc::new(Unpacker::new(
            snap,
            content.clone(),
            work,
            false,
            Default::default(),
        ));
        let config = Arc::new(config);
        let images = ImageService::new(config.clone(), content, images, leases, unpacker);
        if images.lookup(IMAGE).is_err() {
            install_image(&images);
        }
        let tasks = TaskService::with_shim_processes(
            config.clone(),
            meta.clone(),
            images.clone(),
            self.shims.clone(),
        );
        let cri = CriRuntime::with_host(
            config.clone(),
            meta.clone(),
            images,
            tasks.clone(),
            self.host.clone(),
        );
        tasks.recover().await;
        cri.recover_sandboxes().await;
        cri.forward_exits();
        Daemon {
            cri,
            tasks,
            meta,
            config,
        }
    }

    /// The shim of a pod.
    pub fn shim(&self, pod: &str) -> Arc<FakeShim> {
        self.shims.shim_of(pod).expect("the pod has a shim")
    }

    /// Runs `f` with a berthd in a runtime of its own, then stops that berthd
    /// the hard way: the runtime goes, with every task it ran (exit watchers
    /// included), as when berthd is killed. Shims and host live on.
    pub fn with_daemon_then_kill<T>(&self, f: impl AsyncFnOnce(&Daemon) -> T) -> T {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let d = self.start().await;
            f(&d).await
        });
        rt.shutdown_background();
        out
    }
}

/// An image with no layers: its manifest and config in the content store, its
/// record in the image store.
fn install_image(images: &ImageService) {
    let config = serde_json::json!({
        "architecture": oci::host_platform().architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = images.content.write_blob(&config, None).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = images.content.write_blob(&manifest, None).unwrap();
    let now = berth_sysutil::now_nanos();
    images
        .images
        .put_all(vec![ImageRecord {
            name: IMAGE.into(),
            target: Descriptor {
                media_type: oci::OCI_MANIFEST.into(),
                digest: manifest_digest.to_string(),
                size: manifest.len() as i64,
                urls: None,
                annotations: None,
                platform: None,
            },
            labels: Default::default(),
            created_at: now,
            updated_at: now,
            size: (manifest.len() + config.len()) as i64,
            config_digest: config_digest.to_string(),
        }])
        .unwrap();
}

pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

pub fn container_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sleep".into(), "1000".into()],
        ..Default::default()
    }
}

impl Daemon {
    pub async fn run_pod(&self, name: &str) -> crate::cri::error::Result<String> {
        self.cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config(name)),
                runtime_handler: String::new(),
            })
            .await
    }

    pub async fn create(&self, pod: &str, name: &str) -> crate::cri::error::Result<String> {
        self.cri
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(container_config(name)),
                sandbox_config: Some(pod_config(name)),
            })
            .await
    }

    /// A pod with one running container: (pod id, container id).
    pub async fn running(&self, pod: &str, name: &str) -> (String, String) {
        let p = self.run_pod(pod).await.unwrap();
        let c = self.create(&p, name).await.unwrap();
        self.cri.start_container(&c).await.unwrap();
        (p, c)
    }

    pub fn pod_state(&self, id: &str) -> cri::PodSandboxState {
        let s = self
            .cri
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .unwrap();
        cri::PodSandboxState::try_from(s.status.unwrap().state).unwrap()
    }

    pub fn status(&self, id: &str) -> cri::ContainerStatus {
        self.cri
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .unwrap()
            .status
            .unwrap()
    }

    pub fn state(&self, id: &str) -> cri::ContainerState {
        cri::ContainerState::try_from(self.status(id).state).unwrap()
    }

    /// Waits (bounded) until the container is in `want`.
    pub async fn until_state(&self, id: &str, want: cri::ContainerState) {
        for _ in 0..500 {
            if self.state(id) == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("container {id} is {:?}, not {want:?}", self.state(id));
    }

    /// The records in a metadata bucket.
    pub fn records(&self, bucket: crate::metadata::Bucket) -> Vec<String> {
        self.meta
            .list(bucket)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.config.state.join("containers").join(id)
    }
}

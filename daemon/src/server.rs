//! Starting and stopping berthd: directories, the root lock, the socket, the
//! gRPC services, and an orderly shutdown on SIGTERM/SIGINT.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_api::content::v1::content_server::ContentServer;
use berth_api::images::v1::images_server::ImagesServer;
use berth_api::runtime::v1::image_service_server::ImageServiceServer as CriImageServiceServer;
use berth_api::runtime::v1::runtime_service_server::RuntimeServiceServer as CriRuntimeServiceServer;
use berth_api::snapshots::v1::snapshots_server::SnapshotsServer;
use berth_api::system::v1::system_server::SystemServer;
use berth_api::tasks::v1::tasks_server::TasksServer;
use content_store::ContentStore;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::config::Config;
use crate::cri::image::CriImageApi;
use crate::cri::runtime::CriRuntimeApi;
use crate::cri::CriRuntime;
use crate::images::gc::Leases;
use crate::images::grpc::{ContentApi, ImagesApi};
use crate::images::snapshots::SnapshotsApi;
use crate::images::store::ImageStore;
use crate::images::unpack::Unpacker;
use crate::images::ImageService;
use crate::metadata::{MetaStore, SledStore};
use crate::tasks::grpc::TasksApi;
use crate::tasks::TaskService;

pub use crate::VERSION;

/// An exclusive lock on the root, held for the daemon's lifetime: a second
/// berthd on the same root must refuse to start rather than share sled.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock, waiting up to `wait` while another process holds it:
    /// a berthd killed a moment ago keeps it until it has fully exited, and
    /// a restart right after the kill must not give up (and leave the node
    /// without a runtime until the next try).
    pub fn acquire(root: &Path, wait: std::time::Duration) -> Result<RootLock> {
        use fs2::FileExt;
        let path = root.join("berthd.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let deadline = std::time::Instant::now() + wait;
        let mut logged = false;
        while file.try_lock_exclusive().is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            if std::time::Instant::now() >= deadline {
                bail!(
                    "another berthd is already running on root {} (pid {}, still holding {} after {:?}); refusing to start",
                    root.display(),
                    holder.trim(),
                    path.display(),
                    wait
                );
            }
            if !logged {
                warn!(root = %root.display(), holder = holder.trim(), "the root is locked by another berthd; waiting for it to exit");
                logged = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        file.set_len(0).ok();
        write!(file, "{}", std::process::id()).ok();
        Ok(RootLock { _file: file })
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Binds the socket, replacing a stale one left by a crash, but never one a
/// live daemon is still serving.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        make_dir(parent, 0o711)?;
        tighten_socket_dir(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "socket {} is in use by a running daemon; refusing to replace it",
                path.display()
            );
        }
        warn!(socket = %path.display(), "removing stale socket");
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    Ok(listener)
}

/// Directories shared with other programs, whose mode is not berth's to set.
const SHARED_DIRS: &[&str] = &["/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm"];

/// The socket's directory gets 0711 (issue 14, finding 7) even when it was
/// there already, with a looser mode, from an earlier install or a user: only
/// its owner lists or creates names in it. A directory shared with others (one
/// of [`SHARED_DIRS`], or any sticky one such as a tmp dir) is left alone: the
/// socket's own 0660 is what guards it there.
fn tighten_socket_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let canonical =
        std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mode = std::fs::metadata(&canonical)
        .with_context(|| format!("reading {}", canonical.display()))?
        .permissions()
        .mode();
    let shared = mode & 0o1000 != 0 || SHARED_DIRS.iter().any(|d| canonical == Path::new(d));
    if shared || mode & 0o7777 == 0o711 {
        return Ok(());
    }
    info!(dir = %canonical.display(), mode = format!("{:o}", mode & 0o7777), "setting the socket directory's mode to 0711");
    std::fs::set_permissions(&canonical, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("setting mode 0711 on {}", canonical.display()))
}

/// Everything berthd holds open while it runs.
pub struct Daemon {
    pub config: Arc<Config>,
    pub meta: Arc<dyn MetaStore>,
    pub images: Arc<ImageService>,
    pub tasks: Arc<TaskService>,
    pub cri: Arc<CriRuntime>,
    _lock: RootLock,
}

impl Daemon {
    /// Opens the stores and recovers from a previous run. Blocking.
    pub fn open(config: Config) -> Result<Daemon> {
        make_dir(&config.root, 0o711)?;
        make_dir(&config.state, 0o711)?;
        let lock = RootLock::acquire(
            &config.root,
            std::time::Duration::from_secs(config.root_lock_wait_secs),
        )?;
        let meta: Arc<dyn MetaStore> = Arc::new(
            SledStore::open(&config.root.join("meta")).context("opening the metadata database")?,
        );
        let content =
            ContentStore::open(config.root.join("content")).context("opening the content store")?;
        let stale = std::time::Duration::from_secs(config.gc.stale_ingest_secs);
        match content.cleanup_ingests(stale) {
            Ok(0) => {}
            Ok(n) => info!(count = n, "removed stale ingests"),
            Err(e) => warn!(error = %e, "cannot sweep stale ingests"),
        }
        let images = ImageStore::load(meta.clone()).context("loading image records")?;
        let leases = Leases::load(meta.clone());
        let unpacker = open_unpacker(&config, content.clone())?;
        let config = Arc::new(config);
        let images = ImageService::new(config.clone(), content, images, leases, unpacker);
        images.sweep_stale_views();
        let tasks = TaskService::new(config.clone(), meta.clone(), images.clone());
        let cri = CriRuntime::new(config.clone(), meta.clone(), images.clone(), tasks.clone());
        Ok(Daemon {
            config,
            meta,
            images,
            tasks,
            cri,
            _lock: lock,
        })
    }

    /// Serves until SIGTERM/SIGINT, then stops accepting, lets in-flight
    /// calls finish and flushes the metadata.
    pub async fn serve(self) -> Result<()> {
        let socket = self.config.socket_path();
        // Shims and tasks from the previous run are settled before the first
        // request, so lists are right from the start.
        self.tasks.recover().await;
        self.cri.recover_sandboxes().await;
        self.cri.forward_exits();
        self.cri.spawn_layer_usage_sync();
        let streaming =
            berth_streaming::StreamServer::start(&self.config.streaming, self.tasks.clone())
                .await?;
        self.cri.set_streaming(streaming);
        if !self.config.metrics.address.is_empty() {
            crate::metrics::http::serve(
                &self.config.metrics.address,
                self.config.metrics.max_connections,
                metrics_refresh(
                    self.cri.clone(),
                    self.tasks.clone(),
                    self.config.root.join("meta"),
                ),
            )
            .await?;
        }
        let listener = bind_socket(&socket)?;
        self.images.spawn_gc_loop();
        // Partial downloads kept for a retry go once none came (at start too).
        self.images.spawn_partial_ingest_sweep();
        // Unreferenced content and snapshots a crash left behind go now.
        self.images.request_gc();
        info!(socket = %socket.display(), root = %self.config.root.display(), version = VERSION, "berthd serving");
        // The socket listens: what connects now is served once the server
        // below polls it.
        crate::notify::notify(&format!("READY=1\nSTATUS=serving on {}", socket.display()));
        // Go's gRPC (kubelet, crictl) and grpcio send the socket path as the
        // HTTP/2 :authority, which h2 refuses: see the h2-authority crate.
        let incoming =
            UnixListenerStream::new(listener).map(|conn| conn.map(h2_authority::AuthorityFix::new));
        let max = 64 << 20;
        let result = tonic::transport::Server::builder()
            .layer(crate::metrics::grpc::RpcMetricsLayer)
            .add_service(
                ImagesServer::new(ImagesApi {
                    svc: self.images.clone(),
                })
                .max_decoding_message_size(max),
            )
            // The CRI ImageService (runtime.v1) over the same image store.
            // The CRI: what kubelet sends at most (a pod accepted must list).
            .add_service(
                CriImageServiceServer::new(CriImageApi::new(self.images.clone()))
                    .max_decoding_message_size(self.config.cri.max_request_bytes),
            )
            .add_service(
                CriRuntimeServiceServer::new(CriRuntimeApi::new(self.cri.clone()))
                    .max_decoding_message_size(self.config.cri.max_request_bytes),
            )
            .add_service(ContentServer::new(ContentApi {
                svc: self.images.clone(),
            }))
            .add_service(SnapshotsServer::new(SnapshotsApi {
                svc: self.images.clone(),
            }))
            .add_service(TasksServer::new(TasksApi {
                svc: self.tasks.clone(),
            }))
            .add_service(SystemServer::new(crate::system::SystemApi {
                config: self.config.clone(),
                socket: socket.clone(),
                images: self.images.clone(),
                cri: self.cri.clone(),
                meta: self.meta.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, shutdown_signal())
            .await;
        info!("berthd stopping");
        self.release_shared_dirs();
        let flushed = self.meta.flush();
        let _ = std::fs::remove_file(&socket);
        result.context("serving gRPC")?;
        flushed.context("flushing the metadata database")?;
        info!("berthd stopped");
        Ok(())
    }
}

impl Daemon {
    /// The pin directories are made shared self-bind mounts when a pod first
    /// needs them; a stop with no pod left takes them down again (with pods
    /// they stay: the pods outlive berthd).
    fn release_shared_dirs(&self) {
        for dir in [self.config.netns_dir(), self.config.sandboxes_dir()] {
            match berth_network::netns::release_shared_dir(&dir) {
                Ok(true) => info!(dir = %dir.display(), "unmounted"),
                Ok(false) => {}
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot unmount")
                }
            }
        }
    }
}

/// Opens the snapshotter and recovers it from a crash: leftover directories
/// and records, half-done unpacks.
fn open_unpacker(config: &Config, content: ContentStore) -> Result<Arc<Unpacker>> {
    let backend: snapshotter::Backend = config
        .snapshotter
        .backend
        .parse()
        .context("snapshotter.backend")?;
    let root = config.root.join("snapshotter").join(backend.to_string());
    make_dir(&root, 0o700)?;
    let snap: Arc<dyn snapshotter::Snapshotter> = Arc::from(
        snapshotter::open(&root, backend)
            .with_context(|| format!("opening the {backend} snapshotter at {}", root.display()))?,
    );
    match snap.cleanup() {
        Ok(report) => info!(?report, "snapshotter recovered"),
        Err(e) => warn!(error = %e, "snapshotter cleanup failed"),
    }
    let work = config.state.join("unpack");
    make_dir(&work, 0o700)?;
    let s = &config.snapshotter;
    let options = snapshotter::apply::ApplyOptions {
        whiteouts: snapshotter::apply::WhiteoutMode::Remove,
        allow_devices: s.allow_device_nodes,
        max_file_size: s.max_file_bytes,
        max_total_size: s.max_layer_bytes,
        max_entries: s.max_layer_entries,
        preserve_ownership: true,
    };
    let unpacker = Arc::new(Unpacker::new(
        snap,
        content,
        work,
        backend == snapshotter::Backend::Overlay,
        options,
    ));
    unpacker.sweep_interrupted();
    Ok(unpacker)
}

/// The state gauges, read at each scrape.
fn metrics_refresh(
    cri: Arc<CriRuntime>,
    tasks: Arc<TaskService>,
    meta_dir: PathBuf,
) -> crate::metrics::http::Refresh {
    Arc::new(move |m| {
        use berth_api::runtime::v1 as cri_pb;
        let pods = cri.list_pod_sandboxes(None);
        let ready = pods
            .iter()
            .filter(|p| p.state == cri_pb::PodSandboxState::SandboxReady as i32)
            .count();
        for (state, n) in [("ready", ready), ("notready", pods.len() - ready)] {
            m.pods.with_label_values(&[state]).set(n as i64);
        }
        let mut by_state = [0i64; 4];
        for c in cri.list_containers(None) {
            if let Some(n) = by_state.get_mut(c.state as usize) {
                *n += 1;
            }
        }
        for (state, n) in ["created", "running", "exited", "unknown"]
            .into_iter()
            .zip(by_state)
        {
            m.containers.with_label_values(&[state]).set(n);
        }
        m.shims.set(tasks.live_shims() as i64);
        m.metadata_bytes
            .set(crate::system::dir_bytes(&meta_dir) as i64);
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    crate::notify::notify("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn an_existing_socket_dir_gets_0711_and_a_sticky_one_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("berth");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o777)).unwrap();
        let _l = bind_socket(&own.join("berth.sock")).unwrap();
        assert_eq!(mode(&own), 0o711);
        assert_eq!(mode(&own.join("berth.sock")), 0o660);

        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let _l = bind_socket(&shared.join("berth.sock")).unwrap();
        assert_eq!(mode(&shared), 0o1777);
    }
}

//! The native `System` service: version, `Info` (configuration, storage and
//! each component's health, for `berthctl info`) and `Events` (the event
//! bus, for `berthctl events`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use berth_api::system::v1 as syspb;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::cri::CriRuntime;
use crate::images::ImageService;
use crate::metadata::{MetaStore, SANDBOXES};
use crate::VERSION;

pub(crate) struct SystemApi {
    pub config: Arc<Config>,
    pub socket: PathBuf,
    pub images: Arc<ImageService>,
    pub cri: Arc<CriRuntime>,
    pub meta: Arc<dyn MetaStore>,
}

/// Bytes of the files under `dir` (not following links).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn component(name: &str, result: Result<String, String>) -> syspb::Component {
    let (healthy, message) = match result {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    syspb::Component {
        name: name.to_string(),
        healthy,
        message,
    }
}

impl SystemApi {
    /// Storage and the store components' health; blocking (walks the stores).
    fn storage(
        config: &Config,
        images: &ImageService,
        meta: &dyn MetaStore,
    ) -> (syspb::Storage, Vec<syspb::Component>) {
        let mut storage = syspb::Storage {
            metadata_bytes: dir_bytes(&config.root.join("meta")),
            images: images.images.list().len() as u64,
            ..Default::default()
        };
        let mut components = Vec::new();
        match nix::sys::statvfs::statvfs(&config.root) {
            Ok(fs) => {
                let frag = fs.fragment_size();
                storage.filesystem_bytes = fs.blocks().saturating_mul(frag);
                storage.filesystem_free_bytes = fs.blocks_available().saturating_mul(frag);
            }
            Err(e) => components.push(component(
                "filesystem",
                Err(format!("statvfs {}: {e}", config.root.display())),
            )),
        }
        components.push(component(
            "metadata",
            meta.get(SANDBOXES, "")
                .map(|_| format!("sled database at {}", config.root.join("meta").display()))
                .map_err(|e| e.to_string()),
        ));
        components.push(component(
            "content",
            images
                .content
                .list()
                .map(|blobs| {
                    storage.content_blobs = blobs.len() as u64;
                    storage.content_bytes = blobs.iter().map(|b| b.size).sum();
                    format!("{} blobs", blobs.len())
                })
                .map_err(|e| e.to_string()),
        ));
        components.push(component(
            "snapshotter",
            images
                .unpacker
                .snapshotter
                .walk(&|_| true)
                .map(|snaps| {
                    storage.snapshots = snaps.len() as u64;
                    format!("{}, {} snapshots", config.snapshotter.backend, snaps.len())
                })
                .map_err(|e| e.to_string()),
        ));
        (storage, components)
    }

    fn runtime_handlers(config: &Config) -> Vec<syspb::RuntimeHandler> {
        config
            .runtime_handlers()
            .into_iter()
            .map(|h| syspb::RuntimeHandler {
                default: h.name == config.cri.default_runtime,
                name: h.name,
                runtime: h.runtime,
                root: h.root.display().to_string(),
            })
            .collect()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<syspb::Event, Status>> + Send>>;

fn event_pb(e: &crate::events::Event) -> syspb::Event {
    syspb::Event {
        timestamp: e.timestamp,
        topic: e.topic.to_string(),
        id: e.id.clone(),
        attributes: e.attributes.clone().into_iter().collect(),
    }
}

#[tonic::async_trait]
impl syspb::system_server::System for SystemApi {
    async fn version(
        &self,
        _req: Request<syspb::VersionRequest>,
    ) -> Result<Response<syspb::VersionResponse>, Status> {
        Ok(Response::new(syspb::VersionResponse {
            version: VERSION.into(),
            revision: option_env!("BERTH_REVISION").unwrap_or("").into(),
            root: self.config.root.display().to_string(),
            state: self.config.state.display().to_string(),
        }))
    }

    async fn info(
        &self,
        _req: Request<syspb::InfoRequest>,
    ) -> Result<Response<syspb::InfoResponse>, Status> {
        let (config, images, meta) = (self.config.clone(), self.images.clone(), self.meta.clone());
        let (storage, mut components) =
            tokio::task::spawn_blocking(move || Self::storage(&config, &images, meta.as_ref()))
                .await
                .map_err(|e| Status::internal(format!("collecting storage information: {e}")))?;
        let network = self.cri.network_name().await;
        components.push(component(
            "cni",
            network
                .as_ref()
                .map(|n| format!("network {n} from {}", self.config.cni.conf_dir.display()))
                .map_err(|e| e.to_string()),
        ));
        components.push(component(
            "runtime",
            crate::shim::binary::resolve(&self.config)
                .map(|s| {
                    format!(
                        "shim {}, OCI runtime {}",
                        s.path.display(),
                        self.config.shim.runtime
                    )
                })
                .map_err(|e| e.to_string()),
        ));
        components.push(component(
            "streaming",
            self.cri
                .streaming_address()
                .map(|a| format!("serving on {a}"))
                .ok_or_else(|| "not running".to_string()),
        ));
        Ok(Response::new(syspb::InfoResponse {
            version: VERSION.into(),
            revision: option_env!("BERTH_REVISION").unwrap_or("").into(),
            root: self.config.root.display().to_string(),
            state: self.config.state.display().to_string(),
            socket: self.socket.display().to_string(),
            config_toml: self.config.to_toml(),
            runtime_handlers: Self::runtime_handlers(&self.config),
            network: Some(syspb::Network {
                conf_dir: self.config.cni.conf_dir.display().to_string(),
                name: network.unwrap_or_default(),
            }),
            storage: Some(storage),
            components,
        }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<syspb::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let topics = req.into_inner().topics;
        let mut rx = crate::events::subscribe();
        let stream = async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(e) if crate::events::wanted(&topics, e.topic) => yield Ok(event_pb(&e)),
                    Ok(_) => {}
                    // Told, not silently skipped: the client knows its view has a gap.
                    Err(RecvError::Lagged(n)) => yield Ok(syspb::Event {
                        timestamp: berth_sysutil::now_nanos(),
                        topic: "/events/lost".into(),
                        id: String::new(),
                        attributes: [("count".to_string(), n.to_string())].into_iter().collect(),
                    }),
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

//! What the CRI layer records about pods and containers, beyond what the
//! runtime core keeps (a container is a task: see [`crate::tasks`]). Sandbox
//! records live in the metadata DB bucket `sandboxes`; container metadata
//! rides in the task record. Here, below both `cri` and `tasks`, so the task
//! record can carry it without the task layer depending on the CRI service.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use berth_api::runtime::v1 as cri;
use prost::Message;
use serde::{Deserialize, Serialize};

/// The CRI side of a container: names, labels, the request as sent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// `ContainerMetadata.name` and `.attempt`.
    pub name: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The image as the request named it.
    pub image_spec: String,
    /// The image id (`sha256:` of its config), CRI's `image_ref`.
    pub image_id: String,
    /// The CreateContainer request's `ContainerConfig` (stored as hex of
    /// its protobuf encoding), so status can report mounts and resources.
    /// Decoded once, when the record is read.
    #[serde(with = "proto_hex")]
    pub config: cri::ContainerConfig,
    /// The signal StopContainer sends first (the image's StopSignal).
    pub stop_signal: i32,
    /// Last resources set by UpdateContainerResources (protobuf, hex).
    #[serde(default, with = "hex_bytes")]
    pub resources: Vec<u8>,
}

impl ContainerMeta {
    pub fn config(&self) -> &cri::ContainerConfig {
        &self.config
    }

    /// The labels as CRI messages carry them.
    pub fn labels_pb(&self) -> HashMap<String, String> {
        self.labels.clone().into_iter().collect()
    }

    /// The annotations as CRI messages carry them.
    pub fn annotations_pb(&self) -> HashMap<String, String> {
        self.annotations.clone().into_iter().collect()
    }

    pub fn resources(&self) -> Option<cri::LinuxContainerResources> {
        if self.resources.is_empty() {
            return None;
        }
        cri::LinuxContainerResources::decode(self.resources.as_slice()).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// RunPodSandbox has not finished (or died with berthd).
    Creating,
    Ready,
    /// Stopped: network torn down, containers stopped.
    NotReady,
}

/// A pod sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The unique name: `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub state: SandboxState,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// The RunPodSandbox request's `PodSandboxConfig` (stored as hex of its
    /// protobuf encoding), decoded once, when the record is read.
    #[serde(with = "proto_hex")]
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// `<state>/pods/<id>`: resolv.conf, hostname, hosts, shm.
    pub dir: PathBuf,
    /// The pinned network namespace; None for host-network pods.
    pub netns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    pub ips: Vec<String>,
    /// The pod's cgroup parent as resolved for its containers.
    pub cgroup_parent: String,
    /// Whether the network is set up (CNI ADD done, DEL not yet).
    pub network_ready: bool,
    /// Set by StopPodSandbox before it starts: a stop berthd died in is
    /// finished at start.
    #[serde(default)]
    pub stopping: bool,
    /// The pause container's task id, when one holds the pod's PID
    /// namespace ("pause" mode, or a pod sharing one PID namespace).
    #[serde(default)]
    pub pause: Option<String>,
    #[serde(default)]
    pub pause_pid: u32,
}

impl SandboxRecord {
    pub fn config(&self) -> &cri::PodSandboxConfig {
        &self.config
    }
}

/// A protobuf message stored as the hex of its encoding (the records'
/// on-disk form); a record whose message does not decode is corrupt.
mod proto_hex {
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(m.encode_to_vec()))
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let bytes = hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let cfg = cri::PodSandboxConfig {
            hostname: "h".into(),
            ..Default::default()
        };
        let r = SandboxRecord {
            id: "s".into(),
            name: "a_b_c_0".into(),
            state: SandboxState::Ready,
            created_at: 1,
            config: cfg,
            runtime_handler: String::new(),
            dir: "/run/berth/pods/s".into(),
            netns: Some("/run/berth/netns/s".into()),
            ipc_ns: None,
            uts_ns: None,
            shm: None,
            ips: vec!["10.88.0.2".into()],
            cgroup_parent: "/berth/pods/s".into(),
            network_ready: true,
            stopping: false,
            pause: None,
            pause_pid: 0,
        };
        let back: SandboxRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.config().hostname, "h");
        let m = ContainerMeta {
            name: "c".into(),
            config: cri::ContainerConfig {
                working_dir: "/w".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let back: ContainerMeta = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back.config().working_dir, "/w");
        assert!(back.resources().is_none());
    }
}

//! An in-memory [`SandboxHost`] for unit tests: pins, /dev/shm and network
//! attachments are entries in maps, every call is recorded, and any step can
//! be made to fail the next N times (e.g. a CNI DEL that fails once, then
//! succeeds).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use berth_network::podns::{PodNamespaces, PodNsError};
use berth_network::{CniError, NetworkError, PodNetworkOptions, PodRef};
use berth_sysutil::lock;

use super::host::{PodAttachment, SandboxHost};

/// A host step that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Pin,
    Unpin,
    MountShm,
    UnmountShm,
    Setup,
    Teardown,
}

#[derive(Default)]
struct State {
    /// Pods with pinned namespaces.
    pins: HashSet<String>,
    /// Pod dirs with a /dev/shm mounted.
    shm: HashSet<PathBuf>,
    /// Attached pods: sandbox id -> netns.
    attached: HashMap<String, PathBuf>,
    /// How many more times a step fails.
    failures: HashMap<Step, u32>,
    /// Every call, as `(step, sandbox id or pod dir)`.
    calls: Vec<(Step, String)>,
}

pub struct FakeHost {
    netns_dir: PathBuf,
    state: Mutex<State>,
    next_ip: AtomicU8,
}

fn injected(step: Step) -> std::io::Error {
    std::io::Error::other(format!("injected failure of {step:?}"))
}

impl FakeHost {
    pub fn new(netns_dir: &Path) -> FakeHost {
        FakeHost {
            netns_dir: netns_dir.to_path_buf(),
            state: Mutex::new(State::default()),
            next_ip: AtomicU8::new(2),
        }
    }

    /// `step` fails the next `times` times.
    pub fn fail(&self, step: Step, times: u32) {
        lock(&self.state).failures.insert(step, times);
    }

    /// Records a call; true when it is to fail.
    fn enter(&self, step: Step, what: &str) -> bool {
        let mut s = lock(&self.state);
        s.calls.push((step, what.to_string()));
        match s.failures.get_mut(&step) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// How many times `step` was called.
    pub fn count(&self, step: Step) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|(s, _)| *s == step)
            .count()
    }

    /// Whether the pod is attached to the network.
    pub fn attached(&self, sandbox_id: &str) -> bool {
        lock(&self.state).attached.contains_key(sandbox_id)
    }

    /// Whether the pod still holds anything on the host.
    pub fn holds_anything(&self, sandbox_id: &str) -> bool {
        let s = lock(&self.state);
        s.pins.contains(sandbox_id)
            || s.attached.contains_key(sandbox_id)
            || s.shm.iter().any(|d| d.ends_with(sandbox_id))
    }
}

#[async_trait]
impl SandboxHost for FakeHost {
    fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.netns_dir.join(sandbox_id)
    }

    async fn pin_namespaces(
        &self,
        sandbox_id: &str,
        ipc: bool,
        uts: Option<&str>,
    ) -> Result<PodNamespaces, PodNsError> {
        let dir = self.netns_dir.join("pins").join(sandbox_id);
        if self.enter(Step::Pin, sandbox_id) {
            return Err(PodNsError::Sys {
                path: dir,
                op: "pin",
                source: injected(Step::Pin),
            });
        }
        lock(&self.state).pins.insert(sandbox_id.to_string());
        Ok(PodNamespaces {
            ipc: ipc.then(|| dir.join("ipc")),
            uts: uts.map(|_| dir.join("uts")),
        })
    }

    async fn unpin_namespaces(&self, sandbox_id: &str) -> Result<(), PodNsError> {
        if self.enter(Step::Unpin, sandbox_id) {
            return Err(PodNsError::Sys {
                path: self.netns_dir.join("pins").join(sandbox_id),
                op: "unpin",
                source: injected(Step::Unpin),
            });
        }
        lock(&self.state).pins.remove(sandbox_id);
        Ok(())
    }

    async fn mount_shm(&self, pod_dir: &Path) -> std::io::Result<PathBuf> {
        if self.enter(Step::MountShm, &pod_dir.display().to_string()) {
            return Err(injected(Step::MountShm));
        }
        lock(&self.state).shm.insert(pod_dir.to_path_buf());
        Ok(pod_dir.join("shm"))
    }

    async fn unmount_shm(&self, pod_dir: &Path) -> std::io::Result<()> {
        if self.enter(Step::UnmountShm, &pod_dir.display().to_string()) {
            return Err(injected(Step::UnmountShm));
        }
        lock(&self.state).shm.remove(pod_dir);
        Ok(())
    }

    async fn setup_network(
        &self,
        pod: &PodRef,
        _opts: &PodNetworkOptions,
    ) -> Result<PodAttachment, NetworkError> {
        if self.enter(Step::Setup, &pod.sandbox_id) {
            return Err(NetworkError::Cni(CniError::Plugin {
                plugin: "fake".into(),
                command: "ADD",
                code: 11,
                msg: "injected failure".into(),
                details: String::new(),
            }));
        }
        let netns = self.netns_path(&pod.sandbox_id);
        lock(&self.state)
            .attached
            .insert(pod.sandbox_id.clone(), netns.clone());
        let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
        Ok(PodAttachment {
            netns,
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 88, 0, n))],
        })
    }

    async fn teardown_network(&self, pod: &PodRef, _netns: &Path) -> Result<(), NetworkError> {
        if self.enter(Step::Teardown, &pod.sandbox_id) {
            return Err(NetworkError::Cni(CniError::Plugin {
                plugin: "fake".into(),
                command: "DEL",
                code: 11,
                msg: "injected failure".into(),
                details: String::new(),
            }));
        }
        lock(&self.state).attached.remove(&pod.sandbox_id);
        Ok(())
    }

    async fn network_name(&self) -> Result<String, CniError> {
        Ok("fake".into())
    }
}

//! The shim manager: one shim process per pod (sandbox), started with the
//! containerd shim v2 `start` convention, reached over ttrpc, and recorded in
//! `<state>/pods/<sandbox-id>/` so that a restarted berthd finds it again.
//!
//! Any shim that speaks the protocol works: berth's own `berth-shim` or
//! Debian's `containerd-shim-runc-v2` (task API v2, plain-address `start`
//! reply, raw `file://` stdio), selected by `shim.binary` in the config.
//! The manager reaches shims through the [`ShimProcesses`] and [`TaskShim`]
//! seams ([`processes::BinaryShims`] in production, [`fake`] in tests).

pub mod binary;
pub mod client;
pub mod connection;
#[cfg(test)]
pub mod fake;
pub mod processes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use binary::{ShimBinary, StdioScheme, NAMESPACE};
pub use client::{RpcCode, ShimError, TaskApi};
pub use connection::{ShimProcesses, TaskShim};

use crate::config::Config;

/// What berthd records about a pod's shim, in `<state>/pods/<id>/shim.json`
/// (plus the bare address in `address`, as containerd keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodRecord {
    pub sandbox_id: String,
    pub address: String,
    pub api: TaskApi,
    pub binary: PathBuf,
    pub stdio: StdioScheme,
    pub bootstrap: bool,
    /// The shim's working directory (the bundle it was started in): where
    /// its `log` fifo is.
    pub cwd: PathBuf,
    pub pid: u32,
    /// Unix nanoseconds.
    pub started_at: i64,
}

impl PodRecord {
    /// The binary this pod's shim was started from.
    pub fn binary(&self) -> ShimBinary {
        ShimBinary {
            path: self.binary.clone(),
            stdio: self.stdio,
            bootstrap: self.bootstrap,
        }
    }
}

/// A live connection to a pod's shim.
pub struct PodShim {
    pub record: PodRecord,
    client: Mutex<Arc<dyn TaskShim>>,
    /// Tasks created in this shim and not yet deleted from it.
    tasks: Mutex<HashSet<String>>,
    dead: AtomicBool,
    log_reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl PodShim {
    fn new(
        record: PodRecord,
        client: Arc<dyn TaskShim>,
        log_reader: Option<tokio::task::AbortHandle>,
    ) -> PodShim {
        PodShim {
            record,
            client: Mutex::new(client),
            tasks: Mutex::new(HashSet::new()),
            dead: AtomicBool::new(false),
            log_reader: Mutex::new(log_reader),
        }
    }

    pub fn client(&self) -> Arc<dyn TaskShim> {
        lock(&self.client).clone()
    }

    pub fn id(&self) -> &str {
        &self.record.sandbox_id
    }

    pub fn add_task(&self, id: &str) {
        lock(&self.tasks).insert(id.to_string());
    }

    /// Forgets a task; returns how many remain.
    pub fn remove_task(&self, id: &str) -> usize {
        let mut t = lock(&self.tasks);
        t.remove(id);
        t.len()
    }

    pub fn tasks(&self) -> Vec<String> {
        lock(&self.tasks).iter().cloned().collect()
    }

    /// Marks the shim dead; true for the caller that did it first (who then
    /// owns the clean-up).
    pub fn mark_dead(&self) -> bool {
        !self.dead.swap(true, Ordering::SeqCst)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn stop_log_reader(&self) {
        if let Some(h) = lock(&self.log_reader).take() {
            h.abort();
        }
    }
}

impl Drop for PodShim {
    fn drop(&mut self) {
        self.stop_log_reader();
    }
}

use berth_sysutil::{lock, write_atomic};

pub struct ShimManager {
    processes: Arc<dyn ShimProcesses>,
    pods_dir: PathBuf,
    pods: Mutex<HashMap<String, Arc<PodShim>>>,
    /// Per-pod start locks, so two creates in one pod start one shim.
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl ShimManager {
    /// Shims connected and not known dead.
    pub fn live(&self) -> usize {
        lock(&self.pods).values().filter(|p| !p.is_dead()).count()
    }

    /// The manager of the configured shim binary's processes.
    pub fn new(config: Arc<Config>) -> ShimManager {
        let processes = Arc::new(processes::BinaryShims::new(config.clone()));
        ShimManager::with_processes(&config, processes)
    }

    /// A manager reaching shims through `processes`.
    pub fn with_processes(config: &Config, processes: Arc<dyn ShimProcesses>) -> ShimManager {
        ShimManager {
            processes,
            pods_dir: config.state.join("pods"),
            pods: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
        }
    }

    fn pod_dir(&self, sandbox_id: &str) -> PathBuf {
        self.pods_dir.join(sandbox_id)
    }

    /// The configured shim binary.
    pub fn binary(&self) -> Result<ShimBinary, ShimError> {
        self.processes.binary()
    }

    pub fn get(&self, sandbox_id: &str) -> Option<Arc<PodShim>> {
        lock(&self.pods).get(sandbox_id).cloned()
    }

    /// The pod's shim, started (with `cwd` as its working directory) if it is
    /// not running yet.
    pub async fn get_or_start(
        &self,
        sandbox_id: &str,
        cwd: &Path,
    ) -> Result<Arc<PodShim>, ShimError> {
        if let Some(p) = self.get(sandbox_id).filter(|p| !p.is_dead()) {
            return Ok(p);
        }
        let gate = lock(&self.starting)
            .entry(sandbox_id.to_string())
            .or_default()
            .clone();
        let _guard = gate.lock().await;
        let result = async {
            if let Some(p) = self.get(sandbox_id).filter(|p| !p.is_dead()) {
                return Ok(p);
            }
            self.start(sandbox_id, cwd).await
        }
        .await;
        lock(&self.starting).remove(sandbox_id);
        result
    }

    async fn start(&self, sandbox_id: &str, cwd: &Path) -> Result<Arc<PodShim>, ShimError> {
        let binary = self.processes.binary()?;
        let dir = self.pod_dir(sandbox_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ShimError::Binary(format!("creating {}: {e}", dir.display())))?;
        // The shim writes its own log to the `log` fifo in its working
        // directory and blocks until someone reads it.
        let log_reader = self.processes.follow_log(cwd, sandbox_id, true)?;
        let abort_log = || {
            if let Some(h) = &log_reader {
                h.abort();
            }
        };
        let reply = match self.processes.start(&binary, sandbox_id, cwd).await {
            Ok(r) => r,
            Err(e) => {
                abort_log();
                return Err(e);
            }
        };
        info!(pod = %sandbox_id, address = %reply.address, api = %reply.api, binary = %binary.path.display(), "shim started");
        let (client, pid) = match self
            .processes
            .connect(&reply.address, reply.api, sandbox_id)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                abort_log();
                return Err(e);
            }
        };
        let record = PodRecord {
            sandbox_id: sandbox_id.to_string(),
            address: reply.address.clone(),
            api: client.api(),
            binary: binary.path.clone(),
            stdio: binary.stdio,
            bootstrap: binary.bootstrap,
            cwd: cwd.to_path_buf(),
            pid,
            started_at: berth_sysutil::now_nanos(),
        };
        let pods_dir = self.pods_dir.clone();
        let to_save = record.clone();
        let saved = tokio::task::spawn_blocking(move || save_record(&pods_dir, &to_save))
            .await
            .unwrap_or_else(|e| Err(ShimError::Binary(format!("recording the shim: {e}"))));
        if let Err(e) = saved {
            let _ = client.shutdown(sandbox_id).await;
            abort_log();
            return Err(e);
        }
        let pod = Arc::new(PodShim::new(record, client, log_reader));
        lock(&self.pods).insert(sandbox_id.to_string(), pod.clone());
        Ok(pod)
    }

    #[cfg(test)]
    fn save(&self, rec: &PodRecord) -> Result<(), ShimError> {
        save_record(&self.pods_dir, rec)
    }

    /// Every pod record in the state dir; unreadable ones are logged and
    /// returned as bare ids so their shims can still be cleaned up.
    pub fn load_records(&self) -> Vec<Result<PodRecord, String>> {
        let Ok(rd) = std::fs::read_dir(&self.pods_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let path = e.path().join("shim.json");
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(Ok(r)),
                Err(err) => {
                    warn!(pod = %id, error = %err, "unreadable shim record");
                    out.push(Err(id));
                }
            }
        }
        out
    }

    /// Reconnects to a recorded shim after a berthd restart.
    pub async fn reconnect(&self, rec: PodRecord) -> Result<Arc<PodShim>, ShimError> {
        if let Some(p) = self.get(&rec.sandbox_id) {
            return Ok(p);
        }
        let (client, pid) = self
            .processes
            .connect(&rec.address, rec.api, &rec.sandbox_id)
            .await?;
        let log_reader = self
            .processes
            .follow_log(&rec.cwd, &rec.sandbox_id, false)
            .ok()
            .flatten();
        let mut rec = rec;
        if pid != 0 {
            rec.pid = pid;
        }
        let pod = Arc::new(PodShim::new(rec.clone(), client, log_reader));
        lock(&self.pods).insert(rec.sandbox_id.clone(), pod.clone());
        Ok(pod)
    }

    /// After a lost connection: a fresh one if the shim still answers.
    pub async fn try_reconnect(&self, pod: &PodShim) -> bool {
        if pod.is_dead() {
            return false;
        }
        let api = pod.client().api();
        match self
            .processes
            .connect(&pod.record.address, api, pod.id())
            .await
        {
            Ok((c, _)) => {
                *lock(&pod.client) = c;
                true
            }
            Err(_) => false,
        }
    }

    /// Asks a pod's shim to exit (it does once it has no tasks) and forgets it.
    pub async fn shutdown(&self, pod: &PodShim) {
        let client = pod.client();
        if let Err(e) = client.shutdown(pod.id()).await {
            warn!(pod = %pod.id(), error = %e, "shim shutdown failed");
        } else {
            info!(pod = %pod.id(), "shim shut down");
        }
        // Give it a moment to go, so its socket is gone before we look. It exits
        // as soon as its reply is out (a few ms), so look often.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while self.processes.alive(pod.record.pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.forget(pod);
    }

    /// Drops a pod (its shim exited or died): the record, the pod dir and a
    /// socket file nobody listens on any more.
    pub fn forget(&self, pod: &PodShim) {
        pod.stop_log_reader();
        {
            let mut pods = lock(&self.pods);
            if pods
                .get(pod.id())
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), pod))
            {
                pods.remove(pod.id());
            }
        }
        self.remove_leftovers(pod.id(), Some(&pod.record.address));
    }

    /// Kills the shims started for `sandbox_id` that have no record: berthd
    /// died between starting the shim and writing `shim.json`, so nothing
    /// else knows the process.
    pub fn kill_unrecorded(&self, sandbox_id: &str) -> usize {
        self.processes.kill_unrecorded(sandbox_id)
    }

    /// The shim binary's clean-up of a task whose shim is gone (`binary`
    /// None: the configured one). berthd itself never runs the OCI runtime.
    pub async fn cleanup(
        &self,
        binary: Option<&ShimBinary>,
        id: &str,
        bundle: &Path,
    ) -> Result<api::DeleteResponse, ShimError> {
        let configured;
        let binary = match binary {
            Some(b) => b,
            None => {
                configured = self.processes.binary()?;
                &configured
            }
        };
        self.processes.cleanup(binary, id, bundle).await
    }

    /// Removes a pod's directory and (when nothing listens on it) its socket.
    pub fn remove_leftovers(&self, sandbox_id: &str, address: Option<&str>) {
        if let Some(path) = address.and_then(client::socket_path) {
            if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let dir = self.pod_dir(sandbox_id);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "cannot remove pod dir");
            }
        }
    }
}

fn save_record(pods_dir: &Path, rec: &PodRecord) -> Result<(), ShimError> {
    let dir = pods_dir.join(&rec.sandbox_id);
    let io = |e: std::io::Error| {
        ShimError::Binary(format!("recording the shim in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(rec).map_err(|e| ShimError::Binary(e.to_string()))?;
    write_atomic(&dir.join("shim.json"), &json).map_err(io)?;
    write_atomic(&dir.join("address"), rec.address.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX - 1));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("address");
        write_atomic(&p, b"a").unwrap();
        write_atomic(&p, b"unix:///x").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "unix:///x");
    }

    #[tokio::test]
    async fn pod_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            state: dir.path().to_path_buf(),
            ..Default::default()
        };
        let m = ShimManager::new(Arc::new(cfg));
        let rec = PodRecord {
            sandbox_id: "p1".into(),
            address: "unix:///nowhere".into(),
            api: TaskApi::V2,
            binary: "/usr/bin/containerd-shim-runc-v2".into(),
            stdio: StdioScheme::File,
            bootstrap: false,
            cwd: dir.path().to_path_buf(),
            pid: 1,
            started_at: 5,
        };
        m.save(&rec).unwrap();
        std::fs::create_dir_all(dir.path().join("pods/broken")).unwrap();
        let mut got = m.load_records();
        got.sort_by_key(|r| r.is_ok());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Err("broken".to_string()));
        assert_eq!(got[1], Ok(rec.clone()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pods/p1/address")).unwrap(),
            "unix:///nowhere"
        );
        assert!(m.reconnect(rec).await.is_err());
        m.remove_leftovers("p1", Some("unix:///nowhere"));
        assert!(!dir.path().join("pods/p1").exists());
    }
}

//! Pods at start: removing those whose RunPodSandbox never finished,
//! finishing the stops that were under way, and dropping the containers of
//! vanished pods.

use super::*;

impl CriRuntime {
    /// Recovery: loads pod records, removes pods whose RunPodSandbox never
    /// finished, finishes stops that were under way. A bad record is logged
    /// and left aside (quarantined) without stopping the rest.
    pub async fn recover_sandboxes(self: &Arc<Self>) {
        use crate::metadata::SANDBOXES;
        let meta = self.meta.clone();
        let rows = match tokio::task::spawn_blocking(move || meta.list(SANDBOXES)).await {
            Ok(Ok(r)) => r,
            other => {
                warn!(result = ?other.map(|r| r.map(|v| v.len())), "cannot read the pod records");
                return;
            }
        };
        let mut unfinished = Vec::new();
        let mut stopping = Vec::new();
        for (key, value) in rows {
            let rec = match serde_json::from_slice::<SandboxRecord>(&value) {
                Ok(r) => r,
                Err(e) => {
                    warn!(pod = %key, error = %e, "quarantining a corrupt pod record");
                    self.quarantine(&key, value).await;
                    continue;
                }
            };
            let s = Arc::new(Sandbox::new(rec.clone()));
            if rec.state == SandboxState::Creating {
                unfinished.push(s);
                continue;
            }
            if rec.stopping {
                stopping.push(s.clone());
            }
            lock(&self.sandboxes).insert(rec.id.clone(), s);
        }
        for s in unfinished {
            info!(pod = %s.id, "removing a pod whose RunPodSandbox did not finish");
            for c in self.containers_of(&s.id) {
                let _ = self.remove_container_task(&c).await;
            }
            if self.teardown_sandbox(&s).await.is_ok() {
                let _ = self.delete_sandbox_record(&s.id).await;
            } else {
                // Kept (hidden) so the next start tries again.
                warn!(pod = %s.id, "cleanup of an unfinished pod failed; will retry at next start");
            }
        }
        for s in stopping {
            info!(pod = %s.id, "finishing a stop that was under way");
            let _op = s.op.write().await;
            if let Err(e) = self.stop_sandbox_locked(&s).await {
                warn!(pod = %s.id, error = %e, "finishing the stop failed");
            }
        }
        // Containers whose pod is gone (a remove that died half-way).
        let known: std::collections::HashSet<String> =
            lock(&self.sandboxes).keys().cloned().collect();
        for t in self.tasks.list_kind(crate::tasks::TaskKind::Cri) {
            if !known.contains(&t.sandbox_id) {
                if let Ok(task) = self.tasks.lookup(&t.id) {
                    info!(container = %t.id, pod = %t.sandbox_id, "removing a container of a vanished pod");
                    let _ = self.remove_container_task(&task).await;
                }
            }
        }
        info!(pods = lock(&self.sandboxes).len(), "pods recovered");
    }

    /// Moves a record that cannot be read out of the way (bucket
    /// `quarantine`), so it is neither lost nor tried again.
    pub(super) async fn quarantine(&self, key: &str, value: Vec<u8>) {
        use crate::metadata::{QUARANTINE, SANDBOXES};
        let meta = self.meta.clone();
        let key = key.to_string();
        let r = tokio::task::spawn_blocking(move || {
            meta.put(QUARANTINE, &format!("sandboxes/{key}"), value)?;
            meta.delete(SANDBOXES, &key)?;
            meta.flush()
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            warn!("cannot quarantine a corrupt pod record");
        }
    }
}

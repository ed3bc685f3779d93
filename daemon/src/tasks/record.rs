//! Task records: what berthd knows about each container, kept in the
//! metadata DB (bucket `tasks`) and mirrored in memory.

use std::path::PathBuf;

use berth_api::tasks::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::shim::StdioScheme;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Being set up by a Run that has not finished (or died with berthd).
    Creating,
    /// Created in the shim, not started.
    Created,
    Running,
    Exited,
    /// Its shim died and the exit status could not be recovered.
    Unknown,
}

/// Who made a task: `berthctl run` (native) or the CRI (a pod's container).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    #[default]
    Native,
    /// A CRI container.
    Cri,
    /// A CRI pod's pause container (holds the pod's PID namespace).
    Sandbox,
}

impl TaskStatus {
    /// Whether a process may still be alive in the shim.
    pub fn is_live(self) -> bool {
        matches!(self, TaskStatus::Created | TaskStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Creating => "creating",
            TaskStatus::Created => "created",
            TaskStatus::Running => "running",
            TaskStatus::Exited => "exited",
            TaskStatus::Unknown => "unknown",
        }
    }

    pub fn to_pb(self) -> pb::task::Status {
        match self {
            TaskStatus::Creating | TaskStatus::Created => pb::task::Status::Created,
            TaskStatus::Running => pb::task::Status::Running,
            TaskStatus::Exited => pb::task::Status::Exited,
            TaskStatus::Unknown => pb::task::Status::Unknown,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub image: String,
    pub args: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub auto_remove: bool,
    pub status: TaskStatus,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub exit_code: Option<u32>,
    /// Unix nanoseconds.
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    #[serde(default)]
    pub reason: String,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub stdio: StdioScheme,
    /// The active snapshot holding the rootfs (keyed by the task id).
    pub snapshot: String,
    #[serde(default)]
    pub shim_address: String,
    #[serde(default)]
    pub shim_binary: PathBuf,
    pub runtime_root: PathBuf,
    /// The RuntimeClass handler's runtime (beside `runtime_root`); default
    /// for records from before handlers: the `[shim]` runtime.
    #[serde(default)]
    pub runtime: TaskRuntime,
    #[serde(default)]
    pub kind: TaskKind,
    /// The log belongs to someone else (kubelet's pod log dir): removing the
    /// task leaves it.
    #[serde(default)]
    pub keep_log: bool,
    #[serde(default)]
    pub stdin: bool,
    /// The OCI spec's `linux.cgroupsPath` (stats and updates read it).
    #[serde(default)]
    pub cgroups_path: String,
    /// What the CRI knows about the container (None for native tasks).
    #[serde(default)]
    pub cri: Option<crate::metadata::cri::ContainerMeta>,
}

/// The OCI runtime a task's container runs with: its pod's RuntimeClass
/// handler, as passed to the shim in the runc options of CreateTask.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskRuntime {
    /// The handler's name ("" for records from before handlers).
    pub handler: String,
    /// The runtime binary; "" means the `[shim]` runtime.
    pub binary: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
}

impl TaskRecord {
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    pub fn to_pb(&self) -> pb::Task {
        pb::Task {
            id: self.id.clone(),
            name: self.name.clone(),
            sandbox_id: self.sandbox_id.clone(),
            image: self.image.clone(),
            args: self.args.clone(),
            tty: self.tty,
            status: self.status.to_pb() as i32,
            pid: if self.status.is_live() { self.pid } else { 0 },
            exit_code: self.exit_code.unwrap_or(0),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            reason: self.reason.clone(),
            log_path: self.log_path.display().to_string(),
            bundle: self.bundle.display().to_string(),
            shim_address: self.shim_address.clone(),
            auto_remove: self.auto_remove,
        }
    }

    pub fn exit_pb(&self) -> pb::Exit {
        pb::Exit {
            exit_code: self.exit_code.unwrap_or(0),
            finished_at: self.finished_at,
            status: self.status.to_pb() as i32,
            reason: self.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_pid_only_while_live() {
        let r = TaskRecord {
            id: "abc".into(),
            name: "n".into(),
            sandbox_id: "abc".into(),
            image: "docker.io/library/busybox:latest".into(),
            args: vec!["sleep".into()],
            tty: false,
            auto_remove: false,
            status: TaskStatus::Exited,
            pid: 42,
            exit_code: Some(137),
            created_at: 1,
            started_at: 2,
            finished_at: 3,
            reason: String::new(),
            bundle: "/run/berth/containers/abc".into(),
            log_path: "/var/lib/berth/logs/abc.log".into(),
            stdio: StdioScheme::File,
            snapshot: "abc".into(),
            shim_address: "unix:///x".into(),
            shim_binary: "/usr/bin/containerd-shim-runc-v2".into(),
            runtime_root: "/run/berth/runc".into(),
            runtime: TaskRuntime {
                handler: "runc-alt".into(),
                binary: "runc".into(),
                systemd_cgroup: false,
                no_pivot_root: true,
            },
            kind: TaskKind::Native,
            keep_log: false,
            stdin: false,
            cgroups_path: String::new(),
            cri: None,
        };
        let back: TaskRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let p = r.to_pb();
        assert_eq!(p.pid, 0);
        assert_eq!(p.exit_code, 137);
        assert_eq!(p.status, pb::task::Status::Exited as i32);
        assert_eq!(
            r.rootfs(),
            PathBuf::from("/run/berth/containers/abc/rootfs")
        );
    }
}

//! Exec, Attach and PortForward: the CRI calls that hand out a streaming
//! URL (the streaming server does the rest).

use berth_api::runtime::v1 as cri;

use super::error::{CriError, Result};
use super::CriRuntime;
use crate::metadata::cri::SandboxState;
use crate::tasks::{TaskRecord, TaskStatus};
use berth_streaming::Pending;
use berth_streaming::StreamOpts;

impl CriRuntime {
    fn running_container(&self, id: &str, what: &str) -> Result<TaskRecord> {
        let rec = self.container(id)?.record();
        if rec.status != TaskStatus::Running {
            return Err(CriError::failed_precondition(
                what,
                format!("container {} is not running", rec.id),
            ));
        }
        Ok(rec)
    }

    /// A single-use URL for `p`; ResourceExhausted while too many wait.
    fn stream_url(&self, what: &str, p: Pending) -> Result<String> {
        self.streaming()?
            .issue(p)
            .map_err(|e| CriError::resource_exhausted(what, e.to_string()))
    }

    /// Exec: validates, then hands out a single-use streaming URL.
    pub fn exec_url(&self, req: cri::ExecRequest) -> Result<String> {
        let rec = self.running_container(&req.container_id, "Exec")?;
        if req.cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(CriError::invalid(
                format!("Exec in container {}", rec.id),
                "no command",
            ));
        }
        let opts = stream_opts(req.stdin, req.stdout, req.stderr, req.tty, "Exec", &rec.id)?;
        self.stream_url(
            "Exec",
            Pending::Exec {
                container_id: rec.id,
                cmd: req.cmd,
                opts,
            },
        )
    }

    /// Attach: validates, then hands out a single-use streaming URL.
    pub fn attach_url(&self, req: cri::AttachRequest) -> Result<String> {
        let rec = self.running_container(&req.container_id, "Attach")?;
        let opts = stream_opts(
            req.stdin, req.stdout, req.stderr, req.tty, "Attach", &rec.id,
        )?;
        if opts.tty && !rec.tty {
            return Err(CriError::invalid(
                "Attach",
                format!("container {} has no TTY", rec.id),
            ));
        }
        if opts.stdin && !rec.stdin {
            return Err(CriError::invalid(
                "Attach",
                format!("container {} was not created with stdin", rec.id),
            ));
        }
        self.stream_url(
            "Attach",
            Pending::Attach {
                container_id: rec.id,
                opts,
            },
        )
    }

    /// PortForward: validates, then hands out a single-use streaming URL.
    pub fn port_forward_url(&self, req: cri::PortForwardRequest) -> Result<String> {
        let rec = self.sandbox(&req.pod_sandbox_id)?.record();
        if rec.state != SandboxState::Ready {
            return Err(CriError::failed_precondition(
                "PortForward",
                format!("pod sandbox {} is not ready", rec.id),
            ));
        }
        let mut ports = Vec::new();
        for p in req.port {
            ports.push(u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                CriError::invalid(
                    format!("PortForward to pod {}", rec.id),
                    format!("invalid port {p}"),
                )
            })?);
        }
        self.stream_url(
            "PortForward",
            Pending::PortForward {
                sandbox_id: rec.id,
                netns: rec.netns,
                ports,
            },
        )
    }
}

fn stream_opts(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    what: &str,
    id: &str,
) -> Result<StreamOpts> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::invalid(
            format!("{what} in container {id}"),
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(CriError::invalid(
            format!("{what} in container {id}"),
            "tty and stderr cannot both be set (a terminal has one output)",
        ));
    }
    Ok(StreamOpts {
        stdin,
        stdout,
        stderr,
        tty,
    })
}

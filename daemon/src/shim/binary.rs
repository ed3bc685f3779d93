//! Running a shim binary: `start` (which forks the long-lived shim and prints
//! where it listens) and `delete` (clean-up after a shim that died), with the
//! command line and environment containerd uses, and the three forms of the
//! `start` reply containerd accepts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::Message;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use super::client::{normalize_address, ShimError, TaskApi};
use crate::config::Config;

pub use berth_shim_protocol::NAMESPACE;
/// The default shim binary name.
pub const DEFAULT_SHIM: &str = "berth-shim";

/// How a task's stdout/stderr reach its log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StdioScheme {
    /// `file:///path`: raw output, stdout and stderr mixed (containerd's
    /// runc shim).
    File,
    /// `cri-log:///path`: the CRI log format, written by the shim itself.
    CriLog,
}

impl StdioScheme {
    /// The stdout/stderr value for CreateTaskRequest. containerd's runc shim
    /// knows `file://` only without a terminal; with one it takes a plain
    /// path (which it opens as it would a fifo).
    pub fn uri(self, path: &Path, terminal: bool) -> String {
        match self {
            StdioScheme::File if terminal => path.display().to_string(),
            StdioScheme::File => format!("file://{}", path.display()),
            StdioScheme::CriLog => format!("cri-log://{}", path.display()),
        }
    }
}

/// A resolved shim binary and how to talk to it.
#[derive(Debug, Clone)]
pub struct ShimBinary {
    pub path: PathBuf,
    pub stdio: StdioScheme,
    /// Whether `start` gets containerd 2.3's BootstrapParams on stdin.
    pub bootstrap: bool,
}

/// What `start` replied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReply {
    pub address: String,
    pub api: TaskApi,
}

/// Whether the binary is one of containerd's own Go shims, which take no
/// bootstrap parameters and know only the `file`/`fifo`/`binary` stdio schemes.
fn is_containerd_shim(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("containerd-shim-"))
}

fn lookup_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the shim binary the config names: a path, a name in PATH, or (when
/// empty) `berth-shim` next to berthd's own executable, then in PATH.
pub fn resolve(cfg: &Config) -> Result<ShimBinary, ShimError> {
    let wanted = cfg.shim.binary.trim();
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let path = if wanted.is_empty() {
        own_dir
            .map(|d| d.join(DEFAULT_SHIM))
            .filter(|p| is_executable(p))
            .or_else(|| lookup_path(DEFAULT_SHIM))
            .ok_or_else(|| {
                ShimError::Binary(format!(
                    "no shim binary: {DEFAULT_SHIM} is neither next to berthd nor in PATH (set shim.binary in the config)"
                ))
            })?
    } else if wanted.contains('/') {
        let p = PathBuf::from(wanted);
        if !is_executable(&p) {
            return Err(ShimError::Binary(format!(
                "shim binary {} does not exist or is not executable",
                p.display()
            )));
        }
        p
    } else {
        lookup_path(wanted)
            .or_else(|| own_dir.map(|d| d.join(wanted)).filter(|p| is_executable(p)))
            .ok_or_else(|| ShimError::Binary(format!("shim binary {wanted} is not in PATH")))?
    };
    let go_shim = is_containerd_shim(&path);
    let stdio = match cfg.shim.stdio.as_str() {
        "file" => StdioScheme::File,
        "cri-log" => StdioScheme::CriLog,
        _ if go_shim => StdioScheme::File,
        _ => StdioScheme::CriLog,
    };
    let bootstrap = match cfg.shim.bootstrap.as_str() {
        "always" => true,
        "never" => false,
        _ => !go_shim,
    };
    Ok(ShimBinary {
        path,
        stdio,
        bootstrap,
    })
}

/// The `{version, address, protocol}` JSON reply of containerd 2.0 to 2.2.
#[derive(Deserialize)]
struct JsonReply {
    #[serde(default)]
    version: i64,
    #[serde(default)]
    address: String,
    #[serde(default)]
    protocol: String,
}

fn api_for(version: i64, address: &str, protocol: &str) -> Result<StartReply, ShimError> {
    if !protocol.is_empty() && protocol != "ttrpc" {
        return Err(ShimError::Binary(format!(
            "shim speaks {protocol}; berth supports only ttrpc"
        )));
    }
    if address.trim().is_empty() {
        return Err(ShimError::Binary("shim start printed no address".into()));
    }
    let api = match version {
        // Bootstrap "version 2" is the parameter format of containerd 1.x
        // shims: task API v2.
        ..=2 => TaskApi::V2,
        3 => TaskApi::V3,
        v => {
            return Err(ShimError::Binary(format!(
                "shim asks for task API version {v}; berth knows 2 and 3"
            )))
        }
    };
    Ok(StartReply {
        address: normalize_address(address),
        api,
    })
}

/// Parses what `start` printed: a plain address (task API v2), JSON
/// `{version, address, protocol}`, or a protobuf `BootstrapResult`.
pub fn parse_start_reply(out: &[u8]) -> Result<StartReply, ShimError> {
    if let Ok(text) = std::str::from_utf8(out) {
        let t = text.trim();
        if t.starts_with('{') {
            let j: JsonReply = serde_json::from_str(t).map_err(|e| {
                ShimError::Binary(format!("shim start printed bad JSON ({e}): {t}"))
            })?;
            return api_for(j.version, &j.address, &j.protocol);
        }
        if t.starts_with("unix://") || t.starts_with('/') || t.starts_with('@') {
            if t.lines().count() != 1 {
                return Err(ShimError::Binary(format!(
                    "shim start printed more than an address: {t:?}"
                )));
            }
            return api_for(2, t, "ttrpc");
        }
    }
    match BootstrapResult::parse_from_bytes(out) {
        Ok(r) if !r.address.is_empty() => api_for(r.version.into(), &r.address, &r.protocol),
        _ => Err(ShimError::Binary(format!(
            "shim start printed no address: {:?}",
            String::from_utf8_lossy(out)
        ))),
    }
}

/// Everything a shim command needs to know about berthd.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub binary: ShimBinary,
    /// berthd's socket, passed as `-address`.
    pub daemon_address: PathBuf,
    /// berthd's own executable, passed as `-publish-binary`.
    pub publish_binary: PathBuf,
    pub socket_dir: PathBuf,
    pub timeout: Duration,
    pub debug: bool,
}

struct Outcome {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Launcher {
    fn ttrpc_address(&self) -> String {
        format!("{}.ttrpc", self.daemon_address.display())
    }

    fn command(&self, id: &str, cwd: &Path, action: &[&str]) -> tokio::process::Command {
        // berthd learns of exits through Wait and keeps no event bus (its `publish`
        // reads an event and drops it), so its own shim is given no publisher: each
        // event (four per container, three per exec) would otherwise be an exec of
        // berthd. containerd's shims expect one and keep getting it.
        let events = is_containerd_shim(&self.binary.path);
        let publish: &std::ffi::OsStr = if events {
            self.publish_binary.as_os_str()
        } else {
            "".as_ref()
        };
        let mut cmd = tokio::process::Command::new(&self.binary.path);
        cmd.arg("-namespace")
            .arg(NAMESPACE)
            .arg("-address")
            .arg(&self.daemon_address)
            .arg("-publish-binary")
            .arg(publish)
            .arg("-id")
            .arg(id);
        if self.debug {
            cmd.arg("-debug");
        }
        cmd.args(action)
            .current_dir(cwd)
            .env("GOMAXPROCS", "2")
            .env(
                "TTRPC_ADDRESS",
                if events {
                    self.ttrpc_address()
                } else {
                    String::new()
                },
            )
            .env("GRPC_ADDRESS", &self.daemon_address)
            .env("NAMESPACE", NAMESPACE)
            .env(berth_shim_protocol::env::SOCKET_DIR, &self.socket_dir)
            // Its own process group, so a Ctrl-C meant for berthd in a
            // terminal does not reach the shims.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a shim command to its end (bounded by the timeout). The
    /// long-lived shim `start` forks may keep our pipes open: output is taken
    /// as soon as the command itself has exited.
    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        stdin: Option<Vec<u8>>,
        what: &str,
    ) -> Result<Outcome, ShimError> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let bin = self.binary.path.display().to_string();
        let mut child = cmd
            .spawn()
            .map_err(|e| ShimError::Binary(format!("running {bin} {what}: {e}")))?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            // A shim that ignores stdin may close it early: not an error.
            let _ = w.write_all(&data).await;
            drop(w);
        }
        let collect = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let mut chunk = [0u8; 4096];
                    loop {
                        match r.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) if buf.len() < (1 << 20) => buf.extend_from_slice(&chunk[..n]),
                            Ok(_) => {}
                        }
                    }
                }
                buf
            })
        };
        let out = collect(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        );
        let err = collect(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        );
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ShimError::Binary(format!("waiting for {bin} {what}: {e}"))),
            Err(_) => {
                let _ = child.kill().await;
                return Err(ShimError::Binary(format!(
                    "{bin} {what} did not finish within {}s",
                    self.timeout.as_secs()
                )));
            }
        };
        let grace = Duration::from_millis(500);
        let stdout = grab(out, grace).await;
        let stderr = grab(err, grace).await;
        Ok(Outcome {
            status,
            stdout,
            stderr,
        })
    }

    /// `<shim> ... -id ID start` with `cwd` as the working directory (the
    /// bundle of the pod's first container, whose config.json containerd's
    /// runc shim reads for its grouping annotations).
    pub async fn start(&self, id: &str, cwd: &Path) -> Result<StartReply, ShimError> {
        let cmd = self.command(id, cwd, &["start"]);
        let stdin = if self.binary.bootstrap {
            let params = BootstrapParams {
                instance_id: id.to_string(),
                namespace: NAMESPACE.to_string(),
                containerd_version: format!("berth {}", env!("CARGO_PKG_VERSION")),
                containerd_ttrpc_address: self.ttrpc_address(),
                containerd_grpc_address: self.daemon_address.display().to_string(),
                containerd_binary: self.publish_binary.display().to_string(),
                socket_dir: Some(self.socket_dir.display().to_string()),
                ..Default::default()
            };
            Some(params.write_to_bytes().map_err(|e| {
                ShimError::Binary(format!("encoding the bootstrap parameters: {e}"))
            })?)
        } else {
            None
        };
        let out = self.run(cmd, stdin, "start").await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(ShimError::Binary(format!(
                "{} start failed ({}): {}",
                self.binary.path.display(),
                out.status,
                first_line(&stderr, &out.stdout)
            )));
        }
        if !stderr.trim().is_empty() {
            debug!(shim = %id, stderr = %stderr.trim(), "shim start said");
        }
        parse_start_reply(&out.stdout)
    }

    /// `<shim> ... -id ID -bundle BUNDLE delete` in the bundle: the shim's
    /// clean-up after its long-lived process died (containerd's runc shim
    /// force-deletes the container and unmounts its rootfs). Returns the exit
    /// status it reports.
    pub async fn delete(&self, id: &str, bundle: &Path) -> Result<api::DeleteResponse, ShimError> {
        let cwd = if bundle.is_dir() {
            bundle.to_path_buf()
        } else {
            PathBuf::from("/")
        };
        let bundle_arg = bundle.display().to_string();
        let cmd = self.command(id, &cwd, &["-bundle", &bundle_arg, "delete"]);
        let out = self.run(cmd, None, "delete").await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(ShimError::Binary(format!(
                "{} delete failed ({}): {}",
                self.binary.path.display(),
                out.status,
                first_line(&stderr, &out.stdout)
            )));
        }
        let stderr = stderr.trim();
        if stderr.contains("level=warn") || stderr.contains("level=error") {
            warn!(task = %id, stderr = %stderr, "shim delete warnings");
        } else if !stderr.is_empty() {
            debug!(task = %id, stderr = %stderr, "shim delete said");
        }
        api::DeleteResponse::parse_from_bytes(&out.stdout)
            .map_err(|e| ShimError::Binary(format!("shim delete printed no DeleteResponse: {e}")))
    }
}

async fn grab(h: tokio::task::JoinHandle<Vec<u8>>, grace: Duration) -> Vec<u8> {
    let abort = h.abort_handle();
    match tokio::time::timeout(grace, h).await {
        Ok(Ok(v)) => v,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

fn first_line(stderr: &str, stdout: &[u8]) -> String {
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(stdout).into_owned()
    } else {
        stderr.to_string()
    };
    let t = text.trim();
    // Go shims log logrus lines; the last one carries the cause.
    t.lines()
        .last()
        .unwrap_or("no output")
        .chars()
        .take(500)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address_means_v2() {
        let r = parse_start_reply(b"unix:///run/containerd/s/abc\n").unwrap();
        assert_eq!(r.address, "unix:///run/containerd/s/abc");
        assert_eq!(r.api, TaskApi::V2);
    }

    #[test]
    fn json_reply_carries_version() {
        let r = parse_start_reply(br#"{"version":3,"address":"unix:///s/x","protocol":"ttrpc"}"#)
            .unwrap();
        assert_eq!(r.api, TaskApi::V3);
        assert_eq!(r.address, "unix:///s/x");
        let r = parse_start_reply(br#"{"version":2,"address":"/s/y","protocol":"ttrpc"}"#).unwrap();
        assert_eq!(r.api, TaskApi::V2);
        assert_eq!(r.address, "unix:///s/y");
        assert!(parse_start_reply(br#"{"version":3,"address":"/s/y","protocol":"grpc"}"#).is_err());
        assert!(parse_start_reply(br#"{"version":9,"address":"/s/y"}"#).is_err());
    }

    #[test]
    fn protobuf_reply() {
        let r = BootstrapResult {
            version: 3,
            address: "unix:///run/berth/s/abc".into(),
            protocol: "ttrpc".into(),
            ..Default::default()
        };
        let parsed = parse_start_reply(&r.write_to_bytes().unwrap()).unwrap();
        assert_eq!(parsed.api, TaskApi::V3);
        assert_eq!(parsed.address, "unix:///run/berth/s/abc");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_start_reply(b"").is_err());
        assert!(parse_start_reply(b"oops\n").is_err());
    }

    #[test]
    fn stdio_uris() {
        let p = Path::new("/var/log/x.log");
        assert_eq!(StdioScheme::File.uri(p, false), "file:///var/log/x.log");
        assert_eq!(StdioScheme::File.uri(p, true), "/var/log/x.log");
        assert_eq!(
            StdioScheme::CriLog.uri(p, false),
            "cri-log:///var/log/x.log"
        );
    }

    #[test]
    fn resolve_picks_scheme_by_flavour() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["containerd-shim-runc-v2", "my-shim"] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cfg = Config::default();
        cfg.shim.binary = dir
            .path()
            .join("containerd-shim-runc-v2")
            .display()
            .to_string();
        let b = resolve(&cfg).unwrap();
        assert_eq!(b.stdio, StdioScheme::File);
        assert!(!b.bootstrap);
        cfg.shim.binary = dir.path().join("my-shim").display().to_string();
        let b = resolve(&cfg).unwrap();
        assert_eq!(b.stdio, StdioScheme::CriLog);
        assert!(b.bootstrap);
        cfg.shim.stdio = "file".into();
        cfg.shim.bootstrap = "never".into();
        let b = resolve(&cfg).unwrap();
        assert_eq!(b.stdio, StdioScheme::File);
        assert!(!b.bootstrap);
        cfg.shim.binary = dir.path().join("nope").display().to_string();
        assert!(resolve(&cfg).is_err());
    }
}

//! A CNI runtime (spec 1.0.0, compatible with plugins that speak 0.3.x-1.0.0):
//! loads network configs, runs plugin chains for ADD/CHECK/DEL, injects
//! `runtimeConfig` through the capabilities mechanism, and caches each ADD
//! result (the spec requires it) for DEL and CHECK.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// The version written into configs that do not name one.
pub const SPEC_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network config (*.conflist, *.conf, *.json) in {}", .0.display())]
    NoConfig(PathBuf),
    #[error("reading CNI config {}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CNI config {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("invalid CNI container id {0:?}")]
    InvalidContainerId(String),
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin:?} ({command}): error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin:?} ({command}) failed ({status}): {output}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        status: String,
        output: String,
    },
    #[error("CNI plugin {plugin:?} ({command}) timed out after {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("running CNI plugin {plugin:?} ({command})")]
    Exec {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin:?} ({command}) returned an invalid result: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("{source}; cleanup (DEL) also failed: {cleanup}")]
    AddCleanup {
        #[source]
        source: Box<CniError>,
        cleanup: Box<CniError>,
    },
    #[error("CNI CHECK for {0}: no cached ADD result")]
    NoCachedResult(String),
    #[error("CNI result cache {}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A network configuration list (a single `.conf` is wrapped into one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "disableCheck", default)]
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Parses a `.conflist`.
    pub fn from_conflist(bytes: &[u8], path: &Path) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.into(),
            reason,
        };
        let v: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing \"name\"".into()))?
            .to_string();
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(SPEC_VERSION)
            .to_string();
        let disable_check = match v.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            Some(_) => return Err(invalid("\"disableCheck\" must be a boolean".into())),
        };
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("missing \"plugins\" list".into()))?;
        if plugins.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let obj = p
                .as_object()
                .ok_or_else(|| invalid(format!("plugin {i} is not an object")))?;
            check_type(obj).map_err(|r| invalid(format!("plugin {i}: {r}")))?;
            out.push(obj.clone());
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins: out,
        })
    }

    /// Parses a single-plugin `.conf`/`.json` and wraps it in a list.
    pub fn from_conf(bytes: &[u8], path: &Path) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.into(),
            reason,
        };
        let obj: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if obj.contains_key("plugins") {
            // A conflist saved with a .conf/.json name.
            return Self::from_conflist(bytes, path);
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing \"name\"".into()))?
            .to_string();
        check_type(&obj).map_err(invalid)?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(SPEC_VERSION)
            .to_string();
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check: false,
            plugins: vec![obj],
        })
    }

    /// Loads the first config in `dir` in lexical order of file names.
    pub fn load_first(dir: &Path) -> Result<Self, CniError> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::NoConfig(dir.into()))
            }
            Err(source) => {
                return Err(CniError::ReadConfig {
                    path: dir.into(),
                    source,
                })
            }
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                ) && p.is_file()
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConfig(dir.into()))?;
        let bytes = std::fs::read(&path).map_err(|source| CniError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
            Self::from_conflist(&bytes, &path)
        } else {
            Self::from_conf(&bytes, &path)
        }
    }
}

fn check_type(obj: &Map<String, Value>) -> Result<(), String> {
    match obj.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => Ok(()),
        Some(t) => Err(format!("invalid plugin type {t:?}")),
        None => Err("missing plugin \"type\"".into()),
    }
}

/// What the runtime tells the plugins about one attachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConf {
    /// CNI_CONTAINERID: the sandbox id.
    pub container_id: String,
    /// CNI_NETNS: the pinned namespace's path.
    pub netns: PathBuf,
    /// CNI_IFNAME, e.g. "eth0".
    pub ifname: String,
    /// CNI_ARGS key/value pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. "portMappings", "dns", "bandwidth"),
    /// passed as `runtimeConfig` to plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// An interface in a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. "10.88.0.5/16".
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A parsed ADD result, with the raw JSON kept for `prevResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(skip)]
    pub raw: Value,
}

impl CniResult {
    pub fn parse(raw: Value) -> Result<CniResult, String> {
        let mut r: CniResult = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        if r.ips.is_empty() {
            // 0.1.0/0.2.0 results: "ip4"/"ip6" objects.
            for key in ["ip4", "ip6"] {
                if let Some(ip) = raw
                    .get(key)
                    .and_then(|v| v.get("ip"))
                    .and_then(Value::as_str)
                {
                    r.ips.push(IpConfig {
                        address: ip.into(),
                        gateway: raw[key]
                            .get("gateway")
                            .and_then(Value::as_str)
                            .map(String::from),
                        interface: None,
                    });
                }
            }
        }
        r.raw = raw;
        Ok(r)
    }

    /// The pod's addresses: IPs on an interface inside a sandbox (or on no
    /// named interface), in result order.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .map(|iface| !iface.sandbox.is_empty())
                    .unwrap_or(true),
                None => true,
            })
            .filter_map(IpConfig::ip)
            .collect()
    }
}

/// What is kept per attachment between ADD and DEL.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network_name: String,
    config: NetworkConfigList,
    #[serde(rename = "capabilityArgs")]
    capability_args: Map<String, Value>,
    result: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

/// Runs plugins. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
    del_attempts: u32,
}

impl Cni {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf, timeout: Duration) -> Cni {
        Cni {
            bin_dirs,
            cache_dir,
            timeout,
            del_attempts: 3,
        }
    }

    /// Runs ADD through the list, caches and returns the final result.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        check_container_id(&rt.container_id)?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let conf = build_conf(list, plugin, prev.as_ref(), rt);
            let out = match self.exec(Command::Add, &conf, rt).await {
                Ok(out) if !out.is_null() => out,
                Ok(_) => {
                    let e = CniError::BadResult {
                        plugin: plugin_type(plugin),
                        command: "ADD",
                        reason: "empty output".into(),
                    };
                    return Err(self.rollback_add(list, i + 1, rt, e).await);
                }
                Err(e) => {
                    // A plugin that was never found never ran: no DEL for it.
                    let ran = if matches!(e, CniError::PluginNotFound { .. }) {
                        i
                    } else {
                        i + 1
                    };
                    return Err(self.rollback_add(list, ran, rt, e).await);
                }
            };
            prev = Some(out);
        }
        let raw = prev.unwrap_or(Value::Null);
        let last = list.plugins.last().map(plugin_type).unwrap_or_default();
        let result = CniResult::parse(raw.clone()).map_err(|reason| CniError::BadResult {
            plugin: last,
            command: "ADD",
            reason,
        })?;
        self.write_cache(&CacheEntry {
            kind: "cniCacheV1".into(),
            container_id: rt.container_id.clone(),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            config: list.clone(),
            capability_args: rt.capability_args.clone(),
            result: raw,
        })?;
        Ok(result)
    }

    /// After a failed ADD, DELs (in reverse) the plugins that ran, as the spec
    /// asks of runtimes; returns the ADD error, with the DEL error if any.
    async fn rollback_add(
        &self,
        list: &NetworkConfigList,
        ran: usize,
        rt: &RuntimeConf,
        err: CniError,
    ) -> CniError {
        if ran == 0 {
            return err;
        }
        let mut partial = list.clone();
        partial.plugins.truncate(ran);
        match self.del_retried(&partial, None, rt).await {
            Ok(()) => err,
            Err(cleanup) => CniError::AddCleanup {
                source: Box::new(err),
                cleanup: Box::new(cleanup),
            },
        }
    }

    /// Runs CHECK through the list with the cached ADD result.
    pub async fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        check_container_id(&rt.container_id)?;
        if list.disable_check || !supports_prev_result(&list.cni_version) {
            return Ok(());
        }
        let cached = self
            .read_cache(&rt.container_id, &rt.ifname)?
            .ok_or_else(|| CniError::NoCachedResult(rt.container_id.clone()))?;
        let mut rt = rt.clone();
        rt.capability_args = cached.capability_args.clone();
        for plugin in &list.plugins {
            let conf = build_conf(list, plugin, Some(&cached.result), &rt);
            self.exec(Command::Check, &conf, &rt).await?;
        }
        Ok(())
    }

    /// Runs DEL through the list in reverse, retried; idempotent. The config
    /// and capability args cached at ADD win over `list`; with neither there
    /// is nothing to delete.
    pub async fn del(
        &self,
        list: Option<&NetworkConfigList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        check_container_id(&rt.container_id)?;
        let cached = self.read_cache(&rt.container_id, &rt.ifname)?;
        let mut rt = rt.clone();
        let (list, prev) = match (&cached, list) {
            (Some(c), _) => {
                rt.capability_args = c.capability_args.clone();
                (c.config.clone(), Some(c.result.clone()))
            }
            (None, Some(l)) => (l.clone(), None),
            (None, None) => return Ok(()),
        };
        if !rt.netns.as_os_str().is_empty() && !super::netns::holds_namespace(&rt.netns) {
            // The namespace is gone (no pin, or a pin whose mount is gone):
            // plugins clean up what they can outside, as containerd does.
            rt.netns = PathBuf::new();
        }
        let prev = prev.filter(|_| supports_prev_result(&list.cni_version));
        self.del_retried(&list, prev.as_ref(), &rt).await?;
        self.remove_cache(&rt.container_id, &rt.ifname)
    }

    async fn del_retried(
        &self,
        list: &NetworkConfigList,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.del_once(list, prev, rt).await {
                Ok(()) => return Ok(()),
                Err(e @ CniError::PluginNotFound { .. }) => return Err(e),
                Err(e) if attempt >= self.del_attempts => return Err(e),
                Err(e) => {
                    tracing::warn!(container = %rt.container_id, attempt, error = %e, "CNI DEL failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
    }

    async fn del_once(
        &self,
        list: &NetworkConfigList,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        for plugin in list.plugins.iter().rev() {
            let conf = build_conf(list, plugin, prev, rt);
            match self.exec(Command::Del, &conf, rt).await {
                // Code 3, "container unknown": nothing left to clean up.
                Ok(_) | Err(CniError::Plugin { code: 3, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The cached ADD result for an attachment, if any.
    pub fn cached_result(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CniResult>, CniError> {
        check_container_id(container_id)?;
        Ok(self
            .read_cache(container_id, ifname)?
            .and_then(|c| CniResult::parse(c.result).ok()))
    }

    fn find_plugin(&self, kind: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: kind.into(),
                dirs: self.bin_dirs.clone(),
            })
    }

    async fn exec(&self, cmd: Command, conf: &Value, rt: &RuntimeConf) -> Result<Value, CniError> {
        let kind = conf
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let command = cmd.as_str();
        let bin = self.find_plugin(&kind)?;
        let exec_err = |source| CniError::Exec {
            plugin: kind.clone(),
            command,
            source,
        };
        let cni_path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let mut child = tokio::process::Command::new(&bin);
        child
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", rt.cni_args())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A plugin must not outlive a berthd killed mid-call: recovery's DEL
        // would race an ADD still running.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // only the child's own state between fork and exec.
        unsafe {
            child.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = child.spawn().map_err(exec_err)?;
        let mut input = child.stdin.take();
        let run = async move {
            if let Some(mut i) = input.take() {
                // A plugin may exit without reading stdin; its error is what matters.
                let _ = i.write_all(&stdin).await;
                drop(i);
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r.map_err(exec_err)?,
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: kind,
                    command,
                    timeout: self.timeout,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if let Ok(err) = serde_json::from_slice::<Value>(&output.stdout) {
                if let Some(code) = err.get("code").and_then(Value::as_u64) {
                    let s = |k: &str| {
                        err.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    return Err(CniError::Plugin {
                        plugin: kind,
                        command,
                        code,
                        msg: s("msg"),
                        details: s("details"),
                    });
                }
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(CniError::PluginFailed {
                plugin: kind,
                command,
                status: output.status.to_string(),
                output: format!("{} {}", stdout.trim(), stderr.trim())
                    .trim()
                    .chars()
                    .take(4096)
                    .collect(),
            });
        }
        if cmd != Command::Add || stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| CniError::BadResult {
            plugin: kind,
            command,
            reason: e.to_string(),
        })
    }

    fn cache_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{container_id}-{ifname}.json"))
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.cache_path(&entry.container_id, &entry.ifname);
        let err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| err(e.into()))?;
        berth_sysutil::write_atomic(&path, &bytes).map_err(err)
    }

    fn read_cache(&self, container_id: &str, ifname: &str) -> Result<Option<CacheEntry>, CniError> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(e) => Ok(Some(e)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt CNI result cache");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    fn remove_cache(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidContainerId(id.into()))
    }
}

/// Whether `version` (a config's cniVersion) has prevResult for CHECK/DEL
/// (0.4.0 and later).
fn supports_prev_result(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major >= 1 || minor >= 4
}

/// The config one plugin gets on stdin: its own object with the list's name
/// and version, the previous result, and `runtimeConfig` holding the
/// capability args it declared.
fn build_conf(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    rt: &RuntimeConf,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev {
        Some(p) if !p.is_null() => {
            conf.insert("prevResult".into(), p.clone());
        }
        _ => {
            conf.remove("prevResult");
        }
    }
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        let mut rc = Map::new();
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(arg) = rt.capability_args.get(cap) {
                    rc.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    Value::Object(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> NetworkConfigList {
        NetworkConfigList::from_conflist(
            json!({
                "cniVersion": "1.0.0",
                "name": "net",
                "plugins": [
                    {"type": "bridge", "bridge": "b0"},
                    {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
                ]
            })
            .to_string()
            .as_bytes(),
            Path::new("x.conflist"),
        )
        .unwrap()
    }

    #[test]
    fn injects_name_version_prev_and_capabilities() {
        let l = list();
        let mut rt = RuntimeConf::default();
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        rt.capability_args
            .insert("bandwidth".into(), json!({"ingressRate": 1}));
        let c0 = build_conf(&l, &l.plugins[0], None, &rt);
        assert_eq!(c0["name"], "net");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("runtimeConfig").is_none());
        assert!(c0.get("prevResult").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let c1 = build_conf(&l, &l.plugins[1], Some(&prev), &rt);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(c1["runtimeConfig"].get("bandwidth").is_none());
    }

    #[test]
    fn conf_files_load_in_lexical_order_and_single_confs_are_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NetworkConfigList::load_first(dir.path()),
            Err(CniError::NoConfig(_))
        ));
        std::fs::write(dir.path().join("README"), "not a config").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            json!({"cniVersion": "0.4.0", "name": "b", "plugins": [{"type": "loopback"}]})
                .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            json!({"cniVersion": "0.3.1", "name": "a", "type": "bridge"}).to_string(),
        )
        .unwrap();
        let l = NetworkConfigList::load_first(dir.path()).unwrap();
        assert_eq!(l.name, "a");
        assert_eq!(l.cni_version, "0.3.1");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0]["type"], "bridge");
        std::fs::remove_file(dir.path().join("10-a.conf")).unwrap();
        let l = NetworkConfigList::load_first(dir.path()).unwrap();
        assert_eq!(l.name, "b");
    }

    #[test]
    fn bad_configs_are_rejected() {
        let p = Path::new("bad.conflist");
        for bad in [
            json!({"name": "x", "plugins": []}),
            json!({"plugins": [{"type": "bridge"}]}),
            json!({"name": "x", "plugins": [{"bridge": "b"}]}),
            json!({"name": "x", "plugins": [{"type": "../bin/sh"}]}),
        ] {
            let err = NetworkConfigList::from_conflist(bad.to_string().as_bytes(), p);
            assert!(
                matches!(err, Err(CniError::InvalidConfig { .. })),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn results_parse_and_give_pod_ips() {
        let r = CniResult::parse(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "10.88.0.1/16", "interface": 0},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "fd00::5/64", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.0.0.10"]}
        }))
        .unwrap();
        assert_eq!(
            r.pod_ips(),
            vec![
                "10.88.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(r.routes[0].gw.as_deref(), Some("10.88.0.1"));
        assert_eq!(r.dns.nameservers, vec!["10.0.0.10"]);

        let old =
            CniResult::parse(json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/24"}})).unwrap();
        assert_eq!(old.pod_ips(), vec!["10.1.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn versions_and_ids() {
        assert!(supports_prev_result("1.0.0"));
        assert!(supports_prev_result("0.4.0"));
        assert!(!supports_prev_result("0.3.1"));
        assert!(check_container_id("abc-123_x.y").is_ok());
        assert!(check_container_id("../x").is_err());
        assert!(check_container_id("").is_err());
    }

    /// A fake plugin (a shell script) shows the env, stdin and error handling.
    #[tokio::test]
    async fn plugin_errors_name_the_plugin_and_code() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = bin.join("failer");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cni = Cni::new(
            vec![bin.clone()],
            dir.path().join("cache"),
            Duration::from_secs(10),
        );
        let l = NetworkConfigList::from_conflist(
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "failer"}]})
                .to_string()
                .as_bytes(),
            Path::new("n.conflist"),
        )
        .unwrap();
        let rt = RuntimeConf {
            container_id: "c1".into(),
            netns: "/nonexistent".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let err = cni.add(&l, &rt).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CniError::Plugin { code: 7, .. }), "{msg}");
        assert!(msg.contains("failer") && msg.contains("boom"), "{msg}");

        let mut l2 = l.clone();
        l2.plugins[0].insert("type".into(), json!("nosuch"));
        let err = cni.add(&l2, &rt).await.unwrap_err();
        assert!(
            matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "nosuch"),
            "{err}"
        );
        // DEL with nothing cached and no config is a no-op.
        cni.del(None, &rt).await.unwrap();

        // A plugin that hangs is killed after the timeout.
        let sleeper = bin.join("sleeper");
        std::fs::write(
            &sleeper,
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let quick = Cni::new(
            vec![bin],
            dir.path().join("cache"),
            Duration::from_millis(300),
        );
        let mut l3 = l.clone();
        l3.plugins[0].insert("type".into(), json!("sleeper"));
        let started = std::time::Instant::now();
        let err = quick.add(&l3, &rt).await.unwrap_err();
        assert!(
            matches!(&err, CniError::Timeout { plugin, .. } if plugin == "sleeper"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

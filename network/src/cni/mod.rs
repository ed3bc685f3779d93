//! A CNI runtime (spec 1.0.0, compatible with plugins that speak 0.3.x-1.0.0):
//! loads network configs, runs plugin chains for ADD/CHECK/DEL, injects
//! `runtimeConfig` through the capabilities mechanism, and caches each ADD
//! result (the spec requires it) for DEL and CHECK.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use cache::CacheEntry;
use config::build_conf;
use exec::Command;

mod cache;
mod config;
mod exec;
mod result;

pub use config::NetworkConfigList;
pub use exec::RuntimeConf;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};

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

#[cfg(test)]
mod tests;

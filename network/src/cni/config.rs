//! Network configuration lists (`.conflist`, or a single `.conf` wrapped in
//! one) and the per-plugin config built from them for each invocation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CniError, RuntimeConf, SPEC_VERSION};

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

/// The config one plugin gets on stdin: its own object with the list's name
/// and version, the previous result, and `runtimeConfig` holding the
/// capability args it declared.
pub(super) fn build_conf(
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

//! The result a plugin chain returns from ADD (interfaces, IPs, routes, DNS).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

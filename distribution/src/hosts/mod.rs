//! Registry host configuration in containerd's `hosts.toml` format.
//!
//! Matches containerd's `remotes/docker/config` (`ConfigureHosts`,
//! `HostDirFromRoot`, `loadHostDir`, `parseHostsFile`) and `docs/hosts.md`:
//!
//! - For registry `R` the first existing directory among
//!   `<config_path>/<R with ":port" as "_port_">`, `<config_path>/<R>` and
//!   `<config_path>/_default` is used (`127.0.0.1_5000_`, `127.0.0.1:5000`,
//!   `_default`). No directory at all means defaults.
//! - In that directory, `hosts.toml` gives the hosts: every `[host."<url>"]`
//!   table in file order (mirrors), then the top-level `server` last. Without
//!   `server`, the last entry is the registry itself with containerd's
//!   defaults (`docker.io` → `https://registry-1.docker.io/v2`, otherwise
//!   `https://<R>/v2`; loopback registries get TLS verification off and an
//!   https→http fallback, see [`RegistryHost::fallback_http`]).
//! - Without `hosts.toml` (or with an empty one) the directory is read
//!   docker `certs.d` style: `*.crt` are CA certificates and `*.cert` (+ the
//!   matching `*.key`, if present) are client certificates for the registry.
//! - Host URLs may carry a path: it is cleaned and `/v2` is appended unless
//!   it already ends in `/v2` or `override_path = true`.
//! - Unspecified `capabilities` mean all of them (pull, resolve, push,
//!   referrers), for mirrors too, as in containerd. Only hosts with `resolve`
//!   may turn a tag into a digest: see [`RegistryHost::can_fetch`] and
//!   [`fetch_hosts`].
//! - An `http://` host that has TLS settings (`ca`, `client` or
//!   `skip_verify`, even `skip_verify = false`) and a port other than 80 is
//!   tried over https first, falling back to http (containerd's
//!   `NewHTTPFallback`): it is returned with `scheme = "https"` and
//!   `fallback_http = true`.
//!
//! Keys this module does not act on (`dial_timeout`, `proxy`, `dial_addr`,
//! …) are accepted and ignored, so any containerd `hosts.toml` parses.
//!
//! Deliberate differences from containerd, all on broken input: a
//! `hosts.toml` that fails to parse is an error naming the file (containerd
//! logs it and falls back to the `certs.d` files); a URL without `://` gets
//! `https://` (containerd only checks for an `http` prefix); a URL with a
//! scheme other than http/https or with credentials is rejected; an empty key
//! in a `client` pair means "key in the cert file" (containerd would read the
//! directory); hosts given as dotted keys (`host."https://m".capabilities =
//! …`) are used too (containerd only orders `[host."…"]` table headers and
//! drops the rest).

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod parse;

use parse::parse_hosts_file;

/// File name of the per-registry configuration.
pub const HOSTS_FILE: &str = "hosts.toml";
/// Directory consulted when no registry-specific directory exists.
pub const DEFAULT_HOST_DIR: &str = "_default";
/// Where docker hub (`docker.io`) is really served.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// What a registry host may be used for (containerd's `HostCapabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Fetch manifests by tag, i.e. turn a tag into a digest. Trusted operation.
    pub resolve: bool,
    /// Push blobs and manifests.
    pub push: bool,
    /// Use the OCI referrers API.
    pub referrers: bool,
}

impl Capabilities {
    /// Everything; the default when `capabilities` is not given.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
        referrers: true,
    };
    /// Nothing.
    pub const NONE: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: false,
        referrers: false,
    };
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::ALL
    }
}

/// One endpoint to try for a registry, in order (mirrors first, server last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `"http"` or `"https"`.
    pub scheme: String,
    /// `host[:port]`, e.g. `registry-1.docker.io` or `127.0.0.1:5000`.
    pub host: String,
    /// API root: `/v2` normally, `/prefix/v2` for a URL with a path, the
    /// path as given (possibly `""`) with `override_path`. No trailing `/`.
    pub path: String,
    pub capabilities: Capabilities,
    /// Do not verify the server certificate chain and host name.
    pub skip_verify: bool,
    /// Extra CA certificate files (absolute or relative to the cwd when the
    /// config dir was relative).
    pub ca: Vec<PathBuf>,
    /// Client certificates: `(cert, key)`; no key means the cert file holds it.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra headers to send, in file order; a name may repeat.
    pub header: Vec<(String, String)>,
    /// `scheme` is `https`, but when the https attempt fails because the server
    /// does not speak TLS (it answers in plain HTTP, hangs up or times out) the
    /// request is retried over `http`. A server that does speak TLS (it shows a
    /// certificate that is rejected, or sends an alert) gets no plain-HTTP
    /// retry: its TLS error is reported.
    pub fallback_http: bool,
}

impl RegistryHost {
    /// Base URL of the API root, e.g. `https://registry-1.docker.io/v2`.
    /// Requests go to `{url}/{repository}/manifests/{object}` etc.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }

    /// May this host serve a manifest fetch? By digest only `pull` is needed;
    /// by tag the host must also be trusted to `resolve`.
    pub fn can_fetch(&self, by_digest: bool) -> bool {
        self.capabilities.pull && (by_digest || self.capabilities.resolve)
    }

    /// May this host be pushed to?
    pub fn can_push(&self) -> bool {
        self.capabilities.push
    }

    /// True when this host is not the registry itself (a mirror or another
    /// server): containerd then adds `?ns=<registry>` to its requests.
    pub fn is_mirror_for(&self, registry: &str) -> bool {
        self.host != registry && !(registry == "docker.io" && self.host == DOCKER_HUB_HOST)
    }
}

/// The hosts, in order, that may serve a manifest fetch (`by_digest`: the
/// reference is pinned to a digest; otherwise a tag must be resolved and only
/// hosts with the `resolve` capability qualify). Blobs are always by digest.
pub fn fetch_hosts(hosts: &[RegistryHost], by_digest: bool) -> Vec<&RegistryHost> {
    hosts.iter().filter(|h| h.can_fetch(by_digest)).collect()
}

/// The hosts, in order, that may be pushed to.
pub fn push_hosts(hosts: &[RegistryHost]) -> Vec<&RegistryHost> {
    hosts.iter().filter(|h| h.can_push()).collect()
}

/// Why host configuration could not be loaded. Names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid registry {registry:?}: not usable as a host configuration directory name")]
    InvalidRegistry { registry: String },

    #[error("failed to read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid registry hosts file {}: {source}", .path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("invalid registry hosts file {} (line {line}): {message}", .path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The hosts to use for `registry` (a reference domain such as `docker.io`
/// or `127.0.0.1:5000`), mirrors first in file order, server last.
///
/// `config_path` is the hosts directory (containerd's `config_path`, e.g.
/// `/etc/containerd/certs.d`); `None`, a missing directory or no matching
/// subdirectory give containerd's defaults.
pub fn load_hosts(
    config_path: Option<&Path>,
    registry: &str,
) -> Result<Vec<RegistryHost>, HostsError> {
    validate_registry(registry)?;
    let dir = match config_path {
        Some(root) => find_host_dir(root, registry)?,
        None => None,
    };
    let configs = match dir {
        Some(dir) => load_host_dir(&dir)?,
        None => vec![HostConfig::default()],
    };
    Ok(finalize(configs, registry))
}

/// The hosts for `registry` when nothing is configured.
pub fn default_hosts(registry: &str) -> Vec<RegistryHost> {
    finalize(vec![HostConfig::default()], registry)
}

/// Parses the text of a `hosts.toml` for `registry` and applies containerd's
/// defaults. Relative certificate paths resolve against `base_dir` (the
/// directory holding the file, which errors also name).
pub fn parse_hosts_toml(
    registry: &str,
    text: &str,
    base_dir: &Path,
) -> Result<Vec<RegistryHost>, HostsError> {
    let configs = parse_hosts_file(text, base_dir, &base_dir.join(HOSTS_FILE))?;
    Ok(finalize(configs, registry))
}

/// The configuration directory containerd would use for `registry` under
/// `config_path`: the first existing one of `<host>_<port>_`, `<host:port>`
/// and `_default`.
pub fn find_host_dir(config_path: &Path, registry: &str) -> Result<Option<PathBuf>, HostsError> {
    validate_registry(registry)?;
    let mut candidates = Vec::with_capacity(3);
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        candidates.push(config_path.join(format!(
            "{}_{}_",
            &registry[..idx],
            &registry[idx + 1..]
        )));
    }
    candidates.push(config_path.join(registry));
    candidates.push(config_path.join(DEFAULT_HOST_DIR));

    for dir in candidates {
        match std::fs::metadata(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HostsError::Io { path: dir, source }),
        }
    }
    Ok(None)
}

/// containerd's `IsLocalhost`: `localhost` or a loopback IP, with or without
/// a port (`127.0.0.1:5000`, `[::1]:5000`, `::1`).
pub fn is_localhost(host: &str) -> bool {
    let name = split_host_port(host).map_or(host, |(h, _)| h);
    if name == "localhost" {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

fn validate_registry(registry: &str) -> Result<(), HostsError> {
    let bad = registry.is_empty()
        || registry == "."
        || registry == ".."
        || registry.contains(['/', '\\', '\0']);
    if bad {
        return Err(HostsError::InvalidRegistry {
            registry: registry.into(),
        });
    }
    Ok(())
}

/// One parsed entry before defaults are applied (containerd's `hostConfig`).
#[derive(Debug, Default)]
struct HostConfig {
    scheme: String,
    /// Empty for the server entry when `server` is not set.
    host: String,
    path: String,
    capabilities: Capabilities,
    /// `Some` when `ca` was configured (even empty): counts as TLS config.
    ca: Option<Vec<PathBuf>>,
    client: Vec<(PathBuf, Option<PathBuf>)>,
    skip_verify: Option<bool>,
    header: Vec<(String, String)>,
}

/// containerd's `ConfigureHosts`: defaults for the server entry and the
/// https-first fallback for http hosts with TLS settings.
fn finalize(mut configs: Vec<HostConfig>, registry: &str) -> Vec<RegistryHost> {
    if let Some(last) = configs.last_mut().filter(|c| c.host.is_empty()) {
        if registry == "docker.io" {
            last.scheme = "https".into();
            last.host = DOCKER_HUB_HOST.into();
        } else if is_localhost(registry) {
            last.host = registry.into();
            let port = port_of(registry);
            last.scheme = if port.is_empty() || port == "443" {
                "https".into()
            } else {
                "http".into()
            };
            if port != "80" {
                last.skip_verify = Some(true);
            }
        } else {
            last.scheme = "https".into();
            last.host = registry.into();
        }
        last.path = "/v2".into();
        last.capabilities = Capabilities::ALL;
    }

    configs
        .into_iter()
        .map(|c| {
            let explicit_tls = c.ca.is_some() || !c.client.is_empty() || c.skip_verify.is_some();
            let fallback_http = c.scheme == "http" && explicit_tls && port_of(&c.host) != "80";
            RegistryHost {
                scheme: if fallback_http {
                    "https".into()
                } else {
                    c.scheme
                },
                host: c.host,
                path: c.path,
                capabilities: c.capabilities,
                skip_verify: c.skip_verify.unwrap_or(false),
                ca: c.ca.unwrap_or_default(),
                client: c.client,
                header: c.header,
                fallback_http,
            }
        })
        .collect()
}

/// Go's `net.SplitHostPort`, returning `None` where it errors.
fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        (!port.contains(':')).then_some((host, port))
    } else {
        let (host, port) = hostport.split_once(':')?;
        (!port.contains(':')).then_some((host, port))
    }
}

fn port_of(hostport: &str) -> &str {
    split_host_port(hostport).map_or("", |(_, port)| port)
}

fn load_host_dir(dir: &Path) -> Result<Vec<HostConfig>, HostsError> {
    let file = dir.join(HOSTS_FILE);
    match std::fs::read(&file) {
        Ok(bytes) if !bytes.is_empty() => {
            let text = String::from_utf8(bytes).map_err(|_| HostsError::Invalid {
                path: file.clone(),
                line: 1,
                message: "file is not valid UTF-8".into(),
            })?;
            parse_hosts_file(&text, dir, &file)
        }
        Ok(_) => load_cert_files(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => load_cert_files(dir),
        Err(source) => Err(HostsError::Io { path: file, source }),
    }
}

/// Docker `certs.d` layout: `*.crt` CA files, `*.cert` client certs with an
/// optional `*.key` beside them. Applies to the registry itself.
fn load_cert_files(dir: &Path) -> Result<Vec<HostConfig>, HostsError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HostsError::Io { path, source }
    };
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err(dir))?;
                if entry.file_type().map_err(io_err(&entry.path()))?.is_dir() {
                    continue;
                }
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(HostsError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    names.sort();

    let mut config = HostConfig::default();
    let mut ca = Vec::new();
    for name in &names {
        if name.ends_with(".crt") {
            ca.push(dir.join(name));
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = match std::fs::metadata(&key) {
                Ok(_) => Some(key),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(HostsError::Io { path: key, source }),
            };
            config.client.push((dir.join(name), key));
        }
    }
    if !ca.is_empty() {
        config.ca = Some(ca);
    }
    Ok(vec![config])
}

#[cfg(test)]
mod tests;

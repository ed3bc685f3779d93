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
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

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

/// Error context while walking a parsed file.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    base_dir: &'a Path,
}

impl Ctx<'_> {
    /// "`expected`, found <what `value` is>" at `value`.
    fn mismatch(&self, value: &Value<'_>, expected: std::fmt::Arguments<'_>) -> HostsError {
        self.err(
            value.span(),
            format!("{expected}, found {}", type_name(value.get_ref())),
        )
    }

    fn err(&self, span: Range<usize>, message: String) -> HostsError {
        let end = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        HostsError::Invalid {
            path: self.file.to_path_buf(),
            line,
            message,
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

fn parse_hosts_file(
    text: &str,
    base_dir: &Path,
    file: &Path,
) -> Result<Vec<HostConfig>, HostsError> {
    let doc = DeTable::parse(text).map_err(|source| HostsError::Toml {
        path: file.to_path_buf(),
        source,
    })?;
    let root = doc.get_ref();
    let ctx = Ctx {
        file,
        text,
        base_dir,
    };

    let mut hosts = Vec::new();
    if let Some(value) = root.get("host") {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(ctx.mismatch(value, format_args!("\"host\" must be a table")));
        };
        for (key, value) in sorted_entries(table) {
            let what = format!("host {:?}", key.get_ref());
            let DeValue::Table(host_table) = value.get_ref() else {
                return Err(ctx.mismatch(value, format_args!("{what} must be a table")));
            };
            let server = (key.get_ref().as_ref(), key.span());
            hosts.push(parse_host_config(&ctx, &what, Some(server), host_table)?);
        }
    }

    let server = match root.get("server") {
        None => None,
        Some(value) => match value.get_ref() {
            DeValue::String(s) if s.is_empty() => None,
            DeValue::String(s) => Some((s.as_ref(), value.span())),
            _ => return Err(ctx.mismatch(value, format_args!("\"server\" must be a string"))),
        },
    };
    let what = match server {
        Some((s, _)) => format!("server {s:?}"),
        None => "top level".to_string(),
    };
    hosts.push(parse_host_config(&ctx, &what, server, root)?);
    Ok(hosts)
}

/// Table entries in the order they first appear in the file, whatever the
/// map's own order (sorted unless toml's `preserve_order` is on).
fn sorted_entries<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<toml::de::DeString<'i>>, &'t Value<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn parse_host_config(
    ctx: &Ctx<'_>,
    what: &str,
    server: Option<(&str, Range<usize>)>,
    table: &DeTable<'_>,
) -> Result<HostConfig, HostsError> {
    let mut config = HostConfig::default();

    let override_path = match table.get("override_path") {
        Some(value) => as_bool(ctx, what, "override_path", value)?,
        None => false,
    };

    if let Some((url, span)) = server {
        let (scheme, host, path) = parse_host_url(url, override_path)
            .map_err(|reason| ctx.err(span, format!("{what}: invalid URL: {reason}")))?;
        config.scheme = scheme;
        config.host = host;
        config.path = path;
    }

    if let Some(value) = table.get("skip_verify") {
        config.skip_verify = Some(as_bool(ctx, what, "skip_verify", value)?);
    }

    if let Some(value) = table.get("capabilities") {
        let names = as_string_list(ctx, what, "capabilities", value)?;
        if !names.is_empty() {
            config.capabilities = Capabilities::NONE;
            for (name, span) in names {
                match name.to_ascii_lowercase().as_str() {
                    "pull" => config.capabilities.pull = true,
                    "resolve" => config.capabilities.resolve = true,
                    "push" => config.capabilities.push = true,
                    "referrers" => config.capabilities.referrers = true,
                    _ => {
                        return Err(ctx.err(
                            span,
                            format!(
                                "{what}: unknown capability {name:?} \
                                 (expected \"pull\", \"resolve\", \"push\" or \"referrers\")"
                            ),
                        ))
                    }
                }
            }
        }
    }

    if let Some(value) = table.get("ca") {
        let paths = match value.get_ref() {
            DeValue::String(s) => vec![(s.to_string(), value.span())],
            DeValue::Array(_) => as_string_list(ctx, what, "ca", value)?,
            _ => {
                return Err(ctx.mismatch(
                    value,
                    format_args!("{what}: \"ca\" must be a path or an array of paths"),
                ))
            }
        };
        let mut ca = Vec::with_capacity(paths.len());
        for (p, span) in paths {
            if p.is_empty() {
                return Err(ctx.err(span, format!("{what}: \"ca\" path must not be empty")));
            }
            ca.push(make_abs_path(&p, ctx.base_dir));
        }
        config.ca = Some(ca);
    }

    if let Some(value) = table.get("client") {
        config.client = parse_client(ctx, what, value)?;
    }

    if let Some(value) = table.get("header") {
        let DeValue::Table(headers) = value.get_ref() else {
            return Err(ctx.mismatch(value, format_args!("{what}: \"header\" must be a table")));
        };
        for (name, value) in sorted_entries(headers) {
            let field = format!("header {:?}", name.get_ref());
            let values = match value.get_ref() {
                DeValue::String(s) => vec![s.to_string()],
                DeValue::Array(_) => as_string_list(ctx, what, &field, value)?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
                _ => {
                    return Err(ctx.mismatch(
                        value,
                        format_args!("{what}: {field} must be a string or an array of strings"),
                    ))
                }
            };
            for v in values {
                config.header.push((name.get_ref().to_string(), v));
            }
        }
    }

    Ok(config)
}

/// `client = "c.pem"`, `client = ["a.pem", "b.pem"]` or
/// `client = [["c.cert", "c.key"], ["d.pem", ""]]` (mixing allowed).
fn parse_client(
    ctx: &Ctx<'_>,
    what: &str,
    value: &Value<'_>,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsError> {
    let cert = |s: &str, span: Range<usize>| {
        if s.is_empty() {
            Err(ctx.err(
                span,
                format!("{what}: \"client\" certificate path must not be empty"),
            ))
        } else {
            Ok(make_abs_path(s, ctx.base_dir))
        }
    };
    match value.get_ref() {
        DeValue::String(s) => Ok(vec![(cert(s, value.span())?, None)]),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((cert(s, item.span())?, None)),
                    DeValue::Array(_) => {
                        let pair = as_string_list(ctx, what, "client", item)?;
                        let [(c, c_span), (k, _)] = <[_; 2]>::try_from(pair).map_err(|_| {
                            ctx.err(
                                item.span(),
                                format!("{what}: a \"client\" pair must be [cert, key]"),
                            )
                        })?;
                        let key = (!k.is_empty()).then(|| make_abs_path(&k, ctx.base_dir));
                        out.push((cert(&c, c_span)?, key));
                    }
                    _ => {
                        return Err(ctx.mismatch(
                            item,
                            format_args!(
                                "{what}: \"client\" entries must be paths or [cert, key] pairs"
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ctx.mismatch(
            value,
            format_args!(
                "{what}: \"client\" must be a path, an array of paths or of [cert, key] pairs"
            ),
        )),
    }
}

fn as_bool(ctx: &Ctx<'_>, what: &str, field: &str, value: &Value<'_>) -> Result<bool, HostsError> {
    match value.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        _ => Err(ctx.mismatch(
            value,
            format_args!("{what}: {field:?} must be true or false"),
        )),
    }
}

fn as_string_list(
    ctx: &Ctx<'_>,
    what: &str,
    field: &str,
    value: &Value<'_>,
) -> Result<Vec<(String, Range<usize>)>, HostsError> {
    let DeValue::Array(items) = value.get_ref() else {
        return Err(ctx.mismatch(
            value,
            format_args!("{what}: {field} must be an array of strings"),
        ));
    };
    items
        .iter()
        .map(|item| match item.get_ref() {
            DeValue::String(s) => Ok((s.to_string(), item.span())),
            _ => Err(ctx.mismatch(
                item,
                format_args!("{what}: {field} must contain only strings"),
            )),
        })
        .collect()
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `scheme://host[:port][/path]` → (scheme, host, API root path).
fn parse_host_url(raw: &str, override_path: bool) -> Result<(String, String, String), String> {
    let with_scheme;
    let url = if raw.contains("://") {
        raw
    } else {
        with_scheme = format!("https://{raw}");
        &with_scheme
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "unsupported scheme {scheme:?} (expected \"http\" or \"https\")"
        ));
    }

    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    validate_authority(authority)?;

    let raw_path = match tail.strip_prefix('/') {
        Some(_) => &tail[..tail.find(['?', '#']).unwrap_or(tail.len())],
        None => "",
    };
    let mut path = clean_url_path(raw_path);
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Ok((scheme, authority.to_string(), path))
}

fn validate_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("missing host".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("invalid host {authority:?}: missing ']'"));
        };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address {inside:?}"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("invalid host {authority:?}"))?,
            ),
        };
        (None, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'%')
            });
        if !ok {
            return Err(format!("invalid host {host:?}"));
        }
    }
    if let Some(port) = port {
        let digits = port.bytes().all(|b| b.is_ascii_digit());
        if !digits || (!port.is_empty() && port.parse::<u16>().is_err()) {
            return Err(format!("invalid port {port:?}"));
        }
    }
    Ok(())
}

/// Go's `path.Clean` on a URL path, without a trailing `/` (`"/"` → `""`).
fn clean_url_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.iter().map(|p| format!("/{p}")).collect()
}

/// containerd's `makeAbsPath`: absolute paths as given, relative ones joined
/// to `base` and cleaned (like Go's `filepath.Join`).
fn make_abs_path(p: &str, base: &Path) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let can_pop = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if can_pop {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn host(scheme: &str, host: &str, path: &str, capabilities: Capabilities) -> RegistryHost {
        RegistryHost {
            scheme: scheme.into(),
            host: host.into(),
            path: path.into(),
            capabilities,
            skip_verify: false,
            ca: vec![],
            client: vec![],
            header: vec![],
            fallback_http: false,
        }
    }

    fn caps(pull: bool, resolve: bool, push: bool, referrers: bool) -> Capabilities {
        Capabilities {
            pull,
            resolve,
            push,
            referrers,
        }
    }

    const PULL: Capabilities = Capabilities {
        pull: true,
        ..Capabilities::NONE
    };
    const PULL_RESOLVE: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        ..Capabilities::NONE
    };

    fn parse(registry: &str, text: &str) -> Vec<RegistryHost> {
        match parse_hosts_toml(registry, text, Path::new("/etc/containerd/certs.d/test")) {
            Ok(h) => h,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse_hosts_toml("example.com", text, Path::new("/cfg/example.com")) {
            Ok(h) => panic!("expected an error, got {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    // containerd core/remotes/docker/config/hosts_test.go TestParseHostFile
    #[test]
    fn containerd_parse_host_file() {
        let text = r#"
server = "https://test-default.registry"
ca = "/etc/path/default"
[header]
  x-custom-1 = "custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push", "referrers"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://no-referrers.registry"]
  capabilities = ["pull", "resolve", "push"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noncompliantmirror.registry/v2/namespaceprefix"]
  capabilities = ["pull"]
  override_path = true

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyheader.registry".header]
  x-custom-1 = "justaheader"

[host."https://dial-timeout.registry"]
  dial_timeout = "3s"
"#;
        let pb = PathBuf::from;
        let all = Capabilities::ALL;
        let expected = vec![
            RegistryHost {
                ca: vec![pb("/etc/certs/mirror.pem")],
                header: vec![
                    ("x-custom-2".into(), "value1".into()),
                    ("x-custom-2".into(), "value2".into()),
                ],
                ..host("https", "mirror.registry", "/v2", PULL)
            },
            RegistryHost {
                skip_verify: true,
                ..host("https", "mirror-bak.registry", "/us/v2", PULL)
            },
            host("http", "mirror.registry", "/v2", PULL),
            RegistryHost {
                ca: vec![pb("/etc/certs/test-1-ca.pem"), pb("/etc/certs/special.pem")],
                client: vec![
                    (
                        pb("/etc/certs/client.cert"),
                        Some(pb("/etc/certs/client.key")),
                    ),
                    (pb("/etc/certs/client.pem"), None),
                ],
                ..host("https", "test-1.registry", "/v2", all)
            },
            RegistryHost {
                client: vec![(pb("/etc/certs/client.pem"), None)],
                ..host("https", "test-2.registry", "/v2", all)
            },
            RegistryHost {
                client: vec![
                    (pb("/etc/certs/client-1.pem"), None),
                    (pb("/etc/certs/client-2.pem"), None),
                ],
                ..host("https", "test-3.registry", "/v2", all)
            },
            RegistryHost {
                client: vec![
                    (pb("/etc/certs/client-1.pem"), None),
                    (pb("/etc/certs/client-2.pem"), None),
                ],
                ..host(
                    "https",
                    "no-referrers.registry",
                    "/v2",
                    caps(true, true, true, false),
                )
            },
            host(
                "https",
                "noncompliantmirror.registry",
                "/v2/namespaceprefix",
                PULL,
            ),
            host("https", "noprefixnoncompliant.registry", "", all),
            RegistryHost {
                header: vec![("x-custom-1".into(), "justaheader".into())],
                ..host("https", "onlyheader.registry", "/v2", all)
            },
            host("https", "dial-timeout.registry", "/v2", all),
            RegistryHost {
                ca: vec![pb("/etc/path/default")],
                header: vec![("x-custom-1".into(), "custom header".into())],
                ..host("https", "test-default.registry", "/v2", all)
            },
        ];
        let got = parse("test-default.registry", text);
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "host {i}");
        }
    }

    // docs/hosts.md "Simple (default) Host Config for Docker"
    #[test]
    fn docs_simple_docker() {
        let got = parse(
            "docker.io",
            r#"server = "https://docker.io"

[host."https://registry-1.docker.io"]
  capabilities = ["pull", "resolve"]
"#,
        );
        assert_eq!(
            got,
            vec![
                host("https", "registry-1.docker.io", "/v2", PULL_RESOLVE),
                host("https", "docker.io", "/v2", Capabilities::ALL),
            ]
        );
        assert!(!got[0].is_mirror_for("docker.io"));
        assert!(!got[1].is_mirror_for("docker.io"));
    }

    // docs/hosts.md "Setup a Local Mirror for Docker"
    #[test]
    fn docs_local_mirror() {
        let text = r#"server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                 # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#;
        let got = parse_hosts_toml(
            "docker.io",
            text,
            Path::new("/etc/containerd/certs.d/docker.io"),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                host("https", "public-mirror.example.com", "/v2", PULL),
                RegistryHost {
                    ca: vec![PathBuf::from(
                        "/etc/containerd/certs.d/docker.io/docker-mirror.crt"
                    )],
                    ..host("https", "docker-mirror.internal", "/v2", PULL_RESOLVE)
                },
                host("https", "registry-1.docker.io", "/v2", Capabilities::ALL),
            ]
        );
        // A tag may only be resolved by the trusted mirror and upstream ...
        let resolvers: Vec<_> = fetch_hosts(&got, false)
            .iter()
            .map(|h| h.host.as_str())
            .collect();
        assert_eq!(
            resolvers,
            ["docker-mirror.internal", "registry-1.docker.io"]
        );
        // ... while content by digest may come from any of them.
        assert_eq!(fetch_hosts(&got, true).len(), 3);
        assert!(!got[0].can_fetch(false));
        assert!(got[0].can_fetch(true));
        let pushers: Vec<_> = push_hosts(&got).iter().map(|h| h.host.as_str()).collect();
        assert_eq!(pushers, ["registry-1.docker.io"]);
        assert!(got[0].is_mirror_for("docker.io"));
    }

    // docs/hosts.md "Bypass TLS Verification Example" and the brief's example
    #[test]
    fn http_host_with_tls_settings_tries_https_first() {
        let got = parse(
            "docker.io",
            r#"server = "https://registry-1.docker.io"

[host."http://192.168.31.250:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
"#,
        );
        assert_eq!(
            got[0],
            RegistryHost {
                skip_verify: true,
                fallback_http: true,
                ..host(
                    "https",
                    "192.168.31.250:5000",
                    "/v2",
                    caps(true, true, true, false)
                )
            }
        );
        assert_eq!(
            got[1],
            host("https", "registry-1.docker.io", "/v2", Capabilities::ALL)
        );

        let got = parse(
            "127.0.0.1:5000",
            r#"[host."http://127.0.0.1:5000"]
  capabilities = ["pull","resolve"]
  skip_verify = true
"#,
        );
        assert_eq!(
            got[0],
            RegistryHost {
                skip_verify: true,
                fallback_http: true,
                ..host("https", "127.0.0.1:5000", "/v2", PULL_RESOLVE)
            }
        );
        // The registry itself (no `server`) gets the localhost defaults.
        assert_eq!(
            got[1],
            RegistryHost {
                skip_verify: true,
                fallback_http: true,
                ..host("https", "127.0.0.1:5000", "/v2", Capabilities::ALL)
            }
        );
        assert_eq!(got[0].url(), "https://127.0.0.1:5000/v2");

        // Plain http without TLS settings, or on port 80, stays http.
        let got = parse(
            "example.com",
            r#"[host."http://plain:5000"]
[host."http://tls80:80"]
  ca = "x.pem"
[host."http://noport"]
  skip_verify = false
"#,
        );
        assert_eq!(
            (got[0].scheme.as_str(), got[0].fallback_http),
            ("http", false)
        );
        assert_eq!(
            (got[1].scheme.as_str(), got[1].fallback_http),
            ("http", false)
        );
        assert_eq!(
            (got[2].scheme.as_str(), got[2].fallback_http),
            ("https", true)
        );
        assert!(!got[2].skip_verify);
    }

    // docs/hosts.md host field examples
    #[test]
    fn docs_host_examples() {
        let got = parse(
            "registry",
            r#"
[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://non-compliant-mirror.registry/v2/upstream"]
  capabilities = ["pull"]
  override_path = true
"#,
        );
        let urls: Vec<_> = got.iter().map(RegistryHost::url).collect();
        assert_eq!(
            urls,
            [
                "https://mirror.registry/v2",
                "https://mirror-bak.registry/us/v2",
                "http://mirror.registry/v2",
                "https://test-1.registry/v2",
                "https://test-2.registry/v2",
                "https://test-3.registry/v2",
                "https://non-compliant-mirror.registry/v2/upstream",
                "https://registry/v2",
            ]
        );
        assert_eq!(
            got[3].client[1],
            (PathBuf::from("/etc/certs/client.pem"), None)
        );
    }

    #[test]
    fn header_and_proxy_forms_from_docs() {
        let got = parse(
            "my-registry.io",
            r#"server = "https://my-registry.io"
proxy = "http://different-proxy:8080"
dial_timeout = "1s"

[header]
  x-custom-1 = "custom header"
  x-custom-1-2 = "another custom header"
  a-last = ["a", "b"]

[host."https://mirror.my-registry.io"]
  capabilities = ["pull", "resolve"]
  proxy = "http://my-proxy:8080"
"#,
        );
        assert_eq!(
            got[0],
            host("https", "mirror.my-registry.io", "/v2", PULL_RESOLVE)
        );
        assert_eq!(
            got[1].header,
            vec![
                ("x-custom-1".to_string(), "custom header".to_string()),
                ("x-custom-1-2".into(), "another custom header".into()),
                ("a-last".into(), "a".into()),
                ("a-last".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn mirror_order_is_file_order() {
        let got = parse(
            "docker.io",
            r#"
[host."https://zeta.mirror"]
  capabilities = ["pull"]
[host."https://alpha.mirror"]
  capabilities = ["pull"]
[host."https://mu.mirror".header]
  x-a = "1"
[host."https://beta.mirror"]
[host."https://zeta.mirror".header]
  x-b = "2"
"#,
        );
        let names: Vec<_> = got.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            names,
            [
                "zeta.mirror",
                "alpha.mirror",
                "mu.mirror",
                "beta.mirror",
                "registry-1.docker.io"
            ]
        );
        assert_eq!(got[0].header, vec![("x-b".to_string(), "2".to_string())]);

        let got = parse(
            "docker.io",
            r#"host."https://b.mirror".capabilities = ["pull"]
host."https://a.mirror".capabilities = ["pull"]
"#,
        );
        assert_eq!(got[0].host, "b.mirror");
        assert_eq!(got[1].host, "a.mirror");
    }

    #[test]
    fn url_path_handling() {
        let cases = [
            ("https://m.example/v2/prefix", false, "/v2/prefix/v2"),
            ("https://m.example/v2/prefix", true, "/v2/prefix"),
            ("https://m.example/prefix", false, "/prefix/v2"),
            ("https://m.example/prefix/", false, "/prefix/v2"),
            ("https://m.example/v2", false, "/v2"),
            ("https://m.example/v2/", false, "/v2"),
            ("https://m.example/a/../b/./v2", false, "/b/v2"),
            ("https://m.example/", false, "/v2"),
            ("https://m.example", false, "/v2"),
            ("https://m.example", true, ""),
            ("https://m.example/x?y=1#z", false, "/x/v2"),
        ];
        for (url, override_path, want) in cases {
            let (_, _, path) = parse_host_url(url, override_path).unwrap();
            assert_eq!(path, want, "{url} override={override_path}");
        }
        assert_eq!(
            parse_host_url("mirror.local:5000", false).unwrap(),
            ("https".into(), "mirror.local:5000".into(), "/v2".into())
        );
        assert_eq!(
            parse_host_url("HTTP://[::1]:5000/v2", false).unwrap(),
            ("http".into(), "[::1]:5000".into(), "/v2".into())
        );
        for bad in [
            "ftp://x",
            "https://",
            "https:///v2",
            "https://u:p@x",
            "https://x:port",
            "https://x:99999",
            "https://[zz]:5000",
            "https://a b",
        ] {
            assert!(parse_host_url(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_without_scheme_and_empty_server() {
        let got = parse(
            "example.com",
            "server = \"registry.example.com:5000/base\"\n",
        );
        assert_eq!(
            got,
            vec![host(
                "https",
                "registry.example.com:5000",
                "/base/v2",
                Capabilities::ALL
            )]
        );
        let got = parse("example.com", "server = \"\"\n");
        assert_eq!(
            got,
            vec![host("https", "example.com", "/v2", Capabilities::ALL)]
        );
    }

    #[test]
    fn top_level_settings_apply_to_defaulted_server() {
        // Without `server`, containerd keeps the top-level TLS settings and
        // headers for the registry but resets capabilities and path.
        let got = parse(
            "quay.io",
            r#"capabilities = ["pull"]
skip_verify = true
override_path = true
ca = ["a.pem", "../shared/b.pem", "/abs/c.pem"]
client = [["c.cert", "c.key"]]
[header]
  x-a = "1"
"#,
        );
        let base = Path::new("/etc/containerd/certs.d/test");
        assert_eq!(
            got,
            vec![RegistryHost {
                skip_verify: true,
                ca: vec![
                    base.join("a.pem"),
                    PathBuf::from("/etc/containerd/certs.d/shared/b.pem"),
                    PathBuf::from("/abs/c.pem"),
                ],
                client: vec![(base.join("c.cert"), Some(base.join("c.key")))],
                header: vec![("x-a".into(), "1".into())],
                ..host("https", "quay.io", "/v2", Capabilities::ALL)
            }]
        );
        // Capabilities are case-insensitive; an empty list means all.
        let got = parse(
            "x.io",
            "server = \"https://s\"\ncapabilities = [\"PULL\"]\n",
        );
        assert_eq!(got[0].capabilities, PULL);
        let got = parse("x.io", "server = \"https://s\"\ncapabilities = []\n");
        assert_eq!(got[0].capabilities, Capabilities::ALL);
    }

    // containerd TestDefaultHosts / TestHTTPFallback (without DefaultScheme/DefaultTLS)
    #[test]
    fn defaults_without_configuration() {
        assert_eq!(
            load_hosts(None, "docker.io").unwrap(),
            vec![host(
                "https",
                "registry-1.docker.io",
                "/v2",
                Capabilities::ALL
            )]
        );
        assert_eq!(
            default_hosts("quay.io"),
            vec![host("https", "quay.io", "/v2", Capabilities::ALL)]
        );
        // (registry, scheme, fallback_http, skip_verify)
        let cases = [
            ("localhost:8080", "https", true, true),
            ("localhost:80", "http", false, false),
            ("localhost:443", "https", false, true),
            ("localhost", "https", false, true),
            ("localhost:5000", "https", true, true),
            ("example.com", "https", false, false),
            ("example.com:5000", "https", false, false),
            ("127.0.0.254:5000", "https", true, true),
            ("127.0.0.254", "https", false, true),
            ("[::1]:5000", "https", true, true),
            ("::1", "https", false, true),
            ("127.0.0.1:5000", "https", true, true),
            ("10.0.0.1:5000", "https", false, false),
        ];
        for (registry, scheme, fallback, skip) in cases {
            let hosts = load_hosts(None, registry).unwrap();
            assert_eq!(hosts.len(), 1, "{registry}");
            let h = &hosts[0];
            assert_eq!(h.host, registry);
            assert_eq!(h.path, "/v2");
            assert_eq!(
                (h.scheme.as_str(), h.fallback_http, h.skip_verify),
                (scheme, fallback, skip),
                "{registry}"
            );
            assert!(!h.is_mirror_for(registry));
        }
    }

    #[test]
    fn localhost_detection() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "::1",
            "[::1]:5000",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_localhost(yes), "{yes}");
        }
        for no in [
            "example.com",
            "10.0.0.1:5000",
            "[::1]",
            "localhost.example.com",
            "::2",
        ] {
            assert!(!is_localhost(no), "{no}");
        }
    }

    #[test]
    fn missing_config_dir_means_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert_eq!(
            load_hosts(Some(&missing), "docker.io").unwrap(),
            default_hosts("docker.io")
        );
        assert_eq!(
            load_hosts(Some(tmp.path()), "ghcr.io").unwrap(),
            default_hosts("ghcr.io")
        );
    }

    #[test]
    fn default_dir_fallback_and_precedence() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            &root.join("_default/hosts.toml"),
            "[host.\"https://registry.example.com\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        let got = load_hosts(Some(root), "docker.io").unwrap();
        assert_eq!(
            got,
            vec![
                host("https", "registry.example.com", "/v2", PULL_RESOLVE),
                host("https", "registry-1.docker.io", "/v2", Capabilities::ALL),
            ]
        );
        let got = load_hosts(Some(root), "ghcr.io").unwrap();
        assert_eq!(got[1], host("https", "ghcr.io", "/v2", Capabilities::ALL));
        assert!(got[0].is_mirror_for("ghcr.io"));

        // A registry-specific directory wins over _default.
        write(
            &root.join("ghcr.io/hosts.toml"),
            "server = \"https://ghcr.mirror\"\n",
        );
        let got = load_hosts(Some(root), "ghcr.io").unwrap();
        assert_eq!(
            got,
            vec![host("https", "ghcr.mirror", "/v2", Capabilities::ALL)]
        );
        assert_eq!(
            find_host_dir(root, "ghcr.io").unwrap(),
            Some(root.join("ghcr.io"))
        );

        // _default with only a server routes everything there.
        write(
            &root.join("_default/hosts.toml"),
            "server = \"https://registry.example.com\"\n",
        );
        assert_eq!(
            load_hosts(Some(root), "quay.io").unwrap(),
            vec![host(
                "https",
                "registry.example.com",
                "/v2",
                Capabilities::ALL
            )]
        );
    }

    #[test]
    fn host_dirs_with_ports() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            &root.join("127.0.0.1:5000/hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n",
        );
        let got = load_hosts(Some(root), "127.0.0.1:5000").unwrap();
        assert_eq!(
            got,
            vec![host("http", "127.0.0.1:5000", "/v2", Capabilities::ALL)]
        );

        // The `host_port_` spelling is looked up first.
        write(
            &root.join("127.0.0.1_5000_/hosts.toml"),
            "server = \"https://other:5000\"\n",
        );
        let got = load_hosts(Some(root), "127.0.0.1:5000").unwrap();
        assert_eq!(got[0].host, "other:5000");
        assert_eq!(
            find_host_dir(root, "127.0.0.1:5000").unwrap(),
            Some(root.join("127.0.0.1_5000_"))
        );
        assert_eq!(find_host_dir(root, "example.com").unwrap(), None);
    }

    #[test]
    fn certs_d_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("myregistry.io:5000");
        for name in [
            "b.crt",
            "a.crt",
            "client.cert",
            "client.key",
            "solo.cert",
            "notes.txt",
        ] {
            write(&dir.join(name), "x");
        }
        fs::create_dir_all(dir.join("sub.crt")).unwrap();
        let got = load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap();
        assert_eq!(
            got,
            vec![RegistryHost {
                ca: vec![dir.join("a.crt"), dir.join("b.crt")],
                client: vec![
                    (dir.join("client.cert"), Some(dir.join("client.key"))),
                    (dir.join("solo.cert"), None),
                ],
                ..host("https", "myregistry.io:5000", "/v2", Capabilities::ALL)
            }]
        );

        // An empty hosts.toml also falls back to the certificate files.
        write(&dir.join("hosts.toml"), "");
        assert_eq!(
            load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap(),
            got
        );

        // A real hosts.toml replaces them.
        write(&dir.join("hosts.toml"), "# nothing but a comment\n");
        assert_eq!(
            load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap(),
            default_hosts("myregistry.io:5000")
        );

        // Loopback with a CA: https with http fallback, verification off.
        let local = tmp.path().join("localhost:5000");
        write(&local.join("ca.crt"), "x");
        let got = load_hosts(Some(tmp.path()), "localhost:5000").unwrap();
        assert_eq!(
            got,
            vec![RegistryHost {
                ca: vec![local.join("ca.crt")],
                skip_verify: true,
                fallback_http: true,
                ..host("https", "localhost:5000", "/v2", Capabilities::ALL)
            }]
        );
    }

    #[test]
    fn relative_ca_paths_resolve_against_the_host_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("docker.io");
        write(
            &dir.join("hosts.toml"),
            "[host.\"https://m\"]\n  ca = \"m.crt\"\n  client = [\"c.pem\"]\n",
        );
        let got = load_hosts(Some(tmp.path()), "docker.io").unwrap();
        assert_eq!(got[0].ca, vec![dir.join("m.crt")]);
        assert_eq!(got[0].client, vec![(dir.join("c.pem"), None)]);
    }

    #[test]
    fn errors_name_the_file_and_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("docker.io/hosts.toml");
        write(&file, "[host.\"https://m\"\ncapabilities = 1\n");
        let e = load_hosts(Some(tmp.path()), "docker.io").unwrap_err();
        assert!(matches!(e, HostsError::Toml { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");

        write(
            &file,
            "server = \"https://ok\"\n\n[host.\"ftp://mirror\"]\n",
        );
        let msg = load_hosts(Some(tmp.path()), "docker.io")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(
            msg.contains("host \"ftp://mirror\": invalid URL: unsupported scheme \"ftp\""),
            "{msg}"
        );

        let msg = parse_err("[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]\n");
        assert!(
            msg.contains("/cfg/example.com/hosts.toml (line 2)"),
            "{msg}"
        );
        assert!(msg.contains("unknown capability \"fetch\""), "{msg}");
        assert!(parse_err("skip_verify = \"yes\"\n")
            .contains("\"skip_verify\" must be true or false, found a string"));
        assert!(parse_err("server = 5\n").contains("\"server\" must be a string"));
        assert!(parse_err("server = \"https://bad host\"\n")
            .contains("server \"https://bad host\": invalid URL"));
        assert!(parse_err("client = [[\"a\", \"b\", \"c\"]]\n").contains("[cert, key]"));
        assert!(parse_err("client = 3\n").contains("\"client\" must be"));
        assert!(parse_err("ca = [\"a\", 1]\n").contains("ca must contain only strings"));
        assert!(parse_err("ca = \"\"\n").contains("must not be empty"));
        assert!(parse_err("host = 1\n").contains("\"host\" must be a table"));
        assert!(
            parse_err("[header]\nx = 1\n").contains("header \"x\" must be a string or an array")
        );
        assert!(parse_err("a = 1\na = 2\n").contains("hosts.toml"));

        for bad in ["", "..", "../etc", "a/b"] {
            assert!(matches!(
                load_hosts(None, bad),
                Err(HostsError::InvalidRegistry { .. })
            ));
        }

        let not_utf8 = tmp.path().join("bin.io/hosts.toml");
        fs::create_dir_all(not_utf8.parent().unwrap()).unwrap();
        fs::write(&not_utf8, [0xff, 0xfe]).unwrap();
        assert!(load_hosts(Some(tmp.path()), "bin.io")
            .unwrap_err()
            .to_string()
            .contains("not valid UTF-8"));
    }

    #[test]
    fn abs_path_cleaning() {
        let base = Path::new("/etc/certs.d/x");
        assert_eq!(
            make_abs_path("a.pem", base),
            PathBuf::from("/etc/certs.d/x/a.pem")
        );
        assert_eq!(
            make_abs_path("./a/../b.pem", base),
            PathBuf::from("/etc/certs.d/x/b.pem")
        );
        assert_eq!(make_abs_path("../../../../z", base), PathBuf::from("/z"));
        assert_eq!(make_abs_path("/abs/../y", base), PathBuf::from("/abs/../y"));
        assert_eq!(make_abs_path("../z", Path::new("")), PathBuf::from("../z"));
    }
}

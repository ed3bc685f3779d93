//! Parsing one `hosts.toml` (containerd's `parseHostsFile`): every error
//! names the file and line.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Capabilities, HostConfig, HostsError};
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

pub(super) fn parse_hosts_file(
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
pub(super) fn parse_host_url(
    raw: &str,
    override_path: bool,
) -> Result<(String, String, String), String> {
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
pub(super) fn make_abs_path(p: &str, base: &Path) -> PathBuf {
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

//! Image reference parsing and normalisation, matching docker/containerd.
//!
//! This follows `github.com/distribution/reference` (`ParseNormalizedNamed`
//! followed by `TagNameOnly`), which is what containerd's CRI plugin and the
//! docker CLI use to turn what a user typed (`busybox`, `user/app:1`,
//! `localhost:5000/x@sha256:…`) into a fully qualified reference
//! (`docker.io/library/busybox:latest`).
//!
//! Grammar (from upstream `reference.go`):
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | \[ IPv6address \]
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! remote-name      := path-component ['/' path-component]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex   (sha256/sha384/sha512, lowercase hex)
//! ```
//!
//! Differences from upstream, all on inputs upstream accepts only by accident:
//! a first path element that looks like a domain (contains `.` or `:`, or is
//! upper case) but is not a valid domain (e.g. `foo_bar.com/x`) is rejected
//! here, where upstream silently returns a reference with an empty domain.
//! A reference carrying both a tag and a digest keeps both (like
//! `ParseNormalizedNamed`; `ParseDockerRef` would drop the tag). Registries are
//! then asked for the digest, see [`Reference::object`].

use std::fmt;
use std::str::FromStr;

/// The domain docker hub references are normalised to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The legacy docker hub domain, normalised to [`DEFAULT_DOMAIN`].
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of docker hub's official images.
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Tag added to a reference that has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Maximum length of the repository path (the name without the domain).
pub const REPOSITORY_NAME_MAX_LEN: usize = 255;
/// Maximum length of a tag.
pub const TAG_MAX_LEN: usize = 128;

/// Why a reference (or a tag/digest given to [`Reference::with_tag`] /
/// [`Reference::with_digest`]) was rejected. Every message names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {input:?}: repository name must have at least one component")]
    Empty { input: String },

    #[error(
        "invalid reference {input:?}: cannot specify 64-byte hexadecimal strings \
         (ambiguous with an image ID; use a name or name@sha256:<hex>)"
    )]
    AmbiguousIdentifier { input: String },

    #[error("invalid reference {input:?}: repository name must be lowercase")]
    Uppercase { input: String },

    #[error(
        "invalid reference {input:?}: repository name must not be more than \
         {REPOSITORY_NAME_MAX_LEN} characters (got {len})"
    )]
    NameTooLong { input: String, len: usize },

    #[error("invalid reference {input:?}: invalid domain {domain:?}")]
    InvalidDomain { input: String, domain: String },

    #[error("invalid reference {input:?}: invalid reference format: {reason}")]
    InvalidFormat { input: String, reason: String },

    #[error(
        "invalid reference {input:?}: invalid tag {tag:?}: a tag is 1 to 128 characters \
         of [A-Za-z0-9_.-] and must not start with '.' or '-'"
    )]
    InvalidTag { input: String, tag: String },

    #[error("invalid reference {input:?}: invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        input: String,
        digest: String,
        reason: String,
    },
}

/// A fully qualified, normalised image reference.
///
/// Always has a non-empty domain and path, and at least one of tag and digest
/// when built by [`Reference::parse_normalized`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses `s` the way `docker pull` / containerd's CRI plugin do:
    /// `ParseNormalizedNamed` then `TagNameOnly`.
    ///
    /// - `busybox` → `docker.io/library/busybox:latest`
    /// - `user/img` → `docker.io/user/img:latest`
    /// - `index.docker.io/x` → `docker.io/library/x:latest`
    /// - `localhost:5000/x`, `127.0.0.1:5000/a/b:1`, `[::1]:5000/x`
    /// - `x@sha256:<64 hex>` (no tag added), `x:tag@sha256:…` (both kept)
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty {
                input: String::new(),
            });
        }
        if is_identifier(s) {
            return Err(ReferenceError::AmbiguousIdentifier { input: s.into() });
        }

        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder.split(':').next().unwrap_or(&remainder);
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::Uppercase { input: s.into() });
        }

        let parsed = parse_remainder(s, &remainder)?;
        if !is_valid_domain(domain) {
            return Err(ReferenceError::InvalidDomain {
                input: s.into(),
                domain: domain.into(),
            });
        }

        let mut reference = Reference {
            domain: domain.into(),
            path: parsed.path,
            tag: parsed.tag,
            digest: parsed.digest,
        };
        if reference.tag.is_none() && reference.digest.is_none() {
            reference.tag = Some(DEFAULT_TAG.into());
        }
        Ok(reference)
    }

    /// The registry domain, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if any (`latest` was added when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any, e.g. `sha256:…`.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `domain/path`, e.g. `docker.io/library/busybox` (upstream's `Name()`).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The short form docker shows (`FamiliarString`): `busybox:latest`,
    /// `user/img:1`, `localhost:5000/x@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut out = if self.domain == DEFAULT_DOMAIN {
            let short = match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            };
            // A path whose first component reads as a domain
            // (`docker.io/dex.docker.io/x`, `docker.io/localhost/x`) keeps
            // `docker.io/`: shortened it would name another registry or
            // repository. Upstream shortens it anyway.
            let (domain, path) = split_docker_domain(&short);
            if domain == DEFAULT_DOMAIN && path == self.path {
                short
            } else {
                self.repository()
            }
        } else {
            self.repository()
        };
        push_suffix(&mut out, self.tag.as_deref(), self.digest.as_deref());
        out
    }

    /// The same repository with `tag` as its tag (any digest is kept, like
    /// upstream `WithTag`).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::InvalidTag {
                input: format!("{}:{}", self.repository(), tag),
                tag: tag.into(),
            });
        }
        Ok(Reference {
            tag: Some(tag.into()),
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest` (any tag is kept, like upstream
    /// `WithDigest`). The digest must be a supported algorithm with the right
    /// length of lowercase hex.
    pub fn with_digest(&self, digest: &str) -> Result<Reference, ReferenceError> {
        if let Err(reason) = validate_digest(digest) {
            return Err(ReferenceError::InvalidDigest {
                input: format!("{}@{}", self.repository(), digest),
                digest: digest.into(),
                reason,
            });
        }
        Ok(Reference {
            digest: Some(digest.into()),
            ..self.clone()
        })
    }
}

impl fmt::Display for Reference {
    /// The full normalised form: `docker.io/library/busybox:latest`,
    /// `…@sha256:…` or `…:tag@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.repository();
        push_suffix(&mut out, self.tag.as_deref(), self.digest.as_deref());
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse_normalized(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Reference::parse_normalized(&s).map_err(serde::de::Error::custom)
    }
}

fn push_suffix(out: &mut String, tag: Option<&str>, digest: Option<&str>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
}

/// `^[a-f0-9]{64}$`: an image ID, which docker refuses as a name.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Upstream `splitDockerDomain`: decides whether the first path element is a
/// registry domain, and canonicalises docker hub names.
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (DEFAULT_DOMAIN, format!("{OFFICIAL_REPO_PREFIX}{name}"));
    };

    let (domain, remote): (&str, &str) = if maybe_domain == "localhost" {
        (maybe_domain, maybe_remote)
    } else if maybe_domain == LEGACY_DEFAULT_DOMAIN {
        (DEFAULT_DOMAIN, maybe_remote)
    } else if maybe_domain.contains(['.', ':']) || maybe_domain.to_lowercase() != maybe_domain {
        (maybe_domain, maybe_remote)
    } else {
        (DEFAULT_DOMAIN, name)
    };

    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"))
    } else {
        (domain, remote.to_string())
    }
}

struct Remainder {
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Parses `path[:tag][@digest]` (the part after the domain).
fn parse_remainder(input: &str, remainder: &str) -> Result<Remainder, ReferenceError> {
    let format_err = |reason: &str| ReferenceError::InvalidFormat {
        input: input.into(),
        reason: reason.into(),
    };

    let (name_and_tag, digest) = match remainder.split_once('@') {
        Some((left, digest)) => {
            if digest.contains('@') {
                return Err(format_err("more than one '@'"));
            }
            if let Err(reason) = validate_digest(digest) {
                return Err(ReferenceError::InvalidDigest {
                    input: input.into(),
                    digest: digest.into(),
                    reason,
                });
            }
            (left, Some(digest.to_string()))
        }
        None => (remainder, None),
    };

    // A tag cannot contain ':' or '/', and the path cannot contain ':', so the
    // tag, if any, is whatever follows the last ':'.
    let (path, tag) = match name_and_tag.rsplit_once(':') {
        Some((_, after)) if after.contains('/') => {
            return Err(format_err(
                "':' is only allowed in the domain and before the tag",
            ));
        }
        Some((path, tag)) => {
            if !is_valid_tag(tag) {
                return Err(ReferenceError::InvalidTag {
                    input: input.into(),
                    tag: tag.into(),
                });
            }
            (path, Some(tag.to_string()))
        }
        None => (name_and_tag, None),
    };

    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(format_err("empty path component"));
    }
    if let Some(component) = path.split('/').find(|c| !is_valid_path_component(c)) {
        if component.to_lowercase() != component {
            return Err(ReferenceError::Uppercase {
                input: input.into(),
            });
        }
        return Err(format_err(&format!(
            "invalid path component {component:?} (lowercase letters and digits, \
             separated by '.', '_', '__' or dashes)"
        )));
    }
    if path.len() > REPOSITORY_NAME_MAX_LEN {
        return Err(ReferenceError::NameTooLong {
            input: input.into(),
            len: path.len(),
        });
    }

    Ok(Remainder {
        path: path.into(),
        tag,
        digest,
    })
}

/// `[a-z0-9]+((?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let start = i;
        if expect_alnum {
            while i < bytes.len() && is_alnum(bytes[i]) {
                i += 1;
            }
            if i == start {
                return false;
            }
        } else {
            while i < bytes.len() && !is_alnum(bytes[i]) {
                i += 1;
            }
            let sep = &bytes[start..i];
            let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&b| b == b'-');
            if !ok || i == bytes.len() {
                return false;
            }
        }
        expect_alnum = !expect_alnum;
    }
    !bytes.is_empty()
}

/// `host[:port]` where host is a domain name, IPv4 address or `[IPv6]`.
fn is_valid_domain(domain: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let ok = !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (ok, port)
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        let ok = !host.is_empty() && host.split('.').all(is_valid_domain_component);
        (ok, port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn is_valid_domain_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[\w][\w.-]{0,127}`
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        Some(&first) if word(first) && bytes.len() <= TAG_MAX_LEN => bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-'),
        _ => false,
    }
}

/// Validates a digest like go-digest's `Digest.Validate` with sha256, sha384
/// and sha512 registered (as in containerd): `<algorithm>:<lowercase hex>` of
/// the algorithm's exact length.
fn validate_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err("expected <algorithm>:<hex>".into());
    };
    if algorithm.is_empty() || encoded.is_empty() {
        return Err("expected <algorithm>:<hex>".into());
    }
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "unsupported digest algorithm {algorithm:?} (supported: sha256, sha384, sha512)"
            ))
        }
    };
    if encoded.len() != expected_len {
        return Err(format!(
            "invalid {algorithm} digest length {} (expected {expected_len} hex characters)",
            encoded.len()
        ));
    }
    if !encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("digest must be lowercase hexadecimal".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;

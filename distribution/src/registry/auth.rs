//! Registry authentication: parsing `WWW-Authenticate` challenges and the
//! bearer-token exchange of the distribution token spec.

use std::collections::HashMap;

/// Credentials a caller or the config supplies for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Identity/refresh token or a ready bearer token.
    pub identity_token: String,
}

impl std::fmt::Debug for Credentials {
    // Never print secrets in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.username.is_empty() && self.password.is_empty() && self.identity_token.is_empty()
    }
}

/// One parsed challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased scheme: "bearer" or "basic".
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="https://auth",service="registry",scope="a:b:pull"`
/// (and `Basic realm="x"`). Quoted values may contain commas and escapes.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let (scheme, after) = match rest.find(char::is_whitespace) {
            Some(i) => (&rest[..i], rest[i..].trim_start()),
            None => (rest, ""),
        };
        let mut params = HashMap::new();
        let mut s = after;
        while let Some(eq) = s.find('=') {
            let key = s[..eq].trim();
            // A key with a space is the start of the next challenge.
            if key.contains(char::is_whitespace) || key.contains(',') {
                break;
            }
            let mut v = &s[eq + 1..];
            let value;
            if let Some(stripped) = v.strip_prefix('"') {
                let mut val = String::new();
                let mut chars = stripped.char_indices();
                let mut end = stripped.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                value = val;
                v = &stripped[end.min(stripped.len())..];
            } else {
                let end = v.find(',').unwrap_or(v.len());
                value = v[..end].trim().to_string();
                v = &v[end..];
            }
            params.insert(key.to_ascii_lowercase(), value);
            v = v.trim_start();
            s = v.strip_prefix(',').unwrap_or(v).trim_start();
        }
        out.push(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        });
        rest = s.trim_start().trim_start_matches(',').trim_start();
        if rest.len() == header.len() {
            break;
        }
    }
    out
}

/// The token endpoint's answer (both `token` and `access_token` are in use).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn bearer(&self) -> Option<&str> {
        if !self.token.is_empty() {
            Some(&self.token)
        } else if !self.access_token.is_empty() {
            Some(&self.access_token)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull,push");
    }

    #[test]
    fn parses_basic_and_unquoted() {
        let c = parse_challenges("Basic realm=x");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "x");
        let c = parse_challenges(r#"Basic realm="a \"q\"""#);
        assert_eq!(c[0].params["realm"], "a \"q\"");
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
            identity_token: String::new(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

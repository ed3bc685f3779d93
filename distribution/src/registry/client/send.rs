//! Sending one request to an endpoint: the https→http fallback, answering
//! a 401 challenge with a (cached) bearer token or basic auth, status checks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use tracing::debug;

use super::{connect_error, error_detail, read_limited, server_speaks_tls};
use super::{Endpoint, RegistryError, Repository};
use crate::registry::auth::{parse_challenges, Challenge, TokenResponse};

impl Repository {
    pub(super) fn scope(&self) -> String {
        format!("repository:{}:{}", self.path, self.actions)
    }

    /// Sends a request to one endpoint, answering an auth challenge once.
    pub(super) async fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        suffix: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let http = self.client.http(&ep.host, what)?;
        let host = ep.host.host.clone();
        let mut schemes = vec![ep.host.scheme.clone()];
        if ep.host.fallback_http && ep.host.scheme == "https" {
            schemes.push("http".into());
        }
        let mut last_err = None;
        'schemes: for scheme in schemes {
            let url = format!("{}{}", ep.base(&scheme), suffix);
            let token_key = (host.clone(), self.scope());
            let mut auth = self.cached_auth(&token_key);
            let mut body_once = body.clone();
            for attempt in 0..2 {
                let mut req = http.request(method.clone(), &url).headers(headers.clone());
                for (k, v) in &ep.host.header {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(a) = &auth {
                    req = req.header(AUTHORIZATION, a.as_str());
                }
                if let Some(b) = body_once.take() {
                    req = req.body(b);
                }
                debug!(%url, %method, "registry request");
                let sent = tokio::time::timeout(self.client.no_progress, req.send()).await;
                let resp = match sent {
                    Err(_) => {
                        last_err = Some(RegistryError::Timeout {
                            host: host.clone(),
                            what: what.into(),
                            secs: self.client.no_progress.as_secs(),
                        });
                        break;
                    }
                    Ok(Err(e)) => {
                        last_err = Some(connect_error(&host, what, &e, self.client.no_progress));
                        // The http fallback is for servers that do not speak TLS. One
                        // that does (it showed a certificate we rejected, or sent an
                        // alert) gets that error reported, not a plain-HTTP retry that
                        // its TLS port can only answer with a 400.
                        if server_speaks_tls(&e) {
                            break 'schemes;
                        }
                        break;
                    }
                    Ok(Ok(r)) => r,
                };
                if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                    let challenge = resp
                        .headers()
                        .get_all(reqwest::header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(parse_challenges)
                        .collect::<Vec<_>>();
                    match self
                        .answer_challenge(&http, &host, &challenge, what)
                        .await?
                    {
                        Some(a) => {
                            self.store_auth(&token_key, &a);
                            auth = Some(a);
                            body_once = body.clone();
                            continue;
                        }
                        None => {
                            let detail = error_detail(resp).await;
                            return Err(RegistryError::Unauthorized {
                                host,
                                what: what.into(),
                                detail,
                            });
                        }
                    }
                }
                if resp.status() == StatusCode::UNAUTHORIZED {
                    let detail = error_detail(resp).await;
                    return Err(RegistryError::Unauthorized {
                        host,
                        what: what.into(),
                        detail,
                    });
                }
                return Ok(resp);
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Protocol {
            what: what.into(),
            cause: "no request was sent".into(),
        }))
    }

    pub(super) fn cached_auth(&self, key: &(String, String)) -> Option<String> {
        let tokens = self.client.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn store_auth(&self, key: &(String, String), value: &str) {
        let mut tokens = self.client.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(
            key.clone(),
            (value.to_string(), Instant::now() + Duration::from_secs(50)),
        );
    }

    /// Turns a 401 challenge into an Authorization header value, if we can.
    async fn answer_challenge(
        &self,
        http: &reqwest::Client,
        host: &str,
        challenges: &[Challenge],
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for c in challenges {
            match c.scheme.as_str() {
                "basic" => {
                    if self.creds.username.is_empty() {
                        return Ok(None);
                    }
                    let raw = format!("{}:{}", self.creds.username, self.creds.password);
                    return Ok(Some(format!("Basic {}", b64(raw.as_bytes()))));
                }
                "bearer" => {
                    let Some(realm) = c.params.get("realm") else {
                        continue;
                    };
                    let scope = c
                        .params
                        .get("scope")
                        .cloned()
                        .unwrap_or_else(|| self.scope());
                    let mut req = http.get(realm).query(&[("scope", scope.as_str())]);
                    if let Some(service) = c.params.get("service") {
                        req = req.query(&[("service", service.as_str())]);
                    }
                    if !self.creds.identity_token.is_empty() && self.creds.username.is_empty() {
                        // A ready bearer token supplied by the caller.
                        return Ok(Some(format!("Bearer {}", self.creds.identity_token)));
                    }
                    if !self.creds.username.is_empty() {
                        req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
                    }
                    let resp = tokio::time::timeout(self.client.no_progress, req.send())
                        .await
                        .map_err(|_| RegistryError::Timeout {
                            host: host.into(),
                            what: format!("{what} (token from {realm})"),
                            secs: self.client.no_progress.as_secs(),
                        })?
                        .map_err(|e| connect_error(realm, what, &e, self.client.no_progress))?;
                    if !resp.status().is_success() {
                        let status = resp.status();
                        let detail = error_detail(resp).await;
                        return Err(RegistryError::Unauthorized {
                            host: host.into(),
                            what: what.into(),
                            detail: format!(": token server {realm} answered {status}{detail}"),
                        });
                    }
                    // Its own bound and its own error: a token endpoint that
                    // streams forever is not a large manifest, and one that
                    // trickles must not hold the pull past the timeout.
                    let token_what = format!("{what} (token from {realm})");
                    let read = read_limited(
                        resp,
                        MAX_TOKEN_RESPONSE,
                        self.client.pace(host, &token_what),
                        || RegistryError::TokenTooLarge {
                            what: what.into(),
                            realm: berth_sysutil::echo(realm),
                            limit: MAX_TOKEN_RESPONSE,
                        },
                    );
                    let body = tokio::time::timeout(self.client.no_progress, read)
                        .await
                        .map_err(|_| RegistryError::Timeout {
                            host: host.into(),
                            what: token_what.clone(),
                            secs: self.client.no_progress.as_secs(),
                        })??;
                    let tr: TokenResponse =
                        serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                            what: what.into(),
                            cause: format!("bad token response from {realm}: {e}"),
                        })?;
                    return Ok(tr.bearer().map(|t| format!("Bearer {t}")));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    pub(super) fn check_status(
        host: &str,
        what: &str,
        resp: reqwest::Response,
    ) -> impl std::future::Future<Output = Result<reqwest::Response, RegistryError>> {
        let host = host.to_string();
        let what = what.to_string();
        async move {
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound { host, what });
            }
            let detail = error_detail(resp).await;
            Err(RegistryError::Status {
                host,
                what,
                status,
                detail,
            })
        }
    }
}

/// The largest token server answer read (bytes): real ones are a few KiB.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

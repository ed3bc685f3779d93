//! The `[streaming]` section of berthd's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The streaming server (exec/attach/port-forward URLs the CRI hands out).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Where it listens; port 0 picks a free port at start.
    pub address: String,
    /// PEM certificate chain and key: both set means HTTPS URLs.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// A URL's token must be used within this long (seconds), once.
    pub token_ttl_secs: u64,
    /// A session with no traffic for this long is closed (seconds).
    pub idle_timeout_secs: u64,
    /// How long a client may take to open the streams it asked for.
    pub stream_creation_timeout_secs: u64,
    /// Connections at once, waiting for their request or in a session; a
    /// newcomer past it closes the oldest one still waiting, or is refused.
    pub max_connections: usize,
    /// Connections from one address still waiting for their request (a
    /// flood from one peer closes its own oldest first).
    pub max_pending_per_peer: usize,
    /// From accept to a complete request with a valid token, TLS
    /// handshake included (seconds): idle and slowloris clients are closed.
    pub request_timeout_secs: u64,
    /// A request's line and headers together (bytes; 431 past it).
    pub max_request_header_bytes: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            token_ttl_secs: 60,
            idle_timeout_secs: 4 * 3600,
            stream_creation_timeout_secs: 30,
            max_connections: 1024,
            max_pending_per_peer: 128,
            request_timeout_secs: 10,
            max_request_header_bytes: 16 << 10,
        }
    }
}

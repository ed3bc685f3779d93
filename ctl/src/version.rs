//! `berthctl version`.

use anyhow::Result;
use berth_api::system::v1::system_client::SystemClient;
use berth_api::system::v1::{VersionRequest, VersionResponse};

use crate::connect::connect;
use crate::output::print;

pub fn client_section() -> String {
    format!("Client:\n  Version:  {}", env!("CARGO_PKG_VERSION"))
}

pub fn server_section(v: &VersionResponse) -> String {
    let mut s = format!("Server:\n  Version:  {}", v.version);
    for (label, value) in [
        ("Revision", &v.revision),
        ("Root", &v.root),
        ("State", &v.state),
    ] {
        if !value.is_empty() {
            s.push_str(&format!("\n  {:<9} {value}", format!("{label}:")));
        }
    }
    s
}

/// Prints the client's version first, so it shows even when the daemon does
/// not answer; that failure is then reported (and exits non-zero), as
/// `docker version` does, so scripts can tell.
pub async fn run(address: &str) -> Result<()> {
    print(client_section())?;
    let mut c = SystemClient::new(connect(address).await?);
    let v = c.version(VersionRequest {}).await?.into_inner();
    print(server_section(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        assert!(client_section().starts_with("Client:\n  Version:  0."));
        let v = VersionResponse {
            version: "0.1.0".into(),
            revision: "abc123".into(),
            root: "/var/lib/berth".into(),
            state: String::new(),
        };
        assert_eq!(
            server_section(&v),
            "Server:\n  Version:  0.1.0\n  Revision: abc123\n  Root:     /var/lib/berth"
        );
    }
}

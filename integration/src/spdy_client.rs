//! The independent SPDY/3.1 client the streaming tests use: node-spdy's
//! transport (`spdy-transport` from npm) driven by `tests/spdy/client.js`,
//! not berth's code. Needs `node` and `npm`, and the npm registry once (the
//! package is cached under the target dir).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Where the client and its npm package live, or why they cannot.
pub fn client_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spdy");
        let dir = std::env::temp_dir().join("berth-spdy-client");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for f in ["package.json", "client.js"] {
            std::fs::copy(src.join(f), dir.join(f)).map_err(|e| e.to_string())?;
        }
        if !dir.join("node_modules/spdy-transport").exists() {
            let out = std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("cannot run npm: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm install spdy-transport failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(dir)
    })
    .clone()
}

/// Runs one client scenario against `hostport` + `path`; the JSON line it
/// printed, or its failure.
pub async fn run(
    hostport: &str,
    path: &str,
    protocol: &str,
    scenario: &str,
    opts: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let dir = client_dir().map_err(anyhow::Error::msg)?;
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(dir.join("client.js"))
            .arg(hostport)
            .arg(path)
            .arg(protocol)
            .arg(scenario)
            .arg(opts.to_string())
            .current_dir(&dir)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the SPDY client timed out"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "SPDY client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(stdout.lines().last().unwrap_or(""))?)
}

//! The independent SPDY/3.1 client the streaming tests use: node-spdy's
//! transport (`spdy-transport` from npm) driven by `tests/spdy/client.js`,
//! not berth's code. Needs `node`; the npm package and its dependencies are
//! vendored in `tests/spdy/node_modules` as npm ships them (MIT and ISC, each
//! package naming its licence in its package.json).

use std::path::PathBuf;
use std::time::Duration;

/// The client's directory: `tests/spdy` with its npm dependencies vendored
/// (`node_modules`, pinned by `package-lock.json`), so no test reaches the
/// npm registry. Err when node itself is missing (`make deps-test` installs it).
pub fn client_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spdy");
    if !dir
        .join("node_modules/spdy-transport/package.json")
        .is_file()
    {
        return Err(format!(
            "{}: node_modules/spdy-transport is missing",
            dir.display()
        ));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(dir),
        Ok(o) => Err(format!(
            "node --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run node: {e}")),
    }
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

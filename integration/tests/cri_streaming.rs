//! End-to-end CRI streaming: Exec/Attach/PortForward URLs from a real berthd,
//! driven by clients that are not berth's code: Python's `websocket` module
//! (Debian's python3-websocket) for the WebSocket channel protocols.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use berth_api::runtime::v1 as api;
use integration::cri::{self, Env};
use serde_json::Value;

/// Debian's interpreter, which has python3-websocket (a pyenv one may not).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/streaming/k8s_ws.py")
}

fn ws_client(args: &[&str]) -> Result<Value> {
    let out = Command::new(PYTHON)
        .arg(script())
        .args(args)
        .output()
        .context("running the python websocket client")?;
    ensure!(
        out.status.success(),
        "websocket client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn exec_url(
    rt: &mut cri::Rt,
    c: &str,
    cmd: &[&str],
    stdin: bool,
    tty: bool,
) -> Result<String> {
    Ok(rt
        .exec(api::ExecRequest {
            container_id: c.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url)
}

fn exit_code_of(status: &Value) -> Option<i64> {
    if status["status"] == "Success" {
        return Some(0);
    }
    status["details"]["causes"]
        .as_array()?
        .iter()
        .find(|c| c["reason"] == "ExitCode")?["message"]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_and_port_forward() -> Result<()> {
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("stream")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let web = env.container(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let c = env.create_start(&mut rt, &pod_id, &pod, &web).await?;

    // Echo over stdin: v5 ends stdin with its close signal; v4 cannot close
    // stdin alone, so the command stops after one line.
    let url = exec_url(&mut rt, &c, &["cat"], true, false).await?;
    let r = ws_client(&[
        "exec",
        &url,
        "v5.channel.k8s.io",
        "--stdin",
        "echo me\n",
        "--close-stdin",
    ])?;
    ensure!(r["stdout"] == "echo me\n", "v5: {r}");
    ensure!(exit_code_of(&r["status"]) == Some(0), "v5: {r}");
    let url = exec_url(&mut rt, &c, &["head", "-n1"], true, false).await?;
    let r = ws_client(&["exec", &url, "v4.channel.k8s.io", "--stdin", "echo me\n"])?;
    ensure!(r["stdout"] == "echo me\n", "v4: {r}");
    ensure!(exit_code_of(&r["status"]) == Some(0), "v4: {r}");
    // Exit codes: 0 and non-zero, stderr apart from stdout.
    let url = exec_url(
        &mut rt,
        &c,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    )
    .await?;
    let r = ws_client(&["exec", &url, "v4.channel.k8s.io"])?;
    ensure!(r["stdout"] == "out\n" && r["stderr"] == "err\n", "{r}");
    ensure!(exit_code_of(&r["status"]) == Some(3), "{r}");
    let url = exec_url(&mut rt, &c, &["true"], false, false).await?;
    let r = ws_client(&["exec", &url, "v5.channel.k8s.io"])?;
    ensure!(exit_code_of(&r["status"]) == Some(0), "{r}");

    // A TTY: the resize reaches the terminal before the command reads it.
    let url = exec_url(&mut rt, &c, &["sh"], true, true).await?;
    let r = ws_client(&[
        "exec",
        &url,
        "v5.channel.k8s.io",
        "--resize",
        "123x45",
        "--stdin",
        "stty size; exit 5\n",
    ])?;
    ensure!(
        r["stdout"].as_str().unwrap_or_default().contains("45 123"),
        "tty resize not seen: {r}"
    );
    ensure!(exit_code_of(&r["status"]) == Some(5), "{r}");

    // A used token is gone: 404.
    let url = exec_url(&mut rt, &c, &["true"], false, false).await?;
    ws_client(&["exec", &url, "v5.channel.k8s.io"])?;
    let again = Command::new(PYTHON)
        .arg(script())
        .args(["exec", &url, "v5.channel.k8s.io"])
        .output()?;
    ensure!(!again.status.success(), "a token worked twice");
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("404"),
        "reused token: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Port-forward to busybox httpd through the pod's network namespace.
    let url = rt
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![80],
            ..Default::default()
        })
        .await?
        .into_inner()
        .url;
    let dir = tempfile::tempdir()?;
    let req = dir.path().join("req");
    let resp = dir.path().join("resp");
    std::fs::write(&req, "GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let url = format!("{url}?port=80");
    let r = ws_client(&[
        "portforward",
        &url,
        "v4.channel.k8s.io",
        "80",
        &req.display().to_string(),
        &resp.display().to_string(),
    ])?;
    let body = std::fs::read_to_string(&resp)?;
    ensure!(
        body.contains("hello-from-pod"),
        "port-forward got {r}: {body}"
    );

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[])?;
    Ok(())
}

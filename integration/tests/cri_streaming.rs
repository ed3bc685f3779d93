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
    ws_client_env(args, &[])
}

fn ws_client_env(args: &[&str], env: &[(&str, &str)]) -> Result<Value> {
    let out = Command::new(PYTHON)
        .arg(script())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .context("running the python websocket client")?;
    ensure!(
        out.status.success(),
        "websocket client {:?} failed: {}\n{}",
        args,
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

/// Processes running `sleep ARG`.
fn sleepers(arg: &str) -> usize {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes())
                })
                .count()
        })
        .unwrap_or(0)
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
        "--wait-output",
        "--stdin",
        "stty size; exit 5\n",
    ])?;
    ensure!(
        r["stdout"].as_str().unwrap_or_default().contains("45 123"),
        "tty resize not seen: {r}"
    );
    ensure!(exit_code_of(&r["status"]) == Some(5), "{r}");

    // An interactive shell on a TTY: what is typed is echoed and run, and
    // Ctrl-D (EOF on the terminal) ends it with status 0.
    let url = exec_url(&mut rt, &c, &["sh"], true, true).await?;
    let r = ws_client(&[
        "exec",
        &url,
        "v5.channel.k8s.io",
        "--wait-output",
        "--stdin",
        "echo typed-$((6*7))\n\u{4}",
    ])?;
    let out = r["stdout"].as_str().unwrap_or_default();
    ensure!(out.contains("typed-42"), "interactive sh: {r}");
    ensure!(exit_code_of(&r["status"]) == Some(0), "Ctrl-D: {r}");

    // A client that goes away gets its command killed and reaped.
    let url = exec_url(&mut rt, &c, &["sleep", "3217"], true, false).await?;
    let mut client = Command::new(PYTHON)
        .arg(script())
        .args(["exec", &url, "v5.channel.k8s.io", "--disconnect-after", "3"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + cri::TIMEOUT;
    while sleepers("3217") == 0 {
        ensure!(std::time::Instant::now() < deadline, "the exec never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ensure!(client.wait()?.success(), "the leaving client failed");
    while sleepers("3217") > 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the exec of a client that went away still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

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

/// `http://HOST:PORT/PATH` -> ("HOST:PORT", "/PATH").
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the streaming URL is not http://")?;
    let i = rest.find('/').context("no path in the streaming URL")?;
    Ok((rest[..i].to_string(), rest[i..].to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_and_port_forward() -> Result<()> {
    use integration::spdy_client;
    use serde_json::json;
    if let Err(e) = spdy_client::client_dir() {
        berth_sysutil::testing::precondition_missing(
            "spdy_exec_and_port_forward",
            &format!(
                "the independent SPDY client (node + npm spdy-transport) is not available: {e}"
            ),
        );
        return Ok(());
    }
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("spdy")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let web = env.container(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-over-spdy > /www/index.html && \
             dd if=/dev/urandom of=/www/big bs=1048576 count=100 2>/dev/null && \
             sha256sum /www/big > /www/big.tmp && mv /www/big.tmp /www/big.sha && \
             exec httpd -f -p 80 -h /www",
        ],
    );
    let c = env.create_start(&mut rt, &pod_id, &pod, &web).await?;

    // stdin echo, stderr apart, exit code 3 as a v4 Status.
    let url = exec_url(
        &mut rt,
        &c,
        &["sh", "-c", "cat; echo err >&2; exit 3"],
        true,
        false,
    )
    .await?;
    let (host, path) = split_url(&url)?;
    let r = spdy_client::run(
        &host,
        &path,
        "v4.channel.k8s.io",
        "exec",
        json!({"streams": ["error", "stdin", "stdout", "stderr"], "stdin": "hello spdy\n"}),
    )
    .await?;
    ensure!(r["stdout"]["text"] == "hello spdy\n", "{r}");
    ensure!(r["stderr"]["text"] == "err\n", "{r}");
    let status: Value = serde_json::from_str(r["error"]["text"].as_str().unwrap_or("null"))?;
    ensure!(exit_code_of(&status) == Some(3), "{r}");

    // A TTY and a resize the command sees.
    let url = exec_url(
        &mut rt,
        &c,
        // The resize reaches the TTY some time after the exec starts; until then
        // the size is 0x0 and busybox's `stty size` prints only an error (and exits 0).
        &[
            "sh",
            "-c",
            "i=0; until [ -n \"$(stty size 2>/dev/null)\" ] || [ $i -ge 300 ]; do \
             sleep 0.1; i=$((i+1)); done; stty size",
        ],
        false,
        true,
    )
    .await?;
    let (host, path) = split_url(&url)?;
    let r = spdy_client::run(
        &host,
        &path,
        "v4.channel.k8s.io",
        "exec",
        json!({"streams": ["error", "stdout", "resize"], "resize": [[100, 40]]}),
    )
    .await?;
    ensure!(
        r["stdout"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("40 100"),
        "{r}"
    );

    // Port-forward to busybox httpd: a page over 20 concurrent connections,
    // then 100 MiB with its checksum intact.
    // The checksum file appears whole (renamed into place) just before httpd starts.
    let deadline = std::time::Instant::now() + cri::TIMEOUT;
    let want = loop {
        if let Ok(s) = cri::exec_ok(&mut rt, &c, &["cat", "/www/big.sha"]).await {
            let sum = s.split_whitespace().next().unwrap_or_default().to_string();
            let page = ["wget", "-q", "-O-", "http://127.0.0.1/index.html"];
            if sum.len() == 64 && cri::exec_ok(&mut rt, &c, &page).await.is_ok() {
                break sum;
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the 100 MiB file was not made, or httpd is not serving"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for (file, conns) in [("/index.html", 20), ("/big", 1)] {
        let url = rt
            .port_forward(api::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![80],
            })
            .await?
            .into_inner()
            .url;
        let (host, path) = split_url(&url)?;
        let r = spdy_client::run(
            &host,
            &path,
            "portforward.k8s.io",
            "http",
            json!({"port": 80, "path": file, "conns": conns}),
        )
        .await?;
        let results = r["results"].as_array().context("no results")?;
        ensure!(results.len() == conns, "{r}");
        for one in results {
            ensure!(
                one["status"].as_str().unwrap_or_default().contains("200"),
                "{file}: {one}"
            );
            if file == "/big" {
                ensure!(one["len"] == 100 * 1048576, "{one}");
                ensure!(
                    one["sha256"] == want.as_str(),
                    "checksum: {one} want {want}"
                );
            } else {
                ensure!(one["len"] == "hello-over-spdy\n".len(), "{one}");
            }
        }
    }

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[])?;
    Ok(())
}

/// Attach to a container created with stdin: what the client types reaches
/// it, its output comes back, and its exit ends the session with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_attach() -> Result<()> {
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("attach")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let mut cfg = env.container("reader", &["sh", "-c", "read line; echo got $line; exit 4"]);
    cfg.stdin = true;
    let c = env.create_start(&mut rt, &pod_id, &pod, &cfg).await?;
    let url = rt
        .attach(api::AttachRequest {
            container_id: c.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url;
    let r = ws_client(&["exec", &url, "v5.channel.k8s.io", "--stdin", "hello\n"])?;
    ensure!(r["stdout"] == "got hello\n", "{r}");
    ensure!(exit_code_of(&r["status"]) == Some(4), "{r}");
    // A container without stdin cannot be attached to with stdin.
    let mut plain = env.container("plain", &["sleep", "3600"]);
    plain.stdin = false;
    let p = env.create_start(&mut rt, &pod_id, &pod, &plain).await?;
    let e = rt
        .attach(api::AttachRequest {
            container_id: p.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .err()
        .context("attach with stdin to a container without it")?;
    ensure!(e.code() == tonic::Code::InvalidArgument, "{e:?}");
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c, p], &[])?;
    Ok(())
}

/// With a certificate configured, the URLs are https and the WebSocket
/// client (trusting the test CA) execs over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_over_tls() -> Result<()> {
    let _net = cri::host_network_lock().await;
    let pki = tempfile::tempdir()?;
    let tls = integration::registry::generate_tls(pki.path(), &["127.0.0.1"])?;
    let extra = format!(
        "\n[streaming]\ntls_cert = {:?}\ntls_key = {:?}\n",
        tls.server_cert.display().to_string(),
        tls.server_key.display().to_string()
    );
    let env = Env::start_with(
        cri::TestNet::new()?,
        cri::CriOpts {
            extra,
            ..Default::default()
        },
    )?;
    let mut rt = env.rt().await?;
    let pod = env.pod("tls")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("main", &["sleep", "3600"]),
        )
        .await?;
    let url = exec_url(&mut rt, &c, &["echo", "over tls"], false, false).await?;
    ensure!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = tls.ca_cert.display().to_string();
    let r = ws_client_env(&["exec", &url, "v5.channel.k8s.io"], &[("K8S_WS_CA", &ca)])?;
    ensure!(r["stdout"] == "over tls\n", "{r}");
    ensure!(exit_code_of(&r["status"]) == Some(0), "{r}");
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    env.assert_no_leaks(&pod_id, &[c], &[])?;
    Ok(())
}

/// For trying an interactive TTY exec by hand: starts a pod with a busybox
/// container, writes a fresh exec URL (`sh` on a TTY) to
/// `$BERTH_TTY_DIR/url` each time `$BERTH_TTY_DIR/next` appears, and stops
/// when `$BERTH_TTY_DIR/stop` does. Run it with `--ignored`, then
/// `k8s_ws.py interactive "$(cat $BERTH_TTY_DIR/url)" v5.channel.k8s.io`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn manual_tty_session() -> Result<()> {
    let dir = PathBuf::from(std::env::var("BERTH_TTY_DIR").context("set BERTH_TTY_DIR")?);
    let _net = cri::host_network_lock().await;
    let env = Env::start()?;
    let mut rt = env.rt().await?;
    let pod = env.pod("by-hand")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env
        .create_start(
            &mut rt,
            &pod_id,
            &pod,
            &env.container("main", &["sleep", "3600"]),
        )
        .await?;
    let mut url = exec_url(&mut rt, &c, &["sh"], true, true).await?;
    std::fs::write(dir.join("url"), &url)?;
    while !dir.join("stop").exists() {
        if dir.join("next").exists() {
            std::fs::remove_file(dir.join("next"))?;
            url = exec_url(&mut rt, &c, &["sh"], true, true).await?;
            std::fs::write(dir.join("url"), &url)?;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    Ok(())
}

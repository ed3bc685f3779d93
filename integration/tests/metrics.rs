//! The Prometheus endpoint of a real berthd (`[metrics] address`) scraped
//! before, during and after CRI work: RPC counts by method and code, pulls,
//! layer cache, pods, containers and shims by state, GC passes. Each scrape
//! must pass Prometheus' own `promtool check metrics` (Debian `prometheus`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_sysutil::testing::precondition_missing;
use integration::bench::which;
use integration::cri::{self, api, host_network_lock, CriOpts, Env, TestNet};
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use integration::util::wait_for;

type Samples = HashMap<String, f64>;

/// One series, labels in the order berthd writes them (sorted by name).
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

fn rpc(method: &str, code: &str) -> String {
    let service = if matches!(method, "PullImage" | "RemoveImage" | "ListImages") {
        "runtime.v1.ImageService"
    } else {
        "runtime.v1.RuntimeService"
    };
    series(
        "grpc_server_handled_total",
        &[
            ("grpc_code", code),
            ("grpc_method", method),
            ("grpc_service", service),
        ],
    )
}

fn get(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// Scrapes `/metrics`, checks it with promtool, and parses the samples.
fn scrape(addr: SocketAddr, promtool: &str) -> Result<Samples> {
    let resp = cri::http_get_raw(addr, "/metrics").context("scraping /metrics")?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("no end of headers in the scrape")?;
    ensure!(head.starts_with("HTTP/1.0 200"), "scrape answered {head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = Samples::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').context("a sample without a value")?;
        samples.insert(key.to_string(), value.parse().context(line.to_string())?);
    }
    Ok(samples)
}

/// Scrapes until `ready` holds for the samples (30 s at most).
fn scrape_until(
    addr: SocketAddr,
    promtool: &str,
    what: &str,
    ready: impl Fn(&Samples) -> bool,
) -> Result<Samples> {
    wait_for(what, Duration::from_secs(30), || {
        let samples = scrape(addr, promtool)?;
        Ok(ready(&samples).then_some(samples))
    })
}

/// The address berthd logged for its endpoint (it binds port 0).
fn metrics_addr(env: &Env) -> Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(addr) = env.d().log().lines().find_map(|l| {
            l.contains("metrics endpoint serving")
                .then(|| l.split("address=").nth(1))
                .flatten()
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        }) {
            return Ok(addr);
        }
        if Instant::now() > deadline {
            bail!(
                "berthd never logged its metrics address:\n{}",
                env.log_excerpt(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_cri_work_and_pass_promtool() -> Result<()> {
    const TEST: &str = "metrics_count_real_cri_work_and_pass_promtool";
    let Some(promtool) = which("promtool") else {
        precondition_missing(
            TEST,
            "promtool is not installed (apt-get install prometheus)",
        );
        return Ok(());
    };
    let promtool = promtool.to_string_lossy().into_owned();
    let _net = host_network_lock().await;
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::busybox()?, "busybox:1")?;
    let env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            extra: "[metrics]\naddress = \"127.0.0.1:0\"\n".into(),
            ..Default::default()
        },
    )?;
    let addr = metrics_addr(&env)?;
    // The start-up collection runs in its own task after the socket is up.
    let before = scrape_until(addr, &promtool, "a garbage collection at start", |s| {
        get(s, "berth_gc_runs_total") >= 1.0
    })?;
    ensure!(get(&before, "berth_metadata_size_bytes") > 0.0);
    ensure!(
        before.keys().any(|k| k.starts_with("berth_build_info{")),
        "no build info"
    );

    let mut rt = env.rt().await?;
    let mut img = env.img().await?;
    let reference = reg.reference("busybox:1");
    img.pull_image(api::PullImageRequest {
        image: Some(api::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(|s| env.status_err("PullImage", s))?;
    let missing = rt
        .container_status(api::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await;
    ensure!(
        missing.as_ref().err().map(|s| s.code()) == Some(tonic::Code::NotFound),
        "{missing:?}"
    );
    let pod = env.pod("metrics")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env.container("sleeper", &["sleep", "600"]);
    let cid = env.create_start(&mut rt, &pod_id, &pod, &c).await?;

    // An RPC is counted as its reply's last frame goes out, which the client may
    // see first.
    let during = scrape_until(addr, &promtool, "StartContainer to be counted", |s| {
        get(s, &rpc("StartContainer", "OK")) > get(&before, &rpc("StartContainer", "OK"))
    })?;
    let moved = |s: &Samples, key: &str, by: f64| get(s, key) - get(&before, key) >= by;
    for (method, code) in [
        ("PullImage", "OK"),
        ("ContainerStatus", "NotFound"),
        ("RunPodSandbox", "OK"),
        ("CreateContainer", "OK"),
        ("StartContainer", "OK"),
    ] {
        ensure!(
            moved(&during, &rpc(method, code), 1.0),
            "{method} {code} not counted: {}",
            get(&during, &rpc(method, code))
        );
    }
    let handling = series(
        "grpc_server_handling_seconds_count",
        &[
            ("grpc_method", "RunPodSandbox"),
            ("grpc_service", "runtime.v1.RuntimeService"),
        ],
    );
    ensure!(get(&during, &handling) >= 1.0, "RunPodSandbox not timed");
    ensure!(moved(
        &during,
        &series("berth_image_pulls_total", &[("result", "ok")]),
        1.0
    ));
    ensure!(moved(&during, "berth_image_pull_bytes_total", 1.0));
    ensure!(moved(
        &during,
        "berth_image_pull_duration_seconds_count",
        1.0
    ));
    // The registry's busybox has the layers the imported one unpacked.
    ensure!(
        moved(&during, "berth_layer_cache_hits_total", 1.0),
        "the pulled layer was already unpacked: a cache hit"
    );
    ensure!(get(&during, &series("berth_pods", &[("state", "ready")])) == 1.0);
    ensure!(
        get(
            &during,
            &series("berth_containers", &[("state", "running")])
        ) == 1.0
    );
    ensure!(get(&during, "berth_shims") >= 1.0, "the pod's shim is live");

    rt.stop_container(api::StopContainerRequest {
        container_id: cid.clone(),
        timeout: 0,
    })
    .await
    .map_err(|s| env.status_err("StopContainer", s))?;
    let stopped = scrape(addr, &promtool)?;
    ensure!(
        get(
            &stopped,
            &series("berth_containers", &[("state", "exited")])
        ) == 1.0
    );
    ensure!(
        get(
            &stopped,
            &series("berth_containers", &[("state", "running")])
        ) == 0.0
    );
    env.stop_remove_pod(&mut rt, &pod_id).await?;
    img.remove_image(api::RemoveImageRequest {
        image: Some(api::ImageSpec {
            image: reference,
            ..Default::default()
        }),
    })
    .await
    .map_err(|s| env.status_err("RemoveImage", s))?;

    // A removal asks for a GC pass, which runs in the background.
    let after = scrape_until(addr, &promtool, "a GC pass after RemoveImage", |s| {
        get(s, "berth_gc_runs_total") > get(&during, "berth_gc_runs_total")
    })?;
    ensure!(get(&after, &series("berth_pods", &[("state", "ready")])) == 0.0);
    ensure!(get(&after, &series("berth_pods", &[("state", "notready")])) == 0.0);
    ensure!(get(&after, &rpc("RemovePodSandbox", "OK")) >= 1.0);
    ensure!(get(&after, &rpc("RemoveImage", "OK")) >= 1.0);

    // Only /metrics answers.
    let other = cri::http_get_raw(addr, "/other")?;
    ensure!(other.starts_with("HTTP/1.0 404"), "{other}");
    Ok(())
}

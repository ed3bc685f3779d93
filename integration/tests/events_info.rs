//! `berthctl events` and `berthctl info` against a real berthd: a pod's whole
//! life (and a container's, its task's, an image's, a GC pass and a shim
//! killed under a running container) shows up in the event stream as it
//! happens, in order; `info` reports the daemon, its handlers, network,
//! storage and healthy components.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::cri::{self, host_network_lock, Env};
use integration::daemon;
use serde_json::Value;

/// `berthctl events --format json`, its lines read on a thread.
struct Events {
    child: Child,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    fn start(env: &Env) -> Result<Events> {
        let mut child = Command::new(daemon::bin_path("berthctl")?)
            .arg("--address")
            .arg(env.d().socket_path())
            .args(["events", "--format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("events stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("not JSON from berthctl events: {line:?}: {e}"),
                }
            }
        });
        Ok(Events {
            child,
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits until an event with `topic` about `id` arrived; returns its index.
    fn wait(&mut self, topic: &str, id: &str) -> Result<usize> {
        self.wait_within(topic, id, Duration::from_secs(30))
    }

    fn wait_within(&mut self, topic: &str, id: &str, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self
                .seen
                .iter()
                .position(|e| e["topic"] == topic && (id.is_empty() || e["id"] == id))
            {
                return Ok(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => bail!(
                    "no {topic} event for {id:?} within {within:?}; seen: {}",
                    self.topics()
                ),
            }
        }
    }

    fn topics(&self) -> String {
        let t: Vec<String> = self
            .seen
            .iter()
            .map(|e| format!("{} {}", e["topic"], e["id"]))
            .collect();
        t.join(", ")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shim_pid(env: &Env, pod_id: &str) -> Result<i32> {
    let path = env.d().state().join("pods").join(pod_id).join("shim.json");
    let rec: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    rec["pid"]
        .as_i64()
        .map(|p| p as i32)
        .with_context(|| format!("no pid in {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_pods_life_and_info_reports_the_daemon() -> Result<()> {
    let _net = host_network_lock().await;
    let env = Env::start()?;
    let mut events = Events::start(&env)?;
    let mut rt = env.rt().await?;
    // The stream is subscribed once the daemon took berthctl's call, which may come
    // after a tag: tag again until one is seen.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        env.d()
            .ctl_ok(["images", "tag", &env.image, "example.com/probe:1"])?;
        if events
            .wait_within("/images/tag", "example.com/probe:1", Duration::from_secs(1))
            .is_ok()
        {
            break;
        }
        ensure!(Instant::now() < deadline, "berthctl events never started");
    }

    // A pod's whole life.
    let pod = env.pod("evented")?;
    let pod_id = env.run_pod(&mut rt, &pod).await?;
    let c = env.container("short", &["sh", "-c", "exit 3"]);
    let cid = env.create_start(&mut rt, &pod_id, &pod, &c).await?;
    let order = [
        events.wait("/pods/create", &pod_id)?,
        events.wait("/pods/start", &pod_id)?,
        events.wait("/containers/create", &cid)?,
        events.wait("/containers/start", &cid)?,
        events.wait("/containers/stop", &cid)?,
    ];
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {}",
        events.topics()
    );
    let task_exit = events.wait("/tasks/exit", &cid)?;
    ensure!(
        events.seen[task_exit]["attributes"]["exit_status"] == "3",
        "{}",
        events.seen[task_exit]
    );
    let stop_at = events.wait("/containers/stop", &cid)?;
    let stop = &events.seen[stop_at];
    ensure!(stop["attributes"]["exit_code"] == "3", "{stop}");
    ensure!(stop["attributes"]["pod_name"] == "evented", "{stop}");
    ensure!(stop["attributes"]["name"] == "short", "{stop}");
    ensure!(
        stop["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{stop}"
    );

    // A shim killed under a running container.
    let sleeper = env.container("sleeper", &["sleep", "600"]);
    let sid = env.create_start(&mut rt, &pod_id, &pod, &sleeper).await?;
    events.wait("/tasks/start", &sid)?;
    cri::kill(shim_pid(&env, &pod_id)?, libc::SIGKILL);
    let shim_exit = events.wait("/shims/exit", &pod_id)?;
    ensure!(
        events.seen[shim_exit]["attributes"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        events.seen[shim_exit]
    );

    env.stop_remove_pod(&mut rt, &pod_id).await?;
    let end = [
        events.wait("/pods/stop", &pod_id)?,
        events.wait("/pods/delete", &pod_id)?,
    ];
    ensure!(order[4] < end[0] && end[0] < end[1], "{}", events.topics());
    events.wait("/containers/delete", &cid)?;
    events.wait("/tasks/delete", &cid)?;

    // An image name removed, and the GC pass it asks for.
    env.d().ctl_ok(["images", "rm", "example.com/probe:1"])?;
    events.wait("/images/delete", "example.com/probe:1")?;
    events.wait("/gc/run", "")?;

    // info, as JSON and as text.
    let info: Value = serde_json::from_str(&env.d().ctl_ok(["info", "--format", "json"])?)?;
    ensure!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    ensure!(
        info["socket"] == env.d().socket_path().display().to_string(),
        "{info}"
    );
    ensure!(info["storage"]["images"].as_u64() >= Some(1), "{info}");
    ensure!(
        info["storage"]["contentBlobs"].as_u64() >= Some(1),
        "{info}"
    );
    ensure!(
        info["storage"]["filesystemBytes"].as_u64() > Some(0),
        "{info}"
    );
    ensure!(
        info["network"]["name"] == env.net.name.as_str(),
        "{}",
        info["network"]
    );
    ensure!(
        info["runtimeHandlers"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["default"] == true)),
        "{info}"
    );
    ensure!(info["config"].as_str().is_some_and(|c| c.contains("[cri]")));
    for name in [
        "metadata",
        "content",
        "snapshotter",
        "cni",
        "runtime",
        "streaming",
    ] {
        let c = info["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .with_context(|| format!("no {name} component: {info}"))?;
        ensure!(c["healthy"] == true, "{c}");
    }
    let text = env.d().ctl_ok(["info"])?;
    for want in ["Runtime handlers:", "Storage:", "Health:", "cni", "Config:"] {
        ensure!(text.contains(want), "berthctl info lacks {want}:\n{text}");
    }
    Ok(())
}

//! grpc-python (grpcio, gRPC core) against a real berthd: unary and
//! server-streaming calls of the CRI RuntimeService and ImageService over
//! berthd's Unix socket, an error status, and a cancelled stream.
//!
//! Why: grpcio >= 1.57 sends the socket path %-encoded as the HTTP/2
//! `:authority` of a `unix:` channel (`tmp%2Fberth-e2e-..%2Fberth.sock`; the
//! script checks that on a listener of its own, grpcio has no API that shows
//! it). h2 under tonic refuses that authority; without the h2-authority layer
//! in daemon/src/server.rs (the `AuthorityFix` map over the listener) every
//! call here fails at once with
//! `StatusCode.INTERNAL: Received RST_STREAM with error code 1`
//! (PROTOCOL_ERROR); checked by running this test against a berthd built
//! without that map. The script keeps grpcio's default authority on purpose.
//!
//! Needs: python3 with `venv` and `pip` (Debian: python3-venv), PyPI for the
//! first run (the venv is cached in `target/pyenv`), root, runc and the CNI
//! plugins (a pod is run to get a container event), like tests/cri_runtime.rs.
//! Missing python3, venv or PyPI fails the test, saying which.
//!
//! Run: `cargo build -p berthd -p berthctl && cargo test -p integration
//! --test grpcio_client -- --nocapture` (shows the script's JSON).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::cri::{self, api, Env};
use prost::Message;
use serde_json::Value;

/// What the venv holds, pinned (Python 3.11 wheels exist for all). grpcio
/// >= 1.57 sends the %-encoded authority; hpack reads it in the script.
const REQUIREMENTS: &[&str] = &[
    "grpcio==1.68.1",
    "grpcio-tools==1.68.1",
    "protobuf==5.29.5",
    "hpack==4.0.0",
];

/// Written into the venv once everything is installed; a venv whose stamp
/// differs from [`REQUIREMENTS`] is rebuilt.
const STAMP: &str = "berth-requirements.txt";

const PIP_TIMEOUT: Duration = Duration::from_secs(600);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// `python3` on PATH.
fn python3() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .context(
            "python3 not found on PATH: the grpcio interop test needs python3 with venv and \
             pip (Debian: apt-get install python3 python3-venv)",
        )
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2) of our own child, not yet reaped (the waiting
            // thread reaps it below).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = rx.recv().context("waiter thread")??;
            bail!(
                "{what} timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

fn run_ok(cmd: &mut Command, timeout: Duration, hint: &str) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}){hint}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// The venv is complete: its stamp names [`REQUIREMENTS`] and the modules
/// import.
fn venv_ok(venv: &Path) -> bool {
    let want = REQUIREMENTS.join("\n");
    std::fs::read_to_string(venv.join(STAMP)).is_ok_and(|s| s == want)
        && Command::new(venv_python(venv))
            .args([
                "-c",
                "import grpc, grpc_tools.protoc, google.protobuf, hpack",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Builds the venv in `tmp`. Only `bin/python -m ...` is used later: the
/// venv's console scripts would keep `tmp` in their shebangs, its python
/// finds its prefix from where it is, so the rename below is safe.
fn build_venv(tmp: &Path) -> Result<()> {
    let python = python3()?;
    run_ok(
        Command::new(&python).args(["-m", "venv"]).arg(tmp),
        Duration::from_secs(120),
        &format!(
            ": {} cannot create a venv with pip (Debian's python3 needs python3-venv, \
             which has ensurepip)",
            python.display()
        ),
    )?;
    run_ok(
        Command::new(venv_python(tmp))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(REQUIREMENTS),
        PIP_TIMEOUT,
        ": installing grpcio from PyPI",
    )?;
    std::fs::write(tmp.join(STAMP), REQUIREMENTS.join("\n"))?;
    ensure!(
        venv_ok(tmp),
        "{} is incomplete after pip install",
        tmp.display()
    );
    Ok(())
}

/// `target/pyenv`: a venv with [`REQUIREMENTS`], made once and reused. It is
/// built in a temp dir next to it and renamed into place, so test binaries
/// running at the same time never see half of one: the first rename wins,
/// a later builder drops its own copy.
fn pyenv() -> Result<PathBuf> {
    let target = workspace_root().join("target");
    let venv = target.join("pyenv");
    if venv_ok(&venv) {
        return Ok(venv_python(&venv));
    }
    std::fs::create_dir_all(&target)?;
    let tmp = target.join(format!("pyenv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = build_venv(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if venv.exists() && !venv_ok(&venv) {
        // Stale (other requirements) or broken: moved aside atomically first.
        let old = target.join(format!("pyenv.old-{}", std::process::id()));
        if std::fs::rename(&venv, &old).is_ok() {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    if std::fs::rename(&tmp, &venv).is_err() {
        // Another process put its venv there first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    ensure!(
        venv_ok(&venv),
        "{} is not a usable venv after building it",
        venv.display()
    );
    Ok(venv_python(&venv))
}

/// The venv's python, built at most once per test binary.
fn python() -> Result<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| pyenv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Python stubs for the CRI proto (`runtime/v1/api_pb2*.py`) in `dir`.
fn generate_stubs(python: &Path, dir: &Path) -> Result<()> {
    let proto = workspace_root().join("api").join("proto");
    run_ok(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .arg("runtime/v1/api.proto"),
        Duration::from_secs(120),
        ": generating the CRI Python stubs",
    )?;
    ensure!(dir.join("runtime/v1/api_pb2_grpc.py").is_file());
    Ok(())
}

fn strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The images as tonic's client sees them, in the script's JSON shape.
fn tonic_images(env: &Env) -> Result<Vec<Value>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let images = rt.block_on(async {
        let mut img = env.img().await?;
        anyhow::Ok(
            img.list_images(api::ListImagesRequest { filter: None })
                .await?
                .into_inner()
                .images,
        )
    })?;
    Ok(images
        .iter()
        .map(|i| {
            serde_json::json!({
                "id": i.id,
                "repo_tags": i.repo_tags,
                "repo_digests": i.repo_digests,
                "size": i.size,
                "spec": i.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                "pinned": i.pinned,
            })
        })
        .collect())
}

#[test]
fn grpcio_client_runtime_and_image_services() -> Result<()> {
    // Not a silent pass: no python3/venv/pip/PyPI is a failure that says so.
    let python = python()?;
    let stubs = tempfile::Builder::new().prefix("berth-grpcio-").tempdir()?;
    generate_stubs(&python, stubs.path())?;

    // The only test in this binary that runs pods, so no host_network_lock.
    let env = Env::start()?;
    let socket = env.d().socket_path();
    let pod = env.pod("grpcio")?;
    let params = serde_json::json!({
        "stubs": stubs.path(),
        "socket": socket,
        "image": env.image,
        "pod_config_hex": hex::encode(pod.encode_to_vec()),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio/cri_client.py");
    let out = run(
        Command::new(&python)
            .arg("-u")
            .arg(&script)
            .arg(params.to_string()),
        SCRIPT_TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "cri_client.py failed ({}):\nstdout: {stdout}\nstderr: {stderr}\n--- berthd log ---\n{}",
        out.status,
        env.log_excerpt(60)
    );
    let r: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("cri_client.py printed no JSON: {stdout}\n{stderr}"))?;
    let ctx = || format!("cri_client.py result:\n{stdout}\nstderr: {stderr}");
    // Shown with --nocapture (and when the test fails).
    eprintln!("cri_client.py result:\n{stdout}");

    // The authority grpcio sends on unix: channels, for berthd's socket.
    let a = &r["authority"];
    let encoded = |p: &Path| {
        p.display()
            .to_string()
            .trim_start_matches('/')
            .replace('/', "%2F")
    };
    ensure!(
        a["captured"].as_str()
            == Some(&encoded(Path::new(
                a["capture_socket"].as_str().unwrap_or("")
            ))),
        "{}",
        ctx()
    );
    ensure!(a["berthd"].as_str() == Some(&encoded(&socket)), "{}", ctx());

    // RuntimeService.
    let v = &r["version"];
    ensure!(v["runtime_name"] == "berth", "{}", ctx());
    ensure!(v["runtime_api_version"] == "v1", "{}", ctx());
    ensure!(
        v["runtime_version"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        ctx()
    );
    ensure!(r["status"]["RuntimeReady"] == true, "{}", ctx());
    ensure!(r["status"]["NetworkReady"] == true, "{}", ctx());
    ensure!(r["pods_before"] == serde_json::json!([]), "{}", ctx());
    ensure!(r["containers"] == serde_json::json!([]), "{}", ctx());

    // ImageService: the imported busybox, as tonic sees it too.
    let images = r["images"].as_array().context("images")?;
    ensure!(images.len() == 1, "{}", ctx());
    ensure!(images[0]["id"] == env.image_id.as_str(), "{}", ctx());
    ensure!(
        strs(&images[0]["repo_tags"]).contains(&env.image),
        "{}",
        ctx()
    );
    ensure!(
        *images == tonic_images(&env)?,
        "grpcio and tonic disagree: {}",
        ctx()
    );
    let st = &r["image_status"];
    ensure!(st["id"] == env.image_id.as_str(), "{}", ctx());
    ensure!(st == &images[0], "{}", ctx());
    let fs = r["image_fs"].as_array().context("image_fs")?;
    ensure!(
        !fs.is_empty()
            && fs.iter().all(|u| u["mountpoint"]
                .as_str()
                .is_some_and(|m| Path::new(m).starts_with(env.d().root()))),
        "{}",
        ctx()
    );
    // Server streaming: the same images as ListImages.
    ensure!(r["stream_images"]["images"] == r["images"], "{}", ctx());
    ensure!(
        r["stream_images"]["messages"].as_u64() >= Some(1),
        "{}",
        ctx()
    );
    // The error status (its code was checked in Python).
    let e = &r["image_status_empty"];
    ensure!(e["code"] == "INVALID_ARGUMENT", "{}", ctx());
    ensure!(
        e["message"].as_str().is_some_and(|m| m.contains("image")),
        "{}",
        ctx()
    );

    // Events: the pod's sandbox CREATED and STARTED, then CANCELLED.
    let pod_id = r["pod_id"].as_str().context("pod_id")?.to_string();
    let evs = r["events"].as_array().context("events")?;
    let of_pod: Vec<&str> = evs
        .iter()
        .filter(|e| e["container_id"] == pod_id.as_str())
        .filter_map(|e| e["type"].as_str())
        .collect();
    ensure!(
        of_pod.contains(&"CONTAINER_CREATED_EVENT") && of_pod.contains(&"CONTAINER_STARTED_EVENT"),
        "{}",
        ctx()
    );
    ensure!(
        evs.iter()
            .filter(|e| e["container_id"] == pod_id.as_str())
            .all(|e| e["pod_sandbox_id"] == pod_id.as_str() && e["created_at"].as_i64() > Some(0)),
        "{}",
        ctx()
    );
    ensure!(r["events_end"] == "CANCELLED", "{}", ctx());
    // The pod in ListPodSandbox and StreamPodSandboxes, then gone.
    ensure!(ids(&r["pods_running"]) == vec![pod_id.clone()], "{}", ctx());
    ensure!(
        r["pods_running"][0]["state"] == "SANDBOX_READY",
        "{}",
        ctx()
    );
    ensure!(r["stream_pods"] == r["pods_running"], "{}", ctx());
    ensure!(
        r["pods_running"][0]["uid"].as_str() == pod.metadata.as_ref().map(|m| m.uid.as_str()),
        "{}",
        ctx()
    );
    ensure!(
        r["pods_running"][0]["namespace"] == cri::POD_NAMESPACE,
        "{}",
        ctx()
    );
    ensure!(r["pods_after"] == serde_json::json!([]), "{}", ctx());
    env.assert_no_leaks(&pod_id, &[], &[])?;
    Ok(())
}

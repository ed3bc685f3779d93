//! RuntimeClass handlers end to end: a real berthd with `[cri.runtimes]`
//! tables (runc as the default, runc with another root and `no_pivot_root`,
//! and crun where it runs here), pods on each side by side, each container
//! checked in its handler's runtime root, and the handler kept across a
//! SIGKILL of berthd.
//!
//! Needs root, runc, the CNI plugins in /usr/lib/cni and cgroup v1, as
//! `cri_runtime`; crun is used when `/usr/bin/crun` runs a container here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use integration::cri::{
    self, api, cstatus, exec_ok, expect_code, host_network_lock, list_pods, pod_status, CriOpts,
    Env, Rt, TestNet,
};
use tonic::Code;

const CRUN: &str = "/usr/bin/crun";

/// The runtime's view of a container: `<binary> --root <root>/berth state <id>`.
fn runtime_state(binary: &str, root: &Path, id: &str) -> Result<serde_json::Value> {
    let out = Command::new(binary)
        .arg("--root")
        .arg(root.join("berth"))
        .args(["state", id])
        .output()
        .with_context(|| format!("running {binary}"))?;
    ensure!(
        out.status.success(),
        "{binary} --root {} state {id}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn run_pod_with(
    env: &Env,
    rt: &mut Rt,
    config: &api::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(api::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
    .inspect_err(|s| eprintln!("RunPodSandbox({handler}): {s:?}\n{}", env.log_excerpt(20)))
}

/// One pod with a sleeping container under `handler`; returns (pod, container).
async fn pod_on(
    env: &Env,
    rt: &mut Rt,
    name: &str,
    handler: &str,
) -> Result<(String, String, api::PodSandboxConfig)> {
    let mut pod = env.pod(name)?;
    pod.annotations
        .insert("example.com/runtime".into(), format!("pod-{name}"));
    pod.annotations
        .insert("other.com/secret".into(), "kept out".into());
    let pod_id = run_pod_with(env, rt, &pod, handler)
        .await
        .map_err(|s| env.status_err("RunPodSandbox", s))?;
    let c = env.container("sleeper", &["sleep", "3600"]);
    let cid = env.create_start(rt, &pod_id, &pod, &c).await?;
    Ok((pod_id, cid, pod))
}

/// Whether crun runs a container here (e.g. not when its build lacks the
/// cgroup manager this host needs); the reason when it does not.
fn crun_usable() -> Result<(), String> {
    if !Path::new(CRUN).exists() {
        return Err(format!("{CRUN} is not installed"));
    }
    match Command::new(CRUN).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "crun --version: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("crun: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_handlers_side_by_side() -> Result<()> {
    let _net = host_network_lock().await;
    let alt_root = tempfile::Builder::new()
        .prefix("berth-runc-alt-")
        .tempdir()?;
    let crun = crun_usable();
    if let Err(why) = &crun {
        eprintln!("crun left out: {why}");
    }
    let mut extra = format!(
        "default_runtime = \"runc\"\n\
         [cri.runtimes.runc]\nruntime = \"runc\"\npod_annotations = [\"example.com/*\"]\n\
         [cri.runtimes.runc-alt]\nruntime = \"runc\"\nroot = {:?}\nno_pivot_root = true\n",
        alt_root.path().display().to_string()
    );
    if crun.is_ok() {
        extra.push_str(&format!("[cri.runtimes.crun]\nruntime = {CRUN:?}\n"));
    }
    let mut env = Env::start_with(
        TestNet::new()?,
        CriOpts {
            extra,
            ..CriOpts::default()
        },
    )?;
    let state = env.d().state();
    let runc_root = state.join("runc");
    let mut rt = env.rt().await?;

    // Status lists every handler (the default also as "").
    let st = rt
        .status(api::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let mut names: Vec<String> = st.runtime_handlers.iter().map(|h| h.name.clone()).collect();
    names.sort();
    let mut want = vec!["".to_string(), "runc".into(), "runc-alt".into()];
    if crun.is_ok() {
        want.insert(1, "crun".into());
    }
    ensure!(names == want, "Status runtime_handlers: {names:?}");

    // An unknown handler is NotFound, naming it; no pod is left behind.
    let r = run_pod_with(&env, &mut rt, &env.pod("ghost")?, "kata-nope").await;
    expect_code(
        "RunPodSandbox(kata-nope)",
        r,
        Code::NotFound,
        &["kata-nope"],
    )?;
    ensure!(list_pods(&mut rt, None).await?.is_empty());

    // A pod on each handler, side by side.
    let (p_def, c_def, _) = pod_on(&env, &mut rt, "on-default", "").await?;
    let (p_alt, c_alt, alt_cfg) = pod_on(&env, &mut rt, "on-alt", "runc-alt").await?;
    let mut crun_pod = None;
    if crun.is_ok() {
        match pod_on(&env, &mut rt, "on-crun", "crun").await {
            Ok(p) => crun_pod = Some(p),
            // crun installed but unable to run a container here: the error
            // must say which runtime failed.
            Err(e) => {
                let msg = format!("{e:#}");
                ensure!(
                    msg.contains(&format!("{CRUN} create")),
                    "crun failure does not name the runtime: {msg}"
                );
                eprintln!("crun cannot run containers here: {msg}");
                // The pod itself ran; it goes with the others.
                let pods = list_pods(&mut rt, None).await?;
                let p = pods
                    .iter()
                    .find(|p| p.runtime_handler == "crun")
                    .context("the crun pod")?;
                env.stop_remove_pod(&mut rt, &p.id).await?;
            }
        }
    }

    let check = |rt_binary: &'static str, root: PathBuf, cid: String| async move {
        let v = runtime_state(rt_binary, &root, &cid)?;
        ensure!(v["status"] == "running", "{rt_binary} state {cid}: {v}");
        Ok::<_, anyhow::Error>(())
    };
    check("runc", runc_root.clone(), c_def.clone()).await?;
    check("runc", alt_root.path().to_path_buf(), c_alt.clone()).await?;
    ensure!(
        !runc_root.join("berth").join(&c_alt).exists()
            && !alt_root.path().join("berth").join(&c_def).exists(),
        "a container is in the other handler's root"
    );
    if let Some((_, c_crun, _)) = &crun_pod {
        let root = state.join("runtimes").join("crun");
        check("/usr/bin/crun", root, c_crun.clone()).await?;
    }
    ensure!(exec_ok(&mut rt, &c_alt, &["echo", "hi"])
        .await?
        .contains("hi"));

    // Pod annotations: the default handler passes example.com/* only.
    let spec = |cid: &str| -> Result<serde_json::Value> {
        let p = state.join("containers").join(cid).join("config.json");
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| p.display().to_string())?,
        )?)
    };
    let a = &spec(&c_def)?["annotations"];
    ensure!(
        a["example.com/runtime"] == "pod-on-default",
        "default pod annotations: {a}"
    );
    ensure!(a.get("other.com/secret").is_none(), "{a}");
    let a = &spec(&c_alt)?["annotations"];
    ensure!(
        a.get("example.com/runtime").is_none(),
        "runc-alt takes none: {a}"
    );

    // PodSandboxStatus and ListPodSandbox report the handler as asked.
    let handler_of = |s: &api::PodSandboxStatusResponse| {
        s.status
            .as_ref()
            .map(|s| s.runtime_handler.clone())
            .unwrap_or_default()
    };
    ensure!(handler_of(&pod_status(&mut rt, &p_def, false).await?).is_empty());
    ensure!(handler_of(&pod_status(&mut rt, &p_alt, false).await?) == "runc-alt");
    let pods = list_pods(&mut rt, None).await?;
    ensure!(
        pods.iter()
            .any(|p| p.id == p_alt && p.runtime_handler == "runc-alt"),
        "{pods:?}"
    );

    // Across a SIGKILL of berthd: the handler stays with the pod and new
    // containers in it run with it; removal cleans up in the right root.
    drop(rt);
    env.d_mut().kill9()?;
    env.d_mut().restart()?;
    let mut rt = env.rt().await?;
    ensure!(handler_of(&pod_status(&mut rt, &p_alt, false).await?) == "runc-alt");
    let c2 = env
        .create_start(
            &mut rt,
            &p_alt,
            &alt_cfg,
            &env.container("second", &["sleep", "3600"]),
        )
        .await?;
    check("runc", alt_root.path().to_path_buf(), c2.clone()).await?;
    ensure!(!runc_root.join("berth").join(&c2).exists());
    let pid = cri::container_pid(&mut rt, &c_alt).await?;
    ensure!(cstatus(&mut rt, &c_alt).await?.state == api::ContainerState::ContainerRunning as i32);

    for p in [&p_def, &p_alt] {
        env.stop_remove_pod(&mut rt, p).await?;
    }
    if let Some((p, _, _)) = &crun_pod {
        env.stop_remove_pod(&mut rt, p).await?;
    }
    ensure!(!cri::alive(pid), "the runc-alt container survived its pod");
    for c in [&c_alt, &c2] {
        ensure!(
            !alt_root.path().join("berth").join(c).exists(),
            "{c} left in the runc-alt root"
        );
    }
    ensure!(!runc_root.join("berth").join(&c_def).exists());
    ensure!(list_pods(&mut rt, None).await?.is_empty());
    Ok(())
}

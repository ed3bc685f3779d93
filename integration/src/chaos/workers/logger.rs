//! Logger pods: containers writing numbered lines whose CRI logs must come
//! out complete and in order.

use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::chaos::env::Setup;
use crate::chaos::model::{CtrState, Role};
use crate::chaos::{lock, Ctx};
use crate::cri::{self, api, Rt};

/// A long-lived pod whose container writes `line 0`, `line 1`, ... every 100 ms.
pub struct Logger {
    pub pod: String,
    pub ctr: String,
    pub log: PathBuf,
}

pub async fn start_logger(ctx: &Ctx, setup: &Setup, rt: &mut Rt, i: usize) -> Result<Logger> {
    let name = format!("long{i}");
    let cfg = setup.pod_config(&name)?;
    let pod = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|s| anyhow!("RunPodSandbox {name}: {s}"))?
        .into_inner()
        .pod_sandbox_id;
    let cc = crate::bench_cri::container_config(
        &setup.busybox,
        &cfg,
        "log",
        &[
            "sh",
            "-c",
            "i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.1; done",
        ],
    )?;
    let log = cri::log_path_of(&cfg, &cc)?;
    let ctr = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cc),
            sandbox_config: Some(cfg),
        })
        .await
        .map_err(|s| anyhow!("CreateContainer in {name}: {s}"))?
        .into_inner()
        .container_id;
    rt.start_container(api::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .map_err(|s| anyhow!("StartContainer in {name}: {s}"))?;
    let mut m = lock(&ctx.model);
    m.add_pod(&pod, &name, true);
    m.add_ctr(&ctr, &pod, "log", Role::Logger);
    m.set_ctr_state(&ctr, CtrState::Started);
    Ok(Logger { pod, ctr, log })
}

/// The logger's CRI log holds `line 0` .. `line N` once each, in order.
pub fn check_logger_log(ctx: &Ctx, l: &Logger) {
    let lines = match cri::read_cri_log(&l.log) {
        Ok(v) => v,
        Err(e) => {
            ctx.violation("log", &l.ctr, format!("{e:#}"));
            return;
        }
    };
    // Partial records (P) are joined with the next one.
    let mut full = Vec::new();
    let mut part = String::new();
    for line in lines.iter().filter(|x| x.stream == "stdout") {
        part.push_str(&line.text);
        if line.tag == "F" {
            full.push(std::mem::take(&mut part));
        }
    }
    let mut problems = Vec::new();
    for (want, got) in full.iter().enumerate() {
        if *got != format!("line {want}") {
            problems.push(format!("record {want} is {got:?}"));
            break;
        }
    }
    if full.is_empty() {
        problems.push("no lines".into());
    }
    if problems.is_empty() {
        ctx.stats().log_lines += full.len() as u64;
    } else {
        ctx.violation(
            "log",
            &l.ctr,
            format!(
                "{} ({} lines in {}): lines lost, duplicated or torn",
                problems.join("; "),
                full.len(),
                l.log.display()
            ),
        );
    }
}

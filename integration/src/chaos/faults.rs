//! The fault injector: a shuffled plan of berthd kills and the other fault kinds
//! in rotation, one at a time at random moments, each counted when injected and
//! when it is known to have hit.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::env::Setup;
use super::{lock, model, Ctx};
use crate::cri::{self, api};
use crate::fixtures::XorShift64;

/// The fault kinds other than killing berthd, in rotation.
pub const OTHER_KINDS: [&str; 7] = [
    "shim-kill",
    "runc-die",
    "cni-fail",
    "cni-hang",
    "cni-die",
    "registry-stop",
    "disk-full",
];

/// Hook tokens (see [`super::env`]) per fault kind.
const TOKENS: [(&str, &str); 4] = [
    ("runc-die", "runc-die"),
    ("cni-fail", "cni-fail"),
    ("cni-hang", "cni-hang"),
    ("cni-die", "cni-die"),
];

fn between(rng: &mut XorShift64, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi.saturating_sub(lo) + 1)
}

/// The order of faults: `kills` berthd kills and `others` of the other kinds,
/// shuffled (Fisher-Yates).
pub fn plan(kills: usize, others: usize, rng: &mut XorShift64) -> Vec<&'static str> {
    let mut p = vec!["berthd-kill"; kills];
    p.extend((0..others).map(|i| OTHER_KINDS[i % OTHER_KINDS.len()]));
    for i in (1..p.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Runs the plan, then keeps the load going until `min_secs` have passed.
pub async fn inject(ctx: &Arc<Ctx>, setup: &Arc<Setup>) -> Result<()> {
    let mut rng = XorShift64::new(ctx.opts.seed);
    let plan = plan(ctx.opts.kills, ctx.opts.other_faults, &mut rng);
    let start = Instant::now();
    // Let the workers get going first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut kills = 0;
    for (i, kind) in plan.iter().enumerate() {
        let gap = between(&mut rng, ctx.opts.gap_ms.0, ctx.opts.gap_ms.1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        ctx.progress(&format!("fault {}/{}: {kind}", i + 1, plan.len()));
        match *kind {
            "berthd-kill" => {
                kills += 1;
                kill_berthd(ctx, setup, &mut rng, kills).await?;
            }
            "shim-kill" => kill_shim(ctx, setup, &mut rng),
            "registry-stop" => stop_registry(ctx, setup, &mut rng).await,
            "disk-full" => fill_disk(ctx, setup).await?,
            token => arm(ctx, setup, token)?,
        }
        sample_rss(ctx, setup);
    }
    while start.elapsed() < Duration::from_secs(ctx.opts.min_secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give armed hooks a last chance to be taken, then disarm and count.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_tokens(&setup.fault_dir) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    count_hook_hits(ctx, &setup.fault_dir);
    Ok(())
}

fn sample_rss(ctx: &Ctx, setup: &Setup) {
    let Some(pid) = lock(&setup.daemon).pid() else {
        return;
    };
    if let Ok(kib) = crate::containerd::rss_kib_of(pid) {
        let at = ctx.secs();
        ctx.stats().rss.push((at, kib));
        if kib > ctx.opts.max_rss_mib * 1024 {
            ctx.violation(
                "memory",
                "berthd",
                format!(
                    "VmRSS {} MiB, bound {} MiB",
                    kib / 1024,
                    ctx.opts.max_rss_mib
                ),
            );
        }
    }
}

/// SIGKILL berthd, wait 0-300 ms, start it again, time it to serving, check.
async fn kill_berthd(ctx: &Ctx, setup: &Setup, rng: &mut XorShift64, n: usize) -> Result<()> {
    ctx.mark_down();
    lock(&setup.daemon).kill9()?;
    ctx.fault_injected("berthd-kill");
    tokio::time::sleep(Duration::from_millis(between(rng, 0, 300))).await;
    let t = Instant::now();
    lock(&setup.daemon).respawn_nowait()?;
    let mut rt = loop {
        if let Some((mut rt, _)) = ctx.connect(Duration::from_millis(200)).await {
            let r = rt.version(api::VersionRequest::default()).await.map(|_| ());
            if r.is_ok() {
                break rt;
            }
        }
        if t.elapsed() > Duration::from_secs(60) || !lock(&setup.daemon).is_running() {
            ctx.violation(
                "restart",
                "berthd",
                format!(
                    "berthd did not serve within 60 s of restart {n}; log:\n{}",
                    cri::log_excerpt(&setup.log(), 20)
                ),
            );
            anyhow::bail!("berthd does not come back");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    ctx.stats().restarts.push(secs);
    ctx.mark_up();
    ctx.fault_hit("berthd-kill");
    model::check(ctx, &mut rt, &setup.root, &format!("after restart {n}")).await;
    Ok(())
}

/// SIGKILL the shim of a random worker pod (never a long-lived one: their logs are
/// checked line by line).
fn kill_shim(ctx: &Ctx, setup: &Setup, rng: &mut XorShift64) {
    ctx.fault_injected("shim-kill");
    let mut pods: Vec<String> = lock(&ctx.model)
        .pods
        .iter()
        .filter(|(_, p)| !p.long_lived && p.state == model::PodState::Ready)
        .map(|(id, _)| id.clone())
        .collect();
    pods.sort();
    let state = setup.state.display().to_string();
    while !pods.is_empty() {
        let id = pods.swap_remove((rng.next_u64() % pods.len() as u64) as usize);
        let needle = format!("-id {id}");
        let shims: Vec<i32> = cri::processes_naming(&needle)
            .into_iter()
            .filter(|&p| cri::cmdline(p).contains(&state))
            .collect();
        if shims.is_empty() {
            continue;
        }
        if let Some(p) = lock(&ctx.model).pods.get_mut(&id) {
            p.shim_killed = true;
        }
        for pid in shims {
            cri::kill(pid, libc::SIGKILL);
        }
        ctx.progress(&format!("killed the shim of pod {id}"));
        ctx.fault_hit("shim-kill");
        return;
    }
}

/// SIGSTOP the registry for 1 s or for 6 s (past berth's 4 s no-progress timeout).
async fn stop_registry(ctx: &Ctx, setup: &Setup, rng: &mut XorShift64) {
    ctx.fault_injected("registry-stop");
    // Wait (briefly) for a pull to be in flight, so that it stops mid-blob.
    let t = Instant::now();
    while !ctx.pulling.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(between(rng, 0, 150))).await;
    let hit = ctx.pulling.load(Ordering::SeqCst);
    let pid = setup.reg.pid() as i32;
    let hold = if rng.next_u64().is_multiple_of(2) {
        1
    } else {
        6
    };
    cri::kill(pid, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    cri::kill(pid, libc::SIGCONT);
    if hit {
        ctx.fault_hit("registry-stop");
    }
}

/// Fills berth's root (a tmpfs) but for 2 MiB while the puller pulls, then frees it.
async fn fill_disk(ctx: &Ctx, setup: &Setup) -> Result<()> {
    ctx.fault_injected("disk-full");
    let balloon = setup.root.join("chaos-balloon");
    let size = balloon_up(&balloon, &setup.root)?;
    ctx.disk_full_hit.store(false, Ordering::SeqCst);
    ctx.disk_full.store(true, Ordering::SeqCst);
    ctx.progress(&format!("root full: {} MiB ballooned", size >> 20));
    // Hold it until a pull has run into it (or 8 s).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.elapsed() > Duration::from_secs(3) && !ctx.pulling.load(Ordering::SeqCst) {
            break;
        }
    }
    std::fs::remove_file(&balloon).with_context(|| format!("remove {}", balloon.display()))?;
    ctx.disk_full.store(false, Ordering::SeqCst);
    if ctx.disk_full_hit.swap(false, Ordering::SeqCst) {
        ctx.fault_hit("disk-full");
    }
    Ok(())
}

/// Allocates `balloon` so that about 2 MiB stay free; returns its size. The
/// workers write meanwhile: a size that no longer fits is tried 8 MiB smaller.
fn balloon_up(balloon: &Path, root: &Path) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let f =
        std::fs::File::create(balloon).with_context(|| format!("create {}", balloon.display()))?;
    let mut size = free_bytes(root)?.saturating_sub(2 << 20);
    loop {
        // SAFETY: fallocate(2) on a file this function owns; the result is checked.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
        if r == 0 {
            return Ok(size);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSPC) || size < (16 << 20) {
            drop(f);
            let _ = std::fs::remove_file(balloon);
            return Err(e).context("fallocate the balloon");
        }
        // Each failed try costs a pass over the pages (about a second on
        // tmpfs): shrink in steps that find room in a few tries.
        size -= 8 << 20;
    }
}

fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs(3) fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs");
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Drops the token for a hook fault (a no-op if one is still waiting).
fn arm(ctx: &Ctx, setup: &Setup, kind: &'static str) -> Result<()> {
    let token = TOKENS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .with_context(|| format!("unknown fault kind {kind}"))?;
    let p = setup.fault_dir.join(token);
    if !p.exists() {
        std::fs::write(&p, b"")?;
    }
    ctx.fault_injected(kind);
    Ok(())
}

fn pending_tokens(dir: &Path) -> usize {
    TOKENS.iter().filter(|(_, t)| dir.join(t).exists()).count()
}

/// Removes tokens nobody took and counts the hits (`<token>.hit.<pid>` files).
fn count_hook_hits(ctx: &Ctx, dir: &Path) {
    for (kind, token) in TOKENS {
        let _ = std::fs::remove_file(dir.join(token));
        let prefix = format!("{token}.hit.");
        let hits = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .count()
            })
            .unwrap_or(0);
        ctx.stats().faults.entry(kind).or_default().hit = hits as u64;
    }
}

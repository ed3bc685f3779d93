//! A berthd killed (SIGKILL) in the middle of a pull: after the restart nothing
//! of that pull stays pinned (issue 13, finding 6). The pull's lease belonged to
//! the dead process, which can never release it; the restarted daemon drops it,
//! so its start GC collects what only the interrupted pull held, and removing
//! the images later frees everything.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::daemon::{bin_path, Daemon};
use integration::fake_registry::{Behavior, FakeRegistry};
use integration::fixtures;
use integration::util::blob_files;
use integration::util::wait_for;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn ingest_dirs(root: &Path) -> usize {
    std::fs::read_dir(root.join("content/ingest"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn snapshots(d: &Daemon) -> Result<Vec<String>> {
    let mut v: Vec<String> = d
        .ctl_ok(["snapshots", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    Ok(v)
}

fn content_ls(d: &Daemon) -> Result<Value> {
    let out = d.ctl_ok(["content", "ls", "--format", "json"])?;
    serde_json::from_str(&out).with_context(|| format!("bad json: {out}"))
}

/// `berthctl images pull` in the background.
fn spawn_pull(d: &Daemon, reference: &str) -> Result<Child> {
    Ok(Command::new(bin_path("berthctl")?)
        .arg("--address")
        .arg(d.socket_path())
        .args(["images", "pull", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Waits until a pull of `img` from `fake` (whose layers stall halfway) is in
/// flight: its manifest and config committed, a layer being fetched into an ingest.
fn wait_in_flight(d: &Daemon, fake: &FakeRegistry, img: &fixtures::Image) -> Result<()> {
    let root = d.root();
    let stalled = img.layers.last().context("no layer")?.digest.clone();
    wait_for("a pull in flight", DEADLINE, || {
        let blobs = blob_files(&root);
        Ok((blobs.contains(&img.manifest_digest)
            && blobs.contains(&img.config_digest)
            && !fake.requests_to(&format!("/blobs/{stalled}")).is_empty()
            && ingest_dirs(&root) > 0)
            .then_some(()))
    })
}

#[test]
fn a_pull_cut_short_by_sigkill_pins_nothing_after_the_restart() -> Result<()> {
    // The default no-progress timeout (30 s) keeps a stalled pull in flight.
    let mut d = Daemon::start()?;
    let root = d.root();
    let base = fixtures::busybox()?;
    let img = fixtures::multilayer()?;
    // multilayer is busybox's layer plus two: the interrupted pull shares a
    // committed layer (blob and snapshot) with an image pulled before.
    ensure!(img.layers[0].digest == base.layers[0].digest);
    ensure!(!base.all_blobs()?.contains(&img.config_digest));

    // An acknowledged pull: its image is recorded before the crash.
    let healthy_base = FakeRegistry::start_with(base, Behavior::Normal)?;
    let base_ref = healthy_base.reference("busybox");
    d.ctl_ok(["images", "pull", &base_ref])?;
    ensure!(blob_files(&root) == base.all_blobs()?);
    let base_snapshots = snapshots(&d)?;
    ensure!(base_snapshots.len() == 1, "{base_snapshots:?}");

    // The interrupted pull: manifest and config committed, the shared layer
    // found locally, the other layers stalled halfway into ingests.
    let stalling = FakeRegistry::start_with(img, Behavior::HangMidBlob)?;
    let mut pull = spawn_pull(&d, &stalling.reference("multilayer"))?;
    wait_in_flight(&d, &stalling, img)?;
    // Tagging flushes the metadata DB, so the pull's lease is on disk as it
    // would be for any pull running longer than sled's 1 s flush interval.
    d.ctl_ok(["images", "tag", &base_ref, "keep:crash"])?;
    d.kill9()?;
    let _ = pull.wait();
    drop(stalling);

    d.restart()?;
    // The start GC collects what only the dead pull's lease held (its
    // manifest and config), with no prune and no removal asked for; the
    // acknowledged image keeps every blob and its snapshot.
    wait_for(
        "the start GC to collect the interrupted pull",
        DEADLINE,
        || Ok((blob_files(&root) == base.all_blobs()?).then_some(())),
    )
    .with_context(|| {
        format!(
            "blobs after the restart: {:?}, the acknowledged image's: {:?}\n{}",
            blob_files(&root),
            base.all_blobs(),
            integration::daemon::tail(&d.log(), 40)
        )
    })?;
    ensure!(snapshots(&d)? == base_snapshots);
    let listed = content_ls(&d)?;
    let blobs = listed["blobs"].as_array().cloned().unwrap_or_default();
    ensure!(
        blobs.len() == base.all_blobs()?.len() && blobs.iter().all(|b| b["referenced"] == true),
        "{listed}"
    );
    // The partial layers stay as resumable ingests (swept after
    // gc.partial_ingest_keep_secs): a lease never held them, and a retried
    // pull resumes them instead of starting over.

    // A pull in the new process, running while GC runs, holds its lease.
    let stalling = FakeRegistry::start_with(img, Behavior::HangMidBlob)?;
    let mut pull = spawn_pull(&d, &stalling.reference("multilayer"))?;
    wait_in_flight(&d, &stalling, img)?;
    d.ctl_ok(["content", "prune"])?;
    let blobs = blob_files(&root);
    ensure!(
        blobs.contains(&img.manifest_digest) && blobs.contains(&img.config_digest),
        "prune removed content of a running pull: {blobs:?}"
    );
    pull.kill()?;
    let _ = pull.wait();
    wait_for("the cancelled pull to release its lease", DEADLINE, || {
        d.ctl_ok(["content", "prune"])?;
        Ok((blob_files(&root) == base.all_blobs()?).then_some(()))
    })?;
    drop(stalling);

    // Pulling the same image again works, and removing every image then
    // frees everything: blobs, snapshots and ingests.
    let healthy = FakeRegistry::start_with(img, Behavior::Normal)?;
    let reference = healthy.reference("multilayer");
    d.ctl_ok(["images", "pull", &reference])?;
    let mut all = img.all_blobs()?;
    all.extend(base.all_blobs()?);
    all.sort();
    all.dedup();
    ensure!(blob_files(&root) == all, "{:?}", blob_files(&root));
    ensure!(ingest_dirs(&root) == 0, "ingest left: {}", content_ls(&d)?);
    d.ctl_ok([
        "images",
        "rm",
        "--sync",
        &reference,
        &base_ref,
        "keep:crash",
    ])?;
    d.ctl_ok(["content", "prune"])?;
    ensure!(
        blob_files(&root).is_empty(),
        "blobs held after removing every image: {:?}",
        blob_files(&root)
    );
    ensure!(snapshots(&d)?.is_empty(), "{:?}", snapshots(&d)?);
    ensure!(ingest_dirs(&root) == 0);
    Ok(())
}

//! Hostile layers pulled through berthd (issue 14, finding 3): GNU sparse
//! entries count at their apparent size against `max_layer_bytes` (ten 60 GiB
//! entries in a blob of a few hundred bytes used to burn minutes of CPU and
//! commit a 600 GB snapshot), and a pull cancelled while its layer is being
//! unpacked stops the unpack and removes its snapshot (it used to run on for
//! minutes and leave the snapshot behind).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration::cri::{self, api};
use integration::daemon::Daemon;
use integration::fixtures::Compression;
use integration::registry::Registry;
use integration::util::{sha256_digest, wait_for};
use serde_json::json;

const GIB: u64 = 1 << 30;

/// The architecture berthd pulls for.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Pushes a single-platform OCI image whose layers are the given gzip blobs,
/// with the diff IDs given (the digests of the uncompressed tars).
fn push_image(reg: &Registry, name: &str, tag: &str, layers: &[(Vec<u8>, String)]) -> Result<()> {
    let config = serde_json::to_vec(&json!({
        "architecture": goarch(),
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        },
    }))?;
    let config_digest = sha256_digest(&config);
    reg.push_blob(name, &config_digest, &config)?;
    let mut descs = Vec::new();
    for (blob, _) in layers {
        let digest = sha256_digest(blob);
        reg.push_blob(name, &digest, blob)?;
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": blob.len(),
        }));
    }
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descs,
    }))?;
    reg.push_manifest(name, tag, media_type, &manifest)
}

/// A GNU sparse entry (as GNU tar `--sparse` writes it) of `real_size` bytes
/// that stores only `data` at `offset`.
fn sparse_entry(out: &mut Vec<u8>, name: &str, real_size: u64, offset: u64, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(data.len() as u64);
        // The empty last segment marks the real size.
        gnu.sparse[1].set_offset(real_size);
        gnu.sparse[1].set_length(0);
        gnu.set_real_size(real_size);
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A small ordinary layer tar with one file.
fn small_layer(name: &str) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, name, &b"hi\n"[..])?;
    Ok(b.into_inner()?)
}

fn snapshot_names(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.ctl_ok(["snapshots", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

fn pull_request(image: &str) -> api::PullImageRequest {
    api::PullImageRequest {
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn sparse_layer_over_the_limit_fails_fast_and_leaves_no_snapshot() -> Result<()> {
    let d = Daemon::start()?;
    let reg = Registry::start_default()?;
    // Ten entries of 60 GiB, three bytes stored in each: 600 GiB apparent,
    // over the default max_layer_bytes (256 GiB).
    let mut tar = Vec::new();
    for i in 0..10 {
        sparse_entry(&mut tar, &format!("f{i}"), 60 * GIB, 30 * GIB, b"hi\n");
    }
    tar.resize(tar.len() + 1024, 0);
    let blob = Compression::Gzip.compress(&tar)?;
    ensure!(blob.len() < 1024, "{} bytes", blob.len());
    push_image(&reg, "sparse", "1", &[(blob, sha256_digest(&tar))])?;
    let image = reg.reference("sparse:1");

    let start = Instant::now();
    let r = tokio::runtime::Runtime::new()?.block_on(async {
        let mut img = cri::image_client(&d).await?;
        let mut req = tonic::Request::new(pull_request(&image));
        // The old code ran for many minutes: no waiting for it.
        req.set_timeout(Duration::from_secs(60));
        anyhow::Ok(tokio::time::timeout(Duration::from_secs(60), img.pull_image(req)).await)
    })?;
    let elapsed = start.elapsed();
    let r = r.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(
            "client gave up after 60 s",
        ))
    });
    cri::expect_code(
        "CRI PullImage of a layer of ten 60 GiB sparse files",
        r,
        tonic::Code::DataLoss,
        &["max_layer_bytes", "apparent size", "274877906944"],
    )?;
    ensure!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    // Nothing of the failed unpack is left: no extract snapshot, no layer.
    let snaps = snapshot_names(&d)?;
    ensure!(snaps.is_empty(), "snapshots left behind: {snaps:?}");
    Ok(())
}

/// A pull whose client goes away while a long layer is being unpacked (through
/// an overlay mount: the layer has a parent) stops unpacking within seconds,
/// removes its extract snapshot and unmounts; the daemon keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pull_stops_the_unpack_and_removes_its_snapshot() -> Result<()> {
    let d = Daemon::start()?;
    let reg = Registry::start_default()?;
    let base = small_layer("base")?;
    // One file, then 32 GiB of zeros after the end of the archive: the whole
    // stream is decompressed and hashed (the diff ID covers it), which keeps
    // berthd busy for many seconds. gzip members of 256 MiB each, repeated.
    let mut head = small_layer("slow")?;
    head.resize(head.len() + 1024, 0);
    let mut blob = Compression::Gzip.compress(&head)?;
    let member = Compression::Gzip.compress(&vec![0u8; 256 << 20])?;
    for _ in 0..128 {
        blob.extend_from_slice(&member);
    }
    // The diff ID is never reached: the pull is cancelled long before.
    push_image(
        &reg,
        "slow",
        "1",
        &[
            (Compression::Gzip.compress(&base)?, sha256_digest(&base)),
            (blob, sha256_digest(b"never checked")),
        ],
    )?;
    let image = reg.reference("slow:1");

    let mut img = cri::image_client(&d).await?;
    let pull = tokio::spawn(async move { img.pull_image(pull_request(&image)).await });
    let d = std::sync::Arc::new(d);
    // The slow layer is being applied through its overlay mount.
    let unpack_dir = d.state().join("unpack");
    let extract = {
        let d = d.clone();
        let unpack_dir = unpack_dir.clone();
        tokio::task::spawn_blocking(move || {
            wait_for("the slow layer's unpack", Duration::from_secs(60), || {
                let mounted = std::fs::read_dir(&unpack_dir)?.count() == 1;
                Ok(snapshot_names(&d)?
                    .into_iter()
                    .find(|n| n.starts_with("extract-"))
                    .filter(|_| mounted))
            })
        })
        .await??
    };

    // The client goes away: the stream is reset, berthd cancels the pull.
    pull.abort();
    let cancelled_at = Instant::now();
    let left = {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            wait_for(
                "the cancelled unpack to remove its snapshot",
                Duration::from_secs(30),
                || {
                    let snaps = snapshot_names(&d)?;
                    Ok((!snaps.iter().any(|n| n.starts_with("extract-"))).then_some(snaps))
                },
            )
        })
        .await?
    };
    let left = left.with_context(|| format!("{extract} still there; log:\n{}", d.log()))?;
    let stopped = cancelled_at.elapsed();
    // Only the base layer, which was complete, stays (held by nothing: a prune
    // would take it).
    ensure!(
        left.len() == 1 && !left[0].starts_with("extract-"),
        "{left:?}"
    );
    let log = d.log();
    ensure!(
        log.contains("pull cancelled"),
        "no 'pull cancelled' in the log"
    );
    ensure!(
        log.contains("unpack cancelled, snapshot removed"),
        "the unpack did not report its cancellation:\n{}",
        integration::daemon::tail(&log, 40)
    );
    ensure!(
        std::fs::read_dir(&unpack_dir)?.count() == 0,
        "unpack mount point left in {}",
        unpack_dir.display()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(unpack_dir.to_str().context("path")?),
        "unpack overlay still mounted"
    );
    eprintln!("unpack stopped {stopped:?} after the client went away");

    // The daemon still answers, and nothing is listed for the cancelled image.
    let d2 = d.clone();
    let images = tokio::task::spawn_blocking(move || d2.ctl_ok(["images", "ls", "-q"])).await??;
    ensure!(!images.contains("slow"), "{images}");
    Ok(())
}

//! Interoperability with the real containerd 1.6 (Debian's package): archives written
//! by `berthctl images export` import into containerd (and unpack into its overlayfs
//! snapshotter), and archives written by `ctr images export` import into berthd, with
//! names and manifest digests kept.

use anyhow::{ensure, Context, Result};
use integration::containerd::Containerd;
use integration::daemon::Daemon;
use integration::fixtures::{self, Image};
use integration::registry::Registry;
use integration::util::blob_files as berth_blobs;
use serde_json::Value;

/// berthd's images as (name, target digest).
fn berth_images(d: &Daemon) -> Result<Vec<(String, String)>> {
    let out = d.ctl_ok(["images", "ls", "--format", "json"])?;
    let v: Vec<Value> = serde_json::from_str(&out).with_context(|| format!("bad json: {out}"))?;
    Ok(v.iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["target"]["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// `ctr images check`: the image's content is complete and it is unpacked.
fn ensure_complete_in_containerd(c: &Containerd, name: &str) -> Result<()> {
    let out = c.ctr_ok(["images", "check"])?;
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("{name} not in `ctr images check`:\n{out}"))?;
    ensure!(line.contains("complete"), "ctr images check: {line}");
    Ok(())
}

/// containerd's view of `name` is the fixture: listed with its manifest digest, and
/// all its content is present.
fn ensure_in_containerd(c: &Containerd, name: &str, img: &Image) -> Result<()> {
    let images = c.images()?;
    ensure!(
        images.contains(&(name.to_string(), img.manifest_digest.clone())),
        "containerd images {images:?} lack {name} @ {}",
        img.manifest_digest
    );
    ensure_complete_in_containerd(c, name)?;
    let content = c.ctr_ok(["content", "ls", "-q"])?;
    for blob in img.all_blobs()? {
        ensure!(
            content.lines().any(|l| l.trim() == blob),
            "containerd content lacks {blob}:\n{content}"
        );
    }
    Ok(())
}

#[test]
fn berth_export_imports_into_containerd_and_back() -> Result<()> {
    let reg = Registry::start_default()?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "busybox:1")?;
    let reference = reg.reference("busybox:1");

    // berth pulls from the registry and exports an OCI archive.
    let d = Daemon::start()?;
    d.ctl_ok(["images", "pull", "--plain-http", &reference])?;
    ensure!(berth_images(&d)? == vec![(reference.clone(), img.manifest_digest.clone())]);
    let tar = d.dir().join("out.tar");
    d.ctl_ok(["images", "export", "-o", tar.to_str().unwrap(), &reference])?;

    // containerd imports it (and unpacks it into overlayfs) under the same name.
    let c = Containerd::start()?;
    let out = c.ctr_ok(["images", "import", tar.to_str().unwrap()])?;
    ensure!(out.contains(&reference), "ctr import output: {out}");
    ensure_in_containerd(&c, &reference, img)?;
    let snapshots = c.ctr_ok(["snapshots", "ls"])?;
    ensure!(
        snapshots.lines().count() > 1,
        "nothing unpacked:\n{snapshots}"
    );

    // The reverse: containerd exports that image, a fresh berthd imports it.
    let tar2 = c.dir().join("from-containerd.tar");
    c.ctr_ok(["images", "export", tar2.to_str().unwrap(), &reference])?;
    let d2 = Daemon::start()?;
    let out = d2.ctl_ok(["images", "import", tar2.to_str().unwrap()])?;
    ensure!(out.contains(&reference), "berthctl import output: {out}");
    ensure!(
        berth_images(&d2)? == vec![(reference.clone(), img.manifest_digest.clone())],
        "{:?}",
        berth_images(&d2)?
    );
    ensure!(berth_blobs(&d2.root()) == img.all_blobs()?);
    // And the round-tripped image exports again and is accepted by containerd.
    let tar3 = d2.dir().join("again.tar");
    d2.ctl_ok(["images", "export", "-o", tar3.to_str().unwrap(), &reference])?;
    let c2 = Containerd::start()?;
    c2.ctr_ok(["images", "import", tar3.to_str().unwrap()])?;
    ensure_in_containerd(&c2, &reference, img)?;
    Ok(())
}

/// containerd pulls a Docker schema2 image itself (plain HTTP through a hosts dir),
/// exports it, and berthd imports the archive with the name and digest unchanged.
#[test]
fn containerd_pull_export_imports_into_berth() -> Result<()> {
    let reg = Registry::start_default()?;
    let img = fixtures::busybox_docker()?;
    reg.push_layout(img, "docker/busybox:v2")?;
    let reference = reg.reference("docker/busybox:v2");

    let c = Containerd::start()?;
    c.trust_plain_http(reg.addr())?;
    let hosts = c.hosts_dir();
    c.ctr_ok([
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        &reference,
    ])?;
    ensure_in_containerd(&c, &reference, img)?;
    let tar = c.dir().join("docker.tar");
    c.ctr_ok(["images", "export", tar.to_str().unwrap(), &reference])?;

    let d = Daemon::start()?;
    d.ctl_ok(["images", "import", tar.to_str().unwrap()])?;
    ensure!(
        berth_images(&d)? == vec![(reference.clone(), img.manifest_digest.clone())],
        "{:?}",
        berth_images(&d)?
    );
    ensure!(berth_blobs(&d.root()) == img.all_blobs()?);
    let inspect: Value = serde_json::from_str(&d.ctl_ok(["images", "inspect", &reference])?)?;
    ensure!(
        inspect["manifest"]["layers"][0]["digest"] == img.layers[0].digest.as_str(),
        "{inspect}"
    );
    Ok(())
}

/// Multi-platform images cross in both directions with only the host platform's
/// content present (the default of both pulls): the index digest is kept.
#[test]
fn index_with_one_platform_crosses_both_ways() -> Result<()> {
    let reg = Registry::start_default()?;
    let img = fixtures::multiplatform()?;
    reg.push_layout(img, "multi:1")?;
    let reference = reg.reference("multi:1");
    let amd64 = &img.manifests[0];

    let d = Daemon::start()?;
    d.ctl_ok(["images", "pull", "--plain-http", &reference])?;
    let tar = d.dir().join("index.tar");
    d.ctl_ok(["images", "export", "-o", tar.to_str().unwrap(), &reference])?;
    let c = Containerd::start()?;
    c.ctr_ok(["images", "import", tar.to_str().unwrap()])?;
    let images = c.images()?;
    ensure!(
        images == vec![(reference.clone(), img.manifest_digest.clone())],
        "{images:?}"
    );
    ensure_complete_in_containerd(&c, &reference)?;

    let c2 = Containerd::start()?;
    c2.ctr_ok(["images", "pull", "--plain-http", &reference])?;
    let tar2 = c2.dir().join("index.tar");
    c2.ctr_ok(["images", "export", tar2.to_str().unwrap(), &reference])?;
    let d2 = Daemon::start()?;
    d2.ctl_ok(["images", "import", tar2.to_str().unwrap()])?;
    ensure!(
        berth_images(&d2)? == vec![(reference.clone(), img.manifest_digest.clone())],
        "{:?}",
        berth_images(&d2)?
    );
    let blobs = berth_blobs(&d2.root());
    ensure!(
        blobs.contains(&amd64.digest) && blobs.contains(&amd64.layers[0].digest),
        "{blobs:?}"
    );
    Ok(())
}

/// gzip, zstd and uncompressed layers (with a whiteout and an opaque dir) exported by
/// berth unpack in containerd's overlayfs snapshotter.
#[test]
fn multilayer_export_unpacks_in_containerd() -> Result<()> {
    let reg = Registry::start_default()?;
    let img = fixtures::multilayer()?;
    reg.push_layout(img, "multilayer:1")?;
    let reference = reg.reference("multilayer:1");

    let d = Daemon::start()?;
    d.ctl_ok(["images", "pull", "--plain-http", &reference])?;
    let tar = d.dir().join("multilayer.tar");
    d.ctl_ok(["images", "export", "-o", tar.to_str().unwrap(), &reference])?;
    let c = Containerd::start()?;
    c.ctr_ok(["images", "import", tar.to_str().unwrap()])?;
    ensure_in_containerd(&c, &reference, img)?;
    let snapshots = c.ctr_ok(["snapshots", "ls"])?;
    ensure!(
        snapshots.lines().count() == 1 + img.layers.len(),
        "one snapshot per layer expected:\n{snapshots}"
    );
    Ok(())
}

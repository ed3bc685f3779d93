//! End-to-end unpacking: pulled layers become snapshots, images mount
//! read-only with whiteouts applied, shared bases are unpacked once, and
//! removal plus prune leaves no snapshot and no mount behind.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fixtures::{
    self, multilayer_files as mf, Compression, ImageBuilder, LayerBuilder,
};
use integration::registry::{Registry, RegistryOpts};
use integration::util::wait_for;
use serde_json::Value;

/// path -> (kind, mode, size, symlink target) for every entry under `root`.
fn listing(root: &Path) -> Result<BTreeMap<String, (char, u32, u64, String)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p)?;
            let rel = format!("/{}", p.strip_prefix(root)?.display());
            let ft = m.file_type();
            let (kind, size, link) = if ft.is_symlink() {
                ('l', 0, std::fs::read_link(&p)?.display().to_string())
            } else if ft.is_dir() {
                stack.push(p.clone());
                ('d', 0, String::new())
            } else if ft.is_file() {
                ('f', m.len(), String::new())
            } else {
                ('o', 0, String::new())
            };
            out.insert(rel, (kind, m.mode() & 0o7777, size, link));
        }
    }
    Ok(out)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&d))
        .map(str::to_string)
        .collect()
}

fn snapshot_names(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.ctl_ok(["snapshots", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// An independent reference rootfs: GNU tar extracts each layer, with the
/// OCI whiteout rules applied by hand before it (umoci 0.4 lacks zstd).
fn reference_rootfs(img: &fixtures::Image, work: &Path) -> Result<std::path::PathBuf> {
    let root = work.join("reference-rootfs");
    std::fs::create_dir_all(&root)?;
    for (i, layer) in img.layers.iter().enumerate() {
        let tar = fixtures::decompress_layer(&layer.media_type, &img.blob(&layer.digest)?)?;
        for e in fixtures::list_tar(&tar)? {
            let path = e.path.trim_start_matches("./").trim_start_matches('/');
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (root.join(d), b.to_string()),
                None => (root.clone(), path.to_string()),
            };
            if base == ".wh..wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for c in rd.flatten() {
                        let p = c.path();
                        if c.file_type()?.is_dir() {
                            std::fs::remove_dir_all(&p)?;
                        } else {
                            std::fs::remove_file(&p)?;
                        }
                    }
                }
            } else if let Some(name) = base.strip_prefix(".wh.") {
                let victim = dir.join(name);
                if victim.is_dir() && !victim.is_symlink() {
                    std::fs::remove_dir_all(&victim)?;
                } else if victim.symlink_metadata().is_ok() {
                    std::fs::remove_file(&victim)?;
                }
            }
        }
        let file = work.join(format!("layer{i}.tar"));
        std::fs::write(&file, &tar)?;
        let st = std::process::Command::new("tar")
            .args(["-x", "-p", "--numeric-owner", "--exclude=.wh.*", "-f"])
            .arg(&file)
            .arg("-C")
            .arg(&root)
            .output()?;
        ensure!(
            st.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    Ok(root)
}

fn mount_matches_reference(backend: &str) -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let img = fixtures::multilayer()?;
    reg.push_layout(img, "multi:1")?;
    let d = Daemon::start_with_config(&format!("[snapshotter]\nbackend = \"{backend}\"\n"))?;
    let name = format!("{}/multi:1", reg.addr());
    d.ctl_ok(["images", "pull", &name])?;
    // One committed snapshot per layer.
    ensure!(
        snapshot_names(&d)?.len() == img.layers.len(),
        "{:?}",
        snapshot_names(&d)?
    );

    let target = d.dir().join("mnt");
    std::fs::create_dir(&target)?;
    d.ctl_ok(["images", "mount", &name, target.to_str().unwrap()])?;
    let got = (|| -> Result<()> {
        ensure!(
            std::fs::read_to_string(target.join(mf::KEEP.trim_start_matches('/')))?
                == mf::KEEP_CONTENT
        );
        for gone in [mf::REMOVED, mf::OLD_A, mf::OLD_B] {
            ensure!(
                !target.join(gone.trim_start_matches('/')).exists(),
                "{gone} should be whited out"
            );
        }
        ensure!(
            std::fs::read_to_string(target.join(mf::NEW.trim_start_matches('/')))?
                == mf::NEW_CONTENT
        );
        // The mount is read-only.
        ensure!(
            std::fs::write(target.join("tmp/x"), b"x").is_err(),
            "view is writable"
        );
        let reference = reference_rootfs(img, d.dir())?;
        let (ours, theirs) = (listing(&target)?, listing(&reference)?);
        for (path, entry) in &theirs {
            ensure!(
                ours.get(path) == Some(entry),
                "{path}: ours {:?} reference {entry:?}",
                ours.get(path)
            );
        }
        ensure!(
            ours.len() == theirs.len(),
            "ours has extra entries: {:?}",
            ours.keys()
                .filter(|k| !theirs.contains_key(*k))
                .collect::<Vec<_>>()
        );
        Ok(())
    })();
    d.ctl_ok(["images", "unmount", target.to_str().unwrap()])?;
    got?;
    ensure!(
        mounts_under(d.dir()).is_empty(),
        "{:?}",
        mounts_under(d.dir())
    );

    d.ctl_ok(["images", "rm", &name])?;
    d.ctl_ok(["content", "prune"])?;
    ensure!(snapshot_names(&d)?.is_empty(), "{:?}", snapshot_names(&d)?);
    ensure!(
        d.ctl_ok(["content", "ls", "-q"])?.trim().is_empty(),
        "content left after prune"
    );
    ensure!(
        mounts_under(d.dir()).is_empty(),
        "{:?}",
        mounts_under(d.dir())
    );
    Ok(())
}

#[test]
fn overlay_mount_shows_whiteouts_like_gnu_tar() -> Result<()> {
    mount_matches_reference("overlayfs")
}

#[test]
fn native_mount_shows_whiteouts_like_gnu_tar() -> Result<()> {
    mount_matches_reference("native")
}

#[test]
fn shared_base_is_unpacked_once() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let work = tempfile::tempdir()?;
    let base = fixtures::busybox_layer()?;
    let mut names = Vec::new();
    for (i, extra) in ["one", "two", "three"].iter().enumerate() {
        let img = ImageBuilder::new(&format!("shared-{extra}"))
            .layer(base.clone(), Compression::Gzip, "base")
            .layer(
                LayerBuilder::new().dir("/data", 0o755).file(
                    &format!("/data/{extra}"),
                    0o644,
                    extra.as_bytes().to_vec(),
                ),
                Compression::Gzip,
                extra,
            )
            .write(&work.path().join(extra))?;
        reg.push_layout(&img, &format!("shared{i}:1"))?;
        names.push(format!("{}/shared{i}:1", reg.addr()));
    }
    let d = Daemon::start()?;
    for n in &names {
        d.ctl_ok(["images", "pull", n])?;
    }
    // 1 base + 3 tops.
    let log = d.log();
    let unpacked = log.matches("unpacked layer").count();
    ensure!(unpacked == 4, "expected 4 layer unpacks, saw {unpacked}");
    ensure!(snapshot_names(&d)?.len() == 4);

    let usage: Vec<Value> =
        serde_json::from_str(&d.ctl_ok(["images", "usage", "--format", "json"])?)?;
    ensure!(usage.len() == 3);
    for u in &usage {
        ensure!(
            u["unpacked"] == true && u["shared"].as_i64() > Some(0),
            "{u}"
        );
        ensure!(u["unique"].as_i64() > Some(0), "{u}");
    }

    // A snapshot an image uses cannot be removed by hand.
    let snaps = snapshot_names(&d)?;
    let out = d.ctl(["snapshots", "rm", &snaps[0]])?;
    ensure!(!out.status.success());

    // Removing two images keeps the shared base for the third.
    d.ctl_ok(["images", "rm", "--sync", &names[0], &names[1]])?;
    ensure!(snapshot_names(&d)?.len() == 2, "{:?}", snapshot_names(&d)?);
    d.ctl_ok(["images", "rm", &names[2]])?;
    let dd = &d;
    wait_for(
        "background gc of snapshots",
        Duration::from_secs(10),
        || Ok(snapshot_names(dd)?.is_empty().then_some(())),
    )?;
    Ok(())
}

#[test]
fn interrupted_unpack_is_swept_on_restart() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "busybox:1")?;
    let mut d = Daemon::start()?;
    let name = format!("{}/busybox:1", reg.addr());
    d.ctl_ok(["images", "pull", &name])?;
    d.kill9()?;
    d.restart()?;
    // Still there, still mountable after kill -9.
    ensure!(snapshot_names(&d)?.len() == 1);
    let target = d.dir().join("mnt");
    std::fs::create_dir(&target)?;
    d.ctl_ok(["images", "mount", &name, target.to_str().unwrap()])?;
    ensure!(target.join("bin/busybox").exists());
    // A reboot-like loss of the mount: the view is dropped at the next start.
    integration::util::unmount_below(&target)?;
    d.restart()?;
    ensure!(
        !d.ctl_ok(["snapshots", "ls"])?.contains("view"),
        "stale view kept after restart"
    );
    Ok(())
}

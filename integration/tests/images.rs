//! End-to-end image management: a real berthd on temp dirs, driven through
//! berthctl, against Debian's real docker-registry and a scripted misbehaving
//! registry. Every test builds its fixtures offline.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fake_registry::{Behavior, FakeRegistry};
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use integration::util::blob_files;
use integration::util::wait_for;
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn images_json(d: &Daemon) -> Result<Vec<Value>> {
    let out = d.ctl_ok(["images", "ls", "--format", "json"])?;
    serde_json::from_str::<Vec<Value>>(&out).with_context(|| format!("bad json: {out}"))
}

fn image_names(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.ctl_ok(["images", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// A daemon with a short no-progress timeout, so hang tests finish quickly.
fn fast_timeout_daemon() -> Result<Daemon> {
    Daemon::start_with_config("[pull]\nno_progress_timeout_secs = 2\nconnect_timeout_secs = 2\n")
}

#[test]
fn pull_ls_inspect_tag_export_rm_import_prune() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "busybox:1")?;
    let d = Daemon::start()?;
    let reference = format!("{}/busybox:1", reg.addr());

    let out = d.ctl_ok(["images", "pull", "--plain-http", &reference])?;
    ensure!(out.contains(&img.manifest_digest), "pull output: {out}");
    let blobs = blob_files(&d.root());
    ensure!(
        blobs == img.all_blobs()?,
        "content {blobs:?} != fixture {:?}",
        img.all_blobs()?
    );

    let list = images_json(&d)?;
    ensure!(list.len() == 1, "{list:?}");
    ensure!(list[0]["name"] == reference.as_str(), "{list:?}");
    let table = d.ctl_ok(["images", "ls"])?;
    ensure!(
        table.contains("NAME") && table.contains(&reference),
        "{table}"
    );

    let inspect: Value = serde_json::from_str(&d.ctl_ok(["images", "inspect", &reference])?)?;
    ensure!(
        inspect["config"]["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.len())
            == Some(1),
        "{inspect}"
    );
    ensure!(inspect["manifest"]["layers"][0]["digest"] == img.layers[0].digest.as_str());

    d.ctl_ok(["images", "tag", &reference, "mybox:2"])?;
    let names = image_names(&d)?;
    ensure!(
        names.contains(&"docker.io/library/mybox:2".to_string()),
        "{names:?}"
    );

    let tar = d.dir().join("export.tar");
    d.ctl_ok(["images", "export", "-o", tar.to_str().unwrap(), "mybox:2"])?;
    // An independent reader accepts the archive: skopeo copies it out.
    let copied = d.dir().join("skopeo-dir");
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", tar.display()))
        .arg(format!("dir:{}", copied.display()))
        .status()?;
    ensure!(st.success(), "skopeo could not read the exported archive");
    ensure!(copied
        .join(integration::util::digest_hex(&img.layers[0].digest))
        .exists());

    d.ctl_ok(["images", "rm", "--sync", "mybox:2", &reference])?;
    ensure!(image_names(&d)?.is_empty());
    d.ctl_ok(["content", "prune"])?;
    ensure!(
        blob_files(&d.root()).is_empty(),
        "{:?}",
        blob_files(&d.root())
    );

    let out = d.ctl_ok(["images", "import", tar.to_str().unwrap()])?;
    ensure!(out.contains("docker.io/library/mybox:2"), "{out}");
    ensure!(image_names(&d)? == vec!["docker.io/library/mybox:2".to_string()]);
    ensure!(blob_files(&d.root()) == img.all_blobs()?);

    // Removing the last name collects everything in the background.
    d.ctl_ok(["images", "rm", "mybox:2"])?;
    let root = d.root();
    wait_for("background gc", Duration::from_secs(10), || {
        Ok(blob_files(&root).is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn pulls_multilayer_docker_and_multiplatform_images() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let multi = fixtures::multilayer()?;
    let docker = fixtures::busybox_docker()?;
    let index = fixtures::multiplatform()?;
    reg.push_layout(multi, "multi:1")?;
    reg.push_layout(docker, "docker:1")?;
    reg.push_layout(index, "index:1")?;
    let d = Daemon::start()?;

    // gzip, zstd and uncompressed layers in one image.
    d.ctl_ok(["images", "pull", &format!("{}/multi:1", reg.addr())])?;
    for l in &multi.layers {
        ensure!(
            blob_files(&d.root()).contains(&l.digest),
            "layer {} ({}) missing",
            l.digest,
            l.media_type
        );
    }

    d.ctl_ok(["images", "pull", &format!("{}/docker:1", reg.addr())])?;
    let inspect: Value = serde_json::from_str(&d.ctl_ok([
        "images",
        "inspect",
        &format!("{}/docker:1", reg.addr()),
    ])?)?;
    ensure!(
        inspect["manifest"]["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json",
        "{inspect}"
    );

    // The index resolves to the host's platform; only its blobs are fetched.
    let name = format!("{}/index:1", reg.addr());
    d.ctl_ok(["images", "pull", &name])?;
    let amd64 = &index.manifests[0];
    let arm64 = &index.manifests[1];
    let blobs = blob_files(&d.root());
    ensure!(blobs.contains(&index.manifest_digest));
    ensure!(blobs.contains(&amd64.digest) && !blobs.contains(&arm64.digest));
    let inspect: Value = serde_json::from_str(&d.ctl_ok(["images", "inspect", &name])?)?;
    ensure!(inspect["config"]["architecture"] == "amd64", "{inspect}");

    // --platform picks another entry.
    let d2 = Daemon::start()?;
    d2.ctl_ok(["images", "pull", "--platform", "linux/arm64", &name])?;
    let blobs = blob_files(&d2.root());
    ensure!(blobs.contains(&arm64.digest) && !blobs.contains(&amd64.digest));
    let err = d2.ctl_err(&["images", "pull", "--platform", "linux/s390x", &name])?;
    ensure!(
        err.contains("no manifest for platform linux/s390x"),
        "{err}"
    );

    // Export of an index with one platform present, re-import elsewhere.
    let tar = d.dir().join("index.tar");
    d.ctl_ok(["images", "export", "-o", tar.to_str().unwrap(), &name])?;
    let d3 = Daemon::start()?;
    d3.ctl_ok(["images", "import", tar.to_str().unwrap()])?;
    ensure!(image_names(&d3)? == vec![name.clone()]);
    Ok(())
}

#[test]
fn basic_auth_registry_and_credentials() -> Result<()> {
    let reg = Registry::start(RegistryOpts::with_auth("alice", "s3cret"))?;
    reg.push_layout(fixtures::busybox()?, "private:1")?;
    let reference = format!("{}/private:1", reg.addr());

    let d = Daemon::start()?;
    let err = d.ctl_err(&["images", "pull", &reference])?;
    ensure!(err.contains("401") && err.contains("private:1"), "{err}");
    let err = d.ctl_err(&["images", "pull", "--user", "alice:wrong", &reference])?;
    ensure!(err.contains("401"), "{err}");
    d.ctl_ok(["images", "pull", "--user", "alice:s3cret", &reference])?;

    // Credentials from the config file.
    let d2 = Daemon::start_with_config(&format!(
        "[registry.auths.\"{}\"]\nusername = \"alice\"\npassword = \"s3cret\"\n",
        reg.addr()
    ))?;
    d2.ctl_ok(["images", "pull", &reference])?;

    // Push with credentials to a new name, then pull it back elsewhere.
    d2.ctl_ok([
        "images",
        "push",
        "--user",
        "alice:s3cret",
        &reference,
        &format!("{}/pushed:7", reg.addr()),
    ])?;
    let d3 = Daemon::start()?;
    d3.ctl_ok([
        "images",
        "pull",
        "--user",
        "alice:s3cret",
        &format!("{}/pushed:7", reg.addr()),
    ])?;
    Ok(())
}

#[test]
fn bearer_token_flow() -> Result<()> {
    let fake = FakeRegistry::start(Behavior::Unauthorized {
        credentials: Some(("bob".into(), "pw".into())),
    })?;
    let d = Daemon::start()?;
    let reference = fake.reference("busybox");
    let err = d.ctl_err(&["images", "pull", &reference])?;
    ensure!(err.contains("401"), "{err}");
    d.ctl_ok(["images", "pull", "--user", "bob:pw", &reference])?;
    let token_reqs = fake.requests_to("/token");
    ensure!(!token_reqs.is_empty(), "the token endpoint was never asked");
    let authed = fake
        .requests_to("/blobs/")
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {}", fake.token())));
    ensure!(authed, "blob requests did not carry the bearer token");
    Ok(())
}

/// Pulls from a misbehaving registry; returns the error line.
fn pull_fails(d: &Daemon, fake: &FakeRegistry) -> Result<String> {
    let reference = fake.reference("busybox");
    let err = d.ctl_err(&["images", "pull", &reference])?;
    ensure!(
        err.contains("busybox"),
        "error does not name the image: {err}"
    );
    ensure!(image_names(d)?.is_empty(), "a failed pull left an image");
    // The daemon is still up and answering.
    d.ctl_ok(["version"])?;
    Ok(err)
}

#[test]
fn bad_registries_give_clear_errors_and_leave_nothing_behind() -> Result<()> {
    let d = fast_timeout_daemon()?;
    let img = fixtures::busybox()?;
    let layer = &img.layers[0].digest;

    let fake = FakeRegistry::start(Behavior::DigestMismatch)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(
        err.contains("digest mismatch") && err.contains(layer.as_str()),
        "{err}"
    );
    ensure!(!blob_files(&d.root()).contains(layer));

    let fake = FakeRegistry::start(Behavior::TruncatedBlob)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(err.contains(layer.as_str()), "{err}");
    ensure!(!blob_files(&d.root()).contains(layer));

    let fake = FakeRegistry::start(Behavior::HugeManifest)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(err.contains("larger than the limit"), "{err}");

    let fake = FakeRegistry::start(Behavior::UnknownMediaType)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(
        err.contains("unsupported media type application/x-unknown"),
        "{err}"
    );

    for (status, needle) in [(401, "401"), (404, "not found"), (500, "500")] {
        let fake = FakeRegistry::start(Behavior::Status(status))?;
        let err = pull_fails(&d, &fake)?;
        ensure!(err.contains(needle), "status {status}: {err}");
    }

    let fake = FakeRegistry::start(Behavior::Hang)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(err.contains("no progress"), "{err}");

    let fake = FakeRegistry::start(Behavior::HangMidBlob)?;
    let err = pull_fails(&d, &fake)?;
    ensure!(
        err.contains("no progress") && err.contains(layer.as_str()),
        "{err}"
    );
    ensure!(!blob_files(&d.root()).contains(layer));

    // Unreachable host: a port nothing listens on.
    let port = integration::util::free_port()?;
    let err = d.ctl_err(&["images", "pull", &format!("127.0.0.1:{port}/x:1")])?;
    ensure!(err.contains("cannot reach registry"), "{err}");

    for bad in ["Busybox", "a::b", "x@sha256:1234", "", "registry/UPPER:1"] {
        let out = d.ctl(["images", "pull", bad])?;
        ensure!(!out.status.success(), "{bad:?} was accepted");
        ensure!(
            stderr(&out).contains("invalid") || stderr(&out).contains("required"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    d.ctl_ok(["version"])?;
    Ok(())
}

#[test]
fn broken_transfer_resumes_with_a_range_request() -> Result<()> {
    let d = Daemon::start()?;
    // The first GET of the layer stops halfway; the retry asks for the rest.
    let fake = FakeRegistry::start(Behavior::TruncatedBlobOnce)?;
    d.ctl_ok(["images", "pull", &fake.reference("busybox")])?;
    let layer = &fixtures::busybox()?.layers[0];
    let gets = fake.requests_to(&format!("/blobs/{}", layer.digest));
    ensure!(
        gets.len() >= 2,
        "expected a retry, saw {} requests",
        gets.len()
    );
    let range = gets[1].header("range").unwrap_or("");
    ensure!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "second request did not resume: {range:?}"
    );
    ensure!(blob_files(&d.root()).contains(&layer.digest));
    Ok(())
}

#[test]
fn interrupted_pull_resumes_after_restart() -> Result<()> {
    let mut d = fast_timeout_daemon()?;
    let stalling = FakeRegistry::start(Behavior::HangMidBlob)?;
    // Every attempt stalls partway through the layer, so the pull fails,
    // keeping the bytes it got as a resumable ingest.
    let _ = d.ctl_err(&["images", "pull", &stalling.reference("busybox")])?;
    let content: Value = serde_json::from_str(&d.ctl_ok(["content", "ls", "--format", "json"])?)?;
    let ingests = content["ingests"].as_array().cloned().unwrap_or_default();
    ensure!(
        ingests
            .iter()
            .any(|i| i["offset"].as_i64().unwrap_or(0) > 0),
        "no partial ingest kept: {content}"
    );
    drop(stalling);
    d.kill9()?;
    d.restart()?;
    // The same image from a healthy registry: the layer resumes where the
    // ingest stopped rather than starting over.
    let healthy = FakeRegistry::start(Behavior::Normal)?;
    d.ctl_ok(["images", "pull", &healthy.reference("busybox")])?;
    let layer = &fixtures::busybox()?.layers[0];
    let gets = healthy.requests_to(&format!("/blobs/{}", layer.digest));
    ensure!(
        gets.len() == 1 && gets[0].header("range").is_some_and(|r| r != "bytes=0-"),
        "the resumed pull did not ask for a range: {gets:?}"
    );
    let content: Value = serde_json::from_str(&d.ctl_ok(["content", "ls", "--format", "json"])?)?;
    ensure!(
        content["ingests"].as_array().is_none_or(|a| a.is_empty()),
        "ingest left after a completed pull: {content}"
    );
    Ok(())
}

#[test]
fn concurrent_pulls_share_one_transfer() -> Result<()> {
    // The first transfer of the layer stalls halfway (then resumes after the
    // no-progress timeout), which keeps the pull open while a second joins: the
    // timeout is long enough for the second berthctl to start on a loaded machine.
    let d = Daemon::start_with_config(
        "[pull]\nno_progress_timeout_secs = 10\nconnect_timeout_secs = 2\n",
    )?;
    let fake = FakeRegistry::start(Behavior::HangMidBlobOnce)?;
    let layer = fixtures::busybox()?.layers[0].digest.clone();
    let reference = fake.reference("busybox");
    let socket = d.socket_path();
    let ctl = integration::daemon::bin_path("berthctl")?;
    let spawn = || {
        std::process::Command::new(&ctl)
            .arg("--address")
            .arg(&socket)
            .args(["images", "pull", &reference])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let a = spawn()?;
    wait_for("first layer request", Duration::from_secs(10), || {
        Ok((!fake.requests_to(&format!("/blobs/{layer}")).is_empty()).then_some(()))
    })?;
    let b = spawn()?;
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    ensure!(a.status.success(), "{}", stderr(&a));
    ensure!(b.status.success(), "{}", stderr(&b));
    let joined = d.log().matches("joining a pull already under way").count();
    ensure!(
        joined == 1,
        "the second pull did not join the first ({joined})"
    );
    // One stalled GET and one resumed GET: the second caller fetched nothing.
    let gets = fake.requests_to(&format!("/blobs/{layer}"));
    ensure!(
        gets.len() == 2,
        "expected 2 layer requests, saw {}",
        gets.len()
    );
    ensure!(image_names(&d)?.len() == 1);
    Ok(())
}

#[test]
fn gc_never_removes_what_a_running_pull_wrote() -> Result<()> {
    let d = fast_timeout_daemon()?;
    // The layer stalls, so the pull sits with the manifest and config written.
    let fake = FakeRegistry::start(Behavior::HangMidBlob)?;
    let img = fixtures::busybox()?;
    let socket = d.socket_path();
    let ctl = integration::daemon::bin_path("berthctl")?;
    let pull = std::process::Command::new(&ctl)
        .arg("--address")
        .arg(&socket)
        .args(["images", "pull", &fake.reference("busybox")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let root = d.root();
    wait_for("config written", Duration::from_secs(10), || {
        Ok(blob_files(&root).contains(&img.config_digest).then_some(()))
    })?;
    d.ctl_ok(["content", "prune"])?;
    ensure!(
        blob_files(&root).contains(&img.config_digest)
            && blob_files(&root).contains(&img.manifest_digest),
        "prune removed content of a running pull"
    );
    let _ = pull.wait_with_output()?;
    // Once the pull has failed, its content is unreferenced and goes.
    d.ctl_ok(["content", "prune"])?;
    ensure!(blob_files(&root).is_empty(), "{:?}", blob_files(&root));
    Ok(())
}

#[test]
fn images_survive_kill9_and_daemon_guards_its_root() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::busybox()?, "busybox:1")?;
    let mut d = Daemon::start()?;
    let reference = format!("{}/busybox:1", reg.addr());
    d.ctl_ok(["images", "pull", &reference])?;
    d.ctl_ok(["images", "tag", &reference, "keep:me"])?;
    d.kill9()?;
    // The socket left behind by the crash is stale; a restart replaces it.
    ensure!(d.socket_path().exists());
    d.restart()?;
    let names = image_names(&d)?;
    ensure!(names.len() == 2, "images lost after kill -9: {names:?}");

    // A restart while the killed daemon still holds the root's lock (it is
    // still exiting; here another process holds it for a moment) waits for
    // the lock instead of giving up.
    d.kill9()?;
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(d.root().join("berthd.lock"))
        .args(["sleep", "5"])
        .spawn()
        .context("flock (util-linux)")?;
    let lock = d.root().join("berthd.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::process::Command::new("flock")
        .args(["-n", "-x"])
        .arg(&lock)
        .arg("true")
        .status()?
        .success()
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
    }
    let started = std::time::Instant::now();
    d.restart()?;
    holder.wait()?;
    ensure!(started.elapsed() >= std::time::Duration::from_secs(1));
    ensure!(d.log().contains("waiting for it to exit"), "{}", d.log());
    ensure!(image_names(&d)?.len() == 2);

    // A second daemon on the same root refuses to start once its wait for
    // the lock is over, naming the reason.
    let other_state = d.dir().join("state2");
    let other_config = d.dir().join("config2.toml");
    std::fs::write(
        &other_config,
        format!(
            "root_lock_wait_secs = 1\n{}",
            std::fs::read_to_string(d.config_path())?
        ),
    )?;
    let out = std::process::Command::new(integration::daemon::bin_path("berthd")?)
        .arg("--root")
        .arg(d.root())
        .arg("--state")
        .arg(&other_state)
        .arg("--config")
        .arg(&other_config)
        .output()?;
    ensure!(!out.status.success());
    ensure!(
        stderr(&out).contains("another berthd is already running"),
        "{}",
        stderr(&out)
    );

    // SIGTERM is an orderly stop with exit status 0.
    let status = d.stop()?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "berthd did not exit 0 on SIGTERM: {status:?}"
    );
    ensure!(!d.socket_path().exists(), "socket left after a clean stop");
    Ok(())
}

#[test]
fn import_rejects_bad_archives() -> Result<()> {
    let d = Daemon::start()?;
    let dir = d.dir().to_path_buf();

    // A tar with a path escaping the archive.
    let evil = dir.join("evil.tar");
    {
        let f = std::fs::File::create(&evil)?;
        let mut b = tar::Builder::new(f);
        let data = b"pwned";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..": write the raw name bytes instead.
        let name = b"../../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &data[..])?;
        b.finish()?;
    }
    let err = d.ctl_err(&["images", "import", evil.to_str().unwrap()])?;
    ensure!(err.contains("unsafe path"), "{err}");
    ensure!(!dir.join("escaped").exists() && !dir.parent().unwrap().join("escaped").exists());

    // A blob whose bytes do not match its name.
    let img = fixtures::busybox()?;
    let layout = dir.join("layout");
    copy_dir(&img.layout_dir, &layout)?;
    let victim = layout
        .join("blobs/sha256")
        .join(integration::util::digest_hex(&img.config_digest));
    std::fs::write(&victim, b"{\"tampered\":true}")?;
    let tar = dir.join("tampered.tar");
    fixtures::write_oci_archive(&layout, &tar)?;
    let err = d.ctl_err(&["images", "import", tar.to_str().unwrap()])?;
    ensure!(err.contains("does not match"), "{err}");

    // Not a tar at all.
    let junk = dir.join("junk.tar");
    std::fs::write(&junk, vec![0x42u8; 4096])?;
    d.ctl_err(&["images", "import", junk.to_str().unwrap()])?;

    ensure!(image_names(&d)?.is_empty());
    d.ctl_ok(["content", "prune"])?;
    ensure!(blob_files(&d.root()).is_empty());

    // A docker-save archive imports with its RepoTags.
    let docker_tar = dir.join("docker.tar");
    fixtures::write_docker_archive(img, "saved/box:3", &docker_tar)?;
    d.ctl_ok(["images", "import", docker_tar.to_str().unwrap()])?;
    ensure!(image_names(&d)? == vec!["docker.io/saved/box:3".to_string()]);
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

#[test]
fn config_commands_and_hosts_toml_mirror() -> Result<()> {
    let bin = integration::daemon::bin_path("berthd")?;
    let out = std::process::Command::new(&bin)
        .args(["config", "default"])
        .output()?;
    ensure!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("root = \"/var/lib/berth\""), "{text}");
    let out = std::process::Command::new(&bin)
        .args([
            "--root",
            "/x",
            "--config",
            "/nonexistent.toml",
            "config",
            "dump",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("root = \"/x\"") && text.contains("/run/berth/berth.sock"),
        "{text}"
    );

    // A containerd-style hosts.toml sends docker.io pulls to a local mirror.
    let reg = Registry::start(RegistryOpts::default())?;
    reg.push_layout(fixtures::busybox()?, "library/busybox:latest")?;
    let certs = tempfile::tempdir()?;
    std::fs::create_dir_all(certs.path().join("docker.io"))?;
    std::fs::write(
        certs.path().join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr()
        ),
    )?;
    let d = Daemon::start_with_config(&format!(
        "[registry]\nconfig_path = \"{}\"\n",
        certs.path().display()
    ))?;
    d.ctl_ok(["images", "pull", "busybox"])?;
    ensure!(image_names(&d)? == vec!["docker.io/library/busybox:latest".to_string()]);
    Ok(())
}

#[test]
fn cancelled_client_cancels_its_pull() -> Result<()> {
    let d = Daemon::start()?;
    // The layer stalls mid-transfer; the no-progress timeout (30 s by
    // default) is far away, so only the cancellation can end the pull.
    let fake = FakeRegistry::start(Behavior::HangMidBlob)?;
    let layer = fixtures::busybox()?.layers[0].digest.clone();
    let mut pull = std::process::Command::new(integration::daemon::bin_path("berthctl")?)
        .arg("--address")
        .arg(d.socket_path())
        .args(["images", "pull", &fake.reference("busybox")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_for("layer request", Duration::from_secs(10), || {
        Ok((!fake.requests_to(&format!("/blobs/{layer}")).is_empty()).then_some(()))
    })?;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(pull.id() as i32, libc::SIGINT) };
    let status = pull.wait()?;
    ensure!(!status.success(), "berthctl was not interrupted");
    wait_for(
        "pull cancelled in the daemon",
        Duration::from_secs(10),
        || Ok(d.log().contains("pull cancelled").then_some(())),
    )?;
    // The bytes received go with the cancelled pull (issue 14, finding 6),
    // and the daemon is fine.
    let root = d.root();
    wait_for(
        "the partial download to go",
        Duration::from_secs(10),
        || {
            Ok(std::fs::read_dir(root.join("content/ingest"))
                .map_or(true, |mut rd| rd.next().is_none())
                .then_some(()))
        },
    )?;
    ensure!(image_names(&d)?.is_empty());
    d.ctl_ok(["version"])?;
    Ok(())
}

#[test]
fn socket_and_directory_modes() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start()?;
    let mode =
        |p: &Path| -> Result<u32> { Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777) };
    ensure!(
        mode(&d.socket_path())? == 0o660,
        "socket mode {:o}",
        mode(&d.socket_path())?
    );
    ensure!(mode(&d.root().join("content"))? & 0o077 <= 0o011);
    let version = d.ctl_ok(["version"])?;
    ensure!(
        version.contains(&d.root().display().to_string()),
        "{version}"
    );
    Ok(())
}

//! End-to-end TLS: a real berthd pulling from Debian's docker-registry serving HTTPS
//! with a certificate from a throwaway CA, configured through containerd-style
//! `hosts.toml` files (`[registry] config_path`): verification on by default for an
//! explicit https server, `ca` (absolute and relative), `skip_verify`, the one-off
//! `--skip-verify` flag, the https-first fallback of an http server with TLS settings,
//! and a docker.io mirror trusted through `ca`. Everything runs offline.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fixtures::{self, Image};
use integration::registry::{generate_tls, Registry, RegistryOpts};
use integration::util::blob_files;

/// A TLS registry holding the busybox fixture as `busybox:1`.
fn tls_registry() -> Result<(Registry, &'static Image)> {
    let reg = Registry::start(RegistryOpts::with_tls())?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "busybox:1")?;
    Ok((reg, img))
}

fn ca_of(reg: &Registry) -> Result<&Path> {
    reg.ca_path().context("registry was not started with TLS")
}

/// A hosts directory (`[registry] config_path`) and a berthd using it.
struct Setup {
    hosts: tempfile::TempDir,
    d: Daemon,
}

impl Setup {
    fn start() -> Result<Self> {
        let hosts = tempfile::Builder::new().prefix("berth-hosts-").tempdir()?;
        // A short connect timeout: nothing here should ever need the network.
        let d = Daemon::start_with_config(&format!(
            "[registry]\nconfig_path = \"{}\"\n\n[pull]\nconnect_timeout_secs = 5\n",
            hosts.path().display()
        ))?;
        Ok(Setup { hosts, d })
    }

    /// The host directory for `registry` ("127.0.0.1:PORT", "docker.io").
    fn host_dir(&self, registry: &str) -> PathBuf {
        self.hosts.path().join(registry)
    }

    /// Writes `<config_path>/<registry>/hosts.toml`. berthd reads it on every pull.
    fn write_hosts(&self, registry: &str, toml: &str) -> Result<()> {
        let dir = self.host_dir(registry);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts.toml"), toml)?;
        Ok(())
    }

    /// Pulls `reference` (plus `extra` flags) and checks that every blob of `img`
    /// arrived in the content store.
    fn pull_ok(&self, extra: &[&str], reference: &str, img: &Image) -> Result<()> {
        let mut args = vec!["images", "pull"];
        args.extend_from_slice(extra);
        args.push(reference);
        let out = self.d.ctl_ok(&args)?;
        ensure!(out.contains(&img.manifest_digest), "pull output: {out}");
        let blobs = blob_files(&self.d.root());
        ensure!(
            blobs == img.all_blobs()?,
            "content {blobs:?} != fixture {:?}",
            img.all_blobs()?
        );
        Ok(())
    }

    /// Removes every image and all content, so the next pull fetches everything again.
    fn forget_all(&self) -> Result<()> {
        let names: Vec<String> = self
            .d
            .ctl_ok(["images", "ls", "-q"])?
            .lines()
            .map(str::to_string)
            .collect();
        if !names.is_empty() {
            let mut args = vec!["images".to_string(), "rm".into(), "--sync".into()];
            args.extend(names);
            self.d.ctl_ok(&args)?;
        }
        self.d.ctl_ok(["content", "prune"])?;
        ensure!(blob_files(&self.d.root()).is_empty());
        Ok(())
    }

    /// Asserts a failed pull left no image and no content behind.
    fn nothing_pulled(&self) -> Result<()> {
        let names = self.d.ctl_ok(["images", "ls", "-q"])?;
        ensure!(
            names.trim().is_empty(),
            "a failed pull left images: {names}"
        );
        ensure!(
            blob_files(&self.d.root()).is_empty(),
            "a failed pull left content: {:?}",
            blob_files(&self.d.root())
        );
        Ok(())
    }
}

/// The error of a pull refused because the server certificate is not trusted: one
/// line naming the image and the host and saying why in TLS terms.
fn ensure_untrusted(err: &str, reg: &Registry, image: &str) -> Result<()> {
    ensure!(
        err.contains(image) && err.contains(reg.addr()),
        "error does not name the image and registry: {err}"
    );
    ensure!(
        err.contains("certificate")
            && (err.contains("UnknownIssuer") || err.contains("unknown issuer")),
        "error does not say the certificate is untrusted: {err}"
    );
    Ok(())
}

/// (1) An explicit https server with `skip_verify = false` and no `ca` is verified
/// against the system roots: the throwaway CA is unknown, the pull fails with one
/// clear line. (4) `--skip-verify` pulls anyway, without touching hosts.toml, and
/// only for that one pull.
#[test]
fn untrusted_certificate_fails_and_skip_verify_flag_overrides_once() -> Result<()> {
    let (reg, img) = tls_registry()?;
    let s = Setup::start()?;
    let reference = format!("{}/busybox:1", reg.addr());
    s.write_hosts(
        reg.addr(),
        &format!("server = \"{}\"\nskip_verify = false\n", reg.url()),
    )?;

    let err = s.d.ctl_err(&["images", "pull", &reference])?;
    ensure_untrusted(&err, &reg, &reference)?;
    s.nothing_pulled()?;

    // One-off --skip-verify: same hosts.toml, the pull goes through.
    s.pull_ok(&["--skip-verify"], &reference, img)?;

    // ... and it did not stick (no cached "insecure" client for the host).
    s.forget_all()?;
    let err2 = s.d.ctl_err(&["images", "pull", &reference])?;
    ensure_untrusted(&err2, &reg, &reference)?;
    s.nothing_pulled()?;

    // Plain HTTP to the TLS port is a clear error too, not a hang or a garbled one.
    let err =
        s.d.ctl_err(&["images", "pull", "--plain-http", &reference])?;
    ensure!(
        err.contains("400") && err.contains(&reference),
        "plain http to an https registry: {err}"
    );
    s.nothing_pulled()?;
    Ok(())
}

/// (2) `ca` in hosts.toml makes the throwaway CA trusted: absolute or relative to
/// the host directory. A CA that did not issue the certificate does not help, and
/// fixing the CA file takes effect without a restart; a missing CA file is named.
#[test]
fn ca_in_hosts_toml_is_trusted() -> Result<()> {
    let (reg, img) = tls_registry()?;
    let ca = ca_of(&reg)?;
    let s = Setup::start()?;
    let reference = format!("{}/busybox:1", reg.addr());
    let server = format!("server = \"{}\"\nskip_verify = false\n", reg.url());

    s.write_hosts(reg.addr(), &format!("{server}ca = \"{}\"\n", ca.display()))?;
    s.pull_ok(&[], &reference, img)?;
    s.forget_all()?;

    // Relative to the host directory, as a list; first holding some other throwaway
    // CA: still verified, still refused. It has the same subject as the real issuer,
    // so the chain is built by name and it is the signature check that rejects it.
    let other = tempfile::tempdir()?;
    let other = generate_tls(other.path(), &["127.0.0.1"])?;
    let rel_ca = s.host_dir(reg.addr()).join("registry-ca.pem");
    std::fs::copy(&other.ca_cert, &rel_ca)?;
    s.write_hosts(reg.addr(), &format!("{server}ca = [\"registry-ca.pem\"]\n"))?;
    let err = s.d.ctl_err(&["images", "pull", &reference])?;
    ensure!(
        err.contains(&reference) && err.contains("invalid peer certificate: BadSignature"),
        "a look-alike CA was not rejected by its signature: {err}"
    );
    s.nothing_pulled()?;

    // The right CA put in the same file (hosts.toml untouched) takes effect at once,
    // like any hosts.toml change: no restart.
    std::fs::copy(ca, &rel_ca)?;
    s.pull_ok(&[], &reference, img)?;
    s.forget_all()?;

    // A CA file that does not exist is a configuration error naming the file.
    let missing = s.host_dir(reg.addr()).join("missing-ca.pem");
    s.write_hosts(
        reg.addr(),
        &format!("{server}ca = \"{}\"\n", missing.display()),
    )?;
    let err = s.d.ctl_err(&["images", "pull", &reference])?;
    ensure!(
        err.contains(&reference) && err.contains(&missing.display().to_string()),
        "error does not name the image and the missing CA file: {err}"
    );
    s.nothing_pulled()?;
    Ok(())
}

/// (3) `skip_verify = true` without a `ca` accepts the unknown issuer. Without any
/// hosts.toml a loopback registry is not verified either (containerd's default for
/// localhost: https first, verification off, http fallback).
#[test]
fn skip_verify_in_hosts_toml() -> Result<()> {
    let (reg, img) = tls_registry()?;
    let s = Setup::start()?;
    let reference = format!("{}/busybox:1", reg.addr());

    s.write_hosts(
        reg.addr(),
        &format!("server = \"{}\"\nskip_verify = true\n", reg.url()),
    )?;
    s.pull_ok(&[], &reference, img)?;
    s.forget_all()?;

    // Same, as a host entry rather than the server.
    s.write_hosts(
        reg.addr(),
        &format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
            reg.url()
        ),
    )?;
    s.pull_ok(&[], &reference, img)?;
    s.forget_all()?;

    std::fs::remove_dir_all(s.host_dir(reg.addr()))?;
    s.pull_ok(&[], &reference, img)?;
    Ok(())
}

/// A `docker.io` mirror on the TLS registry, trusted through `ca`: `busybox` (that
/// is docker.io/library/busybox:latest) is pulled from it, offline. Mirrors get no
/// loopback leniency: without the `ca` the mirror is refused. (The server is pointed
/// at a closed local port there, so docker hub is never tried.)
#[test]
fn docker_io_mirror_with_ca() -> Result<()> {
    let reg = Registry::start(RegistryOpts::with_tls())?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "library/busybox:latest")?;
    let ca = ca_of(&reg)?;
    let s = Setup::start()?;
    let mirror = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        reg.url()
    );

    s.write_hosts(
        "docker.io",
        &format!("server = \"https://127.0.0.1:1\"\n\n{mirror}"),
    )?;
    let err = s.d.ctl_err(&["images", "pull", "busybox"])?;
    ensure!(
        err.contains("docker.io/library/busybox:latest") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    s.nothing_pulled()?;
    let log = s.d.log();
    ensure!(
        log.lines().any(|l| l.contains("trying next host")
            && l.contains(reg.addr())
            && l.contains("UnknownIssuer")),
        "the mirror was not refused for its certificate; berthd log:\n{log}"
    );

    s.write_hosts(
        "docker.io",
        &format!("{mirror}  ca = \"{}\"\n", ca.display()),
    )?;
    s.pull_ok(&[], "busybox", img)?;
    let names = s.d.ctl_ok(["images", "ls", "-q"])?;
    ensure!(
        names.trim() == "docker.io/library/busybox:latest",
        "images: {names}"
    );
    let inspect = s.d.ctl_ok(["images", "inspect", "busybox"])?;
    ensure!(inspect.contains(&img.layers[0].digest), "{inspect}");
    Ok(())
}

/// An `http://` server with TLS settings is tried over https first (containerd's
/// NewHTTPFallback) and verified there. It falls back to plain http only when the
/// server does not speak TLS: an untrusted certificate is reported as such, not
/// hidden behind a plain-HTTP retry (which a TLS port answers with a 400).
#[test]
fn http_server_with_tls_settings_tries_verified_https_first() -> Result<()> {
    let (reg, img) = tls_registry()?;
    let ca = ca_of(&reg)?;
    let plain = Registry::start(RegistryOpts::default())?;
    plain.push_layout(img, "busybox:1")?;
    let other = tempfile::tempdir()?;
    let other = generate_tls(other.path(), &["127.0.0.1"])?;
    let s = Setup::start()?;
    let http_server = |r: &Registry, ca: &Path| {
        format!(
            "server = \"http://{}\"\nca = \"{}\"\n",
            r.addr(),
            ca.display()
        )
    };

    let reference = format!("{}/busybox:1", reg.addr());
    s.write_hosts(reg.addr(), &http_server(&reg, ca))?;
    s.pull_ok(&[], &reference, img)?;
    s.forget_all()?;

    s.write_hosts(reg.addr(), &http_server(&reg, &other.ca_cert))?;
    let err = s.d.ctl_err(&["images", "pull", &reference])?;
    ensure!(
        err.contains(&reference) && err.contains("invalid peer certificate: BadSignature"),
        "the certificate failure was not reported: {err}"
    );
    s.nothing_pulled()?;

    // A plain-HTTP registry with the same kind of settings: https is answered in
    // plain text, so http it is (whatever the CA).
    let plain_ref = format!("{}/busybox:1", plain.addr());
    s.write_hosts(plain.addr(), &http_server(&plain, &other.ca_cert))?;
    s.pull_ok(&[], &plain_ref, img)?;
    s.forget_all()?;
    s.write_hosts(
        plain.addr(),
        &format!(
            "server = \"http://{}\"\nskip_verify = false\n",
            plain.addr()
        ),
    )?;
    s.pull_ok(&[], &plain_ref, img)?;
    Ok(())
}

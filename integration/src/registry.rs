//! A real local registry: Debian's `docker-registry` (distribution 2.8) on a free
//! 127.0.0.1 port with temporary storage, optionally behind htpasswd basic auth and
//! optionally serving HTTPS with a certificate from a throwaway CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::fixtures::{Image, ManifestDesc};
use crate::util::{
    basic_auth, free_port, http_request, https_request, wait_for, write_file, HttpResponse,
    MANIFEST_ACCEPT,
};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Options for [`Registry::start`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOpts {
    /// Require HTTP basic auth with these credentials (htpasswd, bcrypt).
    pub auth: Option<(String, String)>,
    /// Serve HTTPS only, with a server certificate (IP SAN 127.0.0.1) issued by a
    /// throwaway CA generated in the registry's temp dir: see [`Registry::ca_path`].
    pub tls: bool,
}

impl RegistryOpts {
    pub fn with_auth(user: &str, pass: &str) -> Self {
        Self {
            auth: Some((user.to_string(), pass.to_string())),
            ..Self::default()
        }
    }

    /// HTTPS with a throwaway CA, no auth.
    pub fn with_tls() -> Self {
        Self {
            tls: true,
            ..Self::default()
        }
    }
}

/// Files of a throwaway PKI made by [`generate_tls`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM), alone in [`TlsFiles::cert_dir`].
    pub ca_cert: PathBuf,
    /// A directory holding only `ca.crt`: usable as a docker/containers `certs.d`
    /// directory (`skopeo --dest-cert-dir`).
    pub cert_dir: PathBuf,
    /// Server certificate (PEM), issued by the CA.
    pub server_cert: PathBuf,
    /// The server certificate's private key (PEM, PKCS#8).
    pub server_key: PathBuf,
}

/// Generates, with the `openssl` CLI, a CA (P-256, valid for two days) and a server
/// certificate it signs for `ip_sans` (IP subject alternative names; serverAuth), in
/// `dir` (created). The CA key stays in `dir/ca.key`; the CA certificate is alone in
/// `dir/certs/ca.crt`.
pub fn generate_tls(dir: &Path, ip_sans: &[&str]) -> Result<TlsFiles> {
    let cert_dir = dir.join("certs");
    std::fs::create_dir_all(&cert_dir).with_context(|| format!("mkdir {}", cert_dir.display()))?;
    let files = TlsFiles {
        ca_cert: cert_dir.join("ca.crt"),
        cert_dir,
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    let (ca_key, csr, ext, serial) = (
        dir.join("ca.key"),
        dir.join("server.csr"),
        dir.join("server.ext"),
        dir.join("ca.srl"),
    );
    let sans: Vec<String> = ip_sans.iter().map(|ip| format!("IP:{ip}")).collect();
    let ext_text = format!(
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName={}\n",
        sans.join(",")
    );
    write_file(&ext, ext_text.as_bytes())?;
    let openssl = |args: &[&str], paths: &[(&str, &Path)]| {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        for (flag, path) in paths {
            cmd.arg(flag).arg(path);
        }
        run_checked(&mut cmd).context("openssl failed (is the CLI installed? `openssl version`)")
    };
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=berth throwaway test CA",
            ][..],
            &new_key,
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
        &[("-keyout", &ca_key), ("-out", &files.ca_cert)],
    )?;
    let cn = format!("/CN={}", ip_sans.first().copied().unwrap_or("localhost"));
    openssl(
        &[&["req", "-new", "-subj", &cn][..], &new_key].concat(),
        &[("-keyout", &files.server_key), ("-out", &csr)],
    )?;
    // -CAcreateserial: a random serial, so two throwaway CAs never look alike.
    openssl(
        &["x509", "-req", "-days", "2", "-CAcreateserial"],
        &[
            ("-in", &csr),
            ("-CA", &files.ca_cert),
            ("-CAkey", &ca_key),
            ("-CAserial", &serial),
            ("-extfile", &ext),
            ("-out", &files.server_cert),
        ],
    )?;
    Ok(files)
}

/// A running `docker-registry serve`; killed (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    addr: String,
    auth: Option<(String, String)>,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits (deadline 30 s) until `GET /v2/` answers (over
    /// verified TLS for a TLS registry).
    pub fn start(opts: RegistryOpts) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = &opts.auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("run htpasswd (apt-get install apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let htpasswd = dir.path().join("htpasswd");
            write_file(&htpasswd, &out.stdout)?;
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let mut tls_yaml = String::new();
        let tls = if opts.tls {
            let files = generate_tls(&dir.path().join("tls"), &["127.0.0.1"])?;
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                files.server_cert.display(),
                files.server_key.display()
            );
            Some(files)
        } else {
            None
        };
        // The port may be taken between free_port() and the registry's bind: retry.
        let mut last_err = anyhow!("registry did not start");
        for _ in 0..5 {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{tls_yaml}{auth_yaml}",
                storage.display()
            );
            let cfg_path = dir.path().join("config.yml");
            write_file(&cfg_path, config.as_bytes())?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("registry.log"))?;
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn docker-registry (apt-get install docker-registry)")?;
            let mut child = child;
            let ca = tls.as_ref().map(|t| t.ca_cert.as_path());
            match wait_ready(&mut child, &addr, ca) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        auth: opts.auth.clone(),
                        tls,
                        dir,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("registry.log"))
                        .unwrap_or_default();
                    last_err = e.context(format!("registry log:\n{log}"));
                }
            }
        }
        Err(last_err)
    }

    /// Starts a registry without auth.
    pub fn start_default() -> Result<Self> {
        Self::start(RegistryOpts::default())
    }

    /// "127.0.0.1:PORT".
    /// The registry process (the chaos suite stops it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// "https" for a TLS registry, else "http".
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// "http(s)://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// The CA certificate (PEM) that issued a TLS registry's server certificate; `None`
    /// for a plain-HTTP registry.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// All generated TLS files of a TLS registry.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Credentials the registry was started with.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// "127.0.0.1:PORT/NAME:TAG" for `name_tag` = "NAME:TAG".
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{}", self.addr, name_tag)
    }

    /// The registry's storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// One request with the registry's credentials (if any) added; over TLS, verified
    /// against the registry's CA, for a TLS registry.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        let auth = self.auth.as_ref().map(|(u, p)| basic_auth(u, p));
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        match &self.tls {
            Some(t) => https_request(method, &self.addr, path, &h, body, &t.ca_cert),
            None => http_request(method, &self.addr, path, &h, body),
        }
    }

    /// `GET /v2/NAME/manifests/REFERENCE` with the full Accept list.
    pub fn get_manifest(&self, name: &str, reference: &str) -> Result<HttpResponse> {
        self.request(
            "GET",
            &format!("/v2/{name}/manifests/{reference}"),
            &[("Accept", MANIFEST_ACCEPT)],
            &[],
        )
    }

    /// `GET /v2/NAME/blobs/DIGEST`.
    pub fn get_blob(&self, name: &str, digest: &str) -> Result<HttpResponse> {
        self.request("GET", &format!("/v2/{name}/blobs/{digest}"), &[], &[])
    }

    /// `DELETE /v2/NAME/manifests/DIGEST` (storage.delete is enabled).
    pub fn delete_manifest(&self, name: &str, digest: &str) -> Result<()> {
        let r = self.request(
            "DELETE",
            &format!("/v2/{name}/manifests/{digest}"),
            &[],
            &[],
        )?;
        if r.status != 202 {
            bail!("DELETE manifest {digest}: {} {}", r.status, r.text());
        }
        Ok(())
    }

    /// Uploads one blob (monolithic POST + PUT), skipping it if already present.
    pub fn push_blob(&self, name: &str, digest: &str, data: &[u8]) -> Result<()> {
        let head = self.request("HEAD", &format!("/v2/{name}/blobs/{digest}"), &[], &[])?;
        if head.status == 200 {
            return Ok(());
        }
        let r = self.request("POST", &format!("/v2/{name}/blobs/uploads/"), &[], &[])?;
        if r.status != 202 {
            bail!("start upload of {digest}: {} {}", r.status, r.text());
        }
        let loc = r
            .header("location")
            .ok_or_else(|| anyhow!("upload without Location"))?;
        // Location may be absolute ("http://127.0.0.1:PORT/v2/...").
        let path = match loc.find("/v2/") {
            Some(i) => &loc[i..],
            None => loc,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put_path = format!("{path}{sep}digest={digest}");
        let r = self.request(
            "PUT",
            &put_path,
            &[("Content-Type", "application/octet-stream")],
            data,
        )?;
        if r.status != 201 {
            bail!("upload of {digest}: {} {}", r.status, r.text());
        }
        Ok(())
    }

    /// Uploads manifest bytes under `reference` (a tag or digest).
    pub fn push_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        data: &[u8],
    ) -> Result<()> {
        let r = self.request(
            "PUT",
            &format!("/v2/{name}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            data,
        )?;
        if r.status != 201 {
            bail!("put manifest {name}:{reference}: {} {}", r.status, r.text());
        }
        Ok(())
    }

    fn push_image_manifest(
        &self,
        img: &Image,
        name: &str,
        m: &ManifestDesc,
        reference: &str,
    ) -> Result<()> {
        for l in &m.layers {
            self.push_blob(name, &l.digest, &img.blob(&l.digest)?)?;
        }
        self.push_blob(name, &m.config_digest, &img.blob(&m.config_digest)?)?;
        self.push_manifest(name, reference, &m.media_type, &img.blob(&m.digest)?)
    }

    /// Pushes a fixture byte-for-byte with [`Registry::request`] (blobs, then manifests; for an
    /// index its platform manifests by digest, then the index under the tag). Digests
    /// and media types (OCI or Docker schema2) are served exactly as in the fixture.
    /// `name_tag` is "NAME:TAG" (or just "NAME" for the fixture's tag).
    pub fn push_layout(&self, img: &Image, name_tag: &str) -> Result<()> {
        let (name, tag) = split_name_tag(name_tag, &img.tag);
        if img.is_index() {
            for m in &img.manifests {
                self.push_image_manifest(img, name, m, &m.digest)?;
            }
            self.push_manifest(name, tag, &img.media_type, &img.manifest_bytes()?)
        } else {
            let manifests = img.manifest_descs();
            self.push_image_manifest(img, name, &manifests[0], tag)
        }
    }

    /// Pushes the fixture's OCI layout with `skopeo copy` (`--all` for an index).
    /// Only for OCI fixtures; use [`Registry::push_layout`] for the Docker one.
    pub fn push_with_skopeo(&self, img: &Image, name_tag: &str) -> Result<()> {
        let (name, tag) = split_name_tag(name_tag, &img.tag);
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"]);
        match &self.tls {
            // Verified TLS: the throwaway CA is trusted for this copy only.
            Some(t) => cmd
                .arg("--dest-tls-verify=true")
                .arg("--dest-cert-dir")
                .arg(&t.cert_dir),
            None => cmd.arg("--dest-tls-verify=false"),
        };
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        if img.is_index() {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{}:{}", img.layout_dir.display(), img.tag));
        cmd.arg(format!("docker://{}/{}:{}", self.addr, name, tag));
        run_checked(&mut cmd)
    }
}

/// Splits "name:tag" (a ':' after the last '/'), defaulting the tag.
pub fn split_name_tag<'a>(name_tag: &'a str, default_tag: &'a str) -> (&'a str, &'a str) {
    let slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name_tag[slash..].rfind(':') {
        Some(i) => (&name_tag[..slash + i], &name_tag[slash + i + 1..]),
        None => (name_tag, default_tag),
    }
}

fn wait_ready(child: &mut Child, addr: &str, ca: Option<&Path>) -> Result<()> {
    let mut last = String::new();
    wait_for("docker-registry GET /v2/", Duration::from_secs(30), || {
        if let Some(st) = child.try_wait()? {
            bail!("docker-registry exited early: {st}");
        }
        if std::net::TcpStream::connect(addr).is_err() {
            return Ok(None);
        }
        let r = match ca {
            Some(ca) => https_request("GET", addr, "/v2/", &[], &[], ca),
            None => http_request("GET", addr, "/v2/", &[], &[]),
        };
        match r {
            Ok(r) if r.status == 200 || r.status == 401 => Ok(Some(())),
            Ok(r) => {
                last = format!("{} {}", r.status, r.text());
                Ok(None)
            }
            Err(e) => {
                last = format!("{e:#}");
                Ok(None)
            }
        }
    })
    .with_context(|| format!("last answer: {last}"))
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path helper for tests that want the registry's blob data dir.
pub fn blob_data_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = crate::util::digest_hex(digest);
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};
    use crate::util::sha256_digest;

    fn assert_serves(reg: &Registry, name: &str, reference: &str, img: &Image) {
        let r = reg.get_manifest(name, reference).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some(img.media_type.as_str()));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(img.manifest_digest.as_str())
        );
        assert_eq!(sha256_digest(&r.body), img.manifest_digest);
        for l in &img.layers {
            let b = reg.get_blob(name, &l.digest).unwrap();
            assert_eq!(b.status, 200);
            assert_eq!(sha256_digest(&b.body), l.digest);
        }
    }

    #[test]
    fn split_names() {
        assert_eq!(split_name_tag("busybox:1", "latest"), ("busybox", "1"));
        assert_eq!(split_name_tag("a/b", "latest"), ("a/b", "latest"));
        assert_eq!(split_name_tag("a/b:x", "latest"), ("a/b", "x"));
    }

    #[test]
    fn push_http_and_skopeo() {
        let reg = Registry::start_default().unwrap();
        assert!(reg.addr().starts_with("127.0.0.1:"));
        let bb = fixtures::busybox().unwrap();
        reg.push_layout(bb, "library/busybox:latest").unwrap();
        assert_serves(&reg, "library/busybox", "latest", bb);
        assert_serves(&reg, "library/busybox", &bb.manifest_digest, bb);

        // Range requests on blobs work.
        let l = &bb.layers[0];
        let r = reg
            .request(
                "GET",
                &format!("/v2/library/busybox/blobs/{}", l.digest),
                &[("Range", "bytes=100-")],
                &[],
            )
            .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body.len() as u64, l.size - 100);

        // Docker schema2 is served with Docker media types.
        let dk = fixtures::busybox_docker().unwrap();
        reg.push_layout(dk, "docker/busybox:v2").unwrap();
        assert_serves(&reg, "docker/busybox", "v2", dk);
        assert_eq!(dk.media_type, MT_DOCKER_MANIFEST);

        // Index via HTTP: index under the tag, children by digest.
        let mp = fixtures::multiplatform().unwrap();
        reg.push_layout(mp, "multi:latest").unwrap();
        let r = reg.get_manifest("multi", "latest").unwrap();
        assert_eq!(r.header("content-type"), Some(MT_OCI_INDEX));
        assert_eq!(sha256_digest(&r.body), mp.manifest_digest);
        for m in &mp.manifests {
            let r = reg.get_manifest("multi", &m.digest).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some(MT_OCI_MANIFEST));
        }

        // skopeo keeps the digests (no conversion), for single images and an index.
        let ml = fixtures::multilayer().unwrap();
        reg.push_with_skopeo(ml, "sk/multilayer:1").unwrap();
        assert_serves(&reg, "sk/multilayer", "1", ml);
        reg.push_with_skopeo(mp, "sk/multi:1").unwrap();
        let r = reg.get_manifest("sk/multi", "1").unwrap();
        assert_eq!(sha256_digest(&r.body), mp.manifest_digest);
        let r = reg
            .get_manifest("sk/multi", &mp.manifests[1].digest)
            .unwrap();
        assert_eq!(r.status, 200);

        // Delete works (storage.delete.enabled).
        reg.delete_manifest("sk/multilayer", &ml.manifest_digest)
            .unwrap();
        assert_eq!(reg.get_manifest("sk/multilayer", "1").unwrap().status, 404);

        assert!(blob_data_path(&reg.storage_dir(), &bb.layers[0].digest).exists());
    }

    #[test]
    fn tls_registry() {
        let reg = Registry::start(RegistryOpts::with_tls()).unwrap();
        assert_eq!(reg.scheme(), "https");
        assert_eq!(reg.url(), format!("https://{}", reg.addr()));
        let ca = reg.ca_path().unwrap();
        let files = reg.tls_files().unwrap();
        // The certs dir holds the CA alone (a docker certs.d dir must not hold keys).
        let in_cert_dir: Vec<_> = std::fs::read_dir(&files.cert_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(in_cert_dir, ["ca.crt"]);
        assert!(std::fs::read_to_string(ca)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));

        // Plain HTTP is refused; TLS verified against the CA works.
        let plain = http_request("GET", reg.addr(), "/v2/", &[], &[]).unwrap();
        assert_eq!(plain.status, 400, "{}", plain.text());
        assert_eq!(reg.request("GET", "/v2/", &[], &[]).unwrap().status, 200);

        // Another CA does not vouch for this registry.
        let other = tempfile::tempdir().unwrap();
        let other = generate_tls(other.path(), &["127.0.0.1"]).unwrap();
        let err = https_request("GET", reg.addr(), "/v2/", &[], &[], &other.ca_cert)
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate verify failed"), "{err}");

        // Byte-for-byte pushes over TLS and skopeo with the CA trusted both work.
        let bb = fixtures::busybox().unwrap();
        reg.push_layout(bb, "library/busybox:latest").unwrap();
        assert_serves(&reg, "library/busybox", "latest", bb);
        let dk = fixtures::busybox_docker().unwrap();
        reg.push_layout(dk, "docker/busybox:v2").unwrap();
        assert_serves(&reg, "docker/busybox", "v2", dk);
        let ml = fixtures::multilayer().unwrap();
        reg.push_with_skopeo(ml, "sk/multilayer:1").unwrap();
        assert_serves(&reg, "sk/multilayer", "1", ml);
        let r = reg
            .request(
                "HEAD",
                &format!("/v2/sk/multilayer/blobs/{}", ml.layers[0].digest),
                &[],
                &[],
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }

    #[test]
    fn basic_auth_registry() {
        let reg = Registry::start(RegistryOpts::with_auth("alice", "s3cret")).unwrap();
        let anon = http_request("GET", reg.addr(), "/v2/", &[], &[]).unwrap();
        assert_eq!(anon.status, 401);
        assert!(anon
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic"));
        assert_eq!(reg.request("GET", "/v2/", &[], &[]).unwrap().status, 200);
        let bb = fixtures::busybox().unwrap();
        reg.push_with_skopeo(bb, "busybox:latest").unwrap();
        assert_serves(&reg, "busybox", "latest", bb);
        let wrong = http_request(
            "GET",
            reg.addr(),
            "/v2/busybox/manifests/latest",
            &[
                ("Accept", MANIFEST_ACCEPT),
                ("Authorization", &basic_auth("alice", "nope")),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(wrong.status, 401);
    }
}

//! The Debian package, as an operator uses it: `packaging/build-deb.sh` builds
//! it (from this build's binaries), `dpkg -i` installs it, `systemd-analyze
//! verify` accepts the unit, the installed berthd serves with the packaged
//! config and tells a `NOTIFY_SOCKET` READY=1 once its socket serves and
//! STOPPING=1 on SIGTERM, and `dpkg -r` / `--purge` remove what the package
//! installed and leave `/var/lib/berth` alone.
//!
//! It installs into the host's /usr, so it refuses to run where a `berth`
//! package or a `/usr/bin/berthd` is already there.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_sysutil::testing::precondition_missing;
use integration::bench::which;
use integration::daemon;

const INSTALLED: &[&str] = &[
    "/usr/bin/berthd",
    "/usr/bin/berth-shim",
    "/usr/bin/berthctl",
    "/lib/systemd/system/berthd.service",
    "/etc/berth/config.toml",
    "/etc/cni/net.d/10-berth.conflist",
    "/usr/share/man/man1/berthd.1.gz",
    "/usr/share/man/man1/berthctl-images-pull.1.gz",
    "/usr/share/bash-completion/completions/berthctl",
    "/usr/share/doc/berth/copyright",
];
const CONFFILES: &[&str] = &["/etc/berth/config.toml", "/etc/cni/net.d/10-berth.conflist"];

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "berth"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package if the test installed it and failed on the way.
struct Purge(bool);

impl Drop for Purge {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("dpkg").args(["--purge", "berth"]).status();
        }
    }
}

/// Waits for one datagram on the notify socket.
fn next_notification(sock: &UnixDatagram, within: Duration) -> Result<String> {
    sock.set_read_timeout(Some(within))?;
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .context("no notification from berthd in time")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A listing of what is under a directory (paths and sizes), to prove it untouched.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), if md.is_file() { md.len() } else { 0 }));
        }
    }
    out.sort();
    out
}

#[test]
fn deb_installs_serves_notifies_and_removes_cleanly() -> Result<()> {
    const TEST: &str = "deb_installs_serves_notifies_and_removes_cleanly";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        precondition_missing(TEST, "needs root (dpkg -i)");
        return Ok(());
    }
    for tool in ["dpkg-deb", "strip", "systemd-analyze"] {
        if which(tool).is_none() {
            precondition_missing(TEST, &format!("{tool} is not installed"));
            return Ok(());
        }
    }
    if package_installed() || Path::new("/usr/bin/berthd").exists() {
        precondition_missing(
            TEST,
            "a berth package or /usr/bin/berthd is installed on this host; the test would replace it",
        );
        return Ok(());
    }

    let tmp = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-deb.sh");
    let bins = daemon::bin_dir()?;
    let out = tmp.path().join("deb");
    let deb = run(Command::new(&script)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(&out)
        .args(["--compression", "gzip"]))?;
    let deb = PathBuf::from(deb.trim());
    ensure!(
        deb.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("berth_")
                && n.to_string_lossy().ends_with("_amd64.deb")),
        "unexpected package name {}",
        deb.display()
    );
    let package = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"))?;
    ensure!(package.trim() == "berth", "package name {package:?}");

    // /var/lib/berth as it is now (made if absent, with a marker of ours).
    let var_lib = Path::new("/var/lib/berth");
    let made_var_lib = !var_lib.exists();
    std::fs::create_dir_all(var_lib)?;
    let marker = var_lib.join(format!("deb-test-marker-{}", std::process::id()));
    std::fs::write(&marker, b"kept")?;
    let before = listing(var_lib);

    let mut purge = Purge(true);
    run(Command::new("dpkg").arg("-i").arg(&deb))?;
    ensure!(package_installed(), "dpkg -i did not leave berth installed");
    for f in INSTALLED {
        ensure!(Path::new(f).is_file(), "{f} not installed");
    }
    let listed = run(Command::new("dpkg").args(["-L", "berth"]))?;
    ensure!(listed.contains("/usr/bin/berthd"), "dpkg -L: {listed}");
    let conf = std::fs::read_to_string("/var/lib/dpkg/info/berth.conffiles")?;
    for f in CONFFILES {
        ensure!(
            conf.lines().any(|l| l == *f),
            "{f} is not a conffile: {conf}"
        );
    }

    // The unit as systemd reads it (the man page check where man exists).
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if which("man").is_none() {
        verify.arg("--man=no");
    }
    run(verify.arg("/lib/systemd/system/berthd.service"))?;
    let unit = std::fs::read_to_string("/lib/systemd/system/berthd.service")?;
    for line in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "OOMScoreAdjust=-999",
        "LimitNOFILE=",
        "Restart=",
    ] {
        ensure!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }

    // The installed berthd with the packaged config; only its root and
    // state move to a temp dir so that it never meets a berthd of the host.
    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    let state = tmp.path().join("state");
    let log = std::fs::File::create(tmp.path().join("berthd.log"))?;
    let mut berthd = Command::new("/usr/bin/berthd")
        .args(["--config", "/etc/berth/config.toml"])
        .arg("--root")
        .arg(tmp.path().join("root"))
        .arg("--state")
        .arg(&state)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let served = (|| -> Result<()> {
        let ready = next_notification(&notify, Duration::from_secs(60))?;
        ensure!(
            ready.lines().any(|l| l == "READY=1"),
            "first notification: {ready:?}"
        );
        let socket = state.join("berth.sock");
        ensure!(
            ready.contains(&format!("STATUS=serving on {}", socket.display())),
            "{ready:?}"
        );
        // READY means the socket serves: no retry here.
        let version = run(Command::new("/usr/bin/berthctl")
            .arg("--address")
            .arg(&socket)
            .arg("version"))?;
        ensure!(
            version.contains("Server:")
                && version.contains(&tmp.path().join("root").display().to_string()),
            "berthctl version: {version}"
        );
        integration::cri::kill(berthd.id() as i32, libc::SIGTERM);
        let stopping = next_notification(&notify, Duration::from_secs(30))?;
        ensure!(stopping == "STOPPING=1", "after SIGTERM: {stopping:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = berthd.try_wait()? {
                ensure!(status.success(), "berthd exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("berthd did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    if served.is_err() {
        let _ = berthd.kill();
        let _ = berthd.wait();
    }
    served.with_context(|| {
        format!(
            "berthd log:\n{}",
            daemon::tail(
                &std::fs::read_to_string(tmp.path().join("berthd.log")).unwrap_or_default(),
                40
            )
        )
    })?;

    // Removal: the package's files go, conffiles stay until purge, and
    // /var/lib/berth is as it was.
    run(Command::new("dpkg").args(["-r", "berth"]))?;
    for f in INSTALLED.iter().filter(|f| !CONFFILES.contains(f)) {
        ensure!(!Path::new(f).exists(), "{f} left after dpkg -r");
    }
    for f in CONFFILES {
        ensure!(
            Path::new(f).exists(),
            "conffile {f} removed by dpkg -r (only purge may)"
        );
    }
    ensure!(listing(var_lib) == before, "dpkg -r changed /var/lib/berth");
    run(Command::new("dpkg").args(["--purge", "berth"]))?;
    purge.0 = false;
    for f in CONFFILES {
        ensure!(!Path::new(f).exists(), "conffile {f} left after purge");
    }
    ensure!(
        listing(var_lib) == before,
        "dpkg --purge changed /var/lib/berth"
    );

    std::fs::remove_file(&marker)?;
    if made_var_lib {
        std::fs::remove_dir(var_lib)?;
    }
    Ok(())
}

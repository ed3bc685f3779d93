//! The per-pod files every container of a pod bind-mounts: `/etc/resolv.conf`,
//! `/etc/hostname`, `/etc/hosts`, and the pod's `/dev/shm` tmpfs. Written once
//! at RunPodSandbox into the pod's directory, like containerd's CRI plugin.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_api::runtime::v1 as cri;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Docker's and containerd's default `/dev/shm` size.
const SHM_SIZE: &str = "65536k";

/// `/etc/hosts` for a pod with its own network namespace. The
/// `<podIP> <hostname>` line is kubelet's job (it manages /etc/hosts for
/// such pods); this is the baseline Docker and containerd write.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// Where a pod's files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
    pub hosts: PathBuf,
}

/// Writes `<pod_dir>/{resolv.conf,hostname,hosts}` (creating `pod_dir`).
///
/// resolv.conf comes from the CRI `DnsConfig` when it sets anything, else it
/// is a copy of `host_resolv` (kubelet already put the host's servers in the
/// DnsConfig when its policy wants them; an empty one means "as the host").
/// hosts is a copy of `host_hosts` for host-network pods, else a default.
/// DNS values are validated first so a CRI caller cannot inject lines.
pub fn write_pod_files(
    pod_dir: &Path,
    hostname: &str,
    dns: Option<&cri::DnsConfig>,
    host_network: bool,
    host_resolv: &Path,
    host_hosts: &Path,
) -> io::Result<PodFiles> {
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("invalid pod hostname {hostname:?}")));
    }
    let resolv = match dns
        .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    {
        Some(d) => resolv_conf_from(d)?,
        None => read_or_empty(host_resolv)?,
    };
    let hosts = if host_network {
        read_or_empty(host_hosts)?
    } else {
        DEFAULT_HOSTS.as_bytes().to_vec()
    };
    std::fs::create_dir_all(pod_dir)?;
    let files = PodFiles {
        resolv_conf: pod_dir.join("resolv.conf"),
        hostname: pod_dir.join("hostname"),
        hosts: pod_dir.join("hosts"),
    };
    write_atomic(&files.resolv_conf, &resolv)?;
    write_atomic(&files.hostname, format!("{hostname}\n").as_bytes())?;
    write_atomic(&files.hosts, &hosts)?;
    Ok(files)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The host's file, or nothing when the host has none (a host without
/// /etc/resolv.conf has no DNS; pods then get none either).
fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "host file missing; pod gets an empty one");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// A nameserver must be an IP address (IPv6 may carry a `%zone`, which glibc
/// accepts); anything else could smuggle text into resolv.conf.
fn check_server(s: &str) -> io::Result<()> {
    let ok = match s.split_once('%') {
        Some((addr, zone)) => {
            matches!(addr.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
                && !zone.is_empty()
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        None => s.parse::<IpAddr>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("DNS server {s:?} is not an IP address")))
    }
}

/// Searches and options are joined with spaces on one line each, so any
/// whitespace or control character (newline above all) would change the
/// file's meaning.
fn check_word(kind: &str, s: &str) -> io::Result<()> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "DNS {kind} {s:?} is empty or contains whitespace"
        )));
    }
    Ok(())
}

fn resolv_conf_from(dns: &cri::DnsConfig) -> io::Result<Vec<u8>> {
    let mut out = String::new();
    for s in &dns.servers {
        check_server(s)?;
        out.push_str(&format!("nameserver {s}\n"));
    }
    for s in &dns.searches {
        check_word("search", s)?;
    }
    for o in &dns.options {
        check_word("option", o)?;
    }
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out.into_bytes())
}

use berth_sysutil::{is_mount_point, write_atomic};

/// Mounts the pod's `/dev/shm` tmpfs at `<pod_dir>/shm` (mode 1777,
/// size=65536k, nosuid/nodev/noexec as containerd does). Mounting an already
/// mounted one is a no-op, so a restarted daemon can call it again.
pub fn mount_shm(pod_dir: &Path) -> io::Result<PathBuf> {
    let shm = pod_dir.join("shm");
    std::fs::create_dir_all(&shm)?;
    if is_mount_point(&shm) {
        return Ok(shm);
    }
    let data = format!("mode=1777,size={SHM_SIZE}");
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(io::Error::from)?;
    Ok(shm)
}

/// Unmounts and removes `<pod_dir>/shm`; already gone is fine.
pub fn unmount_shm(pod_dir: &Path) -> io::Result<()> {
    let shm = pod_dir.join("shm");
    // Loop: should the tmpfs have been mounted twice (e.g. a crash between
    // mount and record), every layer goes. Bounded so a failure cannot spin.
    for _ in 0..16 {
        match umount2(&shm, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point; ENOENT: no directory.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => return Err(e.into()),
        }
    }
    match std::fs::remove_dir(&shm) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    struct Host {
        _tmp: tempfile::TempDir,
        resolv: PathBuf,
        hosts: PathBuf,
        pod: PathBuf,
    }

    fn host() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let resolv = tmp.path().join("host-resolv.conf");
        let hosts = tmp.path().join("host-hosts");
        fs::write(&resolv, "nameserver 192.0.2.53\nsearch host.example\n").unwrap();
        fs::write(&hosts, "127.0.0.1 localhost\n10.1.2.3 node1\n").unwrap();
        let pod = tmp.path().join("pods/abc");
        Host {
            _tmp: tmp,
            resolv,
            hosts,
            pod,
        }
    }

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> cri::DnsConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        cri::DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn from_dns_config() {
        let h = host();
        let d = dns(
            &["10.96.0.10", "fd00::a"],
            &["ns.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "edns0"],
        );
        let f = write_pod_files(&h.pod, "web-0", Some(&d), false, &h.resolv, &h.hosts).unwrap();
        assert_eq!(
            fs::read_to_string(&f.resolv_conf).unwrap(),
            "nameserver 10.96.0.10\nnameserver fd00::a\n\
             search ns.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
        );
        assert_eq!(fs::read_to_string(&f.hostname).unwrap(), "web-0\n");
        let hosts = fs::read_to_string(&f.hosts).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost"));
        for p in [&f.resolv_conf, &f.hostname, &f.hosts] {
            assert_eq!(mode(p), 0o644, "{}", p.display());
        }
        // No temp files left over.
        let names: Vec<_> = fs::read_dir(&h.pod)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn only_some_dns_fields() {
        let h = host();
        let d = dns(&[], &["a.example"], &[]);
        let f = write_pod_files(&h.pod, "p", Some(&d), false, &h.resolv, &h.hosts).unwrap();
        assert_eq!(
            fs::read_to_string(&f.resolv_conf).unwrap(),
            "search a.example\n"
        );
    }

    #[test]
    fn host_copies_when_no_dns_config_and_host_network() {
        let h = host();
        for d in [None, Some(dns(&[], &[], &[]))] {
            let f =
                write_pod_files(&h.pod, "node1", d.as_ref(), true, &h.resolv, &h.hosts).unwrap();
            assert_eq!(
                fs::read(&f.resolv_conf).unwrap(),
                fs::read(&h.resolv).unwrap()
            );
            assert_eq!(fs::read(&f.hosts).unwrap(), fs::read(&h.hosts).unwrap());
        }
        // Rewriting replaces (atomically) what was there.
        let d = dns(&["1.1.1.1"], &[], &[]);
        let f = write_pod_files(&h.pod, "n2", Some(&d), true, &h.resolv, &h.hosts).unwrap();
        assert_eq!(
            fs::read_to_string(&f.resolv_conf).unwrap(),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(fs::read_to_string(&f.hostname).unwrap(), "n2\n");
    }

    #[test]
    fn missing_host_files_give_empty_ones() {
        let h = host();
        let f = write_pod_files(
            &h.pod,
            "p",
            None,
            true,
            &h.pod.join("nope1"),
            &h.pod.join("nope2"),
        )
        .unwrap();
        assert_eq!(fs::read(&f.resolv_conf).unwrap(), b"");
        assert_eq!(fs::read(&f.hosts).unwrap(), b"");
    }

    #[test]
    fn injection_is_rejected() {
        let h = host();
        let cases = [
            dns(&["10.0.0.1\nnameserver 6.6.6.6"], &[], &[]),
            dns(&["evil.example"], &[], &[]),
            dns(&["10.0.0.1 "], &[], &[]),
            dns(&["fe80::1%eth0\n"], &[], &[]),
            dns(&[], &["a.example\nnameserver 6.6.6.6"], &[]),
            dns(&[], &["a b"], &[]),
            dns(&[], &["a\tb"], &[]),
            dns(&[], &[""], &[]),
            dns(&[], &[], &["ndots:5\nnameserver 6.6.6.6"]),
            dns(&[], &[], &["ndots:5\r"]),
            dns(&[], &[], &["x\0"]),
        ];
        for d in &cases {
            let err =
                write_pod_files(&h.pod, "p", Some(d), false, &h.resolv, &h.hosts).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{d:?}");
            let bad = d
                .servers
                .iter()
                .chain(&d.searches)
                .chain(&d.options)
                .next()
                .unwrap();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            // Nothing half-written.
            assert!(!h.pod.join("resolv.conf").exists());
        }
        let err = write_pod_files(&h.pod, "a\nb", None, false, &h.resolv, &h.hosts).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A zoned IPv6 server is fine.
        let d = dns(&["fe80::1%eth0"], &[], &[]);
        write_pod_files(&h.pod, "p", Some(&d), false, &h.resolv, &h.hosts).unwrap();
    }

    #[test]
    fn unmount_shm_of_nothing_is_ok() {
        let tmp = tempfile::tempdir().unwrap();
        unmount_shm(tmp.path()).unwrap();
        unmount_shm(&tmp.path().join("missing")).unwrap();
    }

    #[test]
    fn shm_mount() {
        if !nix::unistd::geteuid().is_root() {
            berth_sysutil::testing::precondition_missing("shm_mount", "needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let shm = mount_shm(tmp.path()).unwrap();
        assert_eq!(shm, tmp.path().join("shm"));
        // Again: no second layer.
        mount_shm(tmp.path()).unwrap();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(shm.to_str().unwrap()))
            .collect();
        assert_eq!(ours.len(), 1, "{ours:?}");
        let line = ours[0];
        assert!(line.contains(" - tmpfs shm "), "{line}");
        assert!(line.contains("size=65536k"), "{line}");
        assert!(line.contains("nosuid") && line.contains("nodev") && line.contains("noexec"));
        assert_eq!(mode(&shm), 0o1777);
        let st = nix::sys::statfs::statfs(&shm).unwrap();
        assert_eq!(st.blocks() * st.block_size() as u64, 65536 * 1024);

        unmount_shm(tmp.path()).unwrap();
        assert!(!shm.exists());
        unmount_shm(tmp.path()).unwrap();
    }
}

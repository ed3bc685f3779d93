//! The per-test CNI network and the host state it leaves (bridge ports,
//! portmap iptables rules).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::leaks::mounts_under;
use super::{next_seq, CNI_PLUGINS};

/// A per-test CNI network: its own bridge name, /24 subnet, conf dir,
/// host-local data dir and netns dir, all in a temp dir. On drop the netns
/// pins left below the netns dir are unmounted, the netns dir itself too, and
/// the bridge is deleted.
pub struct TestNet {
    dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    /// The first three octets of the subnet, e.g. "10.123.4".
    pub prefix: String,
    pub conf_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// berthd's `[cni] plugin_timeout_secs` for this network.
    pub plugin_timeout_secs: u64,
}

impl TestNet {
    /// A network with a bridge + host-local + portmap conflist.
    pub fn new() -> Result<Self> {
        let n = Self::empty()?;
        n.write_conflist(&n.bridge_conflist())?;
        Ok(n)
    }

    /// The dirs and names, with an empty conf dir (no network config).
    pub fn empty() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cri-net-")
            .tempdir()?;
        let pid = std::process::id();
        let seq = next_seq();
        // IFNAMSIZ is 16: "bc" + 5 digits + "x" + up to 3 digits.
        let bridge = format!("bc{}x{}", pid % 100_000, seq % 1000);
        let prefix = pick_subnet(pid, seq)?;
        let conf_dir = dir.path().join("net.d");
        let netns_dir = dir.path().join("netns");
        std::fs::create_dir_all(&conf_dir)?;
        Ok(TestNet {
            name: format!("berthcri{}x{}", pid, seq),
            bridge,
            prefix,
            conf_dir,
            netns_dir,
            bin_dirs: vec![PathBuf::from(CNI_PLUGINS)],
            plugin_timeout_secs: 30,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host-local IPAM data dir (leases live in `<ipam_dir>/<name>/`).
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The gateway address on the bridge.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge (gateway, no masquerade) + host-local on this net's subnet +
    /// portmap.
    pub fn bridge_conflist(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{}.0/24", self.prefix)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    /// Writes `conflist` as the only config in the conf dir.
    pub fn write_conflist(&self, conflist: &Value) -> Result<()> {
        for e in std::fs::read_dir(&self.conf_dir)?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        std::fs::write(
            self.conf_dir.join("10-berth-test.conflist"),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        Ok(())
    }

    /// Adds a directory of stand-in plugins before the real ones.
    pub fn prepend_bin_dir(&mut self, dir: PathBuf) {
        self.bin_dirs.insert(0, dir);
    }

    /// Writes an executable stand-in CNI plugin `name` into `<dir>/bin` (added
    /// first to the bin dirs) that fails ADD with a CNI error whose message is
    /// `msg`, and succeeds DEL, CHECK and VERSION.
    pub fn add_failing_plugin(&mut self, name: &str, msg: &str) -> Result<PathBuf> {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        let script = format!(
            r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD)
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"{msg}","details":"stand-in plugin"}}'
  exit 1;;
VERSION)
  echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}}'
  exit 0;;
*)
  exit 0;;
esac
"#
        );
        let p = bin.join(name);
        std::fs::write(&p, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        if !self.bin_dirs.contains(&bin) {
            self.prepend_bin_dir(bin.clone());
        }
        Ok(p)
    }

    /// The `[cni]` section of berthd's config for this network.
    pub fn config_toml(&self) -> String {
        let bins: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|b| format!("{:?}", b.display().to_string()))
            .collect();
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{}]\nnetns_dir = {:?}\nplugin_timeout_secs = {}\n",
            self.conf_dir.display().to_string(),
            bins.join(", "),
            self.netns_dir.display().to_string(),
            self.plugin_timeout_secs,
        )
    }

    /// Host-side interfaces enslaved to this net's bridge (the pods' veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        bridge_ports(&self.bridge)
    }

    /// Entries (pins) in the netns dir plus mounts below it.
    pub fn netns_pins(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.netns_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for m in mounts_under(&self.netns_dir) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// host-local leases still held in this network.
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(&self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for m in mounts_under(&self.netns_dir) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Ok(rd) = std::fs::read_dir(&self.netns_dir) {
            for e in rd.flatten() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.netns_dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        remove_portmap_rules(&self.name);
    }
}

/// Removes the portmap plugin's NAT rules for the CNI network `net_name`
/// (left behind when a test fails before its pods are removed): each jump
/// from CNI-HOSTPORT-DNAT whose comment names the network, and the
/// per-pod CNI-DN-* chain it jumps to.
pub fn remove_portmap_rules(net_name: &str) {
    let needle = format!("dnat name: \"{net_name}\"");
    // Rule numbers shift after each delete: list again every time.
    for _ in 0..64 {
        let Ok(out) = Command::new("iptables")
            .args([
                "-t",
                "nat",
                "-L",
                "CNI-HOSTPORT-DNAT",
                "-n",
                "--line-numbers",
            ])
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some((num, target)) = text.lines().find(|l| l.contains(&needle)).and_then(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        }) else {
            return;
        };
        let deleted = Command::new("iptables")
            .args(["-t", "nat", "-D", "CNI-HOSTPORT-DNAT", &num])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if target.starts_with("CNI-DN-") {
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, &target])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !deleted {
            return;
        }
    }
}

/// A 10.X.Y.0/24 subnet derived from the pid and a sequence number that no
/// address or route on the host uses yet (avoiding 10.88 and 10.99, which
/// other runtimes and tests use).
fn pick_subnet(pid: u32, seq: u32) -> Result<String> {
    let used = {
        let a = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
        let r = Command::new("ip").args(["-4", "route"]).output()?;
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&r.stdout)
        )
    };
    for k in 0..200u32 {
        let x = 100 + (pid + k / 50) % 150;
        let y = 1 + (seq * 7 + k) % 250;
        let prefix = format!("10.{x}.{y}");
        if !used.contains(&format!("{prefix}.")) {
            return Ok(prefix);
        }
    }
    bail!("no free 10.x.y.0/24 subnet found")
}

/// Host-side interfaces enslaved to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

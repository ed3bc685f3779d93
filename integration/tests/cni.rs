//! Pod networking with the real CNI plugins from /usr/lib/cni (needs root):
//! berthd's network module pins a namespace, runs bridge + host-local +
//! portmap ADD in it, the pod answers a ping and a mapped port, DEL (twice)
//! and the namespace removal leave nothing behind. A conflist naming an
//! unknown plugin fails with an error naming it and leaks no namespace.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_network::{NetworkError, PodNetworkOptions, PodNetworks, PodRef, PortMapping};
use serde_json::json;

const BRIDGE: &str = "berthtest0";

/// These tests change the host's links, routes and iptables (nft backend),
/// which plugins running at the same time can trip over: run them one at a
/// time.
async fn host_network_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
const PLUGINS: &str = "/usr/lib/cni";
const HOST_PORT: u16 = 18123;
const POD_PORT: u16 = 8080;

/// Removes the test bridge and unmounts the netns dir however the test ends.
struct Cleanup {
    netns_dir: PathBuf,
    bridge: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", BRIDGE])
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(rd) = std::fs::read_dir(&self.netns_dir) {
            for e in rd.flatten() {
                let _ = Command::new("umount").arg("-l").arg(e.path()).status();
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.netns_dir)
            .stderr(Stdio::null())
            .status();
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn networks(tmp: &Path, conflist: serde_json::Value) -> PodNetworks {
    let conf = tmp.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-test.conflist"), conflist.to_string()).unwrap();
    PodNetworks::new(
        conf,
        vec![PathBuf::from(PLUGINS), PathBuf::from("/nonexistent/cni")],
        tmp.join("netns"),
        tmp.join("cni"),
        Duration::from_secs(30),
    )
}

fn pod(id: &str) -> PodRef {
    PodRef {
        sandbox_id: id.into(),
        name: "web".into(),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_pod_gets_ip_ping_port_mapping_and_clean_del() {
    let _host = host_network_lock().await;
    remove_stale_port_mappings();
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        netns_dir: tmp.path().join("netns"),
        bridge: true,
    };
    let nets = networks(
        tmp.path(),
        json!({
            "cniVersion": "1.0.0",
            "name": "berthtest",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.99.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": tmp.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }),
    );
    let id = unique("cnitest");
    let p = pod(&id);
    let opts = PodNetworkOptions {
        port_mappings: vec![PortMapping {
            host_port: HOST_PORT,
            container_port: POD_PORT,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
        ..Default::default()
    };
    let net = nets.setup(&p, &opts).await.expect("network setup");
    let netns_path = net.netns.path().to_path_buf();
    assert_eq!(netns_path, tmp.path().join("netns").join(&id));
    assert!(netns_path.exists());
    assert_eq!(mounts_under(&tmp.path().join("netns")).len(), 1);

    // One IPv4 address in the range, on the pod's eth0.
    assert_eq!(net.ips.len(), 1, "{:?}", net.result);
    let ip = match net.ips[0] {
        IpAddr::V4(v4) => v4,
        other => panic!("unexpected pod IP {other}"),
    };
    assert_eq!(ip.octets()[..3], [10, 99, 0], "{ip}");
    assert_ne!(ip, Ipv4Addr::new(10, 99, 0, 1));
    assert!(net.result.interfaces.iter().any(|i| i.name == "eth0"));
    assert!(nets.cni().cached_result(&id, "eth0").unwrap().is_some());
    let ipam = tmp.path().join("ipam").join("berthtest");
    assert!(
        ipam.join(ip.to_string()).exists(),
        "host-local lease for {ip} in {}",
        ipam.display()
    );

    // Inside the namespace, eth0 carries the address.
    let addrs = net
        .netns
        .run(|| {
            Command::new("busybox")
                .args(["ip", "addr", "show", "eth0"])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");

    // The host reaches the pod.
    let ping = Command::new("busybox")
        .args(["ping", "-c3", "-W2", &ip.to_string()])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A server in the pod answers through the port mapping. A socket belongs
    // to the namespace it was created in, so bind it there and serve it from
    // any thread.
    let listener = net
        .netns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", POD_PORT)))
        .await
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = std::io::Write::write_all(&mut conn, b"hello-from-pod\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let direct = read_from((IpAddr::V4(ip), POD_PORT));
    let host_ip = Ipv4Addr::LOCALHOST;
    let mapped = read_from((IpAddr::V4(host_ip), HOST_PORT));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    assert_eq!(
        direct.as_deref(),
        Ok("hello-from-pod\n"),
        "pod IP {ip}:{POD_PORT}"
    );
    assert_eq!(
        mapped.as_deref(),
        Ok("hello-from-pod\n"),
        "{host_ip}:{HOST_PORT} -> pod port {POD_PORT}"
    );

    // DEL, then DEL again: both succeed; nothing is left.
    nets.teardown(&p, &netns_path)
        .await
        .expect("first teardown");
    assert!(!netns_path.exists());
    assert!(mounts_under(&tmp.path().join("netns")).is_empty());
    assert!(nets.cni().cached_result(&id, "eth0").unwrap().is_none());
    nets.teardown(&p, &netns_path)
        .await
        .expect("second teardown is a no-op");
    let leased: Vec<_> = std::fs::read_dir(&ipam)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(leased.is_empty(), "IPs still leased: {leased:?}");
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains(&format!("--dport {HOST_PORT}")),
        "port mapping left in iptables:\n{nat}"
    );
    let ping = Command::new("busybox")
        .args(["ping", "-c1", "-W1", &ip.to_string()])
        .output()
        .unwrap();
    assert!(!ping.status.success(), "{ip} still answers after DEL");
}

/// Connects and reads until EOF or "\n", retrying while the server starts.
fn read_from(addr: (IpAddr, u16)) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            loop {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.ends_with(b"\n") {
                    break;
                }
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })();
        match attempt {
            Ok(s) if !s.is_empty() => return Ok(s),
            Ok(_) if Instant::now() >= deadline => return Err("empty reply".into()),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugin_fails_with_its_name_and_leaks_nothing() {
    let _host = host_network_lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        netns_dir: tmp.path().join("netns"),
        bridge: false,
    };
    let nets = networks(
        tmp.path(),
        json!({
            "cniVersion": "1.0.0",
            "name": "broken",
            "plugins": [{"type": "berth-no-such-plugin"}]
        }),
    );
    let id = unique("cnibroken");
    let err = nets
        .setup(&pod(&id), &PodNetworkOptions::default())
        .await
        .expect_err("setup with an unknown plugin");
    let msg = err.to_string();
    assert!(
        matches!(err, NetworkError::Cni(_)),
        "cleanup should succeed: {msg}"
    );
    assert!(msg.contains("berth-no-such-plugin"), "{msg}");
    assert!(msg.contains(PLUGINS), "{msg}");
    assert!(!tmp.path().join("netns").join(&id).exists());
    assert!(mounts_under(&tmp.path().join("netns")).is_empty());
    assert!(nets.cni().cached_result(&id, "eth0").unwrap().is_none());
}

/// A chain whose second plugin is missing: the bridge plugin that did run is
/// DELeted again (its IP released), and no namespace is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_mid_chain_is_rolled_back() {
    let _host = host_network_lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        netns_dir: tmp.path().join("netns"),
        bridge: true,
    };
    let nets = networks(
        tmp.path(),
        json!({
            "cniVersion": "1.0.0",
            "name": "halfway",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "berthtest1",
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.99.1.0/24"}]],
                        "dataDir": tmp.path().join("ipam"),
                    }
                },
                {"type": "berth-missing-meta"}
            ]
        }),
    );
    let id = unique("cnihalf");
    let err = nets
        .setup(&pod(&id), &PodNetworkOptions::default())
        .await
        .expect_err("setup with a missing second plugin");
    let _ = Command::new("ip")
        .args(["link", "del", "berthtest1"])
        .stderr(Stdio::null())
        .status();
    let msg = err.to_string();
    assert!(matches!(err, NetworkError::Cni(_)), "{msg}");
    assert!(msg.contains("berth-missing-meta"), "{msg}");
    assert!(!tmp.path().join("netns").join(&id).exists());
    assert!(mounts_under(&tmp.path().join("netns")).is_empty());
    let leased: Vec<_> = std::fs::read_dir(tmp.path().join("ipam").join("halfway"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(leased.is_empty(), "IPs still leased: {leased:?}");
}

/// A run that died before its DEL leaves portmap's DNAT chain for this test's
/// network behind; remove such leftovers so they cannot shadow this run.
fn remove_stale_port_mappings() {
    let Ok(out) = Command::new("iptables-save").args(["-t", "nat"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        if !(line.starts_with("-A CNI-HOSTPORT-DNAT")
            && line.contains("dnat name: \\\"berthtest\\\""))
        {
            continue;
        }
        let Some(chain) = line.split(" -j ").nth(1).map(str::trim) else {
            continue;
        };
        // Re-issue the rule as a delete; the comment needs no shell quoting here.
        let rule: Vec<String> = shell_words(&line[3..]);
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D"])
            .args(&rule)
            .status();
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-F", chain])
            .status();
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-X", chain])
            .status();
    }
}

/// Splits an iptables-save rule into arguments, honouring double quotes and
/// backslash escapes.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => in_quotes = !in_quotes,
            ' ' if !in_quotes => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

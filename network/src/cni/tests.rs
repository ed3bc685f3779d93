use std::net::IpAddr;
use std::path::Path;

use serde_json::json;

use super::config::build_conf;
use super::*;

fn list() -> NetworkConfigList {
    NetworkConfigList::from_conflist(
        json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "plugins": [
                {"type": "bridge", "bridge": "b0"},
                {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
            ]
        })
        .to_string()
        .as_bytes(),
        Path::new("x.conflist"),
    )
    .unwrap()
}

#[test]
fn injects_name_version_prev_and_capabilities() {
    let l = list();
    let mut rt = RuntimeConf::default();
    rt.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    rt.capability_args
        .insert("bandwidth".into(), json!({"ingressRate": 1}));
    let c0 = build_conf(&l, &l.plugins[0], None, &rt);
    assert_eq!(c0["name"], "net");
    assert_eq!(c0["cniVersion"], "1.0.0");
    assert!(c0.get("runtimeConfig").is_none());
    assert!(c0.get("prevResult").is_none());
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let c1 = build_conf(&l, &l.plugins[1], Some(&prev), &rt);
    assert_eq!(c1["prevResult"], prev);
    assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(c1["runtimeConfig"].get("bandwidth").is_none());
}

#[test]
fn conf_files_load_in_lexical_order_and_single_confs_are_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        NetworkConfigList::load_first(dir.path()),
        Err(CniError::NoConfig(_))
    ));
    std::fs::write(dir.path().join("README"), "not a config").unwrap();
    std::fs::write(
        dir.path().join("20-b.conflist"),
        json!({"cniVersion": "0.4.0", "name": "b", "plugins": [{"type": "loopback"}]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-a.conf"),
        json!({"cniVersion": "0.3.1", "name": "a", "type": "bridge"}).to_string(),
    )
    .unwrap();
    let l = NetworkConfigList::load_first(dir.path()).unwrap();
    assert_eq!(l.name, "a");
    assert_eq!(l.cni_version, "0.3.1");
    assert_eq!(l.plugins.len(), 1);
    assert_eq!(l.plugins[0]["type"], "bridge");
    std::fs::remove_file(dir.path().join("10-a.conf")).unwrap();
    let l = NetworkConfigList::load_first(dir.path()).unwrap();
    assert_eq!(l.name, "b");
}

#[test]
fn bad_configs_are_rejected() {
    let p = Path::new("bad.conflist");
    for bad in [
        json!({"name": "x", "plugins": []}),
        json!({"plugins": [{"type": "bridge"}]}),
        json!({"name": "x", "plugins": [{"bridge": "b"}]}),
        json!({"name": "x", "plugins": [{"type": "../bin/sh"}]}),
    ] {
        let err = NetworkConfigList::from_conflist(bad.to_string().as_bytes(), p);
        assert!(
            matches!(err, Err(CniError::InvalidConfig { .. })),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn results_parse_and_give_pod_ips() {
    let r = CniResult::parse(json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"address": "10.88.0.1/16", "interface": 0},
            {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
            {"address": "fd00::5/64", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.0.0.10"]}
    }))
    .unwrap();
    assert_eq!(
        r.pod_ips(),
        vec![
            "10.88.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(r.routes[0].gw.as_deref(), Some("10.88.0.1"));
    assert_eq!(r.dns.nameservers, vec!["10.0.0.10"]);

    let old =
        CniResult::parse(json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/24"}})).unwrap();
    assert_eq!(old.pod_ips(), vec!["10.1.0.2".parse::<IpAddr>().unwrap()]);
}

#[test]
fn versions_and_ids() {
    assert!(supports_prev_result("1.0.0"));
    assert!(supports_prev_result("0.4.0"));
    assert!(!supports_prev_result("0.3.1"));
    assert!(check_container_id("abc-123_x.y").is_ok());
    assert!(check_container_id("../x").is_err());
    assert!(check_container_id("").is_err());
}

/// A fake plugin (a shell script) shows the env, stdin and error handling.
#[tokio::test]
async fn plugin_errors_name_the_plugin_and_code() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("failer");
    std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\"}'\nexit 1\n",
        )
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cni = Cni::new(
        vec![bin.clone()],
        dir.path().join("cache"),
        Duration::from_secs(10),
    );
    let l = NetworkConfigList::from_conflist(
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "failer"}]})
            .to_string()
            .as_bytes(),
        Path::new("n.conflist"),
    )
    .unwrap();
    let rt = RuntimeConf {
        container_id: "c1".into(),
        netns: "/nonexistent".into(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let err = cni.add(&l, &rt).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CniError::Plugin { code: 7, .. }), "{msg}");
    assert!(msg.contains("failer") && msg.contains("boom"), "{msg}");

    let mut l2 = l.clone();
    l2.plugins[0].insert("type".into(), json!("nosuch"));
    let err = cni.add(&l2, &rt).await.unwrap_err();
    assert!(
        matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "nosuch"),
        "{err}"
    );
    // DEL with nothing cached and no config is a no-op.
    cni.del(None, &rt).await.unwrap();

    // A plugin that hangs is killed after the timeout.
    let sleeper = bin.join("sleeper");
    std::fs::write(
        &sleeper,
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\nexec sleep 30\n",
    )
    .unwrap();
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let quick = Cni::new(
        vec![bin],
        dir.path().join("cache"),
        Duration::from_millis(300),
    );
    let mut l3 = l.clone();
    l3.plugins[0].insert("type".into(), json!("sleeper"));
    let started = std::time::Instant::now();
    let err = quick.add(&l3, &rt).await.unwrap_err();
    assert!(
        matches!(&err, CniError::Timeout { plugin, .. } if plugin == "sleeper"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

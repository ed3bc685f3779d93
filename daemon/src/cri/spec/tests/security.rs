//! Capabilities, privileged containers, seccomp and AppArmor.

use super::*;

#[test]
fn capabilities_add_drop_and_all() {
    use oci_spec::runtime::{Capability as Cap, LinuxCapabilities};
    let caps = |add: &[&str], drop: &[&str], ambient: &[&str]| {
        let c = with_sc(container("a"), |sc| {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: s(add),
                drop_capabilities: s(drop),
                add_ambient_capabilities: s(ambient),
            })
        });
        let pc = pod_config();
        let root = rootfs();
        super::super::container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &opts()).map(
            |spec| -> LinuxCapabilities {
                spec.process()
                    .as_ref()
                    .and_then(|p| p.capabilities().clone())
                    .unwrap()
            },
        )
    };
    let c = caps(&["NET_ADMIN", "CAP_SYS_TIME"], &["chown", "MKNOD"], &[]).unwrap();
    let b = c.bounding().clone().unwrap();
    assert!(b.contains(&Cap::NetAdmin) && b.contains(&Cap::SysTime));
    assert!(!b.contains(&Cap::Chown) && !b.contains(&Cap::Mknod));
    assert_eq!(c.bounding(), c.permitted());
    assert_eq!(c.bounding(), c.effective());

    let c = caps(&["ALL"], &["SYS_ADMIN"], &[]).unwrap();
    let b = c.bounding().clone().unwrap();
    assert_eq!(b.len(), KNOWN_CAPS.len() - 1);
    assert!(!b.contains(&Cap::SysAdmin));

    let c = caps(&["NET_BIND_SERVICE"], &["ALL"], &[]).unwrap();
    assert_eq!(c.bounding().clone().unwrap(), [Cap::NetBindService].into());
    let c = caps(&[], &["all"], &[]).unwrap();
    assert!(c.bounding().as_ref().unwrap().is_empty());

    let c = caps(&[], &[], &["NET_RAW", "SYS_NICE"]).unwrap();
    assert_eq!(
        c.ambient().clone().unwrap(),
        [Cap::NetRaw, Cap::SysNice].into()
    );
    assert_eq!(c.ambient(), c.inheritable());
    assert!(c.bounding().as_ref().unwrap().contains(&Cap::SysNice));

    let e = invalid(caps(&["FLY"], &[], &[]));
    assert!(e.contains("add_capabilities") && e.contains("FLY"), "{e}");

    // The seccomp profile follows the capabilities.
    let c = with_sc(container("a"), |sc| {
        sc.capabilities = Some(cri::Capability {
            add_capabilities: s(&["SYS_ADMIN"]),
            ..Default::default()
        });
        sc.seccomp = Some(cri::SecurityProfile::default());
    });
    let spec = build(&c, &busybox()).unwrap();
    let rules = spec["linux"]["seccomp"]["syscalls"].to_string();
    assert!(rules.contains("\"mount\""));
}

#[test]
fn privileged_containers() {
    let c = with_sc(container("a"), |sc| {
        sc.privileged = true;
        sc.seccomp = Some(cri::SecurityProfile::default());
        sc.masked_paths = s(&["/proc/kcore"]);
    });
    // Only in a privileged pod.
    assert!(invalid(build(&c, &busybox())).contains("privileged"));

    let mut pc = pod_config();
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let root = rootfs();
    let spec = container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &opts()).unwrap();
    assert_eq!(
        strs(&spec["process"]["capabilities"]["bounding"]),
        sorted(KNOWN_CAPS)
    );
    let l = &spec["linux"];
    assert!(l.get("maskedPaths").is_none() && l.get("readonlyPaths").is_none());
    assert!(l.get("seccomp").is_none());
    assert_eq!(mount(&spec, "/sys")["options"][3], "rw");
    assert_eq!(mount(&spec, "/sys/fs/cgroup")["options"][4], "rw");
    assert_eq!(
        l["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    let devs = l["devices"].as_array().unwrap();
    assert!(devs
        .iter()
        .any(|d| d["path"] == "/dev/null" && d["major"] == 1 && d["minor"] == 3));
    assert!(!devs.iter().any(|d| d["path"] == "/dev/console"));

    // Without host devices.
    let o = SpecOptions {
        privileged_without_host_devices: true,
        ..opts()
    };
    let spec = container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &o).unwrap();
    assert!(spec["linux"].get("devices").is_none());
    assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
}

#[test]
fn seccomp_profiles() {
    use cri::security_profile::ProfileType;
    let with = |p: Option<cri::SecurityProfile>, legacy: &str| {
        let c = with_sc(container("a"), |sc| {
            sc.seccomp = p;
            #[allow(deprecated)]
            {
                sc.seccomp_profile_path = legacy.into();
            }
        });
        build(&c, &busybox()).map(|s| s["linux"].get("seccomp").cloned())
    };
    let prof = |t: ProfileType, r: &str| {
        Some(cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    };
    let def = with(prof(ProfileType::RuntimeDefault, ""), "")
        .unwrap()
        .unwrap();
    assert_eq!(def["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(def, seccomp::default_profile(&s(DEFAULT_CAPS)));
    assert!(
        def["syscalls"].to_string().contains("\"chroot\""),
        "CAP_SYS_CHROOT is default"
    );
    assert!(with(prof(ProfileType::Unconfined, ""), "")
        .unwrap()
        .is_none());
    assert!(with(None, "").unwrap().is_none());
    assert!(with(None, "unconfined").unwrap().is_none());
    assert_eq!(with(None, "runtime/default").unwrap().unwrap(), def);
    assert_eq!(with(None, "docker/default").unwrap().unwrap(), def);
    assert!(invalid(with(None, "bogus")).contains("seccomp_profile_path"));

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("p.json");
    std::fs::write(
        &good,
        r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"],"syscalls":[]}"#,
    )
    .unwrap();
    let g = good.to_string_lossy().to_string();
    let p = with(prof(ProfileType::Localhost, &g), "").unwrap().unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_LOG");
    assert_eq!(with(None, &format!("localhost/{g}")).unwrap().unwrap(), p);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1,2]").unwrap();
    let e = invalid(with(
        prof(ProfileType::Localhost, &bad.to_string_lossy()),
        "",
    ));
    assert!(
        e.contains("security_context.seccomp") && e.contains("bad.json"),
        "{e}"
    );
    let e = invalid(with(
        prof(ProfileType::Localhost, "/nonexistent/p.json"),
        "",
    ));
    assert!(e.contains("cannot read"), "{e}");
    assert!(invalid(with(prof(ProfileType::Localhost, ""), "")).contains("Localhost"));
}

#[test]
fn apparmor_only_when_enabled() {
    use cri::security_profile::ProfileType;
    let c = |p: ProfileType, r: &str| {
        with_sc(container("a"), |sc| {
            sc.apparmor = Some(cri::SecurityProfile {
                profile_type: p as i32,
                localhost_ref: r.into(),
            })
        })
    };
    let pc = pod_config();
    let root = rootfs();
    let run = |c: &cri::ContainerConfig, o: &SpecOptions| {
        container_spec("c1", c, &pod(&pc), &busybox(), root.path(), o)
            .map(|s| s["process"].get("apparmorProfile").cloned())
    };
    let on = SpecOptions {
        apparmor: true,
        apparmor_default_profile: Some("berth-default".into()),
        ..opts()
    };
    assert_eq!(
        run(&c(ProfileType::RuntimeDefault, ""), &on).unwrap(),
        Some(json!("berth-default"))
    );
    assert_eq!(
        run(&c(ProfileType::RuntimeDefault, ""), &opts()).unwrap(),
        None
    );
    assert_eq!(run(&container("a"), &opts()).unwrap(), None);
    assert_eq!(
        run(&c(ProfileType::Localhost, "localhost/my-prof"), &on).unwrap(),
        Some(json!("my-prof"))
    );
    assert!(
        invalid(run(&c(ProfileType::Localhost, "my-prof"), &opts()).map(|_| Value::Null))
            .contains("AppArmor")
    );
    assert_eq!(run(&c(ProfileType::Unconfined, ""), &on).unwrap(), None);

    // The deprecated string field: empty is the runtime default here.
    let legacy = |v: &str| {
        with_sc(container("a"), |sc| {
            #[allow(deprecated)]
            {
                sc.apparmor_profile = v.into();
            }
        })
    };
    assert_eq!(run(&legacy(""), &on).unwrap(), Some(json!("berth-default")));
    assert_eq!(
        run(&legacy("runtime/default"), &on).unwrap(),
        Some(json!("berth-default"))
    );
    assert_eq!(run(&legacy("unconfined"), &on).unwrap(), None);
    assert_eq!(
        run(&legacy("localhost/my-prof"), &on).unwrap(),
        Some(json!("my-prof"))
    );
    let e = invalid(run(&legacy("bogus"), &on).map(|_| Value::Null));
    assert!(e.contains("security_context.apparmor_profile"), "{e}");
}

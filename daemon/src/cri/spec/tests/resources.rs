//! Resources, oom_score_adj and sysctls.

use super::*;

fn with_resources(r: cri::LinuxContainerResources) -> cri::ContainerConfig {
    let mut c = container("a");
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(r),
        security_context: None,
    });
    c
}

#[test]
fn resources_map_and_validate() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1,3".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 1 << 21,
        }],
        unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
        ..Default::default()
    };
    // Typed: what UpdateContainerResources hands the shim, and what
    // CreateContainer puts in linux.resources.
    let res = linux_resources("container \"a\"", &r, &opts()).unwrap();
    let cpu = res.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(
        (cpu.cpus().as_deref(), cpu.mems().as_deref()),
        (Some("0-1,3"), Some("0"))
    );
    let mem = res.memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
    let huge = res.hugepage_limits().as_ref().unwrap();
    assert_eq!(
        (huge[0].page_size().as_str(), huge[0].limit()),
        ("2MB", 1 << 21)
    );
    assert!(res.unified().is_none(), "cgroup v1: unified ignored");
    let spec = build(&with_resources(r.clone()), &busybox()).unwrap();
    assert_eq!(
        spec["linux"]["resources"]["cpu"],
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"})
    );
    let o = SpecOptions {
        cgroup_v2: true,
        swap_controller: false,
        ..opts()
    };
    let res = linux_resources("container \"a\"", &r, &o).unwrap();
    assert_eq!(
        res.unified().as_ref().and_then(|u| u.get("memory.high")),
        Some(&"1000000".to_string())
    );
    let mem = res.memory().as_ref().unwrap();
    assert_eq!(
        (mem.limit(), mem.swap()),
        (Some(64 << 20), None),
        "no swap accounting"
    );
    assert!(
        res.devices().is_none(),
        "device rules are CreateContainer's"
    );

    let swap = cri::LinuxContainerResources {
        memory_limit_in_bytes: 100,
        memory_swap_limit_in_bytes: 300,
        ..Default::default()
    };
    let res = linux_resources("container \"a\"", &swap, &opts()).unwrap();
    let mem = res.memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(100), Some(300)));

    let bad = |r: cri::LinuxContainerResources, field: &str| {
        let e = invalid(build(&with_resources(r), &busybox()));
        assert!(e.contains(field) && e.contains("container \"a\""), "{e}");
    };
    let d = cri::LinuxContainerResources::default;
    bad(
        cri::LinuxContainerResources {
            cpu_period: -1,
            ..d()
        },
        "cpu_period",
    );
    bad(
        cri::LinuxContainerResources {
            cpu_period: 10,
            ..d()
        },
        "cpu_period",
    );
    bad(
        cri::LinuxContainerResources {
            cpu_quota: 50_000,
            ..d()
        },
        "cpu_quota",
    );
    bad(
        cri::LinuxContainerResources {
            cpu_quota: -5,
            cpu_period: 100_000,
            ..d()
        },
        "cpu_quota",
    );
    bad(
        cri::LinuxContainerResources {
            cpu_shares: -2,
            ..d()
        },
        "cpu_shares",
    );
    bad(
        cri::LinuxContainerResources {
            cpu_shares: 1_000_000,
            ..d()
        },
        "cpu_shares",
    );
    bad(
        cri::LinuxContainerResources {
            memory_limit_in_bytes: -1,
            ..d()
        },
        "memory_limit_in_bytes",
    );
    bad(
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 1000,
            memory_swap_limit_in_bytes: 10,
            ..d()
        },
        "memory_swap_limit_in_bytes",
    );
    bad(
        cri::LinuxContainerResources {
            cpuset_cpus: "0-a".into(),
            ..d()
        },
        "cpuset_cpus",
    );
    bad(
        cri::LinuxContainerResources {
            cpuset_mems: "3-1".into(),
            ..d()
        },
        "cpuset_mems",
    );
    bad(
        cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2M".into(),
                limit: 1,
            }],
            ..d()
        },
        "page_size",
    );
    bad(
        cri::LinuxContainerResources {
            oom_score_adj: 1001,
            ..d()
        },
        "oom_score_adj",
    );
    // -1 quota (unlimited) is fine.
    assert!(build(
        &with_resources(cri::LinuxContainerResources {
            cpu_quota: -1,
            ..d()
        }),
        &busybox()
    )
    .is_ok());
}

#[test]
fn oom_score_adj_never_below_the_daemons() {
    let own = own_oom_score_adj().unwrap();
    let adj = |v: i64, min: Option<i32>| {
        let pc = pod_config();
        let root = rootfs();
        let o = SpecOptions {
            min_oom_score_adj: min,
            ..opts()
        };
        let c = with_resources(cri::LinuxContainerResources {
            oom_score_adj: v,
            ..Default::default()
        });
        let spec =
            super::super::container_spec("c1", &c, &pod(&pc), &busybox(), root.path(), &o).unwrap();
        spec.process().as_ref().unwrap().oom_score_adj().unwrap() as i64
    };
    assert_eq!(adj(-998, None), own.max(-998) as i64);
    assert_eq!(adj(1000, None), 1000);
    assert_eq!(adj(-1000, Some(500)), 500.max(own) as i64);
    assert_eq!(adj(800, Some(500)), 800);
}

#[test]
fn sysctls_must_be_namespaced_and_own() {
    let mut pc = pod_config();
    pc.linux.as_mut().unwrap().sysctls = HashMap::from([
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        ),
        ("kernel.shmmax".to_string(), "1000000".to_string()),
        ("fs.mqueue.msg_max".to_string(), "20".to_string()),
    ]);
    let root = rootfs();
    let spec = container_spec(
        "c1",
        &container("a"),
        &pod(&pc),
        &busybox(),
        root.path(),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        spec["linux"]["sysctl"],
        json!({"fs.mqueue.msg_max": "20", "kernel.shmmax": "1000000",
               "net.ipv4.ip_unprivileged_port_start": "0"})
    );
    let host_net = PodContext {
        netns: None,
        ..pod(&pc)
    };
    let e = invalid(container_spec(
        "c1",
        &container("a"),
        &host_net,
        &busybox(),
        root.path(),
        &opts(),
    ));
    assert!(e.contains("net.ipv4") && e.contains("host-network"), "{e}");
    let host_ipc = PodContext {
        ipc_ns: None,
        ..pod(&pc)
    };
    assert!(invalid(container_spec(
        "c1",
        &container("a"),
        &host_ipc,
        &busybox(),
        root.path(),
        &opts()
    ))
    .contains("IPC"));
    pc.linux.as_mut().unwrap().sysctls =
        HashMap::from([("kernel.panic".to_string(), "1".to_string())]);
    let e = invalid(container_spec(
        "c1",
        &container("a"),
        &pod(&pc),
        &busybox(),
        root.path(),
        &opts(),
    ));
    assert!(
        e.contains("kernel.panic") && e.contains("namespaced"),
        "{e}"
    );
}

use super::parse::{make_abs_path, parse_host_url};
use super::*;
use std::fs;

fn host(scheme: &str, host: &str, path: &str, capabilities: Capabilities) -> RegistryHost {
    RegistryHost {
        scheme: scheme.into(),
        host: host.into(),
        path: path.into(),
        capabilities,
        skip_verify: false,
        ca: vec![],
        client: vec![],
        header: vec![],
        fallback_http: false,
    }
}

fn caps(pull: bool, resolve: bool, push: bool, referrers: bool) -> Capabilities {
    Capabilities {
        pull,
        resolve,
        push,
        referrers,
    }
}

const PULL: Capabilities = Capabilities {
    pull: true,
    ..Capabilities::NONE
};
const PULL_RESOLVE: Capabilities = Capabilities {
    pull: true,
    resolve: true,
    ..Capabilities::NONE
};

fn parse(registry: &str, text: &str) -> Vec<RegistryHost> {
    match parse_hosts_toml(registry, text, Path::new("/etc/containerd/certs.d/test")) {
        Ok(h) => h,
        Err(e) => panic!("parse failed: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse_hosts_toml("example.com", text, Path::new("/cfg/example.com")) {
        Ok(h) => panic!("expected an error, got {h:?}"),
        Err(e) => e.to_string(),
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

// containerd core/remotes/docker/config/hosts_test.go TestParseHostFile
#[test]
fn containerd_parse_host_file() {
    let text = r#"
server = "https://test-default.registry"
ca = "/etc/path/default"
[header]
  x-custom-1 = "custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push", "referrers"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://no-referrers.registry"]
  capabilities = ["pull", "resolve", "push"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noncompliantmirror.registry/v2/namespaceprefix"]
  capabilities = ["pull"]
  override_path = true

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyheader.registry".header]
  x-custom-1 = "justaheader"

[host."https://dial-timeout.registry"]
  dial_timeout = "3s"
"#;
    let pb = PathBuf::from;
    let all = Capabilities::ALL;
    let expected = vec![
        RegistryHost {
            ca: vec![pb("/etc/certs/mirror.pem")],
            header: vec![
                ("x-custom-2".into(), "value1".into()),
                ("x-custom-2".into(), "value2".into()),
            ],
            ..host("https", "mirror.registry", "/v2", PULL)
        },
        RegistryHost {
            skip_verify: true,
            ..host("https", "mirror-bak.registry", "/us/v2", PULL)
        },
        host("http", "mirror.registry", "/v2", PULL),
        RegistryHost {
            ca: vec![pb("/etc/certs/test-1-ca.pem"), pb("/etc/certs/special.pem")],
            client: vec![
                (
                    pb("/etc/certs/client.cert"),
                    Some(pb("/etc/certs/client.key")),
                ),
                (pb("/etc/certs/client.pem"), None),
            ],
            ..host("https", "test-1.registry", "/v2", all)
        },
        RegistryHost {
            client: vec![(pb("/etc/certs/client.pem"), None)],
            ..host("https", "test-2.registry", "/v2", all)
        },
        RegistryHost {
            client: vec![
                (pb("/etc/certs/client-1.pem"), None),
                (pb("/etc/certs/client-2.pem"), None),
            ],
            ..host("https", "test-3.registry", "/v2", all)
        },
        RegistryHost {
            client: vec![
                (pb("/etc/certs/client-1.pem"), None),
                (pb("/etc/certs/client-2.pem"), None),
            ],
            ..host(
                "https",
                "no-referrers.registry",
                "/v2",
                caps(true, true, true, false),
            )
        },
        host(
            "https",
            "noncompliantmirror.registry",
            "/v2/namespaceprefix",
            PULL,
        ),
        host("https", "noprefixnoncompliant.registry", "", all),
        RegistryHost {
            header: vec![("x-custom-1".into(), "justaheader".into())],
            ..host("https", "onlyheader.registry", "/v2", all)
        },
        host("https", "dial-timeout.registry", "/v2", all),
        RegistryHost {
            ca: vec![pb("/etc/path/default")],
            header: vec![("x-custom-1".into(), "custom header".into())],
            ..host("https", "test-default.registry", "/v2", all)
        },
    ];
    let got = parse("test-default.registry", text);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "host {i}");
    }
}

// docs/hosts.md "Simple (default) Host Config for Docker"
#[test]
fn docs_simple_docker() {
    let got = parse(
        "docker.io",
        r#"server = "https://docker.io"

[host."https://registry-1.docker.io"]
  capabilities = ["pull", "resolve"]
"#,
    );
    assert_eq!(
        got,
        vec![
            host("https", "registry-1.docker.io", "/v2", PULL_RESOLVE),
            host("https", "docker.io", "/v2", Capabilities::ALL),
        ]
    );
    assert!(!got[0].is_mirror_for("docker.io"));
    assert!(!got[1].is_mirror_for("docker.io"));
}

// docs/hosts.md "Setup a Local Mirror for Docker"
#[test]
fn docs_local_mirror() {
    let text = r#"server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                 # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#;
    let got = parse_hosts_toml(
        "docker.io",
        text,
        Path::new("/etc/containerd/certs.d/docker.io"),
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            host("https", "public-mirror.example.com", "/v2", PULL),
            RegistryHost {
                ca: vec![PathBuf::from(
                    "/etc/containerd/certs.d/docker.io/docker-mirror.crt"
                )],
                ..host("https", "docker-mirror.internal", "/v2", PULL_RESOLVE)
            },
            host("https", "registry-1.docker.io", "/v2", Capabilities::ALL),
        ]
    );
    // A tag may only be resolved by the trusted mirror and upstream ...
    let resolvers: Vec<_> = fetch_hosts(&got, false)
        .iter()
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(
        resolvers,
        ["docker-mirror.internal", "registry-1.docker.io"]
    );
    // ... while content by digest may come from any of them.
    assert_eq!(fetch_hosts(&got, true).len(), 3);
    assert!(!got[0].can_fetch(false));
    assert!(got[0].can_fetch(true));
    let pushers: Vec<_> = push_hosts(&got).iter().map(|h| h.host.as_str()).collect();
    assert_eq!(pushers, ["registry-1.docker.io"]);
    assert!(got[0].is_mirror_for("docker.io"));
}

// docs/hosts.md "Bypass TLS Verification Example" and the brief's example
#[test]
fn http_host_with_tls_settings_tries_https_first() {
    let got = parse(
        "docker.io",
        r#"server = "https://registry-1.docker.io"

[host."http://192.168.31.250:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
"#,
    );
    assert_eq!(
        got[0],
        RegistryHost {
            skip_verify: true,
            fallback_http: true,
            ..host(
                "https",
                "192.168.31.250:5000",
                "/v2",
                caps(true, true, true, false)
            )
        }
    );
    assert_eq!(
        got[1],
        host("https", "registry-1.docker.io", "/v2", Capabilities::ALL)
    );

    let got = parse(
        "127.0.0.1:5000",
        r#"[host."http://127.0.0.1:5000"]
  capabilities = ["pull","resolve"]
  skip_verify = true
"#,
    );
    assert_eq!(
        got[0],
        RegistryHost {
            skip_verify: true,
            fallback_http: true,
            ..host("https", "127.0.0.1:5000", "/v2", PULL_RESOLVE)
        }
    );
    // The registry itself (no `server`) gets the localhost defaults.
    assert_eq!(
        got[1],
        RegistryHost {
            skip_verify: true,
            fallback_http: true,
            ..host("https", "127.0.0.1:5000", "/v2", Capabilities::ALL)
        }
    );
    assert_eq!(got[0].url(), "https://127.0.0.1:5000/v2");

    // Plain http without TLS settings, or on port 80, stays http.
    let got = parse(
        "example.com",
        r#"[host."http://plain:5000"]
[host."http://tls80:80"]
  ca = "x.pem"
[host."http://noport"]
  skip_verify = false
"#,
    );
    assert_eq!(
        (got[0].scheme.as_str(), got[0].fallback_http),
        ("http", false)
    );
    assert_eq!(
        (got[1].scheme.as_str(), got[1].fallback_http),
        ("http", false)
    );
    assert_eq!(
        (got[2].scheme.as_str(), got[2].fallback_http),
        ("https", true)
    );
    assert!(!got[2].skip_verify);
}

// docs/hosts.md host field examples
#[test]
fn docs_host_examples() {
    let got = parse(
        "registry",
        r#"
[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://non-compliant-mirror.registry/v2/upstream"]
  capabilities = ["pull"]
  override_path = true
"#,
    );
    let urls: Vec<_> = got.iter().map(RegistryHost::url).collect();
    assert_eq!(
        urls,
        [
            "https://mirror.registry/v2",
            "https://mirror-bak.registry/us/v2",
            "http://mirror.registry/v2",
            "https://test-1.registry/v2",
            "https://test-2.registry/v2",
            "https://test-3.registry/v2",
            "https://non-compliant-mirror.registry/v2/upstream",
            "https://registry/v2",
        ]
    );
    assert_eq!(
        got[3].client[1],
        (PathBuf::from("/etc/certs/client.pem"), None)
    );
}

#[test]
fn header_and_proxy_forms_from_docs() {
    let got = parse(
        "my-registry.io",
        r#"server = "https://my-registry.io"
proxy = "http://different-proxy:8080"
dial_timeout = "1s"

[header]
  x-custom-1 = "custom header"
  x-custom-1-2 = "another custom header"
  a-last = ["a", "b"]

[host."https://mirror.my-registry.io"]
  capabilities = ["pull", "resolve"]
  proxy = "http://my-proxy:8080"
"#,
    );
    assert_eq!(
        got[0],
        host("https", "mirror.my-registry.io", "/v2", PULL_RESOLVE)
    );
    assert_eq!(
        got[1].header,
        vec![
            ("x-custom-1".to_string(), "custom header".to_string()),
            ("x-custom-1-2".into(), "another custom header".into()),
            ("a-last".into(), "a".into()),
            ("a-last".into(), "b".into()),
        ]
    );
}

#[test]
fn mirror_order_is_file_order() {
    let got = parse(
        "docker.io",
        r#"
[host."https://zeta.mirror"]
  capabilities = ["pull"]
[host."https://alpha.mirror"]
  capabilities = ["pull"]
[host."https://mu.mirror".header]
  x-a = "1"
[host."https://beta.mirror"]
[host."https://zeta.mirror".header]
  x-b = "2"
"#,
    );
    let names: Vec<_> = got.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(
        names,
        [
            "zeta.mirror",
            "alpha.mirror",
            "mu.mirror",
            "beta.mirror",
            "registry-1.docker.io"
        ]
    );
    assert_eq!(got[0].header, vec![("x-b".to_string(), "2".to_string())]);

    let got = parse(
        "docker.io",
        r#"host."https://b.mirror".capabilities = ["pull"]
host."https://a.mirror".capabilities = ["pull"]
"#,
    );
    assert_eq!(got[0].host, "b.mirror");
    assert_eq!(got[1].host, "a.mirror");
}

#[test]
fn url_path_handling() {
    let cases = [
        ("https://m.example/v2/prefix", false, "/v2/prefix/v2"),
        ("https://m.example/v2/prefix", true, "/v2/prefix"),
        ("https://m.example/prefix", false, "/prefix/v2"),
        ("https://m.example/prefix/", false, "/prefix/v2"),
        ("https://m.example/v2", false, "/v2"),
        ("https://m.example/v2/", false, "/v2"),
        ("https://m.example/a/../b/./v2", false, "/b/v2"),
        ("https://m.example/", false, "/v2"),
        ("https://m.example", false, "/v2"),
        ("https://m.example", true, ""),
        ("https://m.example/x?y=1#z", false, "/x/v2"),
    ];
    for (url, override_path, want) in cases {
        let (_, _, path) = parse_host_url(url, override_path).unwrap();
        assert_eq!(path, want, "{url} override={override_path}");
    }
    assert_eq!(
        parse_host_url("mirror.local:5000", false).unwrap(),
        ("https".into(), "mirror.local:5000".into(), "/v2".into())
    );
    assert_eq!(
        parse_host_url("HTTP://[::1]:5000/v2", false).unwrap(),
        ("http".into(), "[::1]:5000".into(), "/v2".into())
    );
    for bad in [
        "ftp://x",
        "https://",
        "https:///v2",
        "https://u:p@x",
        "https://x:port",
        "https://x:99999",
        "https://[zz]:5000",
        "https://a b",
    ] {
        assert!(parse_host_url(bad, false).is_err(), "{bad}");
    }
}

#[test]
fn server_without_scheme_and_empty_server() {
    let got = parse(
        "example.com",
        "server = \"registry.example.com:5000/base\"\n",
    );
    assert_eq!(
        got,
        vec![host(
            "https",
            "registry.example.com:5000",
            "/base/v2",
            Capabilities::ALL
        )]
    );
    let got = parse("example.com", "server = \"\"\n");
    assert_eq!(
        got,
        vec![host("https", "example.com", "/v2", Capabilities::ALL)]
    );
}

#[test]
fn top_level_settings_apply_to_defaulted_server() {
    // Without `server`, containerd keeps the top-level TLS settings and
    // headers for the registry but resets capabilities and path.
    let got = parse(
        "quay.io",
        r#"capabilities = ["pull"]
skip_verify = true
override_path = true
ca = ["a.pem", "../shared/b.pem", "/abs/c.pem"]
client = [["c.cert", "c.key"]]
[header]
  x-a = "1"
"#,
    );
    let base = Path::new("/etc/containerd/certs.d/test");
    assert_eq!(
        got,
        vec![RegistryHost {
            skip_verify: true,
            ca: vec![
                base.join("a.pem"),
                PathBuf::from("/etc/containerd/certs.d/shared/b.pem"),
                PathBuf::from("/abs/c.pem"),
            ],
            client: vec![(base.join("c.cert"), Some(base.join("c.key")))],
            header: vec![("x-a".into(), "1".into())],
            ..host("https", "quay.io", "/v2", Capabilities::ALL)
        }]
    );
    // Capabilities are case-insensitive; an empty list means all.
    let got = parse(
        "x.io",
        "server = \"https://s\"\ncapabilities = [\"PULL\"]\n",
    );
    assert_eq!(got[0].capabilities, PULL);
    let got = parse("x.io", "server = \"https://s\"\ncapabilities = []\n");
    assert_eq!(got[0].capabilities, Capabilities::ALL);
}

// containerd TestDefaultHosts / TestHTTPFallback (without DefaultScheme/DefaultTLS)
#[test]
fn defaults_without_configuration() {
    assert_eq!(
        load_hosts(None, "docker.io").unwrap(),
        vec![host(
            "https",
            "registry-1.docker.io",
            "/v2",
            Capabilities::ALL
        )]
    );
    assert_eq!(
        default_hosts("quay.io"),
        vec![host("https", "quay.io", "/v2", Capabilities::ALL)]
    );
    // (registry, scheme, fallback_http, skip_verify)
    let cases = [
        ("localhost:8080", "https", true, true),
        ("localhost:80", "http", false, false),
        ("localhost:443", "https", false, true),
        ("localhost", "https", false, true),
        ("localhost:5000", "https", true, true),
        ("example.com", "https", false, false),
        ("example.com:5000", "https", false, false),
        ("127.0.0.254:5000", "https", true, true),
        ("127.0.0.254", "https", false, true),
        ("[::1]:5000", "https", true, true),
        ("::1", "https", false, true),
        ("127.0.0.1:5000", "https", true, true),
        ("10.0.0.1:5000", "https", false, false),
    ];
    for (registry, scheme, fallback, skip) in cases {
        let hosts = load_hosts(None, registry).unwrap();
        assert_eq!(hosts.len(), 1, "{registry}");
        let h = &hosts[0];
        assert_eq!(h.host, registry);
        assert_eq!(h.path, "/v2");
        assert_eq!(
            (h.scheme.as_str(), h.fallback_http, h.skip_verify),
            (scheme, fallback, skip),
            "{registry}"
        );
        assert!(!h.is_mirror_for(registry));
    }
}

#[test]
fn localhost_detection() {
    for yes in [
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.1.2.3:80",
        "::1",
        "[::1]:5000",
        "::ffff:127.0.0.1",
    ] {
        assert!(is_localhost(yes), "{yes}");
    }
    for no in [
        "example.com",
        "10.0.0.1:5000",
        "[::1]",
        "localhost.example.com",
        "::2",
    ] {
        assert!(!is_localhost(no), "{no}");
    }
}

#[test]
fn missing_config_dir_means_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert_eq!(
        load_hosts(Some(&missing), "docker.io").unwrap(),
        default_hosts("docker.io")
    );
    assert_eq!(
        load_hosts(Some(tmp.path()), "ghcr.io").unwrap(),
        default_hosts("ghcr.io")
    );
}

#[test]
fn default_dir_fallback_and_precedence() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        &root.join("_default/hosts.toml"),
        "[host.\"https://registry.example.com\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    );
    let got = load_hosts(Some(root), "docker.io").unwrap();
    assert_eq!(
        got,
        vec![
            host("https", "registry.example.com", "/v2", PULL_RESOLVE),
            host("https", "registry-1.docker.io", "/v2", Capabilities::ALL),
        ]
    );
    let got = load_hosts(Some(root), "ghcr.io").unwrap();
    assert_eq!(got[1], host("https", "ghcr.io", "/v2", Capabilities::ALL));
    assert!(got[0].is_mirror_for("ghcr.io"));

    // A registry-specific directory wins over _default.
    write(
        &root.join("ghcr.io/hosts.toml"),
        "server = \"https://ghcr.mirror\"\n",
    );
    let got = load_hosts(Some(root), "ghcr.io").unwrap();
    assert_eq!(
        got,
        vec![host("https", "ghcr.mirror", "/v2", Capabilities::ALL)]
    );
    assert_eq!(
        find_host_dir(root, "ghcr.io").unwrap(),
        Some(root.join("ghcr.io"))
    );

    // _default with only a server routes everything there.
    write(
        &root.join("_default/hosts.toml"),
        "server = \"https://registry.example.com\"\n",
    );
    assert_eq!(
        load_hosts(Some(root), "quay.io").unwrap(),
        vec![host(
            "https",
            "registry.example.com",
            "/v2",
            Capabilities::ALL
        )]
    );
}

#[test]
fn host_dirs_with_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        &root.join("127.0.0.1:5000/hosts.toml"),
        "server = \"http://127.0.0.1:5000\"\n",
    );
    let got = load_hosts(Some(root), "127.0.0.1:5000").unwrap();
    assert_eq!(
        got,
        vec![host("http", "127.0.0.1:5000", "/v2", Capabilities::ALL)]
    );

    // The `host_port_` spelling is looked up first.
    write(
        &root.join("127.0.0.1_5000_/hosts.toml"),
        "server = \"https://other:5000\"\n",
    );
    let got = load_hosts(Some(root), "127.0.0.1:5000").unwrap();
    assert_eq!(got[0].host, "other:5000");
    assert_eq!(
        find_host_dir(root, "127.0.0.1:5000").unwrap(),
        Some(root.join("127.0.0.1_5000_"))
    );
    assert_eq!(find_host_dir(root, "example.com").unwrap(), None);
}

#[test]
fn certs_d_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("myregistry.io:5000");
    for name in [
        "b.crt",
        "a.crt",
        "client.cert",
        "client.key",
        "solo.cert",
        "notes.txt",
    ] {
        write(&dir.join(name), "x");
    }
    fs::create_dir_all(dir.join("sub.crt")).unwrap();
    let got = load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap();
    assert_eq!(
        got,
        vec![RegistryHost {
            ca: vec![dir.join("a.crt"), dir.join("b.crt")],
            client: vec![
                (dir.join("client.cert"), Some(dir.join("client.key"))),
                (dir.join("solo.cert"), None),
            ],
            ..host("https", "myregistry.io:5000", "/v2", Capabilities::ALL)
        }]
    );

    // An empty hosts.toml also falls back to the certificate files.
    write(&dir.join("hosts.toml"), "");
    assert_eq!(
        load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap(),
        got
    );

    // A real hosts.toml replaces them.
    write(&dir.join("hosts.toml"), "# nothing but a comment\n");
    assert_eq!(
        load_hosts(Some(tmp.path()), "myregistry.io:5000").unwrap(),
        default_hosts("myregistry.io:5000")
    );

    // Loopback with a CA: https with http fallback, verification off.
    let local = tmp.path().join("localhost:5000");
    write(&local.join("ca.crt"), "x");
    let got = load_hosts(Some(tmp.path()), "localhost:5000").unwrap();
    assert_eq!(
        got,
        vec![RegistryHost {
            ca: vec![local.join("ca.crt")],
            skip_verify: true,
            fallback_http: true,
            ..host("https", "localhost:5000", "/v2", Capabilities::ALL)
        }]
    );
}

#[test]
fn relative_ca_paths_resolve_against_the_host_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("docker.io");
    write(
        &dir.join("hosts.toml"),
        "[host.\"https://m\"]\n  ca = \"m.crt\"\n  client = [\"c.pem\"]\n",
    );
    let got = load_hosts(Some(tmp.path()), "docker.io").unwrap();
    assert_eq!(got[0].ca, vec![dir.join("m.crt")]);
    assert_eq!(got[0].client, vec![(dir.join("c.pem"), None)]);
}

#[test]
fn errors_name_the_file_and_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("docker.io/hosts.toml");
    write(&file, "[host.\"https://m\"\ncapabilities = 1\n");
    let e = load_hosts(Some(tmp.path()), "docker.io").unwrap_err();
    assert!(matches!(e, HostsError::Toml { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");

    write(
        &file,
        "server = \"https://ok\"\n\n[host.\"ftp://mirror\"]\n",
    );
    let msg = load_hosts(Some(tmp.path()), "docker.io")
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(
        msg.contains("host \"ftp://mirror\": invalid URL: unsupported scheme \"ftp\""),
        "{msg}"
    );

    let msg = parse_err("[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]\n");
    assert!(
        msg.contains("/cfg/example.com/hosts.toml (line 2)"),
        "{msg}"
    );
    assert!(msg.contains("unknown capability \"fetch\""), "{msg}");
    assert!(parse_err("skip_verify = \"yes\"\n")
        .contains("\"skip_verify\" must be true or false, found a string"));
    assert!(parse_err("server = 5\n").contains("\"server\" must be a string"));
    assert!(parse_err("server = \"https://bad host\"\n")
        .contains("server \"https://bad host\": invalid URL"));
    assert!(parse_err("client = [[\"a\", \"b\", \"c\"]]\n").contains("[cert, key]"));
    assert!(parse_err("client = 3\n").contains("\"client\" must be"));
    assert!(parse_err("ca = [\"a\", 1]\n").contains("ca must contain only strings"));
    assert!(parse_err("ca = \"\"\n").contains("must not be empty"));
    assert!(parse_err("host = 1\n").contains("\"host\" must be a table"));
    assert!(parse_err("[header]\nx = 1\n").contains("header \"x\" must be a string or an array"));
    assert!(parse_err("a = 1\na = 2\n").contains("hosts.toml"));

    for bad in ["", "..", "../etc", "a/b"] {
        assert!(matches!(
            load_hosts(None, bad),
            Err(HostsError::InvalidRegistry { .. })
        ));
    }

    let not_utf8 = tmp.path().join("bin.io/hosts.toml");
    fs::create_dir_all(not_utf8.parent().unwrap()).unwrap();
    fs::write(&not_utf8, [0xff, 0xfe]).unwrap();
    assert!(load_hosts(Some(tmp.path()), "bin.io")
        .unwrap_err()
        .to_string()
        .contains("not valid UTF-8"));
}

#[test]
fn abs_path_cleaning() {
    let base = Path::new("/etc/certs.d/x");
    assert_eq!(
        make_abs_path("a.pem", base),
        PathBuf::from("/etc/certs.d/x/a.pem")
    );
    assert_eq!(
        make_abs_path("./a/../b.pem", base),
        PathBuf::from("/etc/certs.d/x/b.pem")
    );
    assert_eq!(make_abs_path("../../../../z", base), PathBuf::from("/z"));
    assert_eq!(make_abs_path("/abs/../y", base), PathBuf::from("/abs/../y"));
    assert_eq!(make_abs_path("../z", Path::new("")), PathBuf::from("../z"));
}

//! `hosts.toml` (containerd's registry host configuration), through the
//! same path a pull takes: the registry's directory under `config_path`,
//! the file parsed, containerd's defaults applied.
//!
//! Input: the registry name (first line), then the file. The file is
//! written to `<config_path>/_default/hosts.toml` in a private temp dir;
//! the directory found for the registry must be inside `config_path`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use berth_fuzz::seeds;
use berth_distribution::hosts;
use libfuzzer_sys::fuzz_target;

fn config_path() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("berth-fuzz-hosts-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(d.path().join(hosts::DEFAULT_HOST_DIR)).expect("_default");
        d
    })
    .path()
}

fuzz_target!(
    init: berth_fuzz::seeds_init("hosts_toml", seeds::hosts_toml),
    |data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let (registry, text) = s.split_once('\n').unwrap_or((s, ""));
        let root = config_path();
        let dir = root.join(hosts::DEFAULT_HOST_DIR);

        // The file as text (what `parse_hosts_toml` gets).
        if let Ok(list) = hosts::parse_hosts_toml(registry, text, &dir) {
            check(&list);
        }
        // The directory lookup and the file on disk.
        std::fs::write(dir.join(hosts::HOSTS_FILE), text).expect("write hosts.toml");
        if let Ok(Some(found)) = hosts::find_host_dir(root, registry) {
            assert!(
                found.starts_with(root) && found.parent() == Some(root),
                "registry {registry:?} picked {found:?} outside {root:?}"
            );
        }
        if let Ok(list) = hosts::load_hosts(Some(root), registry) {
            check(&list);
        }
        let _ = hosts::is_localhost(registry);
    }
);

fn check(list: &[hosts::RegistryHost]) {
    assert!(!list.is_empty(), "no host at all");
    for h in list {
        assert!(
            h.scheme == "http" || h.scheme == "https",
            "scheme {:?}",
            h.scheme
        );
        assert!(!h.path.ends_with('/'), "path {:?} ends in /", h.path);
        let url = h.url();
        assert!(url.starts_with(&format!("{}://", h.scheme)));
    }
    let _ = hosts::fetch_hosts(list, true);
    let _ = hosts::fetch_hosts(list, false);
    let _ = hosts::push_hosts(list);
}

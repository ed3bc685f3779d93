//! Manifest, index and image config JSON as a registry or an imported
//! archive hands them to berth: media-type sniffing and dispatch, the
//! `oci` types, platform selection, layer media types, descriptor digests,
//! the config's container part and user (CRI ImageStatus), chain ids, and
//! the names an import gives index entries.
//!
//! Input: a byte picking the wanted platform and an archive base name, then
//! one JSON document.
#![no_main]

use berth_fuzz::seeds;
use berth_distribution::oci::{self, Index, Manifest, Platform};
use libfuzzer_sys::fuzz_target;

const PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64/v8",
    "linux/arm64",
    "linux/arm/v7",
    "windows/amd64",
    "linux/s390x",
];
const BASES: &[&str] = &[
    "",
    "busybox",
    "localhost:5000/x/y",
    "example.com/a:b",
    "Bad",
];

fn check_platform_choice(idx: &Index, want: &Platform) {
    let chosen = berthd::images::pull::select_platform(idx, want);
    if let Some(c) = &chosen {
        let p = c.platform.as_ref().expect("a chosen entry has a platform");
        assert!(oci::platform_matches(want, p), "chose {p:?} for {want:?}");
        assert!(idx.manifests.contains(c), "chose an entry not in the index");
        // An exact variant match wins when there is one.
        let exact = idx.manifests.iter().any(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| oci::platform_matches(want, p) && p.variant == want.variant)
        });
        if exact {
            assert_eq!(p.variant, want.variant);
        }
    } else {
        assert!(!idx.manifests.iter().any(|m| m
            .platform
            .as_ref()
            .is_some_and(|p| oci::platform_matches(want, p))));
    }
}

fn check_descriptor(d: &oci::Descriptor) {
    // Digests from documents are parsed before any path is built from them.
    if let Ok(dg) = content_store::Digest::parse(&d.digest) {
        let s = dg.to_string();
        assert!(
            !s.contains('/') && !s.contains(".."),
            "digest {s:?} could name a path"
        );
    }
    let _ = oci::layer_compression(&d.media_type);
    let _ = oci::is_index(&d.media_type) || oci::is_manifest(&d.media_type);
}

fuzz_target!(
    init: berth_fuzz::seeds_init("image_json", seeds::image_json),
    |data: &[u8]| {
        let Some((&sel, body)) = data.split_first() else {
            return;
        };
        let want = oci::parse_platform(PLATFORMS[sel as usize % PLATFORMS.len()])
            .expect("platform");
        let base = BASES[(sel as usize / PLATFORMS.len()) % BASES.len()];

        // The registry's answer: declared or sniffed media type, then the
        // document type it names.
        let mt = oci::sniff_media_type(body);
        if let Ok(idx) = serde_json::from_slice::<Index>(body) {
            for d in &idx.manifests {
                check_descriptor(d);
                // Import: every index entry is named from its annotations.
                if let Ok(Some(name)) = berthd::fuzzing::import_entry_name(d, base) {
                    let r = berth_distribution::reference::Reference::parse_normalized(&name)
                        .expect("an import name parses again");
                    assert_eq!(r.to_string(), name);
                }
            }
            check_platform_choice(&idx, &want);
            // Round trip through berth's own serialisation (exports and the
            // content store write these back).
            let again: Index = serde_json::from_slice(&serde_json::to_vec(&idx).expect("ser"))
                .expect("re-parse index");
            assert_eq!(again.manifests, idx.manifests);
            // A document with `manifests` always sniffs as something.
            assert!(mt.is_some(), "an index with no media type");
        }
        if let Ok(m) = serde_json::from_slice::<Manifest>(body) {
            check_descriptor(&m.config);
            for l in &m.layers {
                check_descriptor(l);
            }
            let again: Manifest = serde_json::from_slice(&serde_json::to_vec(&m).expect("ser"))
                .expect("re-parse manifest");
            assert_eq!(again.config, m.config);
            assert_eq!(again.layers, m.layers);
        }
        if let Ok(cfg) = serde_json::from_slice::<oci::ImageConfig>(body) {
            let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
            let chain = berthd::images::unpack::chain_ids(&diff_ids);
            assert_eq!(chain.len(), diff_ids.len());
            assert_eq!(chain.first(), diff_ids.first());
        }
        if let Ok(c) = berthd::tasks::spec::parse_image_config(body, "fuzz") {
            let env = berthd::tasks::spec::environment(&c, &[], "host", sel & 1 == 1);
            let mut keys: Vec<&str> = env.iter().map(|e| e.split('=').next().unwrap_or(e)).collect();
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), n, "duplicate environment keys in {env:?}");
            let _ = berthd::tasks::spec::command_line(&c, &[]);
            if let Some(s) = &c.stop_signal {
                if let Some(n) = berthd::cri::spec::parse_signal(s) {
                    assert!((1..=64).contains(&n), "signal {s:?} -> {n}");
                }
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            let (uid, name) = berthd::fuzzing::image_user(&v);
            assert!(uid.is_none() || name.is_empty());
        }
    }
);

//! Image references (`Reference::parse_normalized`), with the round trips
//! the module promises: the full form and the familiar form parse back to
//! the same reference, and so does serde's string form.
#![no_main]

use berth_fuzz::seeds;
use berth_distribution::reference::{Reference, REPOSITORY_NAME_MAX_LEN, TAG_MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: berth_fuzz::seeds_init("reference", seeds::reference),
    |data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(r) = Reference::parse_normalized(s) else {
            return;
        };
        assert!(!r.domain().is_empty() && !r.path().is_empty(), "{s:?} -> {r:?}");
        assert!(r.tag().is_some() || r.digest().is_some(), "{s:?} -> {r:?}");
        assert!(r.path().len() <= REPOSITORY_NAME_MAX_LEN);
        assert!(r.tag().is_none_or(|t| !t.is_empty() && t.len() <= TAG_MAX_LEN));
        assert_eq!(r.repository(), format!("{}/{}", r.domain(), r.path()));
        assert_eq!(r.object(), r.digest().or(r.tag()).expect("tag or digest"));

        let full = r.to_string();
        assert_eq!(
            Reference::parse_normalized(&full).as_ref(),
            Ok(&r),
            "{s:?} -> {full:?} does not parse back"
        );
        let familiar = r.familiar();
        assert_eq!(
            Reference::parse_normalized(&familiar).as_ref(),
            Ok(&r),
            "{s:?} -> familiar {familiar:?} does not parse back"
        );
        let json = serde_json::to_string(&r).expect("serialize");
        let back: Reference = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
        if let Some(t) = r.tag() {
            assert_eq!(r.with_tag(t).as_ref(), Ok(&r));
        }
        if let Some(d) = r.digest() {
            assert_eq!(r.with_digest(d).as_ref(), Ok(&r));
        }
    }
);

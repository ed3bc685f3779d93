//! For tests that need something of the host (root, a binary, a kernel
//! feature).

/// Whether this run is CI (`CI` set to anything but empty, `0` or `false`,
/// as CI services and berth's `.ci/run` set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A test cannot run here because `why` (e.g. "needs root"). On a
/// developer's machine it says so and the caller returns; under CI it fails,
/// so a test that never ran cannot pass for one that did.
pub fn precondition_missing(test: &str, why: &str) {
    assert!(
        !under_ci(),
        "{test}: cannot run under CI: {why} (CI is set, so a skip fails)"
    );
    eprintln!("SKIP {test}: {why}");
}

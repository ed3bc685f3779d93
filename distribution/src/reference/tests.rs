use super::*;

const D: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
const FF: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn p(s: &str) -> Reference {
    match Reference::parse_normalized(s) {
        Ok(r) => r,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn err(s: &str) -> ReferenceError {
    match Reference::parse_normalized(s) {
        Ok(r) => panic!("{s:?} should be rejected, got {r}"),
        Err(e) => e,
    }
}

#[test]
fn brief_examples() {
    let r = p("busybox");
    assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
    assert_eq!(r.domain(), "docker.io");
    assert_eq!(r.path(), "library/busybox");
    assert_eq!(r.tag(), Some("latest"));
    assert_eq!(r.digest(), None);
    assert_eq!(r.repository(), "docker.io/library/busybox");
    assert_eq!(r.familiar(), "busybox:latest");
    assert_eq!(r.object(), "latest");

    assert_eq!(p("user/img").to_string(), "docker.io/user/img:latest");
    assert_eq!(p("user/img").familiar(), "user/img:latest");
    assert_eq!(p("localhost:5000/x").to_string(), "localhost:5000/x:latest");
    assert_eq!(p("localhost:5000/x").domain(), "localhost:5000");

    let r = p("127.0.0.1:5000/a/b:1");
    assert_eq!(r.domain(), "127.0.0.1:5000");
    assert_eq!(r.path(), "a/b");
    assert_eq!(r.tag(), Some("1"));
    assert_eq!(r.familiar(), "127.0.0.1:5000/a/b:1");

    let r = p(&format!("x@{D}"));
    assert_eq!(r.to_string(), format!("docker.io/library/x@{D}"));
    assert_eq!(r.tag(), None);
    assert_eq!(r.digest(), Some(D));
    assert_eq!(r.object(), D);
    assert_eq!(r.familiar(), format!("x@{D}"));

    let r = p(&format!("x:tag@{D}"));
    assert_eq!(r.to_string(), format!("docker.io/library/x:tag@{D}"));
    assert_eq!(r.tag(), Some("tag"));
    assert_eq!(r.digest(), Some(D));
    assert_eq!(r.object(), D);

    assert_eq!(
        p("index.docker.io/foo/bar").to_string(),
        "docker.io/foo/bar:latest"
    );
    assert_eq!(
        p("index.docker.io/debian").to_string(),
        "docker.io/library/debian:latest"
    );
    assert_eq!(
        p("docker.io/debian").to_string(),
        "docker.io/library/debian:latest"
    );
}

#[test]
fn error_messages_name_input_and_cause() {
    let e = err("Busybox");
    assert_eq!(
        e,
        ReferenceError::Uppercase {
            input: "Busybox".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "invalid reference \"Busybox\": repository name must be lowercase"
    );
    assert!(err("").to_string().contains("at least one component"));
    let hex = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";
    assert!(matches!(
        err(hex),
        ReferenceError::AmbiguousIdentifier { .. }
    ));
    assert!(err(hex).to_string().contains(hex));

    let e = err("busybox@sha256:abc");
    assert!(matches!(e, ReferenceError::InvalidDigest { .. }), "{e}");
    assert!(e.to_string().contains("length"), "{e}");
    let e = err(&format!("busybox@md5:{}", &D[7..]));
    assert!(
        e.to_string()
            .contains("unsupported digest algorithm \"md5\""),
        "{e}"
    );
    let e = err(&format!(
        "busybox@{}",
        D.to_uppercase().replace("SHA256", "sha256")
    ));
    assert!(e.to_string().contains("lowercase hexadecimal"), "{e}");

    let long = "a".repeat(129);
    let e = err(&format!("busybox:{long}"));
    assert!(matches!(e, ReferenceError::InvalidTag { .. }), "{e}");
    assert!(
        e.to_string().starts_with("invalid reference \"busybox:aaa"),
        "{e}"
    );
    assert!(matches!(
        err("busybox:-x"),
        ReferenceError::InvalidTag { .. }
    ));
    assert!(matches!(
        err("busybox:a$b"),
        ReferenceError::InvalidTag { .. }
    ));
    assert!(matches!(err("busybox:"), ReferenceError::InvalidTag { .. }));
    assert!(matches!(err("a/b@"), ReferenceError::InvalidDigest { .. }));

    let e = err("foo_bar.com/x");
    assert!(matches!(e, ReferenceError::InvalidDomain { .. }), "{e}");
    assert!(e.to_string().contains("\"foo_bar.com\""), "{e}");
}

#[test]
fn tag_length_limit() {
    assert!(Reference::parse_normalized(&format!("busybox:{}", "a".repeat(128))).is_ok());
    assert!(Reference::parse_normalized(&format!("busybox:{}", "a".repeat(129))).is_err());
}

// distribution/reference normalize_test.go TestValidateReferenceName
#[test]
fn upstream_validate_reference_name() {
    let valid = [
        "docker/docker",
        "library/debian",
        "debian",
        "docker.io/docker/docker",
        "docker.io/library/debian",
        "docker.io/debian",
        "index.docker.io/docker/docker",
        "index.docker.io/library/debian",
        "index.docker.io/debian",
        "127.0.0.1:5000/docker/docker",
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000/debian",
        "192.168.0.1",
        "192.168.0.1:80",
        "192.168.0.1:8/debian",
        "192.168.0.2:25000/debian",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "[fc00::1]:5000/docker",
        "[fc00::1]:5000/docker/docker",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "Docker/docker",
        "DOCKER/docker",
    ];
    for name in valid {
        p(name);
    }
    let invalid = [
        "https://github.com/docker/docker",
        "docker/Docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker/Docker",
        "docker.io/docker///docker",
        "[fc00::1]",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "[fe80::1%eth0]:5000/debian",
        "[2001:db8:3:4::192.0.2.33]:5000/debian",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    ];
    for name in invalid {
        err(name);
    }
}

// normalize_test.go TestValidateRemoteName
#[test]
fn upstream_validate_remote_name() {
    for name in [
        "docker/docker",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker-rules/docker",
        "docker---rules/docker",
        "doc/docker",
        "d/docker",
        "jess/t",
        "dock__er/docker",
    ] {
        p(name);
    }
    let long_ns =
        ["this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"; 4].join("_");
    for name in [
        "docker/Docker".to_string(),
        "docker///docker".into(),
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(),
        "-docker/docker".into(),
        "docker-/docker".into(),
        "-docker-/docker".into(),
        "____/____".into(),
        "_docker/_docker".into(),
        "dock..er/docker".into(),
        "dock_.er/docker".into(),
        "dock-.er/docker".into(),
        "docker/".into(),
        format!("{long_ns}/docker"),
    ] {
        err(&name);
    }
    assert!(matches!(
        err(&format!("{long_ns}/docker")),
        ReferenceError::NameTooLong { .. }
    ));
}

// normalize_test.go TestParseRepositoryInfo
#[test]
fn upstream_parse_repository_info() {
    // (remote, familiar, full, ambiguous, domain)
    let cases = [
        (
            "fooo/bar",
            "fooo/bar",
            "docker.io/fooo/bar",
            "index.docker.io/fooo/bar",
            "docker.io",
        ),
        (
            "library/ubuntu",
            "ubuntu",
            "docker.io/library/ubuntu",
            "library/ubuntu",
            "docker.io",
        ),
        (
            "nonlibrary/ubuntu",
            "nonlibrary/ubuntu",
            "docker.io/nonlibrary/ubuntu",
            "",
            "docker.io",
        ),
        (
            "other/library",
            "other/library",
            "docker.io/other/library",
            "",
            "docker.io",
        ),
        (
            "private/moonbase",
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000/private/moonbase",
            "",
            "127.0.0.1:8000",
        ),
        (
            "privatebase",
            "127.0.0.1:8000/privatebase",
            "127.0.0.1:8000/privatebase",
            "",
            "127.0.0.1:8000",
        ),
        (
            "private/moonbase",
            "example.com/private/moonbase",
            "example.com/private/moonbase",
            "",
            "example.com",
        ),
        (
            "privatebase",
            "example.com/privatebase",
            "example.com/privatebase",
            "",
            "example.com",
        ),
        (
            "private/moonbase",
            "example.com:8000/private/moonbase",
            "example.com:8000/private/moonbase",
            "",
            "example.com:8000",
        ),
        (
            "privatebasee",
            "example.com:8000/privatebasee",
            "example.com:8000/privatebasee",
            "",
            "example.com:8000",
        ),
        (
            "library/ubuntu-12.04-base",
            "ubuntu-12.04-base",
            "docker.io/library/ubuntu-12.04-base",
            "index.docker.io/library/ubuntu-12.04-base",
            "docker.io",
        ),
        (
            "library/foo",
            "foo",
            "docker.io/library/foo",
            "docker.io/foo",
            "docker.io",
        ),
        (
            "library/foo/bar",
            "library/foo/bar",
            "docker.io/library/foo/bar",
            "",
            "docker.io",
        ),
        (
            "store/foo/bar",
            "store/foo/bar",
            "docker.io/store/foo/bar",
            "",
            "docker.io",
        ),
        ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
        ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
    ];
    for (remote, familiar, full, ambiguous, domain) in cases {
        let mut inputs = vec![familiar, full];
        if !ambiguous.is_empty() {
            inputs.push(ambiguous);
        }
        for input in inputs {
            let r = p(input);
            assert_eq!(r.repository(), full, "{input}");
            assert_eq!(r.to_string(), format!("{full}:latest"), "{input}");
            assert_eq!(r.familiar(), format!("{familiar}:latest"), "{input}");
            assert_eq!(r.domain(), domain, "{input}");
            assert_eq!(r.path(), remote, "{input}");
        }
    }
}

// normalize_test.go TestParseReferenceWithTagAndDigest
#[test]
fn upstream_tag_and_digest() {
    let short =
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
    let r = p(short);
    assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
    assert_eq!(r.tag(), Some("latest"));
    assert!(r.digest().is_some());
    assert_eq!(r.familiar(), short);
}

// normalize_test.go TestInvalidReferenceComponents
#[test]
fn upstream_invalid_components() {
    err("-foo");
    let r = p("busybox");
    assert!(r.with_tag("-foo").is_err());
    assert!(r.with_digest("foo").is_err());
    let e = r.with_tag("bad tag").unwrap_err();
    assert!(e.to_string().contains("\"bad tag\""), "{e}");
    let e = r.with_digest("sha256:abcd").unwrap_err();
    assert!(
        e.to_string()
            .contains("docker.io/library/busybox@sha256:abcd"),
        "{e}"
    );
}

// normalize_test.go TestParseAnyReference (the name cases)
#[test]
fn upstream_parse_any_reference_names() {
    let cases = [
        ("redis", "docker.io/library/redis:latest".to_string()),
        ("redis:latest", "docker.io/library/redis:latest".into()),
        ("docker.io/library/redis:latest", "docker.io/library/redis:latest".into()),
        ("dmcgowan/myapp", "docker.io/dmcgowan/myapp:latest".into()),
        ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest".into()),
        ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest".into()),
        (
            "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
            "docker.io/library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9:latest".into(),
        ),
        ("dbcc1", "docker.io/library/dbcc1:latest".into()),
    ];
    for (input, want) in cases {
        assert_eq!(p(input).to_string(), want, "{input}");
    }
    for prefix in ["redis", "docker.io/library/redis"] {
        assert_eq!(
            p(&format!("{prefix}@{D}")).to_string(),
            format!("docker.io/library/redis@{D}")
        );
    }
    for prefix in ["dmcgowan/myapp", "docker.io/dmcgowan/myapp"] {
        assert_eq!(
            p(&format!("{prefix}@{D}")).to_string(),
            format!("docker.io/dmcgowan/myapp@{D}")
        );
    }
}

// normalize_test.go TestNormalizedSplitHostname
#[test]
fn upstream_normalized_split_hostname() {
    let cases = [
        ("test.com/foo", "test.com", "foo"),
        ("test_com/foo", "docker.io", "test_com/foo"),
        ("docker/migrator", "docker.io", "docker/migrator"),
        ("test.com:8080/foo", "test.com:8080", "foo"),
        ("test-com:8080/foo", "test-com:8080", "foo"),
        ("foo", "docker.io", "library/foo"),
        ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ("docker.io/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo", "docker.io", "library/foo"),
        ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
    ];
    for (input, domain, path) in cases {
        let r = p(input);
        assert_eq!((r.domain(), r.path()), (domain, path), "{input}");
    }
}

// reference_test.go TestReferenceParse, as seen through normalisation.
#[test]
fn upstream_reference_parse_cases() {
    // (input, domain, path, tag, digest)
    type Case<'a> = (String, &'a str, String, Option<&'a str>, Option<&'a str>);
    let ok: Vec<Case> = vec![
        (
            "test_com".into(),
            "docker.io",
            "library/test_com".into(),
            None,
            None,
        ),
        (
            "test.com:tag".into(),
            "docker.io",
            "library/test.com".into(),
            Some("tag"),
            None,
        ),
        (
            "test.com:5000".into(),
            "docker.io",
            "library/test.com".into(),
            Some("5000"),
            None,
        ),
        (
            "test.com/repo:tag".into(),
            "test.com",
            "repo".into(),
            Some("tag"),
            None,
        ),
        (
            "test:5000/repo".into(),
            "test:5000",
            "repo".into(),
            None,
            None,
        ),
        (
            "test:5000/repo:tag".into(),
            "test:5000",
            "repo".into(),
            Some("tag"),
            None,
        ),
        (
            format!("test:5000/repo@{FF}"),
            "test:5000",
            "repo".into(),
            None,
            Some(FF),
        ),
        (
            format!("test:5000/repo:tag@{FF}"),
            "test:5000",
            "repo".into(),
            Some("tag"),
            Some(FF),
        ),
        (
            "lowercase:Uppercase".into(),
            "docker.io",
            "library/lowercase".into(),
            Some("Uppercase"),
            None,
        ),
        (
            format!("{}a:tag-puts-this-over-max", "a/".repeat(127)),
            "docker.io",
            format!("{}a", "a/".repeat(127)),
            Some("tag-puts-this-over-max"),
            None,
        ),
        (
            "sub-dom1.foo.com/bar/baz/quux".into(),
            "sub-dom1.foo.com",
            "bar/baz/quux".into(),
            None,
            None,
        ),
        (
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "sub-dom1.foo.com",
            "bar/baz/quux".into(),
            Some("some-long-tag"),
            None,
        ),
        (
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "b.gcr.io",
            "test.example.com/my-app".into(),
            Some("test.example.com"),
            None,
        ),
        (
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            "xn--n3h.com",
            "myimage".into(),
            Some("xn--n3h.com"),
            None,
        ),
        (
            "foo_bar.com:8080".into(),
            "docker.io",
            "library/foo_bar.com".into(),
            Some("8080"),
            None,
        ),
        (
            "foo/foo_bar.com:8080".into(),
            "docker.io",
            "foo/foo_bar.com".into(),
            Some("8080"),
            None,
        ),
        (
            "192.168.1.1".into(),
            "docker.io",
            "library/192.168.1.1".into(),
            None,
            None,
        ),
        (
            "192.168.1.1:tag".into(),
            "docker.io",
            "library/192.168.1.1".into(),
            Some("tag"),
            None,
        ),
        (
            "192.168.1.1:5000".into(),
            "docker.io",
            "library/192.168.1.1".into(),
            Some("5000"),
            None,
        ),
        (
            "192.168.1.1/repo".into(),
            "192.168.1.1",
            "repo".into(),
            None,
            None,
        ),
        (
            "192.168.1.1:5000/repo".into(),
            "192.168.1.1:5000",
            "repo".into(),
            None,
            None,
        ),
        (
            "192.168.1.1:5000/repo:5050".into(),
            "192.168.1.1:5000",
            "repo".into(),
            Some("5050"),
            None,
        ),
        (
            "[2001:db8::1]/repo".into(),
            "[2001:db8::1]",
            "repo".into(),
            None,
            None,
        ),
        (
            "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
            "[2001:db8:1:2:3:4:5:6]",
            "repo".into(),
            Some("tag"),
            None,
        ),
        (
            "[2001:db8::1]:5000/repo".into(),
            "[2001:db8::1]:5000",
            "repo".into(),
            None,
            None,
        ),
        (
            "[2001:db8::1]:5000/repo:tag".into(),
            "[2001:db8::1]:5000",
            "repo".into(),
            Some("tag"),
            None,
        ),
        (
            format!("[2001:db8::1]:5000/repo@{FF}"),
            "[2001:db8::1]:5000",
            "repo".into(),
            None,
            Some(FF),
        ),
        (
            format!("[2001:db8::1]:5000/repo:tag@{FF}"),
            "[2001:db8::1]:5000",
            "repo".into(),
            Some("tag"),
            Some(FF),
        ),
        (
            "[2001:db8::]:5000/repo".into(),
            "[2001:db8::]:5000",
            "repo".into(),
            None,
            None,
        ),
        (
            "[::1]:5000/repo".into(),
            "[::1]:5000",
            "repo".into(),
            None,
            None,
        ),
    ];
    for (input, domain, path, tag, digest) in ok {
        let r = p(&input);
        assert_eq!(r.domain(), domain, "{input}");
        assert_eq!(r.path(), path, "{input}");
        let want_tag = if tag.is_none() && digest.is_none() {
            Some("latest")
        } else {
            tag
        };
        assert_eq!(r.tag(), want_tag, "{input}");
        assert_eq!(r.digest(), digest, "{input}");
    }

    let sha512 = format!("sha512:{}", "f".repeat(128));
    let r = p(&format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha512}"));
    assert_eq!(r.domain(), "xn--7o8h.com");
    assert_eq!(r.tag(), Some("xn--7o8h.com"));
    assert_eq!(r.digest(), Some(sha512.as_str()));
    let sha384 = format!("sha384:{}", "0".repeat(96));
    assert_eq!(p(&format!("a/b@{sha384}")).digest(), Some(sha384.as_str()));

    assert!(matches!(err(""), ReferenceError::Empty { .. }));
    for bad in [
        ":justtag".to_string(),
        format!("@{FF}"),
        "aa/asdf$$^/aa".into(),
        "[2001:db8::1]".into(),
        "[2001:db8::1]:5000".into(),
        "[2001:db8::1]:tag".into(),
        "[fe80::1%eth0]:5000/repo".into(),
        "[fe80::1%@invalidzone]:5000/repo".into(),
        "a@b@c".into(),
        "a:b:c".into(),
    ] {
        err(&bad);
    }
    assert!(matches!(
        err("repo@sha256:ffffffffffffffffffffffffffffffffff"),
        ReferenceError::InvalidDigest { .. }
    ));
    assert!(matches!(
        err(&format!("validname@invaliddigest:{}", &FF[7..])),
        ReferenceError::InvalidDigest { .. }
    ));
    assert!(matches!(
        err("Uppercase:tag"),
        ReferenceError::Uppercase { .. }
    ));
    assert!(matches!(
        err("test:5000/Uppercase/lowercase:tag"),
        ReferenceError::Uppercase { .. }
    ));
    assert!(matches!(
        err(&format!("{}a:tag", "a/".repeat(128))),
        ReferenceError::NameTooLong { .. }
    ));
}

#[test]
fn path_length_excludes_domain() {
    assert!(Reference::parse_normalized(&format!("example.com/{}", "a".repeat(255))).is_ok());
    assert!(matches!(
        err(&format!("example.com/{}", "a".repeat(256))),
        ReferenceError::NameTooLong { len: 256, .. }
    ));
}

#[test]
fn with_tag_and_digest() {
    let r = p("test.com:8000/foo");
    assert_eq!(
        r.with_tag("TAG5").unwrap().to_string(),
        "test.com:8000/foo:TAG5"
    );
    let pinned = r.with_digest(D).unwrap();
    assert_eq!(pinned.to_string(), format!("test.com:8000/foo:latest@{D}"));
    assert_eq!(pinned.object(), D);
    let retagged = p(&format!("foo@{D}")).with_tag("v1").unwrap();
    assert_eq!(
        retagged.to_string(),
        format!("docker.io/library/foo:v1@{D}")
    );
    assert_eq!(retagged.object(), D);
}

#[test]
fn familiar_forms() {
    assert_eq!(
        p("docker.io/library/foo/bar:1").familiar(),
        "library/foo/bar:1"
    );
    assert_eq!(p("localhost/foo").familiar(), "localhost/foo:latest");
    assert_eq!(p("localhost/foo").domain(), "localhost");
    assert_eq!(p("ghcr.io/a/b").familiar(), "ghcr.io/a/b:latest");
}

#[test]
fn round_trips() {
    for s in [
        "busybox",
        "user/img:1",
        "localhost:5000/x",
        "[::1]:5000/a/b:c",
        "quay.io/a/b__c/d---e.f_g:V1.2-rc_3",
    ] {
        let r = p(s);
        assert_eq!(p(&r.to_string()), r, "{s}");
        assert_eq!(p(&r.familiar()), r, "{s}");
        assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
    }
    let r = p(&format!("a:b@{D}"));
    assert_eq!(p(&r.to_string()), r);
}

/// Found by the reference fuzz target: the familiar form of a docker
/// hub path whose first component looks like a domain parsed back as
/// another registry's (or another repository's) reference.
#[test]
fn familiar_keeps_docker_io_when_the_path_reads_as_a_domain() {
    for (s, familiar) in [
        (
            "index.docker.io/dex.docker.io/x",
            "docker.io/dex.docker.io/x:latest",
        ),
        ("docker.io/localhost/x", "docker.io/localhost/x:latest"),
        (
            "docker.io/index.docker.io/x",
            "docker.io/index.docker.io/x:latest",
        ),
        ("docker.io/a.b/c:1", "docker.io/a.b/c:1"),
        ("docker.io/ab/c:1", "ab/c:1"),
    ] {
        let r = p(s);
        assert_eq!(r.familiar(), familiar, "{s}");
        assert_eq!(p(&r.familiar()), r, "{s}");
    }
}

#[test]
fn serde_as_string() {
    let r = p("busybox");
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, "\"docker.io/library/busybox:latest\"");
    let back: Reference = serde_json::from_str("\"busybox\"").unwrap();
    assert_eq!(back, r);
    assert!(serde_json::from_str::<Reference>("\"Busybox\"").is_err());
}

#[test]
fn path_components() {
    for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5"] {
        assert!(is_valid_path_component(ok), "{ok}");
    }
    for bad in [
        "", ".a", "a.", "a..b", "a___b", "a_-b", "a-_b", "A", "a.-b", "-", "_",
    ] {
        assert!(!is_valid_path_component(bad), "{bad}");
    }
}

#[test]
fn domains() {
    for ok in [
        "a",
        "a.b",
        "a-b.c",
        "A.B",
        "1.2.3.4:5",
        "[::1]",
        "[::1]:5000",
        "x:1",
    ] {
        assert!(is_valid_domain(ok), "{ok}");
    }
    for bad in [
        "", "a.", ".a", "-a.b", "a-.b", "a:", "a:b", "[]", "[::1", "[::1]x", "[g::1]", "a_b.c",
    ] {
        assert!(!is_valid_domain(bad), "{bad}");
    }
}

//! The CRI `runtime.v1` wire contract: the services expose exactly upstream's
//! RPCs, and spot-checked fields carry upstream's names, numbers and types.
//! Checked against the compiled descriptor that build.rs embeds, so a typo in
//! `proto/runtime/v1/api.proto` fails here rather than on a kubelet.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use berth_api::runtime::v1 as cri;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// RuntimeService, in upstream's declaration order.
const RUNTIME_SERVICE_RPCS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
];

/// ImageService, in upstream's declaration order.
const IMAGE_SERVICE_RPCS: &[&str] = &[
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The only server-streaming RPCs; everything else is unary.
const SERVER_STREAMING: &[&str] = &[
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "GetContainerEvents",
    "StreamPodSandboxMetrics",
    "StreamImages",
];

fn cri_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(cri::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    assert_eq!(set.file.len(), 1, "runtime.v1 is one self-contained file");
    let file = set.file.into_iter().next().unwrap();
    assert_eq!(file.name(), "runtime/v1/api.proto");
    assert_eq!(file.package(), "runtime.v1");
    assert_eq!(file.syntax(), "proto3");
    assert!(file.dependency.is_empty(), "no imports (no gogoproto)");
    file
}

fn message<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a DescriptorProto {
    file.message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("message {name} missing"))
}

/// Asserts `message.field` has the given number, type and label, and for
/// message/enum fields the given type name (".runtime.v1.X").
fn check_field(
    file: &FileDescriptorProto,
    msg: &str,
    field: &str,
    number: i32,
    ty: Type,
    label: Label,
    type_name: Option<&str>,
) {
    let m = message(file, msg);
    let f = m
        .field
        .iter()
        .find(|f| f.name() == field)
        .unwrap_or_else(|| panic!("{msg}.{field} missing"));
    assert_eq!(f.number(), number, "{msg}.{field} number");
    assert_eq!(f.r#type(), ty, "{msg}.{field} type");
    assert_eq!(f.label(), label, "{msg}.{field} label");
    if let Some(tn) = type_name {
        assert_eq!(f.type_name(), tn, "{msg}.{field} type name");
    }
}

#[test]
fn services_have_exactly_the_upstream_rpcs() {
    let file = cri_file();
    let names: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["RuntimeService", "ImageService"]);

    let mut total = 0;
    for (service, expected) in [
        ("RuntimeService", RUNTIME_SERVICE_RPCS),
        ("ImageService", IMAGE_SERVICE_RPCS),
    ] {
        let svc = file.service.iter().find(|s| s.name() == service).unwrap();
        let got: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
        assert_eq!(got, expected, "{service} RPCs");
        for m in &svc.method {
            assert!(
                !m.client_streaming(),
                "{} is not client-streaming",
                m.name()
            );
            assert_eq!(
                m.server_streaming(),
                SERVER_STREAMING.contains(&m.name()),
                "{} server streaming",
                m.name()
            );
        }
        total += svc.method.len();
    }
    assert_eq!(RUNTIME_SERVICE_RPCS.len(), 37);
    assert_eq!(IMAGE_SERVICE_RPCS.len(), 6);
    assert_eq!(total, 43);
}

#[test]
fn rpc_request_and_response_types_match_upstream() {
    let file = cri_file();
    let rs = file
        .service
        .iter()
        .find(|s| s.name() == "RuntimeService")
        .unwrap();
    let io = |name: &str| {
        let m = rs.method.iter().find(|m| m.name() == name).unwrap();
        (m.input_type().to_owned(), m.output_type().to_owned())
    };
    // The irregular ones; the rest follow the <Rpc>Request/<Rpc>Response rule.
    assert_eq!(
        io("GetContainerEvents"),
        (
            ".runtime.v1.GetEventsRequest".into(),
            ".runtime.v1.ContainerEventResponse".into()
        )
    );
    for m in rs.method.iter().chain(
        file.service
            .iter()
            .find(|s| s.name() == "ImageService")
            .unwrap()
            .method
            .iter(),
    ) {
        if m.name() == "GetContainerEvents" {
            continue;
        }
        assert_eq!(m.input_type(), format!(".runtime.v1.{}Request", m.name()));
        assert_eq!(m.output_type(), format!(".runtime.v1.{}Response", m.name()));
    }
}

/// (message, field, number, type, label, type name for message/enum fields).
type FieldCheck = (
    &'static str,
    &'static str,
    i32,
    Type,
    Label,
    Option<&'static str>,
);

const ONE: Label = Label::Optional;
const REP: Label = Label::Repeated;

/// Spot checks against upstream's api.proto.
#[rustfmt::skip]
const FIELDS: &[FieldCheck] = &[
    ("PodSandboxConfig", "metadata", 1, Type::Message, ONE, Some(".runtime.v1.PodSandboxMetadata")),
    ("PodSandboxConfig", "log_directory", 3, Type::String, ONE, None),
    ("PodSandboxConfig", "linux", 8, Type::Message, ONE, Some(".runtime.v1.LinuxPodSandboxConfig")),
    ("PodSandboxConfig", "windows", 9, Type::Message, ONE, Some(".runtime.v1.WindowsPodSandboxConfig")),
    ("PodSandboxMetadata", "attempt", 4, Type::Uint32, ONE, None),
    ("RunPodSandboxRequest", "runtime_handler", 2, Type::String, ONE, None),
    ("PodSandboxStatusResponse", "containers_statuses", 3, Type::Message, REP, Some(".runtime.v1.ContainerStatus")),
    ("PodSandboxStatusResponse", "timestamp", 4, Type::Int64, ONE, None),
    ("Namespace", "options", 2, Type::Message, ONE, Some(".runtime.v1.NamespaceOption")),
    ("LinuxSandboxSecurityContext", "run_as_group", 8, Type::Message, ONE, Some(".runtime.v1.Int64Value")),
    ("LinuxSandboxSecurityContext", "supplemental_groups_policy", 11, Type::Enum, ONE, Some(".runtime.v1.SupplementalGroupsPolicy")),
    ("LinuxSandboxSecurityContext", "seccomp_profile_path", 7, Type::String, ONE, None),
    ("ContainerConfig", "log_path", 11, Type::String, ONE, None),
    ("ContainerConfig", "envs", 6, Type::Message, REP, Some(".runtime.v1.KeyValue")),
    ("ContainerConfig", "CDI_devices", 17, Type::Message, REP, Some(".runtime.v1.CDIDevice")),
    ("ContainerConfig", "stop_signal", 18, Type::Enum, ONE, Some(".runtime.v1.Signal")),
    ("Mount", "uidMappings", 6, Type::Message, REP, Some(".runtime.v1.IDMapping")),
    ("Mount", "image", 9, Type::Message, ONE, Some(".runtime.v1.ImageSpec")),
    ("Mount", "image_sub_path", 10, Type::String, ONE, None),
    ("LinuxContainerResources", "memory_limit_in_bytes", 4, Type::Int64, ONE, None),
    ("LinuxContainerResources", "unified", 9, Type::Message, REP, Some(".runtime.v1.LinuxContainerResources.UnifiedEntry")),
    ("LinuxContainerResources", "memory_swap_limit_in_bytes", 10, Type::Int64, ONE, None),
    ("LinuxContainerSecurityContext", "run_as_group", 12, Type::Message, ONE, Some(".runtime.v1.Int64Value")),
    ("LinuxContainerSecurityContext", "supplemental_groups_policy", 17, Type::Enum, ONE, None),
    ("LinuxContainerSecurityContext", "apparmor", 16, Type::Message, ONE, Some(".runtime.v1.SecurityProfile")),
    ("ContainerStatus", "exit_code", 7, Type::Int32, ONE, None),
    ("ContainerStatus", "reason", 10, Type::String, ONE, None),
    ("ContainerStatus", "message", 11, Type::String, ONE, None),
    ("ContainerStatus", "image_id", 17, Type::String, ONE, None),
    ("ContainerStatus", "user", 18, Type::Message, ONE, Some(".runtime.v1.ContainerUser")),
    ("ContainerStatus", "stop_signal", 19, Type::Enum, ONE, Some(".runtime.v1.Signal")),
    ("Container", "image_id", 10, Type::String, ONE, None),
    ("ExecSyncResponse", "stdout", 1, Type::Bytes, ONE, None),
    ("ExecRequest", "audit_request_id", 7, Type::String, ONE, None),
    ("AttachRequest", "audit_request_id", 6, Type::String, ONE, None),
    ("PortForwardRequest", "port", 2, Type::Int32, REP, None),
    ("ImageSpec", "user_specified_image", 18, Type::String, ONE, None),
    ("ImageSpec", "runtime_handler", 19, Type::String, ONE, None),
    ("ImageSpec", "image_ref", 20, Type::String, ONE, None),
    ("Image", "size", 4, Type::Uint64, ONE, None),
    ("Image", "pinned", 8, Type::Bool, ONE, None),
    ("AuthConfig", "registry_token", 6, Type::String, ONE, None),
    ("ImageFsInfoResponse", "container_filesystems", 2, Type::Message, REP, Some(".runtime.v1.FilesystemUsage")),
    ("ContainerStats", "io", 6, Type::Message, ONE, Some(".runtime.v1.IoUsage")),
    ("MemoryUsage", "psi", 8, Type::Message, ONE, Some(".runtime.v1.PsiStats")),
    ("PsiStats", "Full", 1, Type::Message, ONE, Some(".runtime.v1.PsiData")),
    ("PsiData", "Avg300", 4, Type::Double, ONE, None),
    ("StatusResponse", "features", 4, Type::Message, ONE, Some(".runtime.v1.RuntimeFeatures")),
    ("RuntimeFeatures", "user_namespaces_host_network", 2, Type::Bool, ONE, None),
    ("LinuxRuntimeConfiguration", "cgroup_driver", 1, Type::Enum, ONE, Some(".runtime.v1.CgroupDriver")),
    ("UpdatePodSandboxResourcesRequest", "resources", 3, Type::Message, ONE, Some(".runtime.v1.LinuxContainerResources")),
    ("StreamPodSandboxesResponse", "pod_sandboxes", 1, Type::Message, REP, Some(".runtime.v1.PodSandbox")),
    ("StreamContainersResponse", "containers", 1, Type::Message, REP, Some(".runtime.v1.Container")),
    ("StreamContainerStatsResponse", "container_stats", 1, Type::Message, REP, Some(".runtime.v1.ContainerStats")),
    ("StreamPodSandboxStatsResponse", "pod_sandbox_stats", 1, Type::Message, REP, Some(".runtime.v1.PodSandboxStats")),
    ("StreamPodSandboxMetricsResponse", "pod_sandbox_metrics", 1, Type::Message, REP, Some(".runtime.v1.PodSandboxMetrics")),
    ("StreamImagesResponse", "images", 1, Type::Message, REP, Some(".runtime.v1.Image")),
];

#[test]
fn spot_checked_fields_match_upstream() {
    let file = cri_file();
    for &(msg, field, number, ty, label, type_name) in FIELDS {
        check_field(&file, msg, field, number, ty, label, type_name);
    }
}

#[test]
fn enums_and_field_options_match_upstream() {
    let f = cri_file();
    let value = |enum_name: &str, v: &str| {
        let e = f
            .enum_type
            .iter()
            .find(|e| e.name() == enum_name)
            .unwrap_or_else(|| panic!("enum {enum_name} missing"));
        e.value
            .iter()
            .find(|x| x.name() == v)
            .unwrap_or_else(|| panic!("{enum_name}.{v} missing"))
            .number()
    };
    assert_eq!(value("ContainerState", "CONTAINER_UNKNOWN"), 3);
    assert_eq!(value("PodSandboxState", "SANDBOX_NOTREADY"), 1);
    assert_eq!(value("NamespaceMode", "TARGET"), 3);
    assert_eq!(value("MountPropagation", "PROPAGATION_BIDIRECTIONAL"), 2);
    assert_eq!(value("Signal", "SIGTERM"), 23);
    assert_eq!(value("Signal", "SIGRTMAX"), 65);
    assert_eq!(value("ContainerEventType", "CONTAINER_DELETED_EVENT"), 3);
    assert_eq!(value("CgroupDriver", "CGROUPFS"), 1);
    assert_eq!(value("SupplementalGroupsPolicy", "Strict"), 1);

    // Upstream's field options survive (they are not wire-relevant, but the
    // file should say what upstream says). prost-types' FieldOptions has no
    // debug_redact field, so that one is checked in the source text.
    let source = include_str!("../proto/runtime/v1/api.proto");
    for decl in [
        "string password = 2 [debug_redact = true];",
        "string auth = 3 [debug_redact = true];",
        "string identity_token = 5 [debug_redact = true];",
        "string registry_token = 6 [debug_redact = true];",
    ] {
        assert!(source.contains(decl), "AuthConfig: {decl}");
    }
    let lcsc = message(&f, "LinuxContainerSecurityContext");
    for name in ["apparmor_profile", "seccomp_profile_path"] {
        let fld = lcsc.field.iter().find(|x| x.name() == name).unwrap();
        assert_eq!(
            fld.options.as_ref().and_then(|o| o.deprecated),
            Some(true),
            "{name}"
        );
    }
}

#[test]
fn generated_types_encode_with_upstream_tags() {
    // ContainerStatus.reason is field 10, length-delimited: tag 0x52.
    let status = cri::ContainerStatus {
        reason: "OOMKilled".into(),
        ..Default::default()
    };
    let mut expected = vec![0x52, 9];
    expected.extend_from_slice(b"OOMKilled");
    assert_eq!(status.encode_to_vec(), expected);

    // ContainerConfig.log_path is field 11: tag 0x5a.
    let cfg = cri::ContainerConfig {
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    assert_eq!(cfg.encode_to_vec()[0], 0x5a);

    // LinuxContainerResources.memory_limit_in_bytes is field 4, varint: tag 0x20.
    let res = cri::LinuxContainerResources {
        memory_limit_in_bytes: 1 << 20,
        ..Default::default()
    };
    assert_eq!(res.encode_to_vec()[0], 0x20);

    // Decoding tolerates fields this copy does not declare (upstream fields
    // added later arrive as unknown fields and are skipped).
    let mut with_unknown = status.encode_to_vec();
    with_unknown.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint 1
    assert_eq!(
        cri::ContainerStatus::decode(&*with_unknown).unwrap(),
        status
    );
}

#[test]
fn server_and_client_are_generated() {
    // Type-level only: both services get a server wrapper and a client.
    fn _server<T: cri::runtime_service_server::RuntimeService>(
        svc: T,
    ) -> cri::runtime_service_server::RuntimeServiceServer<T> {
        cri::runtime_service_server::RuntimeServiceServer::new(svc)
    }
    fn _image_server<T: cri::image_service_server::ImageService>(
        svc: T,
    ) -> cri::image_service_server::ImageServiceServer<T> {
        cri::image_service_server::ImageServiceServer::new(svc)
    }
    assert_eq!(
        <cri::runtime_service_server::RuntimeServiceServer<()> as tonic::server::NamedService>::NAME,
        "runtime.v1.RuntimeService"
    );
    assert_eq!(
        <cri::image_service_server::ImageServiceServer<()> as tonic::server::NamedService>::NAME,
        "runtime.v1.ImageService"
    );
    let _ = std::any::type_name::<cri::runtime_service_client::RuntimeServiceClient<()>>();
    let _ = std::any::type_name::<cri::image_service_client::ImageServiceClient<()>>();
}

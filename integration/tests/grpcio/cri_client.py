"""Drives berthd's CRI runtime.v1 services with grpc-python (grpcio), an
independent gRPC implementation (gRPC core, C++), over berthd's Unix socket.

usage: cri_client.py PARAMS_JSON
  PARAMS_JSON: {"stubs": dir of the generated runtime/v1/api_pb2*.py,
                "socket": berthd's socket path,
                "image": the imported busybox image's name,
                "pod_config_hex": a runtime.v1.PodSandboxConfig, protobuf
                                  binary (encoded by the Rust test), hex}

The channel is `unix://<socket>` with grpcio's default authority: since
grpcio 1.57 that is the socket path %-encoded (`%2Frun%2Fberth.sock`), which
h2 alone refuses (RST_STREAM PROTOCOL_ERROR); berthd's h2-authority layer
lets it through. grpcio has no API that shows the authority it sends, so the
script first points a channel at a listener of its own and reads the
:authority out of the first HEADERS frame (HPACK-decoded with `hpack`).

Prints one JSON object on stdout (the Rust test checks the values); gRPC
status codes are checked here. Exits non-zero, with what it had so far on
stdout and the reason on stderr, when anything is unexpected.
"""
import json
import os
import queue
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse

import grpc

# Generous: a 2-core machine shared with other builds.
RPC_TIMEOUT = 60
EVENTS_TIMEOUT = 60

PARAMS = json.loads(sys.argv[1])
sys.path.insert(0, PARAMS["stubs"])

from runtime.v1 import api_pb2 as api  # noqa: E402
from runtime.v1 import api_pb2_grpc as api_grpc  # noqa: E402


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# ------------------------------------------------------------ authority


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise Failure(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def first_request_headers(conn):
    """Plays an HTTP/2 server just long enough to read the client's first
    request header block; returns its decoded headers."""
    import hpack

    preface = read_exact(conn, 24)
    check(preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", f"preface {preface!r}")
    # gRPC core waits for the server's SETTINGS before it uses a connection.
    conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    block = b""
    in_headers = False
    while True:
        head = read_exact(conn, 9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        payload = read_exact(conn, length)
        if ftype == 0x4 and not flags & 0x1:  # SETTINGS: ack it
            conn.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        elif ftype == 0x1:  # HEADERS
            pad = 0
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1:]
            if flags & 0x20:  # PRIORITY
                payload = payload[5:]
            block = payload[: len(payload) - pad]
            in_headers = True
        elif ftype == 0x9 and in_headers:  # CONTINUATION
            block += payload
        else:
            continue
        if in_headers and flags & 0x4:  # END_HEADERS
            return hpack.Decoder().decode(block)


def capture_authority():
    """The :authority grpcio sends on a `unix://` channel, read by a
    listener of our own (same kind of path as berthd's socket)."""
    d = tempfile.mkdtemp(prefix="berth-grpcio-")
    path = os.path.join(d, "capture.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(4)
    lst.settimeout(RPC_TIMEOUT)
    got = {}

    def serve():
        try:
            conn, _ = lst.accept()
            conn.settimeout(RPC_TIMEOUT)
            with conn:
                got["headers"] = first_request_headers(conn)
        except Exception as e:  # reported below
            got["error"] = repr(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with grpc.insecure_channel(f"unix://{path}") as ch:
        try:
            api_grpc.RuntimeServiceStub(ch).Version(api.VersionRequest(), timeout=10)
        except grpc.RpcError:
            pass  # the listener hangs up after the headers
    t.join(RPC_TIMEOUT)
    lst.close()
    os.unlink(path)
    os.rmdir(d)
    check("headers" in got, f"no request headers captured: {got.get('error')}")
    headers = dict(got["headers"])
    authority = headers.get(":authority")
    check(authority is not None, f"no :authority in {got['headers']}")
    # gRPC core's default authority for a `unix:` target is the URI path
    # without its leading "/", %-encoded ("tmp%2Fx%2Fcapture.sock").
    plain = urllib.parse.unquote(authority)
    check(
        "%2F" in authority and "/" not in authority and plain.lstrip("/") == path.lstrip("/"),
        f"authority {authority!r} is not the %-encoded socket path {path!r}",
    )
    keep = "/" if plain.startswith("/") else ""
    return {
        "captured": authority,
        "capture_socket": path,
        "path": headers.get(":path"),
        # What grpcio sends to berthd by the same rule.
        "berthd": urllib.parse.quote(keep + PARAMS["socket"].lstrip("/"), safe=""),
    }


# ------------------------------------------------------------ helpers


def image_json(im):
    return {
        "id": im.id,
        "repo_tags": list(im.repo_tags),
        "repo_digests": list(im.repo_digests),
        "size": im.size,
        "spec": im.spec.image,
        "pinned": im.pinned,
    }


def pod_json(p):
    return {
        "id": p.id,
        "name": p.metadata.name,
        "uid": p.metadata.uid,
        "namespace": p.metadata.namespace,
        "state": api.PodSandboxState.Name(p.state),
    }


def expect_error(code, fn, *args, **kw):
    """Calls fn, which must fail with `code`; returns the status details."""
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        check(
            e.code() == code,
            f"expected {code.name}, got {e.code().name}: {e.details()}",
        )
        check(e.details(), f"{code.name} without a message")
        return {"code": e.code().name, "message": e.details()}
    raise Failure(f"expected {code.name}, the call succeeded")


# ------------------------------------------------------------ the calls


def container_events(rt, pod_config, out):
    """Opens GetContainerEvents; once the server has answered (it subscribes
    before it does), another thread runs a pod. Reads until the pod's
    sandbox CREATED and STARTED events came, then cancels the stream, which
    must end CANCELLED."""
    E = api.ContainerEventType
    call = rt.GetContainerEvents(api.GetEventsRequest(), timeout=EVENTS_TIMEOUT)
    # Blocks until the response headers: berthd subscribed to its events.
    call.initial_metadata()
    q = queue.Queue()

    def reader():
        try:
            for ev in call:
                q.put(("event", ev))
            q.put(("end", None))
        except grpc.RpcError as e:
            q.put(("status", e))

    def run_pod():
        try:
            r = rt.RunPodSandbox(
                api.RunPodSandboxRequest(config=pod_config), timeout=RPC_TIMEOUT
            )
            q.put(("pod", r.pod_sandbox_id))
        except grpc.RpcError as e:
            q.put(("pod_error", f"{e.code().name}: {e.details()}"))

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=run_pod, daemon=True).start()

    events = []
    pod_id = None
    deadline = time.monotonic() + EVENTS_TIMEOUT - 5

    def seen(kind):
        return any(
            ev.container_id == pod_id and ev.container_event_type == kind
            for ev in events
        )

    while not (pod_id and seen(E.CONTAINER_CREATED_EVENT) and seen(E.CONTAINER_STARTED_EVENT)):
        left = deadline - time.monotonic()
        check(left > 0, f"timed out: pod {pod_id}, events {[str(e) for e in events]}")
        try:
            what, v = q.get(timeout=left)
        except queue.Empty:
            continue
        if what == "event":
            events.append(v)
        elif what == "pod":
            pod_id = v
            out["pod_id"] = pod_id
        elif what == "pod_error":
            call.cancel()
            raise Failure(f"RunPodSandbox failed: {v}")
        else:
            raise Failure(f"event stream ended early: {what} {v}")

    call.cancel()
    # The reader sees the end: an RpcError with CANCELLED.
    end = None
    while end is None:
        left = deadline - time.monotonic()
        check(left > 0, "the cancelled event stream did not end")
        what, v = q.get(timeout=left)
        if what == "status":
            end = v.code()
        elif what == "end":
            raise Failure("the event stream ended cleanly after cancel")
    check(end == grpc.StatusCode.CANCELLED, f"stream ended {end}, not CANCELLED")
    check(call.code() == grpc.StatusCode.CANCELLED, f"call.code() {call.code()}")
    out["events"] = [
        {
            "container_id": ev.container_id,
            "type": E.Name(ev.container_event_type),
            "created_at": ev.created_at,
            "pod_sandbox_id": ev.pod_sandbox_status.id,
            "pod_state": api.PodSandboxState.Name(ev.pod_sandbox_status.state),
        }
        for ev in events
    ]
    out["events_end"] = end.name
    return pod_id


def main(out):
    out["grpcio_version"] = grpc.__version__
    import google.protobuf

    out["protobuf_version"] = google.protobuf.__version__
    out["authority"] = capture_authority()

    # The default authority: no grpc.default_authority option.
    ch = grpc.insecure_channel(f"unix://{PARAMS['socket']}")
    grpc.channel_ready_future(ch).result(timeout=RPC_TIMEOUT)
    rt = api_grpc.RuntimeServiceStub(ch)
    img = api_grpc.ImageServiceStub(ch)
    T = RPC_TIMEOUT

    # RuntimeService, unary.
    v = rt.Version(api.VersionRequest(version="v1"), timeout=T)
    out["version"] = {
        "version": v.version,
        "runtime_name": v.runtime_name,
        "runtime_version": v.runtime_version,
        "runtime_api_version": v.runtime_api_version,
    }
    st = rt.Status(api.StatusRequest(), timeout=T)
    out["status"] = {c.type: c.status for c in st.status.conditions}
    out["pods_before"] = [
        pod_json(p) for p in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=T).items
    ]
    out["containers"] = [
        c.id for c in rt.ListContainers(api.ListContainersRequest(), timeout=T).containers
    ]

    # ImageService, unary and server streaming.
    out["images"] = [
        image_json(i) for i in img.ListImages(api.ListImagesRequest(), timeout=T).images
    ]
    s = img.ImageStatus(
        api.ImageStatusRequest(image=api.ImageSpec(image=PARAMS["image"])), timeout=T
    )
    check(s.HasField("image"), f"ImageStatus {PARAMS['image']}: no image")
    out["image_status"] = image_json(s.image)
    fs = img.ImageFsInfo(api.ImageFsInfoRequest(), timeout=T)
    out["image_fs"] = [
        {"mountpoint": u.fs_id.mountpoint, "used_bytes": u.used_bytes.value}
        for u in fs.image_filesystems
    ]
    streamed = []
    messages = 0
    for msg in img.StreamImages(api.StreamImagesRequest(), timeout=T):
        messages += 1
        streamed.extend(image_json(i) for i in msg.images)
    out["stream_images"] = {"messages": messages, "images": streamed}

    # An error status: an empty image spec.
    out["image_status_empty"] = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        img.ImageStatus,
        api.ImageStatusRequest(image=api.ImageSpec(image="")),
        timeout=T,
    )

    # RuntimeService, server streaming: events while a pod starts.
    pod_config = api.PodSandboxConfig.FromString(bytes.fromhex(PARAMS["pod_config_hex"]))
    pod_id = container_events(rt, pod_config, out)

    out["pods_running"] = [
        pod_json(p) for p in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=T).items
    ]
    out["stream_pods"] = [
        pod_json(p)
        for msg in rt.StreamPodSandboxes(api.StreamPodSandboxesRequest(), timeout=T)
        for p in msg.pod_sandboxes
    ]
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=T)
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=T)
    out["pods_after"] = [
        pod_json(p) for p in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=T).items
    ]
    ch.close()


if __name__ == "__main__":
    result = {}
    try:
        main(result)
    except Exception as e:
        if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
            why = f"RPC failed: {e.code().name}: {e.details()}"
            if "RST_STREAM" in (e.details() or ""):
                why += " (h2 refused the request: grpcio's authority got past no h2-authority layer?)"
        else:
            why = f"{type(e).__name__}: {e}"
        print(json.dumps(result, indent=1))
        sys.exit(f"cri_client.py: {why}")
    print(json.dumps(result, indent=1))

//! Drives the real `berth-shim` binary over ttrpc, as berthd would, against runc and a
//! busybox rootfs made from the host's static busybox: both task service names, the
//! start/delete conventions, CRI logs and their reopen, a terminal with ResizePty,
//! CloseIO, exec, an exit while no client is connected, Delete retries and Shutdown,
//! and the killing of abandoned execs (Wait deadline, Start connection closed).
//!
//! Needs root, runc and /bin/busybox (Debian's busybox-static); skipped otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, ResizePtyRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, MessageField};

const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");
const BUSYBOX: &str = "/bin/busybox";

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && Path::new(BUSYBOX).is_file()
        && Command::new("runc").arg("--version").output().is_ok();
    if !ok {
        berth_sysutil::testing::precondition_missing(
            "berth-shim direct tests",
            &format!("needs root, runc and {BUSYBOX}"),
        );
    }
    ok
}

struct Env {
    dir: tempfile::TempDir,
    publish_binary: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("bsd").tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        fs::set_permissions(
            rootfs.join("bin/busybox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for applet in [
            "sh", "echo", "sleep", "cat", "stty", "true", "read", "touch", "ls",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        Env {
            dir,
            publish_binary: String::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn runc_root(&self) -> PathBuf {
        self.path().join("runc")
    }

    /// A bundle whose config.json runs `args` (shared read-only rootfs).
    fn bundle(&self, id: &str, args: &[&str], terminal: bool, pod: &str) -> PathBuf {
        let b = self.path().join("bundles").join(id);
        fs::create_dir_all(&b).unwrap();
        let st = Command::new("runc")
            .arg("spec")
            .arg("--bundle")
            .arg(&b)
            .status()
            .unwrap();
        assert!(st.success());
        let mut spec: serde_json::Value =
            serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
        spec["process"]["terminal"] = terminal.into();
        spec["process"]["args"] = serde_json::json!(args);
        spec["root"] = serde_json::json!({"path": self.path().join("rootfs"), "readonly": true});
        // Unique per run: other test runs may share the machine.
        let run = self
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        spec["linux"]["cgroupsPath"] = format!("/berth-shim-test/{run}-{id}").into();
        spec["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": pod});
        fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        b
    }

    fn shim_cmd(&self, bundle: &Path, id: &str, action: &str) -> Command {
        let mut c = Command::new(SHIM);
        c.args(["-namespace", "test", "-address", "/run/test-daemon.sock"])
            .args(["-publish-binary", &self.publish_binary, "-id", id, action])
            .current_dir(bundle)
            .env("BERTH_SHIM_SOCKET_DIR", self.path().join("s"))
            .env("BERTH_SHIM_RUNC_ROOT", self.runc_root())
            .env_remove("TTRPC_ADDRESS")
            .stdin(Stdio::null());
        c
    }

    /// `start`: the shim's address.
    fn start_shim(&self, bundle: &Path, id: &str) -> String {
        let out = self.shim_cmd(bundle, id, "start").output().unwrap();
        assert!(
            out.status.success(),
            "start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "start wrote to stderr: {:?}",
            out.stderr
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(addr.starts_with("unix:///"), "{addr}");
        assert_eq!(fs::read_to_string(bundle.join("address")).unwrap(), addr);
        addr
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let root = self.runc_root().join("test");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        // The cgroup parent runc made for the test containers (per v1 controller).
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = fs::remove_dir(e.path().join("berth-shim-test"));
            }
        }
        let _ = fs::remove_dir("/sys/fs/cgroup/berth-shim-test");
        let needle = self.path().join("s").display().to_string();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                // SAFETY: plain kill(2) of a shim this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A ttrpc client that calls one service name ("containerd.task.v2.Task" or v3).
struct Shim {
    client: ttrpc::Client,
    service: &'static str,
}

impl Shim {
    fn connect(addr: &str, service: &'static str) -> Shim {
        let path = addr.strip_prefix("unix://").unwrap();
        let s = UnixStream::connect(path).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(s);
        Shim {
            client: ttrpc::Client::new(fd).unwrap(),
            service,
        }
    }

    fn call<Req: Message, Resp: Message>(&self, method: &str, req: &Req) -> ttrpc::Result<Resp> {
        let ctx = ttrpc::context::with_duration(Duration::from_secs(30));
        let service = self.service;
        let mut cres = Resp::new();
        ttrpc::client_request!(self, ctx, req, service, method, cres);
        Ok(cres)
    }

    fn create(&self, req: CreateTaskRequest) -> CreateTaskResponse {
        self.call("Create", &req).unwrap()
    }

    fn start(&self, id: &str, exec_id: &str) -> StartResponse {
        self.call(
            "Start",
            &StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn state(&self, id: &str, exec_id: &str) -> StateResponse {
        self.call(
            "State",
            &StateRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn wait(&self, id: &str, exec_id: &str) -> WaitResponse {
        self.call(
            "Wait",
            &WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn kill(&self, id: &str, signal: u32) {
        let _: Empty = self
            .call(
                "Kill",
                &KillRequest {
                    id: id.into(),
                    signal,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        self.call(
            "Delete",
            &DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
    }
}

fn create_req(
    id: &str,
    bundle: &Path,
    stdin: &str,
    stdout: &str,
    stderr: &str,
    terminal: bool,
) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
        ..Default::default()
    }
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn wait_for_file(p: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = fs::read_to_string(p).unwrap_or_default();
        if s.contains(want) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {want:?}: {s:?}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: i32) -> bool {
    // A zombie (not yet reaped by a slow PID 1) counts as gone.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split(' ').nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

#[test]
fn shim_over_ttrpc() {
    if !usable() {
        return;
    }
    let env = Env::new();

    // --- CRI log, task v2 service name, a pod of two containers on one shim.
    let log = env.path().join("logs/0.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    let b1 = env.bundle(
        "c1",
        &["sh", "-c", "echo out; echo err >&2; while [ ! -e /dev/shm/go ]; do sleep 0.05; done; echo after; sleep 1000"],
        false,
        "pod",
    );
    let addr = env.start_shim(&b1, "c1");
    let shim_pid: i32 = fs::read_to_string(b1.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let v2 = Shim::connect(&addr, "containerd.task.v2.Task");
    let v3 = Shim::connect(&addr, "containerd.task.v3.Task");
    let uri = format!("cri-log://{}", log.display());
    let pid = v2.create(create_req("c1", &b1, "", &uri, &uri, false)).pid;
    assert!(pid > 0);
    assert_eq!(v3.state("c1", "").status.enum_value(), Ok(Status::CREATED));
    assert_eq!(v2.start("c1", "").pid, pid);
    assert_eq!(v3.state("c1", "").status.enum_value(), Ok(Status::RUNNING));
    let text = wait_for_file(&log, " stderr F err\n");
    let text = if text.contains(" stdout F out\n") {
        text
    } else {
        wait_for_file(&log, " stdout F out\n")
    };
    assert!(
        text.lines().all(|l| l.len() > 31 && &l[29..31] == "Z "),
        "{text}"
    );
    let c: ConnectResponse = v3
        .call(
            "Connect",
            &ConnectRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((c.shim_pid as i32, c.task_pid), (shim_pid, pid));

    // Same pod: `start` finds the running shim.
    let b2 = env.bundle("c2", &["cat"], false, "pod");
    assert_eq!(env.start_shim(&b2, "c2"), addr);
    assert_eq!(
        fs::read_to_string(b2.join("shim.pid")).unwrap().trim(),
        shim_pid.to_string()
    );

    // Rotation: rename, Update with the reopen annotation, new output goes to the new file.
    let rotated = env.path().join("logs/0.log.1");
    fs::rename(&log, &rotated).unwrap();
    let mut upd = UpdateTaskRequest {
        id: "c1".into(),
        ..Default::default()
    };
    upd.annotations
        .insert("io.berth.shim.reopen-log".into(), "true".into());
    let _: Empty = v2.call("Update", &upd).unwrap();
    assert!(log.exists());
    // Exec (v3 name): touch the flag file; the container then logs "after".
    let exec_spec = serde_json::json!({
        "args": ["touch", "/dev/shm/go"], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}
    });
    let _: Empty = v3
        .call(
            "Exec",
            &ExecProcessRequest {
                id: "c1".into(),
                exec_id: "e1".into(),
                spec: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&exec_spec).unwrap(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let epid = v3.start("c1", "e1").pid;
    assert!(epid > 0);
    let w = v3.wait("c1", "e1");
    assert_eq!(w.exit_status, 0);
    let d = v3.delete("c1", "e1").unwrap();
    assert_eq!(d.pid, epid);
    assert!(v3.delete("c1", "e1").is_ok(), "exec delete is idempotent");
    let new = wait_for_file(&log, " stdout F after\n");
    assert!(!new.contains(" out\n"), "{new}");
    assert!(!fs::read_to_string(&rotated).unwrap().contains("after"));

    // --- stdin and CloseIO: `cat` copies stdin to a file:// log, EOF ends it.
    let stdin = env.path().join("c2-stdin");
    mkfifo(&stdin);
    let out2 = env.path().join("logs/c2.out");
    let file_uri = format!("file://{}", out2.display());
    v2.create(create_req(
        "c2",
        &b2,
        stdin.to_str().unwrap(),
        &file_uri,
        &file_uri,
        false,
    ));
    v2.start("c2", "");
    let mut w = fs::OpenOptions::new().write(true).open(&stdin).unwrap();
    w.write_all(b"from stdin\n").unwrap();
    wait_for_file(&out2, "from stdin\n");
    let _: Empty = v2
        .call(
            "CloseIO",
            &CloseIORequest {
                id: "c2".into(),
                stdin: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v2.wait("c2", "").exit_status, 0);
    drop(w);
    let d2 = v2.delete("c2", "").unwrap();
    assert_eq!(d2.exit_status, 0);
    assert_eq!(
        v2.delete("c2", "").unwrap(),
        d2,
        "a retried Delete gets the same answer"
    );

    // --- An exit while no client is connected is kept until Delete.
    v3.kill("c1", 9);
    drop(v2);
    drop(v3);
    std::thread::sleep(Duration::from_millis(500));
    let v2 = Shim::connect(&addr, "containerd.task.v2.Task");
    let w = v2.wait("c1", "");
    assert_eq!(w.exit_status, 137);
    let st = v2.state("c1", "");
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 137);
    // runc's own refusals carry their kind on the wire (runc is asked: the shim
    // does not check pause/resume against the state itself).
    let code = |r: ttrpc::Result<Empty>| match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("not an error status: {other:?}"),
    };
    let id = || "c1".to_string();
    let (c, msg) = code(v2.call(
        "Pause",
        &PauseRequest {
            id: id(),
            ..Default::default()
        },
    ));
    assert_eq!(c, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("not running"), "runc's words: {msg}");
    let (c, msg) = code(v2.call(
        "Resume",
        &ResumeRequest {
            id: id(),
            ..Default::default()
        },
    ));
    assert_eq!(c, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    let d = v2.delete("c1", "").unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 137));
    let e = v2.delete("c1", "").unwrap();
    assert_eq!(e, d);
    let err = v2
        .call::<_, StateResponse>(
            "State",
            &StateRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(format!("{err:?}").contains("NOT_FOUND"), "{err:?}");

    // --- Terminal: runc hands the pty over; ResizePty sets its size.
    let b3 = env.bundle(
        "c3",
        &["sh", "-c", "read x; stty size; exit 7"],
        true,
        "pod",
    );
    let stdin3 = env.path().join("c3-stdin");
    mkfifo(&stdin3);
    let out3 = env.path().join("logs/c3.out");
    v2.create(create_req(
        "c3",
        &b3,
        stdin3.to_str().unwrap(),
        &format!("file://{}", out3.display()),
        "",
        true,
    ));
    v2.start("c3", "");
    let _: Empty = v2
        .call(
            "ResizePty",
            &ResizePtyRequest {
                id: "c3".into(),
                width: 123,
                height: 45,
                ..Default::default()
            },
        )
        .unwrap();
    let mut w = fs::OpenOptions::new().write(true).open(&stdin3).unwrap();
    w.write_all(b"go\n").unwrap();
    assert_eq!(v2.wait("c3", "").exit_status, 7);
    wait_for_file(&out3, "45 123");
    v2.delete("c3", "").unwrap();

    // --- Shutdown: the shim leaves once no task is left, and removes its socket.
    let _: Empty = v2
        .call("Shutdown", &ShutdownRequest::default())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(shim_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_alive(shim_pid), "shim still running");
    assert!(!Path::new(addr.strip_prefix("unix://").unwrap()).exists());
}

#[test]
fn delete_action_cleans_up_after_a_dead_shim() {
    if !usable() {
        return;
    }
    let env = Env::new();
    let b = env.bundle("d1", &["sleep", "1000"], false, "pod-d");
    let addr = env.start_shim(&b, "d1");
    let shim_pid: i32 = fs::read_to_string(b.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = Shim::connect(&addr, "containerd.task.v2.Task");
    let pid = s.create(create_req("d1", &b, "", "", "", false)).pid;
    s.start("d1", "");
    drop(s);
    // The shim dies; its container keeps running.
    // SAFETY: plain kill(2) of the shim this test started.
    unsafe {
        libc::kill(shim_pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(pid_alive(pid as i32));

    let out = env.shim_cmd(&b, "d1", "delete").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(resp.exit_status, 137);
    assert!(resp.exited_at.is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid as i32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid_alive(pid as i32),
        "container still running after delete"
    );

    // A new start for the same group replaces the stale socket with a new shim.
    let addr2 = env.start_shim(&b, "d1");
    assert_eq!(addr2, addr);
    let new_pid: i32 = fs::read_to_string(b.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, shim_pid);
    let s = Shim::connect(&addr2, "containerd.task.v3.Task");
    let _: Empty = s
        .call("Shutdown", &ShutdownRequest::default())
        .unwrap_or_default();
}

/// Without `$TTRPC_ADDRESS`, events go through `<publish-binary> publish`.
#[test]
fn events_through_the_publish_binary() {
    if !usable() {
        return;
    }
    let mut env = Env::new();
    let script = env.path().join("publish.sh");
    let record = env.path().join("events.txt");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$* $(wc -c | tr -d ' ')\" >> {}\n",
            record.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    env.publish_binary = script.display().to_string();
    let b = env.bundle("p1", &["true"], false, "pod-p");
    let addr = env.start_shim(&b, "p1");
    let s = Shim::connect(&addr, "containerd.task.v2.Task");
    s.create(create_req("p1", &b, "", "", "", false));
    s.start("p1", "");
    assert_eq!(s.wait("p1", "").exit_status, 0);
    s.delete("p1", "").unwrap();
    let text = wait_for_file(&record, "/tasks/delete");
    let topics: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{text}"
    );
    for l in text.lines() {
        assert!(
            l.starts_with("--address /run/test-daemon.sock publish --topic /tasks/"),
            "{l}"
        );
        assert!(l.contains("--namespace test"), "{l}");
        let n: usize = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 10, "event payload on stdin: {l}");
    }
    let _: Empty = s
        .call("Shutdown", &ShutdownRequest::default())
        .unwrap_or_default();
}

/// One raw ttrpc request on its own connection (the ttrpc client gives up by itself at
/// the deadline, before the shim's answer arrives): the shim's response.
fn raw_call<Req: Message>(
    s: &mut UnixStream,
    method: &str,
    req: &Req,
    timeout: Duration,
) -> ttrpc::proto::Response {
    use std::io::Read;
    use ttrpc::proto::{Codec, MessageHeader, MESSAGE_HEADER_LENGTH};
    let request = ttrpc::proto::Request {
        service: "containerd.task.v3.Task".into(),
        method: method.into(),
        payload: req.write_to_bytes().unwrap(),
        timeout_nano: timeout.as_nanos() as i64,
        ..Default::default()
    };
    let body = request.encode().unwrap();
    let mut frame: Vec<u8> = MessageHeader::new_request(1, body.len() as u32).into();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut h = [0u8; MESSAGE_HEADER_LENGTH];
    s.read_exact(&mut h).unwrap();
    let mh = MessageHeader::from(&h);
    let mut body = vec![0u8; mh.length as usize];
    s.read_exact(&mut body).unwrap();
    <ttrpc::proto::Response as Codec>::decode(&body).unwrap()
}

fn sleep_exec(v3: &Shim, id: &str, exec_id: &str) {
    let spec = serde_json::json!({
        "args": ["sleep", "100"], "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}
    });
    let _: Empty = v3
        .call(
            "Exec",
            &ExecProcessRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                spec: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&spec).unwrap(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_alive(pid), "exec pid {pid} still running");
}

/// An exec whose caller gave up is killed: a Wait's deadline passes, or the connection
/// that started it closes while a Wait is pending.
#[test]
fn abandoned_execs_are_killed() {
    if !usable() {
        return;
    }
    let env = Env::new();
    let b = env.bundle("x1", &["sleep", "1000"], false, "pod-x");
    let addr = env.start_shim(&b, "x1");
    let sock = addr.strip_prefix("unix://").unwrap().to_string();
    let v3 = Shim::connect(&addr, "containerd.task.v3.Task");
    let pid = v3.create(create_req("x1", &b, "", "", "", false)).pid;
    v3.start("x1", "");

    // Wait with a 500 ms deadline: DEADLINE_EXCEEDED, the exec is killed and reaped.
    sleep_exec(&v3, "x1", "e1");
    let epid = v3.start("x1", "e1").pid as i32;
    assert!(pid_alive(epid));
    let wait = WaitRequest {
        id: "x1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut s = UnixStream::connect(&sock).unwrap();
    let res = raw_call(&mut s, "Wait", &wait, Duration::from_millis(500));
    let took = t0.elapsed();
    assert_eq!(res.status.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{res:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    wait_gone(epid);
    let st = v3.state("x1", "e1");
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 137);
    assert_eq!(v3.wait("x1", "e1").exit_status, 137);
    assert_eq!(v3.state("x1", "").status.enum_value(), Ok(Status::RUNNING));
    assert!(pid_alive(pid as i32));
    assert_eq!(v3.delete("x1", "e1").unwrap().exit_status, 137);

    // A Wait that ends in time leaves the exec alone (and gives its real status).
    sleep_exec(&v3, "x1", "e2");
    let epid = v3.start("x1", "e2").pid as i32;
    let waiter = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            let wait = WaitRequest {
                id: "x1".into(),
                exec_id: "e2".into(),
                ..Default::default()
            };
            raw_call(&mut s, "Wait", &wait, Duration::from_secs(10))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let _: Empty = v3
        .call(
            "Kill",
            &KillRequest {
                id: "x1".into(),
                exec_id: "e2".into(),
                signal: 15,
                ..Default::default()
            },
        )
        .unwrap();
    let res = waiter.join().unwrap();
    assert_eq!(res.status.code(), ttrpc::Code::OK, "{res:?}");
    assert_eq!(
        WaitResponse::parse_from_bytes(&res.payload)
            .unwrap()
            .exit_status,
        143
    );
    wait_gone(epid);
    v3.delete("x1", "e2").unwrap();

    // The connection that started the exec closes while a Wait (on another
    // connection, without a deadline) is pending: killed; the Wait gets 137.
    sleep_exec(&v3, "x1", "e3");
    let mut starter = UnixStream::connect(&sock).unwrap();
    let start = StartRequest {
        id: "x1".into(),
        exec_id: "e3".into(),
        ..Default::default()
    };
    let res = raw_call(&mut starter, "Start", &start, Duration::from_secs(10));
    assert_eq!(res.status.code(), ttrpc::Code::OK, "{res:?}");
    let epid = StartResponse::parse_from_bytes(&res.payload).unwrap().pid as i32;
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || Shim::connect(&addr, "containerd.task.v3.Task").wait("x1", "e3"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(epid));
    drop(starter);
    assert_eq!(waiter.join().unwrap().exit_status, 137);
    wait_gone(epid);
    assert_eq!(v3.state("x1", "e3").exit_status, 137);
    assert_eq!(v3.state("x1", "").status.enum_value(), Ok(Status::RUNNING));

    // Clean up.
    v3.kill("x1", 9);
    assert_eq!(v3.wait("x1", "").exit_status, 137);
    v3.delete("x1", "").unwrap();
    let _: Empty = v3
        .call("Shutdown", &ShutdownRequest::default())
        .unwrap_or_default();
}

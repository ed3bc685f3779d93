//! The state machine against the in-memory runtime: every verb in every state, the
//! codes it answers, and the exits it records.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::api::{CreateTaskRequest, Status};
use ttrpc::Code;

use super::*;
use crate::container::{LaunchConfig, Launcher, RuntimeFactory};
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::runtime::fake::{FakeRuntime, FakeStatus};
use crate::runtime::OciRuntime;

const SIGKILL: u32 = libc::SIGKILL as u32;
const SIGTERM: u32 = libc::SIGTERM as u32;
/// Longest a test waits for something that happens at once.
const SOON: Duration = Duration::from_secs(10);

struct Harness {
    tasks: Tasks,
    rt: Arc<FakeRuntime>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::new();
        let rt = FakeRuntime::new(reaper.clone());
        let rt2 = rt.clone();
        let factory: RuntimeFactory = Box::new(move |_, _| rt2.clone() as Arc<dyn OciRuntime>);
        let cfg = LaunchConfig {
            namespace: "test".into(),
            console_dir: dir.path().join("console"),
            default_runtime: "fake".into(),
            runc_root_base: dir.path().join("runc"),
        };
        let launcher = Launcher::new(cfg, reaper, Publisher::disabled(), factory);
        Harness {
            tasks: Tasks::new(launcher),
            rt,
            dir,
        }
    }

    fn request(&self, id: &str) -> CreateTaskRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        // A private PID namespace: init's exit ends the container's processes.
        std::fs::write(
            bundle.join("config.json"),
            r#"{"linux":{"namespaces":[{"type":"pid"}]}}"#,
        )
        .unwrap();
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        }
    }

    fn create(&self, id: &str) -> u32 {
        self.tasks.create(&self.request(id)).unwrap()
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.tasks.start(id, exec_id, crossbeam_channel::never())
    }

    fn add_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let spec = br#"{"args":["true"],"cwd":"/"}"#.to_vec();
        self.tasks
            .exec(id, exec_id, StdioConfig::default(), Some(spec))
    }

    fn wait(&self, id: &str, exec_id: &str) -> Result<Option<Exit>> {
        self.tasks.wait(
            id,
            exec_id,
            Some(Instant::now() + SOON),
            &crossbeam_channel::never(),
        )
    }

    fn status(&self, id: &str, exec_id: &str) -> Status {
        self.tasks.state(id, exec_id).unwrap().status
    }
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> Code {
    r.unwrap_err().code()
}

#[test]
fn create_start_exit_delete() {
    let h = Harness::new();
    let before = SystemTime::now();
    let pid = h.create("c1");
    assert!(pid > 0);
    assert_eq!(h.status("c1", ""), Status::CREATED);
    assert_eq!(h.tasks.task_pid("c1"), pid);

    assert_eq!(h.start("c1", "").unwrap(), pid);
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    assert_eq!(h.rt.status("c1"), Some(FakeStatus::Running));

    h.rt.init_exits("c1", 3);
    let exit = h.wait("c1", "").unwrap().expect("an exit");
    assert_eq!((exit.pid as u32, exit.status), (pid, 3));
    assert!(exit.at >= before && exit.at <= SystemTime::now());
    let st = h.tasks.state("c1", "").unwrap();
    assert_eq!(st.status, Status::STOPPED);
    assert_eq!(st.exit, Some(exit));
    assert_eq!((st.id.as_str(), st.pid), ("c1", pid));

    let d = h.tasks.delete("c1", "").unwrap();
    assert_eq!(
        d,
        Deleted {
            pid,
            exit: Some(exit)
        }
    );
    assert_eq!(
        h.rt.status("c1"),
        None,
        "the runtime's container is deleted"
    );
    assert_eq!(code(h.tasks.state("c1", "")), Code::NOT_FOUND);
    assert_eq!(h.tasks.task_count(), 0);
    // A retried Delete, and a late Wait, get the first answer.
    assert_eq!(h.tasks.delete("c1", "").unwrap(), d);
    assert_eq!(h.wait("c1", "").unwrap(), Some(exit));
}

#[test]
fn double_start_and_start_after_exit_are_failed_preconditions() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    assert_eq!(code(h.start("c1", "")), Code::FAILED_PRECONDITION);
    h.rt.init_exits("c1", 0);
    h.wait("c1", "").unwrap();
    assert_eq!(code(h.start("c1", "")), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.start("nope", "")), Code::NOT_FOUND);
    // Only the first start reached the runtime.
    let starts =
        h.rt.calls()
            .iter()
            .filter(|c| c.starts_with("start"))
            .count();
    assert_eq!(starts, 1);
}

#[test]
fn kill_of_a_created_task_ends_it() {
    let h = Harness::new();
    let pid = h.create("c1");
    h.tasks.kill("c1", "", SIGKILL, false).unwrap();
    let exit = h.wait("c1", "").unwrap().unwrap();
    assert_eq!((exit.pid as u32, exit.status), (pid, 128 + SIGKILL));
    assert_eq!(h.status("c1", ""), Status::STOPPED);
    let d = h.tasks.delete("c1", "").unwrap();
    assert_eq!(d.exit.map(|e| e.status), Some(128 + SIGKILL));
}

#[test]
fn kill_of_a_stopped_or_deleted_task_is_not_found() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.tasks.kill("c1", "", SIGTERM, false).unwrap();
    assert_eq!(h.wait("c1", "").unwrap().unwrap().status, 128 + SIGTERM);
    // The shim knows it exited: answered without asking the runtime.
    let calls = h.rt.calls().len();
    assert_eq!(
        code(h.tasks.kill("c1", "", SIGKILL, false)),
        Code::NOT_FOUND
    );
    assert_eq!(h.rt.calls().len(), calls);
    // `kill --all` still goes to the runtime (processes may outlive init).
    h.tasks.kill("c1", "", SIGKILL, true).unwrap();
    assert!(h.rt.calls().last().unwrap().ends_with("all=true"));

    h.tasks.delete("c1", "").unwrap();
    assert_eq!(
        code(h.tasks.kill("c1", "", SIGKILL, false)),
        Code::NOT_FOUND
    );
}

#[test]
fn kill_that_the_runtime_finds_not_running_is_not_found() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    // Init exited but is not reaped yet: runc answers, the shim says NotFound as
    // containerd's shim does.
    h.rt.fail_next("kill", "container not running");
    let e = h.tasks.kill("c1", "", SIGTERM, false).unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);
    assert!(e.to_string().contains("process already finished"), "{e}");
    h.rt.fail_next("kill", "unknown signal \"SIGFOO\"");
    assert_eq!(
        code(h.tasks.kill("c1", "", 99, false)),
        Code::INVALID_ARGUMENT
    );
}

#[test]
fn delete_while_running_is_refused() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    let e = h.tasks.delete("c1", "").unwrap_err();
    assert_eq!(e.code(), Code::FAILED_PRECONDITION);
    assert!(e.to_string().contains("\"c1\""), "names the task: {e}");
    assert_eq!(h.rt.status("c1"), Some(FakeStatus::Running));
    assert_eq!(h.status("c1", ""), Status::RUNNING);
}

#[test]
fn delete_of_a_created_task_kills_it_and_records_the_exit() {
    let h = Harness::new();
    let pid = h.create("c1");
    let d = h.tasks.delete("c1", "").unwrap();
    assert_eq!(d.pid, pid);
    assert_eq!(d.exit.map(|e| e.status), Some(128 + SIGKILL));
    assert!(h.rt.calls().iter().any(|c| c == "delete c1 force=true"));
}

#[test]
fn delete_of_a_task_the_runtime_lost_succeeds() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.rt.init_exits("c1", 0);
    h.wait("c1", "").unwrap();
    h.rt.fail_next("delete", "container does not exist");
    assert_eq!(h.tasks.delete("c1", "").unwrap().exit.unwrap().status, 0);
    // Any other runtime failure is the caller's to see, with its kind.
    h.create("c2");
    h.start("c2", "").unwrap();
    h.rt.init_exits("c2", 0);
    h.wait("c2", "").unwrap();
    h.rt.fail_next("delete", "unable to remove cgroup: device or resource busy");
    assert_eq!(code(h.tasks.delete("c2", "")), Code::UNKNOWN);
    assert_eq!(h.tasks.task_count(), 1, "c2 is kept for a retry");
}

#[test]
fn exec_lifecycle() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.add_exec("c1", "e1").unwrap();
    assert_eq!(h.status("c1", "e1"), Status::CREATED);
    assert_eq!(code(h.add_exec("c1", "e1")), Code::ALREADY_EXISTS);
    // Not started yet: nothing to signal.
    assert_eq!(
        code(h.tasks.kill("c1", "e1", SIGTERM, false)),
        Code::FAILED_PRECONDITION
    );

    let pid = h.start("c1", "e1").unwrap();
    assert_eq!(h.status("c1", "e1"), Status::RUNNING);
    assert_eq!(code(h.start("c1", "e1")), Code::FAILED_PRECONDITION);
    let pids = h.tasks.pids("c1").unwrap();
    assert!(pids.contains(&(pid, Some("e1".to_string()))), "{pids:?}");
    assert_eq!(
        code(h.tasks.delete("c1", "e1")),
        Code::FAILED_PRECONDITION,
        "a running exec"
    );

    h.tasks.kill("c1", "e1", SIGTERM, false).unwrap();
    let exit = h.wait("c1", "e1").unwrap().unwrap();
    assert_eq!((exit.pid as u32, exit.status), (pid, 128 + SIGTERM));
    assert_eq!(
        code(h.tasks.kill("c1", "e1", SIGTERM, false)),
        Code::NOT_FOUND,
        "already finished"
    );
    let st = h.tasks.state("c1", "e1").unwrap();
    assert_eq!((st.id.as_str(), st.status), ("e1", Status::STOPPED));
    // The init is untouched.
    assert_eq!(h.status("c1", ""), Status::RUNNING);

    let d = h.tasks.delete("c1", "e1").unwrap();
    assert_eq!(
        d,
        Deleted {
            pid,
            exit: Some(exit)
        }
    );
    assert_eq!(code(h.tasks.state("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(h.tasks.delete("c1", "e1").unwrap(), d, "retried");
}

#[test]
fn an_exec_that_exits_by_itself() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.add_exec("c1", "e1").unwrap();
    let pid = h.start("c1", "e1").unwrap();
    h.rt.exec_exits(pid, 7);
    assert_eq!(h.wait("c1", "e1").unwrap().unwrap().status, 7);
    // An exec never started is deleted with no exit.
    h.add_exec("c1", "e2").unwrap();
    let d = h.tasks.delete("c1", "e2").unwrap();
    assert_eq!(d, Deleted { pid: 0, exit: None });
}

#[test]
fn exec_on_a_stopped_container_is_a_failed_precondition() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.add_exec("c1", "early").unwrap();
    h.rt.init_exits("c1", 0);
    h.wait("c1", "").unwrap();
    assert_eq!(code(h.add_exec("c1", "e1")), Code::FAILED_PRECONDITION);
    // Registered before the exit, started after it.
    assert_eq!(code(h.start("c1", "early")), Code::FAILED_PRECONDITION);

    // The runtime saw the stop before the shim did.
    h.create("c2");
    h.start("c2", "").unwrap();
    h.add_exec("c2", "e1").unwrap();
    h.rt.fail_next("exec", "exec failed: cannot exec in a stopped container");
    assert_eq!(code(h.start("c2", "e1")), Code::FAILED_PRECONDITION);
}

#[test]
fn unknown_tasks_and_execs_are_not_found() {
    let h = Harness::new();
    assert_eq!(code(h.tasks.state("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(h.tasks.delete("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(h.wait("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(h.add_exec("nope", "e1")), Code::NOT_FOUND);
    h.create("c1");
    let e = h.start("c1", "nope").unwrap_err();
    assert_eq!(e.code(), Code::NOT_FOUND);
    assert!(e.to_string().contains("\"nope\""), "names the exec: {e}");
    assert_eq!(
        code(h.tasks.kill("c1", "nope", SIGKILL, false)),
        Code::NOT_FOUND
    );
    assert_eq!(code(h.tasks.delete("c1", "nope")), Code::NOT_FOUND);
    assert_eq!(code(h.tasks.state("c1", "nope")), Code::NOT_FOUND);
    assert_eq!(code(h.wait("c1", "nope")), Code::NOT_FOUND);
    assert_eq!(
        code(h.tasks.resize_pty("c1", "nope", 80, 24)),
        Code::NOT_FOUND
    );
}

#[test]
fn bad_requests_are_invalid_arguments() {
    let h = Harness::new();
    let mut req = h.request("c1");
    req.id = "../c1".into();
    assert_eq!(code(h.tasks.create(&req)), Code::INVALID_ARGUMENT);
    let mut req = h.request("c1");
    req.bundle = "relative/bundle".into();
    assert_eq!(code(h.tasks.create(&req)), Code::INVALID_ARGUMENT);
    let mut req = h.request("c1");
    req.stdout = "bogus://x".into();
    assert_eq!(code(h.tasks.create(&req)), Code::INVALID_ARGUMENT);
    let mut req = h.request("c1");
    req.checkpoint = "/cp".into();
    assert_eq!(code(h.tasks.create(&req)), Code::UNIMPLEMENTED);
    assert_eq!(h.tasks.task_count(), 0);
    assert!(h.rt.calls().is_empty(), "nothing reached the runtime");

    h.create("c1");
    assert_eq!(code(h.tasks.create(&h.request("c1"))), Code::ALREADY_EXISTS);
    let stdio = StdioConfig::default;
    assert_eq!(
        code(h.tasks.exec("c1", "e/1", stdio(), Some(b"{}".to_vec()))),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(h.tasks.exec("c1", "e1", stdio(), None)),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(h.tasks.exec("c1", "e1", stdio(), Some(b"[1]".to_vec()))),
        Code::INVALID_ARGUMENT
    );
}

#[test]
fn a_runtime_create_failure_keeps_its_kind_and_leaves_nothing() {
    let h = Harness::new();
    h.rt.fail_next(
        "create",
        "runc create failed: container with given ID already exists",
    );
    assert_eq!(code(h.tasks.create(&h.request("c1"))), Code::ALREADY_EXISTS);
    h.rt.fail_next(
        "create",
        "runc create failed: unable to start container process: exec: \"nope\": \
         executable file not found in $PATH",
    );
    let e = h.tasks.create(&h.request("c1")).unwrap_err();
    assert_eq!(e.code(), Code::UNKNOWN);
    assert!(e.to_string().contains("executable file not found"), "{e}");
    assert_eq!(h.tasks.task_count(), 0);
    // The id is free again.
    h.create("c1");
}

#[test]
fn pause_and_resume() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.tasks.pause("c1").unwrap();
    assert_eq!(h.status("c1", ""), Status::PAUSED);
    assert_eq!(code(h.tasks.pause("c1")), Code::FAILED_PRECONDITION);
    h.tasks.resume("c1").unwrap();
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    assert_eq!(code(h.tasks.resume("c1")), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.tasks.pause("nope")), Code::NOT_FOUND);
}

#[test]
fn update_of_a_stopped_task_is_refused() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    h.tasks
        .update("c1", br#"{"cpu":{"shares":512}}"#, false)
        .unwrap();
    assert!(h.rt.calls().iter().any(|c| c.contains("\"shares\":512")));
    h.rt.init_exits("c1", 0);
    h.wait("c1", "").unwrap();
    assert_eq!(
        code(h.tasks.update("c1", br#"{"cpu":{"shares":2}}"#, false)),
        Code::FAILED_PRECONDITION
    );
    // Reopening logs needs no running process.
    h.tasks.update("c1", b"", true).unwrap();
}

#[test]
fn wait_returns_once_the_process_exits() {
    let h = Arc::new(Harness::new());
    h.create("c1");
    h.start("c1", "").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    let waiter = std::thread::spawn(move || {
        tx.send(h2.wait("c1", "")).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "Wait returned before the exit"
    );
    h.rt.init_exits("c1", 42);
    let exit = rx.recv_timeout(SOON).unwrap().unwrap().unwrap();
    assert_eq!(exit.status, 42);
    waiter.join().unwrap();
}

#[test]
fn wait_gives_up_at_its_deadline_or_when_its_caller_leaves() {
    let h = Harness::new();
    h.create("c1");
    h.start("c1", "").unwrap();
    let deadline = Some(Instant::now() + Duration::from_millis(50));
    let never = crossbeam_channel::never();
    let r = h.tasks.wait("c1", "", deadline, &never);
    assert_eq!(code(r), Code::DEADLINE_EXCEEDED);
    let (gone_tx, gone) = crossbeam_channel::bounded::<()>(0);
    drop(gone_tx);
    assert_eq!(code(h.tasks.wait("c1", "", None, &gone)), Code::CANCELLED);
    assert_eq!(h.status("c1", ""), Status::RUNNING, "the task is untouched");
}

#[test]
fn shutdown_waits_for_the_last_task() {
    let h = Harness::new();
    h.create("c1");
    assert!(!h.tasks.shutdown());
    h.tasks.delete("c1", "").unwrap();
    assert!(h.tasks.shutdown());
    assert_eq!(
        code(h.tasks.create(&h.request("c2"))),
        Code::FAILED_PRECONDITION
    );
}

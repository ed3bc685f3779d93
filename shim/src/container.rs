//! A container: its init process and execs, how it is created (rootfs, stdio, the
//! runtime's `create`) and how an exec is started, and what happens when one of its
//! processes exits.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::topics;
use protobuf::Message;

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::mount::{mount_all, unmount_all, MountSpec};
use crate::process::{lock, read_pid, Process};
use crate::reaper::{Exit, ExitHandler, Reaper};
use crate::runc::{RuntimeConfig, RUNTIME_FILE};
use crate::runtime::{CreateOpts, ExecOpts, OciRuntime};
use crate::stdio::{PreparedIo, StdioConfig};
use crate::util::{process_user, timestamp_field, write_atomic, BundleConfig};

/// How long an exit waits for the process's output to be copied before it is reported.
pub const IO_DRAIN: Duration = Duration::from_secs(2);

/// Makes the runtime of a new container from its settings and its log file.
pub type RuntimeFactory = Box<dyn Fn(RuntimeConfig, PathBuf) -> Arc<dyn OciRuntime> + Send + Sync>;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Arc<dyn OciRuntime>,
    pub cfg: BundleConfig,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Orders this container's create/start/exec/delete.
    pub lifecycle: Mutex<()>,
    pub paused: AtomicBool,
    pub rootfs_mounted: bool,
}

impl Container {
    /// The init process (empty `exec_id`) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id:?} of task {:?} not found", self.id))
        })
    }

    pub fn all_processes(&self) -> Vec<Arc<Process>> {
        let mut v = vec![self.init.clone()];
        v.extend(lock(&self.execs).values().cloned());
        v
    }
}

/// Where and how containers are made.
pub struct LaunchConfig {
    pub namespace: String,
    /// Where console sockets are made (short paths: unix sockets are limited to 108 bytes).
    pub console_dir: PathBuf,
    pub default_runtime: String,
    pub runc_root_base: PathBuf,
}

/// Creates containers and starts execs, and hands their exits to the reaper.
pub struct Launcher {
    pub cfg: LaunchConfig,
    pub reaper: Arc<Reaper>,
    pub events: Publisher,
    new_runtime: RuntimeFactory,
    seq: AtomicU64,
}

impl Launcher {
    pub fn new(
        cfg: LaunchConfig,
        reaper: Arc<Reaper>,
        events: Publisher,
        new_runtime: RuntimeFactory,
    ) -> Self {
        Launcher {
            cfg,
            reaper,
            events,
            new_runtime,
            seq: AtomicU64::new(0),
        }
    }

    /// A number for a temporary file in a bundle (execs and updates run concurrently).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The reaper's callback for a container process: record the exit, then (off the
    /// reaper thread, which must never wait for a command) finish it.
    fn exit_handler(&self, c: &Arc<Container>, p: &Arc<Process>) -> ExitHandler {
        let (c, p, events) = (c.clone(), p.clone(), self.events.clone());
        Box::new(move |exit: Exit| {
            p.set_exited(exit);
            let (c2, p2) = (c.clone(), p.clone());
            let spawned = std::thread::Builder::new()
                .name("exit".into())
                .stack_size(256 * 1024)
                .spawn(move || finish_exit(&c2, &p2, &events, exit));
            if spawned.is_err() {
                p.set_handled();
            }
        })
    }

    fn runtime_config(&self, opts: Option<&RuncOptions>) -> RuntimeConfig {
        let binary = opts
            .map(|o| o.binary_name.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| self.cfg.default_runtime.clone());
        let base = opts
            .map(|o| o.root.clone())
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cfg.runc_root_base.clone());
        RuntimeConfig {
            binary,
            root: base.join(&self.cfg.namespace),
            systemd_cgroup: opts.is_some_and(|o| o.systemd_cgroup),
        }
    }

    pub fn create(&self, req: &CreateTaskRequest) -> Result<Arc<Container>> {
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "bundle path must be absolute: {:?}",
                req.bundle
            )));
        }
        let bcfg = BundleConfig::read(&bundle).map_err(|e| {
            Error::InvalidArgument(format!("read {}/config.json: {e}", bundle.display()))
        })?;
        let opts = match req.options.as_ref() {
            Some(any) if any.type_url.ends_with("containerd.runc.v1.Options") => Some(
                RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| Error::InvalidArgument(format!("bad runtime options: {e}")))?,
            ),
            _ => None,
        };
        let rcfg = self.runtime_config(opts.as_ref());
        fs::create_dir_all(&rcfg.root).map_err(|e| {
            Error::Internal(format!("create runtime root {}: {e}", rcfg.root.display()))
        })?;
        write_atomic(&bundle.join(RUNTIME_FILE), &rcfg.to_json())
            .map_err(|e| Error::Internal(format!("write {RUNTIME_FILE}: {e}")))?;
        let runtime = (self.new_runtime)(rcfg, bundle.join("log.json"));

        let rootfs = bundle.join("rootfs");
        let mounts: Vec<MountSpec> = req
            .rootfs
            .iter()
            .map(|m| MountSpec {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        if !mounts.is_empty() {
            fs::create_dir_all(&rootfs)
                .map_err(|e| Error::Internal(format!("mkdir {}: {e}", rootfs.display())))?;
            mount_all(&mounts, &rootfs)
                .map_err(|e| Error::Internal(format!("mount rootfs: {e}")))?;
        }
        let undo_mounts = || {
            if !mounts.is_empty() {
                let _ = unmount_all(&rootfs);
            }
        };

        let stdio = StdioConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut pio = match PreparedIo::prepare(&stdio, (bcfg.uid, bcfg.gid), &self.cfg.console_dir)
        {
            Ok(p) => p,
            Err(e) => {
                undo_mounts();
                return Err(Error::stdio(e));
            }
        };
        let pid_file = bundle.join("init.pid");
        let _ = fs::remove_file(&pid_file);
        let console = pio.console_socket().map(Path::to_path_buf);
        let created = runtime.create(
            &req.id,
            &CreateOpts {
                bundle: &bundle,
                pid_file: &pid_file,
                console_socket: console.as_deref(),
                no_pivot: opts.as_ref().is_some_and(|o| o.no_pivot_root),
                no_new_keyring: opts.as_ref().is_some_and(|o| o.no_new_keyring),
            },
            pio.child_stdio(),
        );
        // runc killed mid-create may leave its cgroup that `delete` cannot see.
        let remove_cgroup = || {
            if let Some(p) = bcfg.cgroups_path.as_deref() {
                crate::cgroup::remove_leftover(Path::new(crate::stats::CGROUP_ROOT), p);
            }
        };
        if let Err(e) = created {
            let _ = runtime.delete(&req.id, true);
            remove_cgroup();
            undo_mounts();
            return Err(e.into());
        }
        let fail = |msg: String| {
            let _ = runtime.delete(&req.id, true);
            remove_cgroup();
            undo_mounts();
            Error::Internal(msg)
        };
        let pid = read_pid(&pid_file).map_err(|e| fail(e.to_string()))?;
        let io = pio.start().map_err(|e| fail(format!("stdio: {e}")))?;

        let init = Arc::new(Process::new(&req.id, "", stdio, None));
        {
            let mut st = lock(&init.st);
            st.pid = pid;
        }
        *lock(&init.io) = Some(Arc::new(io));
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle,
            runtime,
            cfg: bcfg,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(()),
            paused: AtomicBool::new(false),
            rootfs_mounted: !mounts.is_empty(),
        });
        self.reaper.watch(pid as i32, self.exit_handler(&c, &init));
        Ok(c)
    }

    pub fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<u32> {
        if c.init.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "task {:?} is not running",
                c.id
            )));
        }
        let n = self.next_seq();
        let process_file = c.bundle.join(format!(".exec-{n}.json"));
        let pid_file = c.bundle.join(format!(".exec-{n}.pid"));
        let log = c.bundle.join(format!(".exec-{n}.log.json"));
        let spec = p.spec.clone().unwrap_or_default();
        let owner = serde_json::from_slice::<serde_json::Value>(&spec)
            .map(|v| process_user(&v))
            .unwrap_or((0, 0));
        let cleanup = || {
            for f in [&process_file, &pid_file, &log] {
                let _ = fs::remove_file(f);
            }
        };
        let res = (|| {
            write_atomic(&process_file, &spec)
                .map_err(|e| Error::Internal(format!("write exec process: {e}")))?;
            let mut pio = PreparedIo::prepare(&p.stdio, owner, &self.cfg.console_dir)
                .map_err(Error::stdio)?;
            let console = pio.console_socket().map(Path::to_path_buf);
            c.runtime.exec(
                &c.id,
                &ExecOpts {
                    process_file: &process_file,
                    pid_file: &pid_file,
                    console_socket: console.as_deref(),
                    log: &log,
                },
                pio.child_stdio(),
            )?;
            let pid = read_pid(&pid_file).map_err(|e| Error::Internal(e.to_string()))?;
            let io = match pio.start() {
                Ok(io) => io,
                Err(e) => {
                    let _ = c.runtime.signal(pid, libc::SIGKILL);
                    // Still watch it, so the exit is recorded.
                    {
                        let mut st = lock(&p.st);
                        st.pid = pid;
                        st.started = true;
                    }
                    self.reaper.watch(pid as i32, self.exit_handler(c, p));
                    return Err(Error::Internal(format!("stdio: {e}")));
                }
            };
            *lock(&p.io) = Some(Arc::new(io));
            {
                let mut st = lock(&p.st);
                st.pid = pid;
                st.started = true;
            }
            self.reaper.watch(pid as i32, self.exit_handler(c, p));
            Ok(pid)
        })();
        cleanup();
        res
    }
}

pub fn reopen_logs(c: &Container) -> std::io::Result<()> {
    for p in c.all_processes() {
        if let Some(io) = p.io() {
            io.reopen_logs()?;
        }
    }
    Ok(())
}

fn finish_exit(c: &Container, p: &Process, events: &Publisher, exit: Exit) {
    if p.exec_id.is_empty() && c.cfg.shared_pid_ns {
        // No private PID namespace: nothing killed the other processes with init.
        if let Err(e) = c.runtime.kill(&c.id, libc::SIGKILL as u32, true) {
            log::debug!("task {}: kill --all after init exit: {e}", c.id);
        }
    }
    if let Some(io) = p.io() {
        if !io.wait_drained(IO_DRAIN) {
            log::debug!("task {} {}: output still open at exit", c.id, p.exec_id);
        }
    }
    p.set_handled();
    p.wait_announced(Duration::from_secs(5));
    log::info!(
        "task {} process {} (pid {}) exited with status {}",
        c.id,
        p.event_id(),
        exit.pid,
        exit.status
    );
    events.publish(
        topics::TASK_EXIT_EVENT_TOPIC,
        TaskExit {
            container_id: c.id.clone(),
            id: p.event_id(),
            pid: exit.pid as u32,
            exit_status: exit.status,
            exited_at: timestamp_field(Some(exit.at)),
            ..Default::default()
        },
    );
}

//! `berthctl run` and `berthctl tasks ...`: the Tasks service.

use std::io::{self, Write};

use anyhow::{anyhow, bail, Result};
use berth_api::tasks::v1::run_response::Event;
use berth_api::tasks::v1::tasks_client::TasksClient;
use berth_api::tasks::v1::{
    output, task, ExecTaskRequest, KillTaskRequest, ListTasksRequest, RemoveTaskRequest,
    RunRequest, Task, WaitTaskRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::cli::{Format, RunArgs, TasksCommand};
use crate::connect::{connect, MAX_MESSAGE};
use crate::error::{render, Exit};
use crate::format::{now_nanos, relative_time, rfc3339, table};
use crate::output::{print, print_json};

async fn client(address: &str) -> Result<TasksClient<Channel>> {
    Ok(TasksClient::new(connect(address).await?).max_decoding_message_size(MAX_MESSAGE))
}

/// Linux signal numbers by name, for `kill -s`.
const SIGNALS: &[(&str, u32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("WINCH", 28),
];

/// `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("signal {n} is out of range (1-64)"));
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("unknown signal {s:?} (use a name like KILL or a number)"))
}

pub fn status_name(status: i32) -> &'static str {
    match task::Status::try_from(status).unwrap_or(task::Status::Unknown) {
        task::Status::Created => "created",
        task::Status::Running => "running",
        task::Status::Exited => "exited",
        task::Status::Unknown => "unknown",
    }
}

fn is_exited(t: &Task) -> bool {
    t.status == task::Status::Exited as i32
}

fn task_json(t: &Task) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "image": t.image,
        "args": t.args,
        "tty": t.tty,
        "status": status_name(t.status),
        "pid": if t.pid == 0 { Value::Null } else { json!(t.pid) },
        "exitCode": if is_exited(t) { json!(t.exit_code) } else { Value::Null },
        "createdAt": rfc3339(t.created_at),
        "startedAt": rfc3339(t.started_at),
        "finishedAt": rfc3339(t.finished_at),
        "reason": t.reason,
        "sandboxId": t.sandbox_id,
        "logPath": t.log_path,
        "bundle": t.bundle,
        "shimAddress": t.shim_address,
        "autoRemove": t.auto_remove,
    })
}

pub fn tasks_table(tasks: &[Task], now: i64) -> String {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.id.chars().take(12).collect(),
                t.image.clone(),
                if t.pid == 0 {
                    "-".into()
                } else {
                    t.pid.to_string()
                },
                status_name(t.status).to_string(),
                if is_exited(t) {
                    t.exit_code.to_string()
                } else {
                    "-".into()
                },
                relative_time(t.created_at, now),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ID",
            "IMAGE",
            "PID",
            "STATUS",
            "EXIT CODE",
            "CREATED",
        ],
        rows,
    )
}

/// `berthctl run`: without `-d`, prints the task's output as it comes and
/// exits with its exit code.
pub async fn run(address: &str, args: RunArgs) -> Result<()> {
    let mut c = client(address).await?;
    let detach = args.detach;
    let mut stream = c
        .run(RunRequest {
            image: args.image,
            name: args.name.unwrap_or_default(),
            args: args.command,
            tty: args.tty,
            detach,
            rm: args.rm,
            env: args.env,
        })
        .await?
        .into_inner();
    let mut name = String::new();
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Started(t)) => {
                if detach {
                    return print(&t.id);
                }
                name = t.name;
            }
            Some(Event::Output(o)) => {
                if o.stream == output::Stream::Stderr as i32 {
                    let mut e = io::stderr().lock();
                    e.write_all(&o.data)?;
                    e.flush()?;
                } else {
                    let mut out = io::stdout().lock();
                    out.write_all(&o.data)?;
                    out.flush()?;
                }
            }
            Some(Event::Exit(x)) => {
                if x.status == task::Status::Unknown as i32 {
                    eprintln!("berthctl: task {name}: {}", x.reason);
                    return Err(Exit(255).into());
                }
                return match x.exit_code {
                    0 => Ok(()),
                    code => Err(Exit(code.min(255) as u8).into()),
                };
            }
            None => {}
        }
    }
    if detach {
        bail!("berthd ended the run without reporting the task");
    }
    Err(anyhow!("berthd ended the run of {name} before it exited"))
}

/// Runs `op` on each name, reporting each failure on its own line and
/// failing at the end if any did.
async fn each<F, Fut>(names: Vec<String>, mut op: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for name in names {
        match op(name.clone()).await {
            Ok(()) => print(&name)?,
            Err(status) => {
                failed = true;
                eprintln!("berthctl: {}", render(&status.into()));
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

pub async fn tasks(address: &str, cmd: TasksCommand) -> Result<()> {
    let mut c = client(address).await?;
    match cmd {
        TasksCommand::Ls { format, quiet } => {
            let tasks = c.list(ListTasksRequest {}).await?.into_inner().tasks;
            if quiet {
                let names: Vec<String> = tasks.into_iter().map(|t| t.name).collect();
                return if names.is_empty() {
                    Ok(())
                } else {
                    print(names.join("\n"))
                };
            }
            match format {
                Format::Json => print_json(&Value::Array(tasks.iter().map(task_json).collect())),
                Format::Table => print(tasks_table(&tasks, now_nanos())),
            }
        }
        TasksCommand::Kill { signal, all, names } => {
            each(names, |name| {
                let mut c = c.clone();
                async move {
                    c.kill(KillTaskRequest { name, signal, all }).await?;
                    Ok(())
                }
            })
            .await
        }
        TasksCommand::Rm { force, names } => {
            each(names, |name| {
                let mut c = c.clone();
                async move {
                    c.remove(RemoveTaskRequest { name, force }).await?;
                    Ok(())
                }
            })
            .await
        }
        TasksCommand::Wait { names } => {
            let mut worst = 0u32;
            for name in names {
                let exit = c
                    .wait(WaitTaskRequest { name })
                    .await?
                    .into_inner()
                    .exit
                    .unwrap_or_default();
                print(exit.exit_code)?;
                worst = worst.max(exit.exit_code);
            }
            if worst != 0 {
                return Err(Exit(worst.min(255) as u8).into());
            }
            Ok(())
        }
        TasksCommand::Exec {
            timeout,
            output_limit,
            name,
            command,
        } => exec(&mut c, name, command, timeout, output_limit).await,
    }
}

/// Exit status of `tasks exec` when the command timed out, as timeout(1) has it.
const TIMED_OUT: u8 = 124;

async fn exec(
    c: &mut TasksClient<Channel>,
    name: String,
    args: Vec<String>,
    timeout: Option<f64>,
    output_limit: Option<u64>,
) -> Result<()> {
    let timeout_ms = timeout.map(|t| ((t * 1000.0).ceil() as u64).max(1));
    let res = c
        .exec(ExecTaskRequest {
            name,
            args,
            timeout_ms: timeout_ms.unwrap_or(0),
            output_limit: output_limit.unwrap_or(0),
        })
        .await;
    let out = match res {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
            eprintln!("berthctl: {}", render(&status.into()));
            return Err(Exit(TIMED_OUT).into());
        }
        Err(status) => return Err(status.into()),
    };
    {
        let mut o = io::stdout().lock();
        o.write_all(&out.stdout)?;
        o.flush()?;
    }
    {
        let mut e = io::stderr().lock();
        e.write_all(&out.stderr)?;
        if out.truncated {
            writeln!(e, "berthctl: output truncated")?;
        }
        e.flush()?;
    }
    match out.exit_code {
        0 => Ok(()),
        // A negative code (never from runc) or one past 255 still fails.
        code => Err(Exit(u8::try_from(code).unwrap_or(255).max(1)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn table_columns() {
        let t = Task {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            image: "busybox".into(),
            status: task::Status::Exited as i32,
            exit_code: 137,
            ..Default::default()
        };
        let out = tasks_table(std::slice::from_ref(&t), 0);
        assert!(out.starts_with("NAME"), "{out}");
        assert!(out.contains("EXIT CODE") && out.contains("137") && out.contains("exited"));
        assert!(out.contains("0123456789ab") && !out.contains("0123456789abc "));
        let j = task_json(&t);
        assert_eq!(j["exitCode"], 137);
        assert_eq!(j["pid"], Value::Null);
        let running = Task {
            status: task::Status::Running as i32,
            pid: 42,
            ..t
        };
        let j = task_json(&running);
        assert_eq!(j["exitCode"], Value::Null);
        assert_eq!(j["pid"], 42);
        assert_eq!(j["status"], "running");
    }
}

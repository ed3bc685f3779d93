//! `berth.tasks.v1.Tasks`: the native API over the task service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_api::tasks::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{TaskError, TaskService};

/// Output kept per stream of an Exec when the request sets no limit: room for
/// what a probe or a debugging command prints, bounded so a runaway command
/// cannot make berthd hold (and send) gigabytes.
pub const DEFAULT_EXEC_OUTPUT: usize = 16 << 20;

pub struct TasksApi {
    pub svc: Arc<TaskService>,
}

type GrpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn event(e: pb::run_response::Event) -> pb::RunResponse {
    pb::RunResponse { event: Some(e) }
}

impl TasksApi {
    /// A task `berthctl` may act on: the CRI's containers belong to kubelet,
    /// and removing one behind its back would corrupt its view of the pod.
    fn native(&self, name: &str) -> Result<std::sync::Arc<super::Task>, Status> {
        let task = self.svc.lookup(name)?;
        if task.record().kind != super::TaskKind::Native {
            return Err(TaskError::NotFound(format!(
                "task {name} not found (it is a CRI container; use crictl)"
            ))
            .into());
        }
        Ok(task)
    }
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksApi {
    type RunStream = GrpcStream<pb::RunResponse>;

    async fn run(&self, req: Request<pb::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        let req = req.into_inner();
        let follow = !req.detach;
        let (task, follower) = self.svc.run(req, follow).await?;
        let started = task.record().to_pb();
        let stream = async_stream::try_stream! {
            yield event(pb::run_response::Event::Started(started));
            if let Some(mut f) = follower {
                let mut rx = task.subscribe();
                loop {
                    // The exit is read before the log: whatever was written
                    // before it was announced is in the file by now.
                    let exited = rx.borrow_and_update().clone();
                    let chunks = f
                        .read_available()
                        .await
                        .map_err(TaskError::io("reading the task's log"))?;
                    for c in chunks {
                        yield event(pb::run_response::Event::Output(c.to_pb()));
                    }
                    if let Some(exit) = exited {
                        if let Some(c) = f.finish() {
                            yield event(pb::run_response::Event::Output(c.to_pb()));
                        }
                        yield event(pb::run_response::Event::Exit(exit));
                        break;
                    }
                    tokio::select! {
                        r = rx.changed() => {
                            if r.is_err() {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(
        &self,
        _req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let tasks = self.svc.list().iter().map(|r| r.to_pb()).collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn get(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let task = self.native(&req.into_inner().name)?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task.record().to_pb()),
        }))
    }

    async fn kill(
        &self,
        req: Request<pb::KillTaskRequest>,
    ) -> Result<Response<pb::KillTaskResponse>, Status> {
        let req = req.into_inner();
        let id = self.native(&req.name)?.id.clone();
        self.svc.kill(&id, req.signal, req.all).await?;
        Ok(Response::new(pb::KillTaskResponse {}))
    }

    async fn wait(
        &self,
        req: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let id = self.native(&req.into_inner().name)?.id.clone();
        let exit = self.svc.wait(&id).await?;
        Ok(Response::new(pb::WaitTaskResponse { exit: Some(exit) }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveTaskRequest>,
    ) -> Result<Response<pb::RemoveTaskResponse>, Status> {
        let req = req.into_inner();
        let id = self.native(&req.name)?.id.clone();
        self.svc.remove(&id, req.force).await?;
        Ok(Response::new(pb::RemoveTaskResponse {}))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecTaskRequest>,
    ) -> Result<Response<pb::ExecTaskResponse>, Status> {
        let req = req.into_inner();
        let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
        let cap = match req.output_limit {
            0 => DEFAULT_EXEC_OUTPUT,
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(DEFAULT_EXEC_OUTPUT),
        };
        let out = self
            .svc
            .exec_sync(&self.native(&req.name)?.id.clone(), req.args, timeout, cap)
            .await?;
        Ok(Response::new(pb::ExecTaskResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            truncated: out.truncated,
        }))
    }
}

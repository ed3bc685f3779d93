// STUB
use std::time::Duration;
use super::{TaskError, TaskService};
pub struct ExecOutput { pub stdout: Vec<u8>, pub stderr: Vec<u8>, pub exit_code: i32, pub truncated: bool }
impl TaskService { pub async fn exec_sync(&self, _id: &str, _cmd: Vec<String>, _t: Option<Duration>, _cap: usize) -> Result<ExecOutput, TaskError> { todo!() } }

//! Writing results to stdout. Unlike `println!`, these return the error, so
//! a closed pipe (`berthctl images ls | head -1`) ends quietly, not in a panic.

use std::fmt::Display;
use std::io::{self, Write};

use anyhow::Result;
use std::future::Future;

use crate::error::{render, Exit};
use serde_json::Value;

/// Prints `text` and a newline.
pub fn print(text: impl Display) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Prints indented JSON.
pub fn print_json(value: &Value) -> Result<()> {
    print(serde_json::to_string_pretty(value)?)
}

/// Runs `op` on each name, printing the ones that succeeded and an error
/// line for each that failed; keeps going so that one bad name does not
/// spare the rest, and fails at the end if any did.
pub async fn for_each_name<F, Fut>(names: Vec<String>, mut op: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
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

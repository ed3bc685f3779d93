//! Writing results to stdout. Unlike `println!`, these return the error, so
//! a closed pipe (`berthctl images ls | head -1`) ends quietly, not in a panic.

use std::fmt::Display;
use std::io::{self, Write};

use anyhow::Result;
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

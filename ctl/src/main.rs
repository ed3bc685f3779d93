//! berthctl: command-line client for berthd's native gRPC API.

mod archive;
mod cli;
mod connect;
mod content;
mod error;
mod format;
mod images;
mod output;
mod progress;
mod snapshots;
mod system;
mod tasks;
mod version;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, ImagesCommand, User};
use error::{report, Exit, INTERRUPTED};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (message, code) = report(&err);
            if let Some(message) = message {
                eprintln!("berthctl: {message}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(mut cli: Cli) -> Result<()> {
    // Needs no daemon, runtime or password.
    match cli.command {
        Command::Completion { shell } => return completion(shell),
        Command::Man { dir } => return man(&dir),
        _ => {}
    }
    // Before the runtime starts: the prompt blocks, and Ctrl-C at it should
    // kill the process the ordinary way.
    prompt_password(&mut cli.command)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let address = cli.address;
    let command = cli.command;
    let result = rt.block_on(async move {
        tokio::select! {
            r = dispatch(&address, command) => r,
            // Returning drops the command's future and with it any RPC stream,
            // which cancels the call on the daemon.
            _ = tokio::signal::ctrl_c() => Err(Exit(INTERRUPTED).into()),
        }
    });
    // A blocking read of stdin (import -) must not hold up the exit.
    rt.shutdown_background();
    result
}

async fn dispatch(address: &str, command: Command) -> Result<()> {
    match command {
        Command::Images(cmd) => images::run(address, cmd).await,
        Command::Content(cmd) => content::run(address, cmd).await,
        Command::Snapshots(cmd) => snapshots::run(address, cmd).await,
        Command::Run(args) => tasks::run(address, args).await,
        Command::Tasks(cmd) => tasks::tasks(address, cmd).await,
        Command::Version => version::run(address).await,
        Command::Info { format } => system::info(address, format).await,
        Command::Events { topics, format } => system::events(address, topics, format).await,
        Command::Completion { shell } => completion(shell),
        Command::Man { dir } => man(&dir),
    }
}

fn man(dir: &std::path::Path) -> Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages to {}", dir.display()))
}

fn completion(shell: clap_complete::Shell) -> Result<()> {
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "berthctl", &mut out);
    out.flush()?;
    Ok(())
}

/// Asks for the registry password when `--user` named only a user.
fn prompt_password(command: &mut Command) -> Result<()> {
    let user: &mut Option<User> = match command {
        Command::Images(ImagesCommand::Pull(a)) => &mut a.registry.user,
        Command::Images(ImagesCommand::Push(a)) => &mut a.registry.user,
        _ => return Ok(()),
    };
    let Some(user) = user else { return Ok(()) };
    if user.password.is_some() {
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        bail!(
            "no password for {}: use --user USER:PASSWORD or run on a terminal",
            user.username
        );
    }
    let term = console::Term::stderr();
    term.write_str(&format!("Password for {}: ", user.username))?;
    let password = term
        .read_secure_line()
        .context("cannot read the password")?;
    user.password = Some(password);
    Ok(())
}

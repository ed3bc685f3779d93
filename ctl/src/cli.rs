//! Command-line grammar (clap derive). Parsing helpers here are pure so they
//! can be unit-tested without a daemon.

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_ADDRESS: &str = "/run/berth/berth.sock";

#[derive(Debug, Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Command-line client for berthd",
    propagate_version = true,
    infer_subcommands = false
)]
pub struct Cli {
    /// Path of berthd's gRPC socket
    #[arg(
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = DEFAULT_ADDRESS,
        value_name = "SOCK"
    )]
    pub address: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage images
    #[command(subcommand, visible_aliases = ["image", "i"])]
    Images(ImagesCommand),
    /// Manage blobs in the content store
    #[command(subcommand)]
    Content(ContentCommand),
    /// Manage the snapshots layers are unpacked into
    #[command(subcommand, visible_alias = "snapshot")]
    Snapshots(SnapshotsCommand),
    /// Run a command in a new task (a container) from an image
    Run(RunArgs),
    /// Manage tasks (containers `run` started)
    #[command(subcommand, visible_alias = "task")]
    Tasks(TasksCommand),
    /// Show client and daemon versions
    Version,
    /// Show the daemon's version, config, runtime handlers, CNI network,
    /// storage and the health of each component
    Info {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Stream what the daemon does as it happens (images, pods, containers,
    /// tasks, shims, garbage collection) until interrupted
    Events {
        /// Only topics starting with this (e.g. /pods/, /images/); repeatable
        #[arg(long = "topic", value_name = "PREFIX")]
        topics: Vec<String>,
        /// Output format: a line per event, or a JSON object per line
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (roff, one per command) into DIR, as the
    /// Debian package installs them
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Fetch an image from a registry
    Pull(PullArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show an image record with its manifest and config
    Inspect {
        /// Image name
        reference: String,
    },
    /// Remove image names (content nothing else uses is collected)
    #[command(visible_alias = "remove")]
    Rm {
        /// Wait for garbage collection before returning
        #[arg(long)]
        sync: bool,
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Give an image another name
    Tag { source: String, target: String },
    /// Upload an image to a registry
    Push(PushArgs),
    /// Import an OCI layout or docker-save tar archive
    Import {
        /// Name for images whose archive carries none
        #[arg(long, value_name = "NAME")]
        base_name: Option<String>,
        /// Archive to read, or - for standard input
        #[arg(value_name = "FILE|-")]
        file: String,
    },
    /// Export images as an OCI layout tar archive
    Export {
        /// File to write, or - for standard output
        #[arg(short, long, value_name = "FILE|-", default_value = "-")]
        output: String,
        /// Include every platform of multi-platform images
        #[arg(long)]
        all_platforms: bool,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Mount an image's root filesystem read-only on a directory
    Mount {
        /// Image name
        reference: String,
        /// Existing directory to mount on
        target: String,
    },
    /// Unmount a directory `images mount` mounted
    Unmount { target: String },
    /// Show unpacked size per image, unique and shared with other images
    Usage {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Images to show (default: all)
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots
    #[command(visible_alias = "list")]
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print names only
        #[arg(short, long, conflicts_with = "format")]
        quiet: bool,
    },
    /// Show one snapshot as JSON
    Info { name: String },
    /// Show how much the snapshots hold
    Usage {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove snapshots no image uses
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the task's id
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the task once it has exited
    #[arg(long)]
    pub rm: bool,
    /// Give the task a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Task name (default: generated from the image name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Set an environment variable
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Image name
    pub image: String,
    /// Command and arguments, replacing the image's Cmd (after `--` when they
    /// start with a dash)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks
    #[command(visible_alias = "list")]
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print names only
        #[arg(short, long, conflicts_with = "format")]
        quiet: bool,
    },
    /// Send a signal to running tasks
    Kill {
        /// Signal name or number (KILL by default, like `docker kill`: busybox
        /// and many PID 1s ignore TERM)
        #[arg(short, long, default_value = "KILL", value_parser = crate::tasks::parse_signal)]
        signal: u32,
        /// Signal every process of the task, not only its first
        #[arg(short, long)]
        all: bool,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove tasks that have exited
    #[command(visible_alias = "remove")]
    Rm {
        /// Kill running tasks first
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Wait for tasks to exit and print their exit codes
    Wait {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Run a command in a running task, print its output and exit with its
    /// exit code
    Exec {
        /// Kill the command after this many seconds (exit status 124)
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<f64>,
        /// Keep at most this many bytes of each output stream (for tests)
        #[arg(long, hide = true, value_name = "BYTES")]
        output_limit: Option<u64>,
        #[arg(value_name = "NAME")]
        name: String,
        /// Command and arguments (after `--` when they start with a dash)
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t <= 1e9 => Ok(t),
        _ => Err(format!("{s:?} is not a number of seconds above 0")),
    }
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry
    #[arg(long)]
    pub plain_http: bool,
    /// Skip TLS certificate verification
    #[arg(long)]
    pub skip_verify: bool,
    /// Registry credentials; prompts for the password when it is left out
    #[arg(long, short = 'u', value_name = "USER[:PASSWORD]", value_parser = parse_user)]
    pub user: Option<User>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Platform to pull, as os/arch[/variant] (default: the daemon's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    pub platform: Option<String>,
    /// Image reference, e.g. docker.io/library/busybox:latest
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Local image name
    pub reference: String,
    /// Remote reference (default: the local name)
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print names only
    #[arg(short, long, conflicts_with = "format")]
    pub quiet: bool,
    /// Exact names, or prefixes ending in '*'
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ContentCommand {
    /// List blobs and in-progress ingests
    #[command(visible_alias = "list")]
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print digests only
        #[arg(short, long, conflicts_with = "format")]
        quiet: bool,
    },
    /// Delete blobs
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "DIGEST")]
        digests: Vec<String>,
    },
    /// Collect unreferenced blobs now
    Prune,
    /// Show how much the content store holds
    Usage {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Registry credentials from `--user`; the password may be prompted for later.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub password: Option<String>,
}

// Hand-written so a password never lands in a debug print.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub fn parse_user(s: &str) -> Result<User, String> {
    // Split on the first ':' only: passwords may contain colons.
    let (username, password) = match s.split_once(':') {
        Some((u, p)) => (u, Some(p.to_string())),
        None => (s, None),
    };
    if username.is_empty() {
        return Err("the user name is empty".into());
    }
    Ok(User {
        username: username.to_string(),
        password,
    })
}

pub fn parse_platform(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{s:?} is not a platform: expected os/arch or os/arch/variant, e.g. linux/arm64/v8"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berthctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_splits_on_first_colon() {
        assert_eq!(
            parse_user("alice:se:cret").unwrap(),
            User {
                username: "alice".into(),
                password: Some("se:cret".into())
            }
        );
        assert_eq!(parse_user("bob").unwrap().password, None);
        assert_eq!(parse_user("bob:").unwrap().password, Some(String::new()));
        assert!(parse_user(":pw").is_err());
        assert!(parse_user("").is_err());
    }

    #[test]
    fn user_debug_hides_password() {
        let u = parse_user("alice:hunter2").unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
    }

    #[test]
    fn platform_validation() {
        assert!(parse_platform("linux/amd64").is_ok());
        assert!(parse_platform("linux/arm64/v8").is_ok());
        assert!(parse_platform("linux").is_err());
        assert!(parse_platform("linux/").is_err());
        assert!(parse_platform("a/b/c/d").is_err());
    }

    #[test]
    fn pull_flags() {
        let cli = parse(&[
            "--address",
            "/tmp/b.sock",
            "images",
            "pull",
            "--plain-http",
            "--skip-verify",
            "--user",
            "u:p",
            "--platform",
            "linux/arm64",
            "busybox",
        ])
        .unwrap();
        assert_eq!(cli.address, "/tmp/b.sock");
        let Command::Images(ImagesCommand::Pull(p)) = cli.command else {
            panic!("not a pull: {:?}", cli.command)
        };
        assert!(p.registry.plain_http && p.registry.skip_verify);
        assert_eq!(p.registry.user.unwrap().username, "u");
        assert_eq!(p.platform.as_deref(), Some("linux/arm64"));
        assert_eq!(p.reference, "busybox");
    }

    #[test]
    fn aliases() {
        for args in [
            &["image", "ls"][..],
            &["i", "list"],
            &["images", "ls", "-q"],
        ] {
            let cli = parse(args).unwrap();
            assert!(matches!(cli.command, Command::Images(ImagesCommand::Ls(_))));
        }
        let cli = parse(&["i", "remove", "--sync", "a", "b"]).unwrap();
        let Command::Images(ImagesCommand::Rm { sync, references }) = cli.command else {
            panic!("not rm")
        };
        assert!(sync);
        assert_eq!(references, ["a", "b"]);
        assert!(matches!(
            parse(&["content", "list"]).unwrap().command,
            Command::Content(ContentCommand::Ls { .. })
        ));
    }

    #[test]
    fn address_flag_is_global_and_defaults() {
        // The env var would override the default; only check when unset.
        if std::env::var_os("BERTH_ADDRESS").is_none() {
            assert_eq!(parse(&["version"]).unwrap().address, DEFAULT_ADDRESS);
        }
        let cli = parse(&["images", "ls", "--address", "/x.sock"]).unwrap();
        assert_eq!(cli.address, "/x.sock");
    }

    #[test]
    fn required_arguments() {
        assert!(parse(&["images", "rm"]).is_err());
        assert!(parse(&["images", "export", "-o", "x.tar"]).is_err());
        assert!(parse(&["content", "rm"]).is_err());
        assert!(parse(&["images", "ls", "-q", "--format", "json"]).is_err());
        assert!(parse(&["images", "pull", "--platform", "linux", "x"]).is_err());
    }

    #[test]
    fn run_and_tasks_grammar() {
        let cli = parse(&[
            "run", "-d", "--rm", "--name", "x", "busybox", "--", "sleep", "-n", "9",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert!(r.detach && r.rm && !r.tty);
        assert_eq!(r.name.as_deref(), Some("x"));
        assert_eq!(r.image, "busybox");
        assert_eq!(r.command, ["sleep", "-n", "9"]);
        let cli = parse(&["run", "busybox", "echo", "hi"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.command, ["echo", "hi"]);
        let cli = parse(&["tasks", "kill", "-s", "KILL", "a", "b"]).unwrap();
        let Command::Tasks(TasksCommand::Kill { signal, names, .. }) = cli.command else {
            panic!("not kill")
        };
        assert_eq!(signal, 9);
        assert_eq!(names, ["a", "b"]);
        assert!(parse(&["tasks", "kill", "-s", "BOGUS", "a"]).is_err());
        assert!(parse(&["tasks", "rm"]).is_err());
        let cli = parse(&["tasks", "exec", "--timeout", "1.5", "t", "--", "ls", "-l"]).unwrap();
        let Command::Tasks(TasksCommand::Exec {
            timeout,
            name,
            command,
            output_limit,
        }) = cli.command
        else {
            panic!("not exec")
        };
        assert_eq!(timeout, Some(1.5));
        assert_eq!(output_limit, None);
        assert_eq!(name, "t");
        assert_eq!(command, ["ls", "-l"]);
        assert!(parse(&["tasks", "exec", "t"]).is_err());
        assert!(parse(&["tasks", "exec", "--timeout", "0", "t", "ls"]).is_err());
        assert!(matches!(
            parse(&["task", "list", "--format", "json"])
                .unwrap()
                .command,
            Command::Tasks(TasksCommand::Ls {
                format: Format::Json,
                ..
            })
        ));
    }

    #[test]
    fn export_defaults_to_stdout() {
        let cli = parse(&["images", "export", "a", "b"]).unwrap();
        let Command::Images(ImagesCommand::Export { output, names, .. }) = cli.command else {
            panic!("not export")
        };
        assert_eq!(output, "-");
        assert_eq!(names, ["a", "b"]);
    }
}

//! berthd: berth's daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berthd::config::{Config, DEFAULT_CONFIG_PATH};
use berthd::server::Daemon;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes container runtime daemon"
)]
struct Cli {
    /// TOML config file (a missing file means defaults).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, global = true)]
    config: PathBuf,
    /// Persistent data directory [default: /var/lib/berth].
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Runtime state directory [default: /run/berth].
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// gRPC socket path [default: <state>/berth.sock].
    #[arg(long, global = true)]
    address: Option<PathBuf>,
    /// Log filter, e.g. info, debug, berthd=trace.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Write the manual pages (roff, one per command) into DIR, as the
    /// Debian package installs them.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Accept an event from a shim (shims exec `-publish-binary` with
    /// `publish --topic T --namespace N` and the event on stdin). berthd
    /// learns of exits through the task API, so the event is read and dropped.
    #[command(hide = true)]
    Publish {
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// The built-in defaults, as TOML.
    Default,
    /// The effective configuration (file plus flags), as TOML.
    Dump,
    /// The default CNI network (bridge `berth0` + host-local on
    /// 10.88.0.0/16 + portmap + loopback), as a conflist. With `--write`,
    /// installs it in the CNI conf dir unless a network config is there.
    Cni {
        #[arg(long)]
        write: bool,
    },
}

fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(&cli.config)?;
    if let Some(r) = &cli.root {
        cfg.root = r.clone();
    }
    if let Some(s) = &cli.state {
        cfg.state = s.clone();
    }
    if let Some(a) = &cli.address {
        cfg.address = a.clone();
    }
    if let Some(l) = &cli.log_level {
        cfg.log_level = l.clone();
    }
    // Resolve the default so `config dump` shows the real socket.
    cfg.address = cfg.socket_path();
    Ok(cfg)
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("invalid log level {:?}", cfg.log_level))?;
    // Colours only for a person at a terminal: not in the journal or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Drains an event a shim publishes; never fails, so a shim never blocks on it.
fn publish() -> anyhow::Result<()> {
    use std::io::Read;
    let mut sink = Vec::new();
    let _ = std::io::stdin().take(16 << 20).read_to_end(&mut sink);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before the config: a shim's event must be taken whatever the config says.
    if matches!(cli.command, Some(Command::Publish { .. })) {
        return publish();
    }
    if let Some(Command::Man { dir }) = &cli.command {
        return clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir)
            .with_context(|| format!("writing manual pages to {}", dir.display()));
    }
    let cfg = effective_config(&cli)?;
    match cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", Config::default().to_toml());
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Dump,
        }) => {
            print!("{}", cfg.to_toml());
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Cni { write },
        }) => {
            let text = berth_network::default_conflist();
            if !write {
                print!("{text}");
                return Ok(());
            }
            match berth_network::install_default_conflist(&cfg.cni.conf_dir)? {
                Some(path) => println!("wrote {}", path.display()),
                None => println!(
                    "{} already has a network config; left as is",
                    cfg.cni.conf_dir.display()
                ),
            }
            return Ok(());
        }
        Some(Command::Publish { .. }) => return publish(),
        Some(Command::Man { .. }) => return Ok(()),
        None => {}
    }
    init_logging(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = tokio::task::spawn_blocking(move || Daemon::open(cfg))
            .await
            .context("opening the daemon")??;
        daemon.serve().await
    })
}

/// glibc's initial (and, once set, fixed) mmap threshold: blocks this large
/// or larger are mmapped and go back to the kernel when freed.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Allocator tunables, set before any other thread exists.
///
/// glibc gives each thread that allocates an arena of its own; berthd's
/// allocations are small and short-lived, so two arenas serve its threads
/// with a fraction of the resident memory.
///
/// The mmap threshold stays at glibc's initial 128 KiB. Left alone, glibc
/// raises it to the size of every mmapped block freed (up to 32 MiB), after
/// which sled's 512 KiB log buffers (a new one every few pod lifecycles) and
/// other large transient buffers are carved out of the heaps, where the
/// smaller allocations made meanwhile keep the space they leave from going
/// back: under pod churn berthd's RSS rose ~1.3 MiB per 100 pods while its
/// live heap stayed flat (heaptrack; README, Performance, soak). Setting it
/// also keeps the trim threshold at 128 KiB, so a heap's free top is handed
/// back.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator tunables; main calls this first
    // thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    // While berthd is still one thread.
    berthd::notify::take_from_env();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    /// glibc marks a chunk it mmapped with bit 1 (IS_MMAPPED) of the size
    /// word just before the pointer it hands out.
    fn is_mmapped(p: *const u8) -> bool {
        // SAFETY: `p` is a live allocation from glibc's malloc, which keeps
        // the chunk's size word right before it.
        unsafe { *(p as *const usize).sub(1) & 2 != 0 }
    }

    #[test]
    fn large_buffers_stay_mmapped_after_one_is_freed() {
        super::tune_malloc();
        // Without a fixed threshold, freeing the first block would raise
        // the threshold above 512 KiB and the next ones would come from a
        // heap. Each must be mmapped (and so returned to the kernel on free).
        for _ in 0..4 {
            let v: Vec<u8> = Vec::with_capacity(512 * 1024);
            assert!(is_mmapped(v.as_ptr()), "a 512 KiB buffer came from a heap");
            drop(v);
        }
        let small: Vec<u8> = Vec::with_capacity(1024);
        assert!(!is_mmapped(small.as_ptr()));
    }
}

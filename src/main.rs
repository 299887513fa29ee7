//! `community-gateway`: the command line. All logic lives in the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "community-gateway",
    version,
    about = "Edge gateway for residential compounds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The whole pipeline on this machine: in-process brokers, simulated doors, accelerated clock.
    Demo {
        /// How many times faster than real time the simulated clock runs.
        #[arg(long, default_value_t = 120.0)]
        speed: f64,
        /// Stop after this long (real time), e.g. `90s`; default: until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Print alert transitions as raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Validate configuration, roster and register maps; print every problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Feed canonical events (JSON lines) through the rule engine on a simulated clock.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// File of canonical events, or `-` for standard input.
        #[arg(long, short)]
        events: PathBuf,
        /// Advance the simulated clock to this RFC 3339 time after the last event.
        #[arg(long)]
        until: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let code = match cli.command {
        Command::Run { config } => community_gateway::daemon::run(&config),
        Command::Demo {
            speed,
            duration,
            json,
        } => {
            match duration
                .as_deref()
                .map(community_gateway::time::parse_duration)
                .transpose()
            {
                Ok(d) => community_gateway::demo::run(speed, d, json),
                Err(e) => {
                    eprintln!("--duration: {e}");
                    2
                }
            }
        }
        Command::Check { config } => community_gateway::cli::check(&config),
        Command::Replay {
            config,
            events,
            until,
        } => community_gateway::cli::replay(&config, &events, until.as_deref()),
    };
    ExitCode::from(code)
}

/// Logs to stderr (journald adds time and unit). `RUST_LOG` filters, default `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::SystemTime)
        .compact()
        .try_init()
        .map(|_| under_systemd);
}

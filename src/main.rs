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
    /// The whole pipeline on this machine: in-process brokers, simulated doors, accelerated clock
    /// (builds with `--features demo`; production builds leave the brokers out).
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
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "this build has no demo (its in-process brokers are left out of production builds); \
                 run it with: cargo run --release --features demo -- demo"
            );
            2
        }
        #[cfg(feature = "demo")]
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

/// Logs to stderr (journald adds time and unit). `RUST_LOG` filters with
/// `level` or `target=level` directives (e.g. `debug`, `info,rumqttc=debug`);
/// default `info`. (Targets, not EnvFilter: no regex engine in the binary.)
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default: tracing_subscriber::filter::Targets =
        "info,rumqttd=off".parse().unwrap_or_default();
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG: {e}; using `info`");
            default.clone()
        }),
        Err(_) => default,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .compact();
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

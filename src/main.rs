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
    let code = match cli.command {
        Command::Check { config } => community_gateway::cli::check(&config),
        Command::Replay {
            config,
            events,
            until,
        } => community_gateway::cli::replay(&config, &events, until.as_deref()),
    };
    ExitCode::from(code)
}

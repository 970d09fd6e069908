//! `balans` — the command-line front end. All work happens in the library;
//! this file parses arguments, sets up logging and dispatches.

use clap::{Parser, Subcommand};

mod cli;

/// BALANS batch correction for Cell Painting morphological profiles.
///
/// Tables follow pycytominer conventions: `Metadata_*` columns are metadata
/// and pass through untouched; other numeric columns are features.
/// Configuration precedence: defaults < --config FILE < BALANS_<SECTION>__<KEY>
/// environment variables < flags.
#[derive(Parser, Debug)]
#[command(name = "balans", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: cli::logging::LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Correct batch effects in a profile table (Parquet, CSV, CSV.gz, Arrow IPC).
    Correct(Box<cli::correct::CorrectArgs>),
    /// Correct new plates against a saved model (`correct --save-model`); the model's rows never move.
    Apply(Box<cli::apply::ApplyArgs>),
    /// Score a table with the field's batch-correction metrics (or `drift`).
    Evaluate(Box<cli::evaluate::EvaluateArgs>),
    /// The streaming daemon: Kafka (--brokers) or the embedded directory mode (inbox -> outbox).
    Serve(Box<cli::serve::ServeArgs>),
    /// Build a new generation beside the daemon's live one (a refit on the published plates, or a window of them); `--promote` switches to it.
    Realign(Box<cli::realign::RealignArgs>),
    /// Inspect (`check`) or repair (`repair`) a daemon's state directory.
    State(cli::state::StateArgs),
    /// Generate a synthetic profile table with known biology and batch effects.
    Synth(cli::synth::SynthArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::logging::init(&cli.log);
    let result = match cli.command {
        Command::Correct(a) => cli::correct::run(*a, &cli.log),
        Command::Apply(a) => cli::apply::run(*a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Serve(a) => cli::serve::run(*a),
        Command::Evaluate(a) => cli::evaluate::run(*a),
        Command::Realign(a) => cli::realign::run(*a),
        Command::State(a) => match cli::state::run(a) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

//! `xmagent`: the command line. All logic lives in the library; this file only dispatches.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xmagent", version, about = "xMatters-compatible on-premise integration agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a script against a request file, without the daemon (for script authors).
    TestScript(scripts::dry_run::TestScriptArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::TestScript(args) => scripts::dry_run::main(args),
    };
    std::process::exit(code);
}

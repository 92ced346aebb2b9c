//! `xmagent`: all logic lives in the library; this only hands the exit code to the OS.

fn main() {
    std::process::exit(agent::cli::main());
}

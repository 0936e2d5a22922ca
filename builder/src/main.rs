//! `berth`: build, inspect and run Berth disk images.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

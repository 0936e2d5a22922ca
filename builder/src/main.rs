//! `berth`: build, inspect and boot Berth disk images.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {}", berth_error_line::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

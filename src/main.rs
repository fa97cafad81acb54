//! The `uid2-enricher` binary: parse the command line, run it, turn errors into a message and an exit
//! status. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use uid2_enricher::cli::{Cli, run};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("uid2-enricher: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

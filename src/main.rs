//! The `uid2-enricher` binary: parse the command line, run it, turn errors into a message and an exit
//! status. Everything else lives in the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use uid2_enricher::cli::{Cli, run};

fn main() -> ExitCode {
    // `--version` also names librdkafka and the features it was built with, as `kcat -V` does.
    let version: &'static str = Box::leak(
        format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            uid2_enricher::support::build_info::library_info()
        )
        .into_boxed_str(),
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Scrubbed again here: no secret value of the configuration leaves the process in an error.
            let message = uid2_enricher::stage::kafka::scrub(&format!("{err:#}"));
            eprintln!("uid2-enricher: error: {message}");
            ExitCode::from(2)
        }
    }
}

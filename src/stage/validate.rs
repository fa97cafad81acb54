//! `uid2-enricher validate`: everything `run` would refuse that can be found without connecting — the
//! file, the key source's file, and every Kafka client librdkafka would make from it.

use std::process::ExitCode;

use crate::stage::RunArgs;

/// `validate`: every problem the configuration has that can be found without connecting, one per line on
/// standard error; `FILE: ok` on standard output when there is none.
pub fn command(args: &RunArgs) -> ExitCode {
    let origin = args.config.display();
    let problems = match crate::config::load(&args.config) {
        // The file is checked first and whole: its first error stops the rest, which depends on it.
        Err(e) => vec![e.to_string()],
        Ok(settings) => validate_settings(&settings),
    };
    if problems.is_empty() {
        println!("{origin}: ok");
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        eprintln!(
            "uid2-enricher: error: {}",
            crate::stage::kafka::scrub(problem)
        );
    }
    eprintln!(
        "{origin}: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(1)
}

/// What a parsed configuration still needs to run: a readable key set when it comes from a file, and
/// every Kafka client librdkafka will make from it.
fn validate_settings(settings: &crate::config::Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let crate::config::KeysFrom::File(path) = &settings.uid2.keys
        && let Err(e) = crate::stage::keysource::load_keys_file(path)
    {
        problems.push(format!("{e:#}"));
    }
    let clients = crate::stage::kafka::KafkaClients::new(&settings.kafka);
    problems.extend(
        clients
            .problems(&settings.kafka.group_id)
            .into_iter()
            .map(|e| format!("{e} (check [kafka.client] and [kafka.{}])", e.table())),
    );
    problems
}

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

/// What a parsed configuration still needs to run: a readable key set of the right scope for every source
/// that is a file, and
/// every Kafka client librdkafka will make from it.
fn validate_settings(settings: &crate::config::Settings) -> Vec<String> {
    let mut problems = Vec::new();
    for source in &settings.uid2.sources {
        let crate::config::KeysFrom::File(path) = &source.from else {
            continue;
        };
        match crate::stage::keysource::load_keys_file(path) {
            Err(e) => problems.push(format!("{e:#}")),
            Ok(keys) => {
                if let Some(scope) = source.scope
                    && keys.identity_scope != scope
                {
                    problems.push(format!(
                        "key source `{}` serves {}, but its keys file {} holds {} keys (its identity_scope); point it at the {} operator's keys",
                        source.name,
                        scope.as_str(),
                        path.display(),
                        keys.identity_scope.as_str(),
                        scope.as_str()
                    ));
                }
            }
        }
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

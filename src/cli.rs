//! The command line: the command enum (clap), dispatch to the stage and the tools, and the one tokio
//! runtime builder. Each command's arguments live with the command. Errors carry context for the person
//! at the terminal (anyhow).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::stage::RunArgs;
use crate::tools::decrypt::DecryptArgs;
use crate::tools::demo::DemoArgs;
use crate::tools::generate::GenArgs;
use crate::tools::verify::VerifyArgs;

#[derive(Debug, Parser)]
#[command(
    name = "uid2-enricher",
    version,
    about = "Decrypts UID2/EUID tokens in OpenRTB bid requests exactly as the official UID2 SDKs do"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Decrypt one token and print the result as a JSON object.
    ///
    /// Exit status: 0 when the token decrypts with status `success`, 1 for any other status, 2 when the
    /// keys or arguments cannot be used.
    Decrypt(DecryptArgs),
    /// Run the stage: consume bid requests, enrich them, produce them on (see config/enricher.toml).
    ///
    /// Exit status: 0 after a clean stop (SIGTERM or SIGINT: drained, committed, flushed), 2 when the
    /// configuration cannot be used or the stage stopped on a fatal error.
    Run(RunArgs),
    /// Check a configuration without running the stage: the whole file (environment references
    /// included), the key source's file or credentials, and every Kafka client the stage makes (created
    /// with librdkafka, not connected). For CI and for systemd's ExecStartPre.
    ///
    /// Exit status: 0 when the configuration is usable, 1 otherwise (every problem found is listed).
    Validate(RunArgs),
    /// Print a shell completion script, e.g. `uid2-enricher completions bash >
    /// /etc/bash_completion.d/uid2-enricher`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `uid2-enricher man > /usr/local/share/man/man1/uid2-enricher.1`.
    Man,
    /// Generate synthetic bid requests (JSON Lines) and the key set that decrypts their tokens.
    Gen(GenArgs),
    /// Run the whole stage in-process against librdkafka's mock cluster with generated traffic, and print
    /// a summary (counts by status, records/s, latency, dead letters). Nothing to install or configure.
    Demo(DemoArgs),
    /// Enrich a captured or generated stream offline (file → file), or send it to a topic (file → Kafka).
    Replay(crate::tools::replay::ReplayArgs),
    /// Write a topic's records (exact values, keys, headers, offsets, timestamps) to a capture file.
    Capture(crate::tools::capture::CaptureArgs),
    /// Check what the stage did to a stream: read the input, output and dead-letter topics from the
    /// beginning (no consumer group), match records by request id and report per input partition the
    /// records lost, duplicated and delivered out of order.
    ///
    /// Exit status: 0 when nothing was lost and order was kept (duplicates are allowed), 1 otherwise,
    /// 2 when the topics cannot be read.
    Verify(VerifyArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decrypt(args) => crate::tools::decrypt::command(&args),
        Command::Run(args) => {
            let settings = crate::config::load(&args.config)?;
            crate::support::telemetry::init(settings.log.format, &settings.log.level);
            let workers = settings.pipeline.workers.max(1);
            runtime(Some(workers.max(2)))?.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                crate::support::shutdown::cancel_on_signal(shutdown.clone());
                crate::stage::run(settings, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => Ok(crate::stage::validate::command(&args)),
        Command::Completions { shell } => reader_may_leave((|| {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics on a write error, such as a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "uid2-enricher", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")?;
            Ok(ExitCode::SUCCESS)
        })()),
        Command::Man => reader_may_leave(
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")
                .map(|()| ExitCode::SUCCESS),
        ),
        Command::Gen(args) => {
            reader_may_leave(crate::tools::generate::command(&args).map(|()| ExitCode::SUCCESS))
        }
        Command::Verify(args) => crate::tools::verify::command(&args),
        Command::Demo(args) => {
            crate::support::telemetry::init(crate::support::telemetry::LogFormat::Human, &args.log);
            let options = args.options()?;
            runtime(None)?.block_on(crate::tools::demo::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => reader_may_leave(crate::tools::replay::run(&args).map(|clean| {
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        })),
        Command::Capture(args) => {
            crate::support::telemetry::init(crate::support::telemetry::LogFormat::Human, "warn");
            reader_may_leave(
                runtime(None)?
                    .block_on(crate::tools::capture::run(&args))
                    .map(|_| ExitCode::SUCCESS),
            )
        }
    }
}

/// A command whose output goes to standard output: a reader that stops early (`uid2-enricher gen --output
/// - | head`) closes the pipe, which is not an error.
fn reader_may_leave(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

/// The runtime for the Kafka commands: multi-threaded, so enrichment of different partitions runs on
/// every core and a rebalance callback can wait for in-flight records. `workers` is the stage's
/// `[pipeline] workers`; the tools take tokio's default (one per core).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder
        .enable_all()
        .thread_name("uid2-enricher")
        .build()
        .context("starting the tokio runtime")
}

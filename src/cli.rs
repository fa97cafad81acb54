//! The command line (clap) and the commands that need no Kafka: argument parsing, reading files, the
//! clock — the shell around the pure core. Errors carry context for the person at the terminal (anyhow).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::uid2::{ClientMode, Decryption, KeySet, Status, decrypt};
use crate::stage::pipeline::wall_clock_ms;

#[derive(Debug, Parser)]
#[command(
    name = "uid2-enricher",
    version,
    about = "Decrypts UID2/EUID tokens in OpenRTB bid requests exactly as the official UID2 SDKs do"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub cluster: crate::stage::kafka::ClusterArgs,
    /// An input topic of the stage (repeat for several).
    #[arg(long, required = true)]
    pub input: Vec<String>,
    /// The stage's output topic.
    #[arg(long)]
    pub output: String,
    /// The stage's dead-letter topic.
    #[arg(long)]
    pub dlq: String,
    /// JSON pointer of the request id in a JSON payload (protobuf payloads use field 1; otherwise the
    /// record key).
    #[arg(long, default_value = "/id")]
    pub id_field: String,
    /// Give up reading one topic after this many seconds (connecting and its metadata included).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file; config/enricher.toml documents every option.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// How many requests.
    #[arg(long)]
    pub count: u64,
    /// Where to write them, one request per line (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Where to write the key set, in the key-endpoint JSON shape (`{"body":…,"status":"success"}`).
    #[arg(long, value_name = "KEYS.json")]
    pub keys_out: PathBuf,
    /// Approximate request size in bytes, or a range `MIN-MAX` to draw each request's size from (real
    /// traffic: about 1000-10000).
    #[arg(long, default_value = "2000", value_name = "BYTES|MIN-MAX")]
    pub size: String,
    /// Token mix as case=weight pairs (see `demo --help`).
    #[arg(long)]
    pub mix: Option<String>,
    /// Same seed, same requests and tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distinct users the tokens are drawn from (skewed, so tokens repeat as in real traffic).
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Token times are relative to this instant (ms or RFC 3339). Default: now.
    #[arg(long, value_name = "MS|RFC3339")]
    pub now: Option<String>,
    /// What to write: OpenRTB bid requests, tracking-pixel URLs (token in `uid2_token`) or JSON events
    /// (token at `/uid2_token`).
    #[arg(long, default_value = "openrtb", value_parser = ["openrtb", "pixel", "json"])]
    pub format: String,
    /// With `--format json`: events carrying raw UID2s at `/uid2` instead of tokens, the input of a
    /// `tokenize` stage (`none` and `malformed` cases: no raw UID2, or one that is invalid).
    #[arg(long)]
    pub raw_uid2: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to generate.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Seed of the generator: the same seed gives the same requests and tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Approximate request size in bytes.
    #[arg(long, default_value_t = 1500)]
    pub size: usize,
    /// Token mix as case=weight pairs, e.g. `v4=60,expired=5,none=15,malformed=1`. Cases: v2, v3, v4,
    /// expired, unknown-site-key, tampered, euid, cstg-match, cstg-mismatch, none, malformed.
    #[arg(long)]
    pub mix: Option<String>,
    /// Log level while the demo runs (tracing EnvFilter syntax).
    #[arg(long, default_value = "warn")]
    pub log: String,
}

/// Which SDK client's checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A DSP in the bid stream: CSTG domain/app check, `max_bidstream_lifetime_seconds`.
    Bidstream,
    /// A sharing receiver: no domain check, `max_sharing_lifetime_seconds`.
    Sharing,
}

impl From<ModeArg> for ClientMode {
    fn from(m: ModeArg) -> ClientMode {
        match m {
            ModeArg::Bidstream => ClientMode::Bidstream,
            ModeArg::Sharing => ClientMode::Sharing,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// Key-endpoint JSON: the decrypted response of /v2/key/bidstream, /v2/key/sharing or /v2/key/latest,
    /// either whole ({"body":…,"status":"success"}) or just the body.
    #[arg(long, value_name = "KEYS.json")]
    pub keys: PathBuf,
    #[arg(long, value_enum, default_value_t = ModeArg::Bidstream)]
    pub mode: ModeArg,
    /// Registrable domain or app name of the request, for client-side-generated tokens (bidstream mode).
    /// Passed to the check as given, as the SDKs take it.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// The request's `site.domain` or `site.page` (a host or URL): reduced to its registrable domain,
    /// lower-cased, as the enricher does before the check (`https://News.Example.co.uk/a` gives
    /// `example.co.uk`). Instead of `--domain`.
    #[arg(long, value_name = "HOST|URL", conflicts_with = "domain")]
    pub site: Option<String>,
    /// Decrypt as of this time: milliseconds since the Unix epoch, or RFC 3339 (2026-01-01T00:00:00Z).
    /// Default: now.
    #[arg(long, value_name = "MS|RFC3339")]
    pub now: Option<String>,
    /// The token (v2, v3 or v4; base64 or base64url). `-` reads it from standard input.
    pub token: String,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decrypt(args) => decrypt_command(&args),
        Command::Run(args) => {
            let settings = crate::config::load(&args.config)?;
            let format = match settings.log.format {
                crate::config::LogFormat::Human => crate::support::telemetry::LogFormat::Human,
                crate::config::LogFormat::Json => crate::support::telemetry::LogFormat::Json,
            };
            crate::support::telemetry::init(format, &settings.log.level);
            let workers = settings.pipeline.workers.max(1);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(2))
                .enable_all()
                .thread_name("uid2-enricher")
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                crate::support::shutdown::cancel_on_signal(shutdown.clone());
                crate::stage::run(settings, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => Ok(validate_command(&args)),
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
        Command::Gen(args) => reader_may_leave(gen_command(&args).map(|()| ExitCode::SUCCESS)),
        Command::Verify(args) => crate::tools::verify::command(&args),
        Command::Demo(args) => {
            crate::support::telemetry::init(crate::support::telemetry::LogFormat::Human, &args.log);
            let mix = match &args.mix {
                Some(text) => crate::tools::traffic::Mix::parse(text)
                    .map_err(|e| anyhow::anyhow!("--mix: {e}"))?,
                None => crate::tools::traffic::Mix::default(),
            };
            let options = crate::tools::demo::DemoOptions {
                count: args.count,
                seed: args.seed,
                size: args.size,
                mix,
            };
            runtime()?.block_on(crate::tools::demo::run(options))?;
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
                runtime()?
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

/// `validate`: every problem the configuration has that can be found without connecting, one per line on
/// standard error; `FILE: ok` on standard output when there is none.
fn validate_command(args: &RunArgs) -> ExitCode {
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
        && let Err(e) = load_keys(path)
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

/// The runtime for the Kafka commands: multi-threaded, so enrichment of different partitions runs on
/// every core and a rebalance callback can wait for in-flight records.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("uid2-enricher")
        .build()
        .context("starting the tokio runtime")
}

fn decrypt_command(args: &DecryptArgs) -> anyhow::Result<ExitCode> {
    let keys = load_keys(&args.keys)?;
    let now_ms = match &args.now {
        Some(text) => parse_time(text)?,
        None => wall_clock_ms(),
    };
    let token = if args.token == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("reading the token from standard input")?
    } else {
        args.token.clone()
    };
    let site_name = args.site.as_deref().and_then(|site| {
        crate::engine::openrtb::domain::domain_or_app_name(Some(site), None, None)
    });
    let result = decrypt(
        token.trim(),
        Some(&keys),
        args.mode.into(),
        site_name.as_deref().or(args.domain.as_deref()),
        now_ms,
    );
    println!("{}", decryption_json(&result));
    Ok(if result.status == Status::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gen_command(args: &GenArgs) -> anyhow::Result<()> {
    let mix = match &args.mix {
        Some(text) => {
            crate::tools::traffic::Mix::parse(text).map_err(|e| anyhow::anyhow!("--mix: {e}"))?
        }
        None => crate::tools::traffic::Mix::default(),
    };
    let now_ms = match &args.now {
        Some(text) => parse_time(text)?,
        None => wall_clock_ms(),
    };
    let (min_size, max_size) = parse_size_range(&args.size)?;
    let mut generator =
        crate::tools::traffic::Generator::new(args.seed, mix, now_ms, args.users, min_size);
    // Its own stream, so a fixed size gives the same requests as before sizes could vary.
    let mut sizes = fastrand::Rng::with_seed(args.seed ^ 0x51ce);
    std::fs::write(&args.keys_out, generator.keys_json())
        .with_context(|| format!("writing {}", args.keys_out.display()))?;
    if args.raw_uid2 && args.format != "json" {
        anyhow::bail!(
            "--raw-uid2 needs --format json (raw UID2s never travel in pixels or bid requests)"
        );
    }
    let mut out = crate::tools::capture_file::Output::create(&args.output)?;
    let mut by_case: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut line = Vec::with_capacity(16 * 1024);
    for _ in 0..args.count {
        if max_size > min_size {
            generator.target_size = sizes.usize(min_size..=max_size);
        }
        let request = match (args.format.as_str(), args.raw_uid2) {
            ("json", true) => generator.next_raw_event().0,
            ("json", false) => generator.next_event(),
            ("pixel", _) => generator.next_pixel(),
            _ => generator.next_request(),
        };
        *by_case.entry(request.case.name()).or_default() += 1;
        line.clear();
        // A record with a newline cannot be one line; it is written escaped as a JSON string instead
        // (still malformed as a request). Other bytes, invalid UTF-8 included, are written as they are.
        if request.bytes.contains(&b'\n') {
            serde_json::to_writer(&mut line, &String::from_utf8_lossy(&request.bytes))?;
        } else {
            line.extend_from_slice(&request.bytes);
        }
        line.push(b'\n');
        out.write_lines(&line, 1)?;
    }
    out.finish()?;
    eprintln!(
        "gen: {} {} records to {}, keys to {}; cases: {by_case:?}",
        args.count,
        if args.raw_uid2 {
            "raw-UID2 json"
        } else {
            args.format.as_str()
        },
        args.output.display(),
        args.keys_out.display()
    );
    Ok(())
}

/// `--size`: `BYTES` or `MIN-MAX`.
fn parse_size_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |t: &str| {
        t.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!(
                "--size {text:?}: expected a size in bytes (2000) or a range (1000-10000)"
            )
        })
    };
    let (min, max) = match text.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(text)?, parse(text)?),
    };
    if min > max || max > 1 << 20 {
        bail!("--size {text:?}: the range must be MIN-MAX with MIN ≤ MAX ≤ 1 MiB");
    }
    Ok((min, max))
}

/// Reads and parses a keys file, naming the file and the fix in the error.
pub fn load_keys(path: &Path) -> anyhow::Result<KeySet> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "reading keys file {}: give the decrypted response of /v2/key/bidstream or \
             /v2/key/sharing (`uid2-enricher gen --keys-out FILE` writes a test key set)",
            path.display()
        )
    })?;
    KeySet::parse_json(&text).with_context(|| {
        format!(
            "parsing keys file {}: it must hold what a key endpoint returns once decrypted, \
             {{\"body\":{{\"keys\":[…],…}},\"status\":\"success\"}} or just the body",
            path.display()
        )
    })
}

/// Parses `--now`: integer milliseconds since the epoch, or an RFC 3339 timestamp.
///
/// Ten- and eleven-digit numbers are refused: as milliseconds they fall in 1970–1973, and they are nearly
/// always seconds given by mistake, which would decrypt every token as of January 1970 and report a
/// misleading lifetime status.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        if (1_000_000_000..100_000_000_000).contains(&ms) {
            bail!(
                "--now {text}: this looks like seconds since the Unix epoch; give milliseconds ({ms}000) or RFC 3339 (2026-01-01T00:00:00Z)"
            );
        }
        return Ok(ms);
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(_) => bail!(
            "--now {text:?}: expected milliseconds since the Unix epoch (1767225600000) or RFC 3339 (2026-01-01T00:00:00Z)"
        ),
    }
}

/// The `decrypt` output: the enrichment member's field names plus `site_key_site_id` and `scope`; fields
/// the decryption did not reach are null. A struct, so the field order is fixed.
#[derive(Debug, serde::Serialize)]
pub struct DecryptOutput<'a> {
    pub status: &'static str,
    pub raw_uid2: Option<&'a str>,
    pub site_id: Option<i32>,
    pub established: Option<i64>,
    pub expires: Option<i64>,
    pub identity_type: Option<&'static str>,
    pub token_version: Option<u8>,
    pub cstg: Option<bool>,
    pub site_key_site_id: Option<i32>,
    pub scope: Option<&'static str>,
}

pub fn decryption_json(d: &Decryption) -> String {
    let out = DecryptOutput {
        status: d.status.as_str(),
        raw_uid2: d.raw_uid2.as_deref(),
        site_id: d.site_id,
        established: d.established_ms,
        expires: d.expires_ms,
        identity_type: d.identity_type.map(|t| t.as_str()),
        token_version: d.token_version.map(|v| v.number()),
        cstg: d.cstg,
        site_key_site_id: d.site_key_site_id,
        scope: d.scope.map(|s| s.as_str()),
    };
    serde_json::to_string(&out).unwrap_or_default()
}

//! `uid2-enricher replay`: captured or generated traffic through the same pure enrichment the stage runs,
//! offline (file → file), or sent as it is to a Kafka topic to feed a stage under test (file → Kafka).
//!
//! File → file runs on every core: a reader thread cuts the input into batches of whole lines, workers
//! enrich batches in parallel, and the writer puts them back in input order, so the output is the input
//! with each request enriched, line for line. Nothing is lost on bad input: a malformed request or capture
//! record is counted, reported with its line number and written to `--dlq` if given; an input that cannot be
//! read (a truncated gzip stream) stops the run after every line before it has been written, and the output
//! file is closed properly (compression trailer included).
//!
//! Here: the arguments, the choice between the two modes and the summary. `job.rs` turns the arguments
//! into what a worker needs and does the stage's work on one payload, `batch.rs` is a worker's work on one
//! batch of lines, `to_file.rs` runs the reader, the workers and the writer, and `to_topic.rs` is
//! file → Kafka.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::ValueEnum;

use crate::engine::enrich::PayloadFormat;
use crate::support::clock::wall_clock_ms;
use crate::tools::ModeArg;
use crate::tools::capture_file::{self, CaptureRecord, Line};

mod batch;
mod job;
mod to_file;
mod to_topic;

/// Malformed lines quoted in the summary (all are counted).
const QUOTED_ERRORS: usize = 10;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Input lines are bare requests (their exact bytes) or capture records as `capture` writes them \
({\"ts\":…,\"topic\":…,\"partition\":…,\"offset\":…,\"key\":…,\"headers\":[[k,v],…],\"value\":\"…\"}); the \
output keeps each line's shape. Files ending in .gz or .zst are decompressed/compressed.

Examples:
  uid2-enricher replay --input capture.jsonl.zst --output enriched.jsonl --keys keys.json --now capture
  uid2-enricher replay --input requests.jsonl --to-topic bid-requests --config config/enricher.toml --rate 5000

Exit status: 0 when every line was read (malformed lines are counted and reported), 1 when --strict and a \
line was malformed, 2 on I/O or usage errors.")]
pub struct ReplayArgs {
    /// JSON Lines input (`-` for standard input; .gz and .zst are decompressed).
    #[arg(long, value_name = "FILE|-")]
    pub input: PathBuf,
    /// Enriched output, one line per input line in input order (`-` for standard output; .gz and .zst are
    /// compressed). File → file mode.
    #[arg(long, value_name = "FILE|-", conflicts_with = "to_topic")]
    pub output: Option<PathBuf>,
    /// Send the records as they are (value, key and headers) to this topic, to feed a stage under test.
    /// Needs --config (brokers, [kafka.client] and [kafka.producer]) or --brokers. File → Kafka mode: no
    /// enrichment.
    #[arg(long, value_name = "TOPIC")]
    pub to_topic: Option<String>,
    /// The stage configuration: with --to-topic, its brokers and client properties (TLS, SASL, codecs);
    /// for file output, the [pipeline] policy (eid sources, member name) and, without --keys, the keys
    /// files of its key sources.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --to-topic: bootstrap brokers, host:port, comma-separated (overrides the config file's).
    #[arg(long, value_name = "HOST:PORT,...", requires = "to_topic")]
    pub brokers: Option<String>,
    /// File → Kafka: send at most N records per second.
    #[arg(long, value_name = "N", conflicts_with = "speed")]
    pub rate: Option<f64>,
    /// File → Kafka: keep the captured timing (`ts` of capture records), X times faster (2 = twice as fast).
    #[arg(long, value_name = "X")]
    pub speed: Option<f64>,
    /// Key-endpoint JSON (the decrypted response of /v2/key/bidstream or /v2/key/sharing, whole or body).
    /// Give it once per operator (UID2 and EUID): each file serves the identity scope its body declares.
    #[arg(long, value_name = "KEYS.json")]
    pub keys: Vec<PathBuf>,
    /// Which SDK client's checks apply.
    #[arg(long, value_enum, default_value_t = ModeArg::Bidstream)]
    pub mode: ModeArg,
    /// Decrypt as of: `capture` (each record's captured `ts`, so old captures replay as they were seen),
    /// milliseconds since the epoch, or RFC 3339. Default: now.
    #[arg(long, value_name = "capture|MS|RFC3339")]
    pub now: Option<String>,
    /// Opt-outs to honour: CSV `raw_uid2,unix_seconds` or JSON Lines.
    #[arg(long, value_name = "FILE")]
    pub optouts: Option<PathBuf>,
    /// Write malformed lines here (as capture records carrying a `uid2-error` header); otherwise they are
    /// counted and reported only.
    #[arg(long, value_name = "FILE")]
    pub dlq: Option<PathBuf>,
    /// Payload format: OpenRTB JSON, OpenRTB protobuf (capture records with `value_b64`), tracking-pixel
    /// URLs, or any JSON event.
    #[arg(long, value_enum, default_value_t = FormatArg::Openrtb)]
    pub format: FormatArg,
    /// `enrich` decrypts tokens; `tokenize` replaces raw UID2s by v4 tokens made with the sharing keys'
    /// default keyset (the sharing sender; JSON formats only).
    #[arg(long, value_enum, default_value_t = DirectionArg::Enrich)]
    pub direction: DirectionArg,
    /// `--format pixel`: the query parameter that carries the token.
    #[arg(long, value_name = "NAME")]
    pub pixel_param: Option<String>,
    /// `--format json`: where tokens are (JSON pointers, repeatable); `--direction tokenize`: where raw
    /// UID2s are. Defaults: `/uid2_token`, `/uid2` (or --config's [pipeline] settings).
    #[arg(long = "pointer", value_name = "JSON-POINTER")]
    pub pointers: Vec<String>,
    /// Exit with status 1 if any line was malformed.
    #[arg(long)]
    pub strict: bool,
    /// How to read lines: `auto` tells capture records from bare requests line by line.
    #[arg(long, value_enum, default_value_t = Shape::Auto)]
    pub shape: Shape,
    /// Worker threads for file → file (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Decrypt cache entries (0: off, the default; on realistic traffic the cache costs more than the
    /// decryptions it saves, see docs/performance.md).
    #[arg(long, default_value_t = 0)]
    pub cache_entries: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// OpenRTB JSON bid requests.
    Openrtb,
    /// OpenRTB protobuf bid requests (capture records with `value_b64`).
    Protobuf,
    /// Tracking-pixel hits: a URL or query string per line.
    Pixel,
    /// Any JSON event.
    Json,
}

impl From<FormatArg> for PayloadFormat {
    fn from(f: FormatArg) -> PayloadFormat {
        match f {
            FormatArg::Openrtb => PayloadFormat::Json,
            FormatArg::Protobuf => PayloadFormat::Protobuf,
            FormatArg::Pixel => PayloadFormat::Pixel,
            FormatArg::Json => PayloadFormat::Event,
        }
    }
}

/// `--direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Enrich,
    Tokenize,
}

/// `--shape`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// A JSON object with a top-level `value`/`value_b64` (or `topic`, `partition` and `offset`) is a
    /// capture record; anything else is a bare request.
    Auto,
    /// Every line is a bare request.
    Bare,
    /// Every line is a capture record.
    Capture,
}

/// When each record is decrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Now {
    At(i64),
    Captured,
}

/// What a replay did; printed at the end and written by `--summary-json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub lines: u64,
    pub records: u64,
    pub blank_lines: u64,
    /// Output records by `uid2-status` (a status name or `no_token`).
    pub statuses: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// The first few malformed lines, `line N: reason: detail`.
    pub first_errors: Vec<String>,
    pub seconds: f64,
    pub records_per_second: f64,
    /// File → Kafka: records the broker acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u64>,
}

impl Summary {
    fn merge(&mut self, other: Summary) {
        self.lines += other.lines;
        self.records += other.records;
        self.blank_lines += other.blank_lines;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.dead_lettered += other.dead_lettered;
        for (k, v) in other.dead_letter_reasons {
            *self.dead_letter_reasons.entry(k).or_default() += v;
        }
        let room = QUOTED_ERRORS.saturating_sub(self.first_errors.len());
        self.first_errors
            .extend(other.first_errors.into_iter().take(room));
    }

    /// Counts a malformed line; the first [`QUOTED_ERRORS`] are quoted.
    fn malformed(&mut self, reason: &str, quote: impl FnOnce() -> String) {
        self.dead_lettered += 1;
        *self
            .dead_letter_reasons
            .entry(reason.to_string())
            .or_default() += 1;
        if self.first_errors.len() < QUOTED_ERRORS {
            self.first_errors.push(quote());
        }
    }

    fn print(&self, to: &str) {
        eprintln!(
            "replay: {} records in {:.2} s ({:.0} records/s) → {to}",
            self.records, self.seconds, self.records_per_second
        );
        if let Some(acked) = self.acknowledged {
            eprintln!("  acknowledged by the broker: {acked}");
        }
        if !self.statuses.is_empty() {
            let parts: Vec<String> = self
                .statuses
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            eprintln!("  statuses: {}", parts.join(" · "));
        }
        if self.dead_lettered > 0 {
            let parts: Vec<String> = self
                .dead_letter_reasons
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            eprintln!(
                "  malformed: {} ({})",
                self.dead_lettered,
                parts.join(" · ")
            );
            for e in &self.first_errors {
                eprintln!("    {e}");
            }
            if self.dead_lettered > self.first_errors.len() as u64 {
                eprintln!(
                    "    … and {} more",
                    self.dead_lettered - self.first_errors.len() as u64
                );
            }
        }
        if self.blank_lines > 0 {
            eprintln!("  blank lines (copied): {}", self.blank_lines);
        }
    }
}

/// Runs `replay`; returns whether every line was well formed.
///
/// # Errors
/// Usage errors, unreadable keys/opt-outs/config, I/O errors on the input or outputs, failed deliveries.
pub fn run(args: &ReplayArgs) -> anyhow::Result<bool> {
    let now = parse_now(args.now.as_deref())?;
    let summary = if let Some(topic) = &args.to_topic {
        for (given, flag) in [
            (!args.keys.is_empty(), "--keys"),
            (args.optouts.is_some(), "--optouts"),
            (args.dlq.is_some(), "--dlq"),
            (args.now.is_some(), "--now"),
        ] {
            if given {
                bail!(
                    "{flag} applies to file output; --to-topic sends the records as they are (the stage under test enriches them)"
                );
            }
        }
        to_topic::to_topic(args, topic)?
    } else {
        for (given, flag) in [
            (args.rate.is_some(), "--rate"),
            (args.speed.is_some(), "--speed"),
        ] {
            if given {
                bail!(
                    "{flag} paces --to-topic TOPIC (file → Kafka); file output runs as fast as it can"
                );
            }
        }
        let Some(output) = &args.output else {
            bail!(
                "say where the records go: --output FILE|- (file → file) or --to-topic TOPIC --config C"
            );
        };
        to_file::to_file(args, output, now)?
    };
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing the summary to {}", path.display()))?;
    }
    Ok(summary.dead_lettered == 0 || !args.strict)
}

/// Parses `--now`.
///
/// # Errors
/// Not `capture`, milliseconds or RFC 3339.
pub fn parse_now(text: Option<&str>) -> anyhow::Result<Now> {
    Ok(match text {
        None => Now::At(wall_clock_ms()),
        Some("capture") => Now::Captured,
        Some(other) => Now::At(crate::support::clock::parse_time(other)?),
    })
}

fn progress_bar(total_bytes: Option<u64>, hidden: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total_bytes {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} read, {msg} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    // indicatif draws only on a terminal; hide it explicitly when the output is the terminal.
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A line as `--shape` says to read it.
fn classify(line: &[u8], shape: Shape) -> Line {
    match shape {
        Shape::Auto => capture_file::classify(line),
        Shape::Bare => Line::Bare,
        Shape::Capture => Line::Capture(CaptureRecord::parse(line)),
    }
}

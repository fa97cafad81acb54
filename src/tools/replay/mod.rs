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
//! Depends on the enrichment core, the file formats (`jsonl`), the Kafka clients (file → Kafka only) and
//! the opt-out file loader.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;

use crate::engine::cache::DecryptCache;
use crate::engine::enrich::{self, Malformed, PayloadFormat, Policy};
use crate::engine::formats::event::JsonPointer;
use crate::engine::optout::{NoOptOuts, OptOutLookup};
use crate::engine::tokenize::{Direction, TokenizeContext, TokenizeError, TokenizePolicy};
use crate::engine::uid2::{ClientMode, KeySet};
use crate::stage::headers;
use crate::stage::pipeline::STATUS_NAMES;
use crate::stage::produce::{Backpressure, send_with_backpressure};
use crate::support::clock::wall_clock_ms;
use crate::tools::ModeArg;
use crate::tools::capture_file::{self, CaptureRecord, Line, Output};

/// Bytes per batch handed to a worker (about 2,000 requests of 2 KB): large enough to amortise the
/// hand-offs, small enough to keep every core busy and memory bounded.
const BATCH_BYTES: usize = 4 << 20;
/// Bytes per read: at least the input buffer's size, so reads bypass it and land in the batch directly.
const READ_CHUNK: usize = 1 << 20;
/// Batches in flight between the reader, the workers and the writer.
const BATCHES_IN_FLIGHT: usize = 16;
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
    /// for file output, the [pipeline] policy (eid sources, member name) and, without --keys, its [uid2]
    /// keys_file.
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
    #[arg(long, value_name = "KEYS.json")]
    pub keys: Option<PathBuf>,
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
            (args.keys.is_some(), "--keys"),
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
        to_topic(args, topic)?
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
        to_file(args, output, now)?
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

/// Everything a worker needs; shared read-only.
struct Job {
    keys: Option<KeySet>,
    optouts: Arc<dyn OptOutLookup + Send + Sync>,
    cache: Option<DecryptCache>,
    policy: Policy,
    format: PayloadFormat,
    direction: Direction,
    tokenize: TokenizePolicy,
    now: Now,
    shape: Shape,
    write_dlq: bool,
}

/// A batch of whole lines: `ends` are the offsets of each line's end (its newline, or the end of the data
/// for a last line without one).
struct Batch {
    seq: u64,
    first_line: u64,
    data: Vec<u8>,
    ends: Vec<usize>,
}

enum Work {
    Lines(Batch),
    /// The input failed before `line`; everything earlier has been sent.
    Failed {
        seq: u64,
        error: anyhow::Error,
    },
}

struct Done {
    seq: u64,
    output: Vec<u8>,
    output_lines: u64,
    dlq: Vec<u8>,
    summary: Summary,
    input_bytes: u64,
    failed: Option<anyhow::Error>,
}

fn to_file(args: &ReplayArgs, output_path: &Path, now: Now) -> anyhow::Result<Summary> {
    // With --keys the config's operator is not used, and neither are its credentials.
    let load = if args.keys.is_some() {
        crate::config::load_without_operator_credentials
    } else {
        crate::config::load
    };
    let settings = args.config.as_deref().map(load).transpose()?;
    let keys_path = match (&args.keys, &settings) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(s)) => match &s.uid2.keys {
            crate::config::KeysFrom::File(path) => Some(path.clone()),
            crate::config::KeysFrom::Operator { .. } => None,
        },
        (None, None) => None,
    };
    let Some(keys_path) = keys_path else {
        bail!(
            "replay needs keys: --keys KEYS.json (what /v2/key/bidstream or /v2/key/sharing returns once decrypted; `gen --keys-out` writes one)"
        );
    };
    let keys = crate::tools::load_keys(&keys_path)?;
    let mut policy = settings
        .as_ref()
        .map_or_else(Policy::default, |s| s.pipeline.policy.clone());
    policy.mode = ClientMode::from(args.mode);
    let mut tokenize = settings
        .as_ref()
        .map_or_else(TokenizePolicy::default, |s| s.pipeline.tokenize.clone());
    if let Some(param) = &args.pixel_param {
        policy.pixel_token_param.clone_from(param);
    }
    if !args.pointers.is_empty() {
        let pointers = args
            .pointers
            .iter()
            .map(|p| JsonPointer::parse(p).map_err(|e| anyhow::anyhow!("--pointer {p:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match args.direction {
            DirectionArg::Enrich => policy.event_token_pointers = pointers,
            DirectionArg::Tokenize => tokenize.pointers = pointers,
        }
    }
    let format = PayloadFormat::from(args.format);
    let direction = match args.direction {
        DirectionArg::Enrich => Direction::Enrich,
        DirectionArg::Tokenize => {
            if !matches!(args.format, FormatArg::Json | FormatArg::Openrtb) {
                bail!(
                    "--direction tokenize works on JSON (--format json or openrtb); raw UID2s never travel in pixels or protobuf bid requests"
                );
            }
            let probe_ms = match now {
                Now::At(ms) => ms,
                Now::Captured => wall_clock_ms(),
            };
            if let Err(e) = crate::engine::tokenize::can_encrypt(Some(&keys), probe_ms) {
                bail!(
                    "--direction tokenize: the keys in {} cannot make tokens ({e}); they must be sharing keys (/v2/key/sharing) with an active master key, an active key in the default keyset and a caller site id",
                    keys_path.display()
                );
            }
            Direction::Tokenize
        }
    };
    let optouts: Arc<dyn OptOutLookup + Send + Sync> = match &args.optouts {
        Some(path) => Arc::new(crate::stage::optout_feed::load_file(path)?),
        None => Arc::new(NoOptOuts),
    };
    let job = Arc::new(Job {
        keys: Some(keys),
        optouts,
        cache: (args.cache_entries > 0).then(|| DecryptCache::new(args.cache_entries)),
        policy,
        format,
        direction,
        tokenize,
        now,
        shape: args.shape,
        write_dlq: args.dlq.is_some(),
    });

    let input = capture_file::open_input(&args.input)?;
    let input_size = (!capture_file::is_stdio(&args.input)
        && capture_file::Compression::of(&args.input) == capture_file::Compression::None)
        .then(|| std::fs::metadata(&args.input).ok().map(|m| m.len()))
        .flatten();
    let mut output = Output::create(output_path)?;
    let mut dlq = args.dlq.as_deref().map(Output::create).transpose()?;
    let progress = progress_bar(
        input_size,
        args.quiet || capture_file::is_stdio(output_path),
    );

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(BATCHES_IN_FLIGHT);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(BATCHES_IN_FLIGHT);
    let started = Instant::now();
    let input_name = args.input.display().to_string();
    let reader = std::thread::Builder::new()
        .name("replay-reader".into())
        .spawn(move || read_batches(input, &input_name, &work_tx))?;
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (rx, tx, job) = (work_rx.clone(), done_tx.clone(), job.clone());
            std::thread::Builder::new()
                .name(format!("replay-{i}"))
                .spawn(move || {
                    for work in rx {
                        let done = match work {
                            Work::Lines(batch) => process_batch(&job, &batch),
                            Work::Failed { seq, error } => Done {
                                seq,
                                output: Vec::new(),
                                output_lines: 0,
                                dlq: Vec::new(),
                                summary: Summary::default(),
                                input_bytes: 0,
                                failed: Some(error),
                            },
                        };
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                })
        })
        .collect::<Result<_, _>>()?;
    drop((work_rx, done_tx));

    // The writer: puts batches back in input order.
    let mut summary = Summary::default();
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0;
    let mut failure = None;
    'receive: for done in done_rx.iter() {
        pending.insert(done.seq, done);
        while let Some(done) = pending.remove(&next) {
            next += 1;
            if let Some(error) = done.failed {
                failure = Some(error);
                break 'receive;
            }
            output.write_lines(&done.output, done.output_lines)?;
            if let Some(dlq) = dlq.as_mut() {
                dlq.write_lines(&done.dlq, done.summary.dead_lettered)?;
            }
            progress.inc(done.input_bytes);
            summary.merge(done.summary);
            progress.set_message(format!("{} records", summary.records));
        }
    }
    drop(done_rx);
    let _ = reader.join();
    for w in workers {
        let _ = w.join();
    }
    // The decrypt cache can hold hundreds of thousands of entries; freeing them one by one costs a few
    // percent of a run, and the process ends right after.
    std::mem::forget(job);
    progress.finish_and_clear();
    let written = output.lines;
    let output_name = output.path().display().to_string();
    output.finish()?;
    if let Some(dlq) = dlq {
        dlq.finish()?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.records as f64 / summary.seconds.max(1e-9);
    if let Some(error) = failure {
        summary.print(&output_name);
        return Err(error.context(format!(
            "stopped; the {written} lines written to {output_name} before the error are complete"
        )));
    }
    summary.print(&output_name);
    Ok(summary)
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

/// Reads the input in large blocks and hands out batches of whole lines. Reading blocks straight into the
/// batch buffer (rather than line by line) saves a copy of every byte; a line longer than a block simply
/// makes its batch larger.
fn read_batches(
    mut input: Box<dyn BufRead + Send>,
    input_name: &str,
    work: &crossbeam_channel::Sender<Work>,
) {
    let mut seq = 0;
    let mut line_no = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut data = Vec::with_capacity(BATCH_BYTES + carry.len() + READ_CHUNK);
        data.append(&mut carry);
        let mut eof = false;
        let mut failure = None;
        // Fill to the target size, then on until the block holds at least one newline.
        while !eof && (data.len() < BATCH_BYTES || memchr::memchr(b'\n', &data).is_none()) {
            let filled = data.len();
            data.resize(filled + READ_CHUNK, 0);
            match input.read(data.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => {
                    data.truncate(filled);
                    eof = true;
                }
                Ok(n) => data.truncate(filled + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => data.truncate(filled),
                Err(e) => {
                    data.truncate(filled);
                    failure = Some(e);
                    break;
                }
            }
        }
        // Whole lines go now; a partial last line waits for the next block (or is the last line at EOF).
        let whole = if eof {
            data.len()
        } else {
            memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1)
        };
        carry.extend_from_slice(data.get(whole..).unwrap_or_default());
        data.truncate(whole);
        let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', &data).collect();
        if data.last().is_some_and(|b| *b != b'\n') {
            ends.push(data.len());
        }
        if !ends.is_empty() {
            let lines = ends.len() as u64;
            let batch = Batch {
                seq,
                first_line: line_no + 1,
                data,
                ends,
            };
            if work.send(Work::Lines(batch)).is_err() {
                return;
            }
            seq += 1;
            line_no += lines;
        }
        if let Some(e) = failure {
            let hint = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                " (the compressed stream ends early: is the file truncated?)"
            } else {
                ""
            };
            let error = anyhow::anyhow!("reading {input_name} at line {}: {e}{hint}", line_no + 1);
            let _ = work.send(Work::Failed { seq, error });
            return;
        }
        if eof {
            return;
        }
    }
}

fn process_batch(job: &Job, batch: &Batch) -> Done {
    let mut done = Done {
        seq: batch.seq,
        output: Vec::with_capacity(batch.data.len() + batch.ends.len() * 300),
        output_lines: 0,
        dlq: Vec::new(),
        summary: Summary::default(),
        input_bytes: batch.data.len() as u64,
        failed: None,
    };
    let mut counts = [0u64; STATUS_NAMES.len() + 1];
    let mut start = 0;
    for (i, &end) in batch.ends.iter().enumerate() {
        let line = batch.data.get(start..end).unwrap_or_default();
        // Past the newline (the last line of a file may have none).
        start = end + 1;
        let line_no = batch.first_line + i as u64;
        done.summary.lines += 1;
        done.output_lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            done.summary.blank_lines += 1;
            done.output.extend_from_slice(line);
            done.output.push(b'\n');
            continue;
        }
        done.summary.records += 1;
        let kind = classify(line, job.shape);
        let (result, record) = match kind {
            Line::Bare => (replay_bare_line(job, line, &mut done.output), None),
            Line::Capture(Ok(record)) => (
                replay_capture_line(job, &record, &mut done.output),
                Some(record),
            ),
            Line::Capture(Err(e)) => (
                Err(Malformed {
                    reason: "bad_capture_record",
                    detail: e.to_string(),
                }),
                None,
            ),
        };
        match result {
            Ok(status) => {
                let slot = STATUS_NAMES
                    .iter()
                    .position(|s| *s == status)
                    .unwrap_or(STATUS_NAMES.len());
                if let Some(c) = counts.get_mut(slot) {
                    *c += 1;
                }
            }
            Err(bad) => {
                done.output_lines -= 1;
                done.summary.dead_lettered += 1;
                *done
                    .summary
                    .dead_letter_reasons
                    .entry(bad.reason.to_string())
                    .or_default() += 1;
                if done.summary.first_errors.len() < QUOTED_ERRORS {
                    done.summary
                        .first_errors
                        .push(format!("line {line_no}: {}: {}", bad.reason, bad.detail));
                }
                if job.write_dlq {
                    dead_letter(line, record, &bad, line_no, &mut done.dlq);
                }
            }
        }
    }
    for (name, count) in STATUS_NAMES.iter().chain(["no_token"].iter()).zip(counts) {
        if count > 0 {
            done.summary.statuses.insert((*name).to_string(), count);
        }
    }
    done
}

/// A line as `--shape` says to read it.
fn classify(line: &[u8], shape: Shape) -> Line {
    match shape {
        Shape::Auto => capture_file::classify(line),
        Shape::Bare => Line::Bare,
        Shape::Capture => Line::Capture(CaptureRecord::parse(line)),
    }
}

/// The status `uid2-status` would carry.
fn replay_bare_line(job: &Job, line: &[u8], out: &mut Vec<u8>) -> Result<&'static str, Malformed> {
    let Now::At(now_ms) = job.now else {
        return Err(Malformed {
            reason: "no_capture_time",
            detail:
                "a bare request has no captured time; --now capture needs capture records with `ts`"
                    .into(),
        });
    };
    let status = match job.direction {
        // Straight into the batch's buffer: no buffer of its own per request, no second copy.
        Direction::Enrich => {
            let (status, appended) = {
                let ctx = enrich_context(job, now_ms);
                let enriched = enrich::enrich_into(line, job.format, &ctx, &job.policy, out)?;
                (enriched.status_header(), enriched.body_enriched)
            };
            if !appended {
                out.extend_from_slice(line);
            }
            status
        }
        Direction::Tokenize => {
            let transformed = transform(job, line, now_ms)?;
            out.extend_from_slice(&transformed.output);
            transformed.status
        }
    };
    out.push(b'\n');
    Ok(status)
}

fn enrich_context(job: &Job, now_ms: i64) -> enrich::Context<'_> {
    enrich::Context {
        keys: enrich::Keys::single(job.keys.as_ref()),
        optouts: job.optouts.as_ref(),
        cache: job.cache.as_ref(),
        now_ms,
    }
}

fn replay_capture_line(
    job: &Job,
    record: &CaptureRecord,
    out: &mut Vec<u8>,
) -> Result<&'static str, Malformed> {
    let value = record.value_bytes().map_err(|e| Malformed {
        reason: "bad_capture_record",
        detail: e.to_string(),
    })?;
    let now_ms = match job.now {
        Now::At(ms) => ms,
        Now::Captured => record.ts.ok_or_else(|| Malformed {
            reason: "no_capture_time",
            detail: "the capture record has no `ts`, which --now capture needs".into(),
        })?,
    };
    let transformed = transform(job, &value, now_ms)?;
    let status = transformed.status;
    let mut record = record.clone();
    // The headers the stage adds to an output record (pipeline::process).
    record.push_header(headers::STATUS, Some(status.as_bytes()));
    if let Some(member) = &transformed.member {
        record.push_header(headers::ENRICHMENT, Some(member.as_bytes()));
    }
    if let Cow::Owned(bytes) = &transformed.output {
        record.set_value(bytes);
    }
    record.write_line(out);
    Ok(status)
}

/// A record as the stage would produce it.
struct Transformed<'a> {
    output: Cow<'a, [u8]>,
    /// The `uid2-status` header.
    status: &'static str,
    /// The `uid2-enrichment` header.
    member: Option<String>,
}

/// The stage's work on one payload, in the replay's direction.
fn transform<'a>(job: &Job, payload: &'a [u8], now_ms: i64) -> Result<Transformed<'a>, Malformed> {
    match job.direction {
        Direction::Enrich => {
            let ctx = enrich_context(job, now_ms);
            let enriched = enrich::enrich(payload, job.format, &ctx, &job.policy)?;
            Ok(Transformed {
                status: enriched.status_header(),
                member: enriched.member_json,
                output: enriched.output,
            })
        }
        Direction::Tokenize => {
            let ctx = TokenizeContext {
                keys: job.keys.as_ref(),
                now_ms,
            };
            let mut nonces = crate::support::clock::token_nonce;
            match crate::engine::tokenize::tokenize(payload, &ctx, &job.tokenize, &mut nonces) {
                Ok(t) => Ok(Transformed {
                    output: t.output,
                    status: t.status.as_str(),
                    member: None,
                }),
                Err(TokenizeError::Malformed(m)) => Err(m),
                // Never emit a raw UID2: the record is held back as a dead letter.
                Err(TokenizeError::Keys(e)) => Err(Malformed {
                    reason: "keys_cannot_encrypt",
                    detail: e.to_string(),
                }),
            }
        }
    }
}

/// A dead letter as a capture record: the original value (or, for a record that could not be read, the
/// line itself) with the stage's dead-letter headers plus `uid2-source-line`.
fn dead_letter(
    line: &[u8],
    record: Option<CaptureRecord>,
    bad: &Malformed,
    line_no: u64,
    out: &mut Vec<u8>,
) {
    let mut record = record.unwrap_or_else(|| {
        let mut r = CaptureRecord::default();
        r.set_value(line);
        r
    });
    record.push_header(headers::ERROR, Some(bad.reason.as_bytes()));
    if let Some(topic) = record.topic.clone() {
        record.push_header(headers::SOURCE_TOPIC, Some(topic.as_bytes()));
    }
    if let Some(p) = record.partition {
        record.push_header(headers::SOURCE_PARTITION, Some(p.to_string().as_bytes()));
    }
    if let Some(o) = record.offset {
        record.push_header(headers::SOURCE_OFFSET, Some(o.to_string().as_bytes()));
    }
    record.push_header(headers::SOURCE_LINE, Some(line_no.to_string().as_bytes()));
    record.write_line(out);
}

/// File → Kafka: every record as it is, in input order, paced by --rate or --speed.
fn to_topic(args: &ReplayArgs, topic: &str) -> anyhow::Result<Summary> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};

    // Records go out as they are: nothing is decrypted, so the operator's credentials are not needed.
    let kafka = crate::stage::kafka::clients_from(args.config.as_deref(), args.brokers.as_deref())
        .context("--to-topic needs --config C (brokers, TLS, SASL) or --brokers HOST:PORT")?;
    let context = DeliveryCounter::default();
    // The producer's queue is waited on with the stage's function, which sleeps on tokio's timer.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting a timer for the producer's backpressure")?;
    let producer: ThreadedProducer<DeliveryCounter> = kafka
        .producer()?
        .create_with_context(context)
        .map_err(crate::stage::kafka::creation_error)
        .with_context(|| format!("creating a producer for {}", kafka.brokers()))?;
    let mut input = capture_file::open_input(&args.input)?;
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut first_ts: Option<i64> = None;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let progress = progress_bar(None, args.quiet);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {} at line {}", args.input.display(), line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        progress.inc(n as u64);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        summary.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            summary.blank_lines += 1;
            continue;
        }
        let (value, key, headers, ts) = if let Line::Capture(parsed) = classify(&line, args.shape) {
            let parsed =
                parsed.and_then(|r| Ok((r.value_bytes()?, r.key_bytes()?, r.headers, r.ts)));
            match parsed {
                Ok(parts) => parts,
                Err(e) => {
                    summary.dead_lettered += 1;
                    *summary
                        .dead_letter_reasons
                        .entry("bad_capture_record".into())
                        .or_default() += 1;
                    if summary.first_errors.len() < QUOTED_ERRORS {
                        summary.first_errors.push(format!("line {line_no}: {e}"));
                    }
                    continue;
                }
            }
        } else {
            (line.clone(), None, Vec::new(), None)
        };
        // Pacing: wait until this record is due.
        let due = match (args.rate, args.speed, ts) {
            (Some(rate), _, _) if rate > 0.0 => {
                Some(Duration::from_secs_f64(summary.records as f64 / rate))
            }
            (_, Some(speed), Some(ts)) if speed > 0.0 => {
                let first = *first_ts.get_or_insert(ts);
                Some(Duration::from_secs_f64(
                    (ts - first).max(0) as f64 / 1000.0 / speed,
                ))
            }
            (_, Some(_), None) => bail!(
                "line {line_no}: --speed follows captured timestamps, and this record has no `ts` (use --rate N)"
            ),
            _ => None,
        };
        if let Some(wait) = due.and_then(|d| d.checked_sub(started.elapsed())) {
            std::thread::sleep(wait);
        }
        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len());
        let header_bytes: Vec<(String, Option<Vec<u8>>)> = headers
            .into_iter()
            .map(|(k, v)| (k, v.and_then(|v| v.to_bytes())))
            .collect();
        for (k, v) in &header_bytes {
            kafka_headers = kafka_headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&value)
            .headers(kafka_headers);
        if let Some(key) = &key {
            record = record.key(key);
        }
        let wait = Backpressure::patient(Duration::from_millis(5));
        let sent = send_with_backpressure(&producer, record, wait, || {});
        if let Err(e) = waiter.block_on(sent) {
            bail!("producing line {line_no} to {topic}: {e}");
        }
        summary.records += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("waiting for the broker to acknowledge every record")?;
    progress.finish_and_clear();
    let counter = producer.context();
    let failed = counter.failed.load(std::sync::atomic::Ordering::Relaxed);
    summary.acknowledged = Some(counter.delivered.load(std::sync::atomic::Ordering::Relaxed));
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.records as f64 / summary.seconds.max(1e-9);
    summary.print(&format!("topic {topic} on {}", kafka.brokers()));
    if failed > 0 {
        let first = counter
            .first_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        bail!("{failed} records were not acknowledged by the broker (first error: {first})");
    }
    Ok(summary)
}

/// Counts delivery reports of the file → Kafka producer.
#[derive(Default)]
struct DeliveryCounter {
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<String>,
}

impl rdkafka::ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::stage::kafka::client_log().log("replay producer", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::stage::kafka::client_log().error("replay producer", &error, reason);
    }
}

impl rdkafka::producer::ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(
        &self,
        result: &rdkafka::message::DeliveryResult<'_>,
        _opaque: Self::DeliveryOpaque,
    ) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0
                    && let Ok(mut first) = self.first_error.lock()
                {
                    *first = e.to_string();
                }
            }
        }
    }
}

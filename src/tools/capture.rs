//! `uid2-enricher capture`: a topic's records into a capture file (JSON Lines, `capture_file::CaptureRecord`)
//! with the exact value bytes, key, headers, topic, partition, offset and timestamp, for `replay` later.
//! Reads with no consumer group by default (it assigns every partition itself and commits nothing), or
//! as a member of `--group` to continue where the last capture stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::stage::kafka::{self, KafkaClients, Logged, PartitionRange, PartitionRangeError};
use crate::tools::capture_file::{CaptureRecord, Output};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Stops at --max records, after --duration seconds, with --until-caught-up when every partition has been \
read up to where it ended when the capture started, after --idle seconds without a record, or on Ctrl-C; it always ends with a summary and a \
complete file.

Example:
  uid2-enricher capture --config config/enricher.toml --topic bid-requests --from end --duration 60 \\
      --output capture.jsonl.zst")]
pub struct CaptureArgs {
    #[command(flatten)]
    pub cluster: crate::stage::kafka::ClusterArgs,
    /// The topic to capture.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// The capture file (`-` for standard output; .gz and .zst are compressed).
    #[arg(long, value_name = "FILE|-")]
    pub output: PathBuf,
    /// Where to start: `beginning`, `end`, or a time (milliseconds since the epoch, or RFC 3339) — the
    /// first record at or after it. With --group, only where the group has no committed offset.
    #[arg(
        long,
        value_name = "beginning|end|MS|RFC3339",
        default_value = "beginning"
    )]
    pub from: String,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Stop once every partition is read up to its end as of the start.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Stop once no record has arrived for this many seconds (for brokers whose end offsets cannot be
    /// trusted, and for draining a topic that is no longer written).
    #[arg(long, value_name = "S")]
    pub idle: Option<f64>,
    /// Consume as this consumer group and commit what was captured (default: no group, nothing committed).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

/// What a capture did.
#[derive(Debug, Default)]
pub struct CaptureSummary {
    pub records: u64,
    pub bytes: u64,
    pub by_partition: BTreeMap<i32, u64>,
    pub seconds: f64,
}

#[derive(Clone, Copy)]
enum Start {
    Beginning,
    End,
    Time(i64),
}

impl Start {
    fn parse(from: &str) -> anyhow::Result<Start> {
        Ok(match from {
            "beginning" | "earliest" => Start::Beginning,
            "end" | "latest" => Start::End,
            other => Start::Time(crate::support::clock::parse_time(other).with_context(|| {
                format!("--from {other:?}: expected beginning, end, or a time")
            })?),
        })
    }
}

/// Runs `capture`.
///
/// # Errors
/// Unreadable configuration, unknown topic, broker errors, or the output cannot be written.
pub async fn run(args: &CaptureArgs) -> anyhow::Result<CaptureSummary> {
    let kafka = args.cluster.clients()?;
    let start = Start::parse(&args.from)?;
    let consumer = consumer(args, &kafka, start)?;
    let timeout = Duration::from_secs(10);
    let ranges = partition_ranges(&consumer, args, &kafka, timeout)?;
    let mut ends = ends_at_start(&ranges, start);
    start_reading(&consumer, args, start, &ranges, &mut ends, timeout)?;
    let mut output = Output::create(&args.output)?;
    let progress = if args.quiet || crate::tools::capture_file::is_stdio(&args.output) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    let started = Instant::now();
    let mut summary = capture_records(&consumer, args, &mut output, &progress, ends).await?;
    progress.finish_and_clear();
    let name = output.path().display().to_string();
    output.finish()?;
    if args.group.is_some() {
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    print_summary(&summary, &args.topic, &name);
    Ok(summary)
}

fn consumer(
    args: &CaptureArgs,
    kafka: &KafkaClients,
    start: Start,
) -> anyhow::Result<StreamConsumer<Logged>> {
    let config = match &args.group {
        Some(group) => kafka.group_reader(
            group,
            match start {
                Start::End => "latest",
                _ => "earliest",
            },
        ),
        // Never joined (assign only) nor committed.
        None => kafka.reader(&format!("uid2-enricher-capture-{}", std::process::id())),
    };
    config
        .create_with_context(Logged("capture"))
        .map_err(crate::stage::kafka::creation_error)
        .with_context(|| format!("creating a consumer for {}", kafka.brokers()))
}

fn partition_ranges(
    consumer: &StreamConsumer<Logged>,
    args: &CaptureArgs,
    kafka: &KafkaClients,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionRange>> {
    kafka::partition_ranges(consumer, &args.topic, timeout).map_err(|e| match e {
        PartitionRangeError::Metadata(source) => anyhow::Error::new(source)
            .context(format!("reading the metadata of topic {}", args.topic)),
        PartitionRangeError::Watermarks { partition, error } => anyhow::Error::new(error).context(
            format!("reading the offsets of {}[{partition}]", args.topic),
        ),
        _ => anyhow::anyhow!(
            "topic {} does not exist on {} (or has no partitions)",
            args.topic,
            kafka.brokers()
        ),
    })
}

/// Where each partition with something to read ends now: --until-caught-up stops there.
fn ends_at_start(ranges: &[PartitionRange], start: Start) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for &PartitionRange {
        partition: p,
        low,
        high,
    } in ranges
    {
        let begin_at = match start {
            Start::End => high,
            _ => low,
        };
        if high > begin_at {
            ends.insert(p, high);
        }
    }
    ends
}

/// Subscribes as the group, or assigns every partition at --from; a partition with nothing at or after
/// --from TIME leaves `ends`, as there is nothing to wait for there.
fn start_reading(
    consumer: &StreamConsumer<Logged>,
    args: &CaptureArgs,
    start: Start,
    ranges: &[PartitionRange],
    ends: &mut HashMap<i32, i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if args.group.is_some() {
        if matches!(start, Start::Time(_)) {
            bail!(
                "--from TIME cannot be combined with --group (the group's committed offsets decide)"
            );
        }
        return consumer
            .subscribe(&[&args.topic])
            .with_context(|| format!("subscribing to {}", args.topic));
    }
    let mut assignment = TopicPartitionList::new();
    for range in ranges {
        let offset = match start {
            Start::Beginning => Offset::Beginning,
            Start::End => Offset::End,
            Start::Time(ms) => Offset::Offset(ms),
        };
        assignment.add_partition_offset(&args.topic, range.partition, offset)?;
    }
    if matches!(start, Start::Time(_)) {
        assignment = consumer
            .offsets_for_times(assignment, timeout)
            .context("finding the offsets of --from")?;
        for element in assignment.elements() {
            let nothing_new = match element.offset() {
                Offset::Offset(o) => ends.get(&element.partition()).is_none_or(|end| o >= *end),
                _ => true,
            };
            if nothing_new {
                ends.remove(&element.partition());
            }
        }
    }
    consumer
        .assign(&assignment)
        .context("assigning the partitions")
}

/// Writes records to `output` until --max, --duration, --until-caught-up, --idle or Ctrl-C says stop.
async fn capture_records(
    consumer: &StreamConsumer<Logged>,
    args: &CaptureArgs,
    output: &mut Output,
    progress: &indicatif::ProgressBar,
    mut ends: HashMap<i32, i64>,
) -> anyhow::Result<CaptureSummary> {
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut summary = CaptureSummary::default();
    let mut line = Vec::with_capacity(4096);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.max.is_some_and(|max| summary.records >= max)
            || (args.until_caught_up && ends.is_empty())
        {
            break;
        }
        let idle_deadline = args
            .idle
            .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        let message = tokio::select! {
            m = consumer.recv() => m,
            () = sleep_until(deadline) => break,
            () = sleep_until(idle_deadline) => break,
            _ = &mut interrupted => break,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Consumer error while capturing; retrying.");
                continue;
            }
        };
        line.clear();
        capture_record(&message).write_line(&mut line);
        output.write_lines(&line, 1)?;
        summary.records += 1;
        summary.bytes += message.payload_len() as u64;
        *summary.by_partition.entry(message.partition()).or_default() += 1;
        if let Some(&end) = ends.get(&message.partition())
            && message.offset() + 1 >= end
        {
            ends.remove(&message.partition());
        }
        if summary.records % 1000 == 0 {
            progress.set_message(format!("{} records", summary.records));
            progress.tick();
        }
    }
    Ok(summary)
}

fn capture_record(message: &BorrowedMessage<'_>) -> CaptureRecord {
    let mut record = CaptureRecord {
        ts: message.timestamp().to_millis(),
        topic: Some(message.topic().to_string()),
        partition: Some(message.partition()),
        offset: Some(message.offset()),
        ..CaptureRecord::default()
    };
    record.set_key(message.key());
    // A tombstone (no value) is written with an empty value.
    record.set_value(message.payload().unwrap_or_default());
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            record.push_header(h.key, h.value);
        }
    }
    record
}

fn print_summary(summary: &CaptureSummary, topic: &str, output_name: &str) {
    let parts: Vec<String> = summary
        .by_partition
        .iter()
        .map(|(p, n)| format!("{p}:{n}"))
        .collect();
    eprintln!(
        "capture: {} records ({} value bytes) from {} in {:.2} s → {output_name}; by partition {}",
        summary.records,
        summary.bytes,
        topic,
        summary.seconds,
        parts.join(" ")
    );
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

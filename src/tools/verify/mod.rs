//! `uid2-enricher verify`: a kgo-verifier/Jepsen-style check of what the stage did to a stream. It reads
//! the input, output and dead-letter topics from the beginning (assigned partitions, no consumer group,
//! nothing committed), matches records by request id and reports, per input partition: records in, lost
//! (in neither the output nor the dead-letter topic), duplicated (delivered more than once, with the
//! largest multiplicity) and out-of-order first deliveries.
//!
//! # Which order is guaranteed
//! A partition task produces its records in input order through one idempotent producer, and the
//! producer keeps the order of the records it sends to one partition. Output records go to the output
//! partition of their key (`OutputPartitioning::Key`) or to the input's partition number
//! (`OutputPartitioning::Same`). So the contract is: **for two records of the same input partition
//! whose first deliveries landed in the same output (or dead-letter) partition, the first delivery of the
//! earlier input comes first.** Redeliveries after a restart or rebalance come later in the partition and
//! are duplicates, not reorderings. Records of different input partitions are never compared.
//!
//! # Request ids
//! The id of a record is, in this order: the JSON value at `--id-field` (a JSON pointer, `/id` by
//! default) when the payload is a JSON object; field 1 (`BidRequest.id`) when the payload is a protobuf
//! message whose field 1 is UTF-8; the record key; and for a record with none of those, its coordinates
//! `topic/partition@offset`. A dead letter names its source in `uid2-source-*` headers and is matched by
//! those coordinates first.
//! Enrichment keeps the id and dead-lettering keeps the payload and key, so input, output and dead
//! letter agree on it.
//!
//! The analysis (`analysis.rs`, [`analyze`]) and the request ids (`id.rs`, [`record_id`]) are pure;
//! `read.rs` ([`read_topic`]) and [`verify`] do the Kafka I/O (rdkafka).

use std::time::Duration;

use crate::stage::kafka::KafkaClients;

mod analysis;
mod id;
mod read;

pub use analysis::{PartitionReport, Report, Seen, analyze};
pub use id::record_id;
pub use read::{read_topic, read_topic_counting};

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
    /// What the reader sees of transactional records: `read_uncommitted` (everything written, aborted
    /// transactions included) or `read_committed` (committed transactions only, what a downstream
    /// reader of an exactly-once stage uses).
    #[arg(long, value_enum, default_value_t = Isolation::ReadUncommitted)]
    pub isolation: Isolation,
}

/// A reader's `isolation.level`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Isolation {
    #[default]
    ReadUncommitted,
    ReadCommitted,
}

impl Isolation {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
        }
    }
}

/// Why a verification could not run (not what it found: that is the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("creating a Kafka consumer for {brokers}: {reason}")]
    Client { brokers: String, reason: String },
    #[error(
        "reading the metadata of topic {topic} (is the broker reachable, and does the topic exist?)"
    )]
    Metadata {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {0} does not exist or has no partitions")]
    NoSuchTopic(String),
    #[error("reading topic {topic}")]
    Read {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
}

/// How to read the topics.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The cluster: brokers and client properties (TLS, SASL, …).
    pub kafka: KafkaClients,
    pub inputs: Vec<String>,
    pub output: String,
    pub dlq: String,
    /// JSON pointer of the request id.
    pub id_field: String,
    /// Give up reading a topic after this long, its metadata and watermarks included.
    pub timeout: Duration,
    /// Once every partition reached the end it had when reading started, stop after this long without a
    /// new record (brokers such as tansu report watermarks per batch, so the end is confirmed by quiet).
    pub idle: Duration,
    pub isolation: Isolation,
}

impl VerifyOptions {
    pub fn new(brokers: &str, input: &str, output: &str, dlq: &str) -> VerifyOptions {
        VerifyOptions {
            kafka: KafkaClients::from_brokers(brokers),
            inputs: vec![input.to_string()],
            output: output.to_string(),
            dlq: dlq.to_string(),
            id_field: "/id".to_string(),
            timeout: Duration::from_secs(60),
            idle: Duration::from_millis(1500),
            isolation: Isolation::ReadUncommitted,
        }
    }
}

/// Reads the three topics and analyzes them.
///
/// # Errors
/// As [`read_topic`].
pub fn verify(options: &VerifyOptions) -> Result<Report, VerifyError> {
    let mut input = Vec::new();
    for topic in &options.inputs {
        input.extend(
            read_topic(options, topic)?
                .into_iter()
                .map(|r| (topic.clone(), r)),
        );
    }
    let (output, deleted_output) = read_topic_counting(options, &options.output)?;
    let (dlq, deleted_dlq) = read_topic_counting(options, &options.dlq)?;
    let mut report = analyze(&input, &output, &dlq);
    report.unreadable = deleted_output + deleted_dlq;
    Ok(report)
}

/// [`verify`], read again from the start with a fresh consumer up to `passes` times while inputs are
/// missing: some brokers (tansu 0.6) occasionally leave a batch out of a fetch. Returns the pass that
/// lost the least, and how many passes it took.
///
/// # Errors
/// As [`read_topic`].
pub fn verify_with_passes(
    options: &VerifyOptions,
    passes: u32,
) -> Result<(Report, u32), VerifyError> {
    let mut best = verify(options)?;
    let mut used = 1;
    while best.lost > 0 && used < passes.max(1) {
        used += 1;
        let again = verify(options)?;
        if again.lost < best.lost {
            best = again;
        }
    }
    Ok((best, used))
}

/// `uid2-enricher verify`: prints the report (a table, or JSON with `--json`); exit status 1 when
/// something was lost or reordered.
///
/// # Errors
/// The topics cannot be read; the message names the topic and the brokers.
pub fn command(args: &VerifyArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let options = VerifyOptions {
        kafka: args.cluster.clients()?,
        inputs: args.input.clone(),
        output: args.output.clone(),
        dlq: args.dlq.clone(),
        id_field: args.id_field.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        idle: Duration::from_millis(1500),
        isolation: args.isolation,
    };
    let report = verify(&options).with_context(|| {
        format!(
            "verifying {:?} → {} / {} at {} (check --brokers or --config, and the topic names)",
            options.inputs,
            options.output,
            options.dlq,
            options.kafka.brokers()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

//! `replay` file → Kafka: every record as it is (value, key and headers), in input order, paced by --rate
//! or --speed, to feed a stage under test. Nothing is enriched: the stage under test does that.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};

use super::{ReplayArgs, Shape, Summary, classify, progress_bar};
use crate::stage::kafka::KafkaClients;
use crate::stage::produce::{Backpressure, send_with_backpressure};
use crate::tools::capture_file::{self, HeaderPair, Line};

pub(super) fn to_topic(args: &ReplayArgs, topic: &str) -> anyhow::Result<Summary> {
    let feeder = Feeder::connect(args)?;
    let mut input = capture_file::open_input(&args.input)?;
    let started = Instant::now();
    let mut pacing = Pacing {
        rate: args.rate,
        speed: args.speed,
        started,
        first_ts: None,
    };
    let mut summary = Summary::default();
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
        let Some(record) = Outgoing::parse(&line, args.shape, line_no, &mut summary) else {
            continue;
        };
        pacing.wait(summary.records, record.ts, line_no)?;
        feeder.send(topic, record, line_no)?;
        summary.records += 1;
    }
    feeder.finish(topic, &progress, summary, started)
}

/// One line's record as it goes out: a capture record's value, key, headers and time, or a bare line as
/// the value.
struct Outgoing {
    value: Vec<u8>,
    key: Option<Vec<u8>>,
    headers: Vec<HeaderPair>,
    ts: Option<i64>,
}

impl Outgoing {
    /// `None` for a capture record that cannot be read: it is counted as malformed and not sent.
    fn parse(line: &[u8], shape: Shape, line_no: u64, summary: &mut Summary) -> Option<Outgoing> {
        let Line::Capture(parsed) = classify(line, shape) else {
            return Some(Outgoing {
                value: line.to_vec(),
                key: None,
                headers: Vec::new(),
                ts: None,
            });
        };
        let parsed = parsed.and_then(|r| {
            Ok(Outgoing {
                value: r.value_bytes()?,
                key: r.key_bytes()?,
                headers: r.headers,
                ts: r.ts,
            })
        });
        match parsed {
            Ok(record) => Some(record),
            Err(e) => {
                summary.malformed("bad_capture_record", || format!("line {line_no}: {e}"));
                None
            }
        }
    }
}

/// --rate spaces the records evenly; --speed keeps their captured spacing, faster or slower.
struct Pacing {
    rate: Option<f64>,
    speed: Option<f64>,
    started: Instant,
    /// The `ts` of the first record, where --speed's clock starts.
    first_ts: Option<i64>,
}

impl Pacing {
    /// Waits until the record after `sent` records, captured at `ts`, is due.
    fn wait(&mut self, sent: u64, ts: Option<i64>, line_no: u64) -> anyhow::Result<()> {
        let due = match (self.rate, self.speed, ts) {
            (Some(rate), _, _) if rate > 0.0 => Some(Duration::from_secs_f64(sent as f64 / rate)),
            (_, Some(speed), Some(ts)) if speed > 0.0 => {
                let first = *self.first_ts.get_or_insert(ts);
                Some(Duration::from_secs_f64(
                    (ts - first).max(0) as f64 / 1000.0 / speed,
                ))
            }
            (_, Some(_), None) => bail!(
                "line {line_no}: --speed follows captured timestamps, and this record has no `ts` (use --rate N)"
            ),
            _ => None,
        };
        if let Some(wait) = due.and_then(|d| d.checked_sub(self.started.elapsed())) {
            std::thread::sleep(wait);
        }
        Ok(())
    }
}

/// The producer to the topic, and the clients it came from. Fields drop in order: the producer first.
struct Feeder {
    producer: ThreadedProducer<DeliveryCounter>,
    /// The producer's queue is waited on with the stage's function, which sleeps on tokio's timer.
    waiter: tokio::runtime::Runtime,
    kafka: KafkaClients,
}

impl Feeder {
    fn connect(args: &ReplayArgs) -> anyhow::Result<Feeder> {
        // Records go out as they are: nothing is decrypted, so the operator's credentials are not needed.
        let kafka =
            crate::stage::kafka::clients_from(args.config.as_deref(), args.brokers.as_deref())
                .context(
                    "--to-topic needs --config C (brokers, TLS, SASL) or --brokers HOST:PORT",
                )?;
        let context = DeliveryCounter::default();
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("starting a timer for the producer's backpressure")?;
        let producer: ThreadedProducer<DeliveryCounter> = kafka
            .producer()?
            .create_with_context(context)
            .map_err(crate::stage::kafka::creation_error)
            .with_context(|| format!("creating a producer for {}", kafka.brokers()))?;
        Ok(Feeder {
            producer,
            waiter,
            kafka,
        })
    }

    fn send(&self, topic: &str, record: Outgoing, line_no: u64) -> anyhow::Result<()> {
        let mut kafka_headers = OwnedHeaders::new_with_capacity(record.headers.len());
        let header_bytes: Vec<(String, Option<Vec<u8>>)> = record
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.and_then(|v| v.to_bytes())))
            .collect();
        for (k, v) in &header_bytes {
            kafka_headers = kafka_headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut base = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&record.value)
            .headers(kafka_headers);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        let wait = Backpressure::patient(Duration::from_millis(5));
        let sent = send_with_backpressure(&self.producer, base, wait, || {});
        if let Err(e) = self.waiter.block_on(sent) {
            bail!("producing line {line_no} to {topic}: {e}");
        }
        Ok(())
    }

    /// Waits for every acknowledgement and prints the summary; records the broker did not take are the
    /// error.
    fn finish(
        self,
        topic: &str,
        progress: &indicatif::ProgressBar,
        mut summary: Summary,
        started: Instant,
    ) -> anyhow::Result<Summary> {
        self.producer
            .flush(Duration::from_secs(120))
            .context("waiting for the broker to acknowledge every record")?;
        progress.finish_and_clear();
        let counter = self.producer.context();
        let failed = counter.failed.load(std::sync::atomic::Ordering::Relaxed);
        summary.acknowledged = Some(counter.delivered.load(std::sync::atomic::Ordering::Relaxed));
        summary.seconds = started.elapsed().as_secs_f64();
        summary.records_per_second = summary.records as f64 / summary.seconds.max(1e-9);
        summary.print(&format!("topic {topic} on {}", self.kafka.brokers()));
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

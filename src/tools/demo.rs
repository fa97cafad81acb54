//! `uid2-enricher demo`: the whole stage in one process with nothing to install. It starts librdkafka's
//! in-process mock cluster (on a thread of its own: the handle is neither `Send` nor `Sync`), generates a
//! key set and ~100,000 realistic requests with a mix of token cases, runs the same pipeline code as `run`
//! against them, and prints a summary: counts by status (checked against what was generated), how fast
//! the stage drains that backlog, dead letters, and the output and dead-letter topics' record counts. A
//! second, paced phase then feeds requests at a steady rate and reports each record's time inside the
//! stage: a backlog's latency is its queueing, not what the stage adds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::engine::enrich::{PayloadFormat, Policy};
use crate::engine::optout::NoOptOuts;
use crate::stage::kafka::{KafkaClients, Logged};
use crate::stage::pipeline::{
    self, LatencySamples, OutputPartitioning, RunCounters, STATUS_NAMES, StageConfig, StageDeps,
};
use crate::stage::produce::{Backpressure, send_with_backpressure};
use crate::support::metrics::Metrics;
use crate::tools::traffic::{Case, Generator, Mix};

const INPUT: &str = "bid-requests";
const OUTPUT: &str = "bid-requests-enriched";
const DLQ: &str = "bid-requests-dlq";
// The mock cluster keeps ~5 MiB per partition and silently drops older data: enough partitions keep
// 100,000 requests of ~2 KB and the paced phase's (and their enriched copies) whole, with room to spare
// for uneven partitions.
const PARTITIONS: i32 = 64;

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
    /// expired, unknown-site-key, tampered, euid, cstg-match, cstg-mismatch, none, malformed (and, for
    /// `gen --euid-keys-out` only, euid-valid).
    #[arg(long)]
    pub mix: Option<String>,
    /// Records per second of the paced phase, which measures the time the stage adds to each record.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,
    /// How long the paced phase lasts; 0 skips it.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub paced_seconds: u64,
    /// Log level while the demo runs (tracing EnvFilter syntax).
    #[arg(long, default_value = "warn")]
    pub log: String,
}

impl DemoArgs {
    /// The options `run` takes, with `--mix` parsed.
    ///
    /// # Errors
    /// `--mix` cannot be parsed.
    pub fn options(&self) -> anyhow::Result<DemoOptions> {
        let mix = match &self.mix {
            Some(text) => {
                let mix = Mix::parse(text).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
                if mix.0.iter().any(|(case, _)| *case == Case::EuidValid) {
                    anyhow::bail!(
                        "--mix: the demo runs with one UID2 key set, so `euid-valid` tokens cannot decrypt; a stream of UID2 and EUID tokens: `gen --euid-keys-out` and `replay --keys … --keys …`"
                    );
                }
                mix
            }
            None => Mix::default(),
        };
        Ok(DemoOptions {
            count: self.count,
            seed: self.seed,
            size: self.size,
            mix,
            rate: self.rate,
            paced: self.rate * self.paced_seconds,
        })
    }
}

/// What `demo` was asked for.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Requests of the backlog phase.
    pub count: u64,
    pub seed: u64,
    pub size: usize,
    pub mix: Mix,
    /// Records per second of the paced phase.
    pub rate: u64,
    /// Requests of the paced phase (0: none).
    pub paced: u64,
}

/// Runs the demo and prints the summary to stdout.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let cluster = MockClusterThread::start()?;
    println!(
        "mock cluster: 3 brokers at {}; topics {INPUT} ({PARTITIONS} partitions), {OUTPUT} ({PARTITIONS}), {DLQ} (4)",
        cluster.brokers
    );

    let now_ms = crate::support::clock::wall_clock_ms();
    let mut generator = Generator::new(
        options.seed,
        options.mix.clone(),
        now_ms,
        (options.count / 20).max(100) as u32,
        options.size,
    );
    let keys = Arc::new(generator.key_set());
    let kafka = KafkaClients::from_brokers(&cluster.brokers)
        .with_consumer([("session.timeout.ms", "6000")]);
    let counters = Arc::new(RunCounters::with_latencies());
    let shutdown = CancellationToken::new();
    let deps = StageDeps {
        keys: Arc::new(Some(keys)),
        optouts: Arc::new(NoOptOuts),
        metrics: Arc::new(Metrics::new()),
        counters: counters.clone(),
    };
    let stage = tokio::spawn(pipeline::run(stage_config(&kafka), deps, shutdown.clone()));

    let mut feeder = Feeder::new(&kafka)?;
    let fed = feeder.backlog(&mut generator, options.count).await?;
    wait_until_accounted_for(&counters, options.count, &stage, &shutdown).await?;
    let elapsed = fed.started.elapsed();
    // The backlog's latencies are its queueing; only the paced phase's say what the stage adds.
    counters.take_latencies();
    feeder
        .paced(&mut generator, options.paced, options.rate)
        .await?;
    let total = options.count + options.paced;
    wait_until_accounted_for(&counters, total, &stage, &shutdown).await?;
    let paced_latencies = counters.take_latencies();
    let (expected, input_bytes) = feeder.finish().await?;
    shutdown.cancel();
    stage.await.context("the stage task panicked")??;

    let (out_count, dlq_count) = count_topics(&kafka).await?;
    cluster.stop();

    let outcome = Outcome {
        expected,
        elapsed,
        produced_in: fed.produced_in,
        input_bytes,
        out_count,
        dlq_count,
        paced: paced_latencies,
    };
    print_summary(&options, &counters, &outcome)
}

/// librdkafka's mock cluster, on a thread of its own because its handle is neither `Send` nor `Sync`.
struct MockClusterThread {
    brokers: String,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl MockClusterThread {
    fn start() -> anyhow::Result<MockClusterThread> {
        let (bootstrap_tx, bootstrap_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-cluster".into())
            .spawn(move || {
                let result = (|| -> anyhow::Result<MockCluster<'static, _>> {
                    let cluster =
                        MockCluster::new(3).context("starting librdkafka's mock cluster")?;
                    cluster.create_topic(INPUT, PARTITIONS, 1)?;
                    cluster.create_topic(OUTPUT, PARTITIONS, 1)?;
                    cluster.create_topic(DLQ, 4, 1)?;
                    Ok(cluster)
                })();
                match result {
                    Ok(cluster) => {
                        let _ = bootstrap_tx.send(Ok(cluster.bootstrap_servers()));
                        let _ = stop_rx.recv();
                        drop(cluster);
                    }
                    Err(e) => {
                        let _ = bootstrap_tx.send(Err(e));
                    }
                }
            })?;
        let brokers = bootstrap_rx
            .recv()
            .context("the mock cluster thread ended")??;
        Ok(MockClusterThread {
            brokers,
            stop: stop_tx,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn stage_config(kafka: &KafkaClients) -> StageConfig {
    StageConfig {
        kafka: kafka.clone(),
        group_id: "uid2-enricher-demo".into(),
        input_topics: vec![INPUT.into()],
        output_topic: OUTPUT.into(),
        dlq_topic: DLQ.into(),
        policy: Policy::default(),
        format: PayloadFormat::Json,
        topic_formats: Vec::new(),
        direction: Default::default(),
        tokenize: Default::default(),
        enrich: true,
        max_in_flight: 10_000,
        cache_entries: crate::config::defaults::CACHE_ENTRIES,
        drain_timeout: Duration::from_millis(2500),
        shutdown_timeout: Duration::from_secs(8),
        output_partitioning: OutputPartitioning::Key,
        delivery: Default::default(),
    }
}

/// The backlog phase's timing.
struct Fed {
    started: Instant,
    produced_in: Duration,
}

/// The demo's input producer, and what it produced: the statuses its cases should get, and its size.
struct Feeder {
    producer: FutureProducer<Logged>,
    expected: BTreeMap<&'static str, u64>,
    input_bytes: u64,
    deliveries: Vec<DeliveryFuture>,
}

impl Feeder {
    fn new(kafka: &KafkaClients) -> anyhow::Result<Feeder> {
        let producer = kafka
            .producer()?
            .create_with_context(Logged("demo input producer"))
            .map_err(crate::stage::kafka::creation_error)
            .context("creating the demo's input producer")?;
        Ok(Feeder {
            producer,
            expected: BTreeMap::new(),
            input_bytes: 0,
            deliveries: Vec::new(),
        })
    }

    /// Produces `count` requests as fast as the producer takes them, while the stage runs, and waits
    /// for the brokers to acknowledge them.
    async fn backlog(&mut self, generator: &mut Generator, count: u64) -> anyhow::Result<Fed> {
        let started = Instant::now();
        for _ in 0..count {
            self.send(generator).await?;
        }
        self.acknowledged().await?;
        Ok(Fed {
            started,
            produced_in: started.elapsed(),
        })
    }

    /// Produces `count` requests at `rate` per second, each at its due time.
    async fn paced(
        &mut self,
        generator: &mut Generator,
        count: u64,
        rate: u64,
    ) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        let interval = Duration::from_secs(1) / u32::try_from(rate.max(1)).unwrap_or(u32::MAX);
        for i in 0..count {
            tokio::time::sleep_until(started + interval * u32::try_from(i).unwrap_or(u32::MAX))
                .await;
            self.send(generator).await?;
        }
        self.acknowledged().await
    }

    async fn send(&mut self, generator: &mut Generator) -> anyhow::Result<()> {
        let request = generator.next_request();
        *self
            .expected
            .entry(request.case.expected_status().unwrap_or("dead_letter"))
            .or_default() += 1;
        self.input_bytes += request.bytes.len() as u64;
        let record = FutureRecord::to(INPUT)
            .key(request.id.as_bytes())
            .payload(request.bytes.as_slice());
        let wait = Backpressure::patient(Duration::from_millis(1));
        match send_with_backpressure(&self.producer, record, wait, || {}).await {
            Ok(d) => self.deliveries.push(d),
            Err(e) => bail!("producing the demo input failed: {e}"),
        }
        Ok(())
    }

    async fn acknowledged(&mut self) -> anyhow::Result<()> {
        for d in self.deliveries.drain(..) {
            if !matches!(d.await, Ok(Ok(_))) {
                bail!("producing the demo input failed");
            }
        }
        Ok(())
    }

    /// What was produced. The producer goes with it: every client must be gone before the cluster
    /// stops, or librdkafka logs a burst of refused connects.
    async fn finish(mut self) -> anyhow::Result<(BTreeMap<&'static str, u64>, u64)> {
        self.acknowledged().await?;
        Ok((self.expected, self.input_bytes))
    }
}

/// Waits until every input is accounted for downstream, or the stage ends.
async fn wait_until_accounted_for<T>(
    counters: &RunCounters,
    count: u64,
    stage: &tokio::task::JoinHandle<T>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = counters.produced.load(Ordering::Relaxed)
            + counters.dead_lettered.load(Ordering::Relaxed);
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            shutdown.cancel();
            bail!("only {done} of {count} records came out within 120 s");
        }
        if stage.is_finished() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records in the output and dead-letter topics, from their watermarks.
async fn count_topics(kafka: &KafkaClients) -> anyhow::Result<(i64, i64)> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, i64)> {
        let consumer: BaseConsumer<Logged> = kafka
            .reader("uid2-enricher-demo-count")
            .create_with_context(Logged("demo counter"))
            .map_err(crate::stage::kafka::creation_error)?;
        let count = |topic: &str, partitions: i32| -> anyhow::Result<i64> {
            let mut total = 0;
            for p in 0..partitions {
                let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                total += high - low;
            }
            Ok(total)
        };
        Ok((count(OUTPUT, PARTITIONS)?, count(DLQ, 4)?))
    })
    .await?
}

/// What a demo run measured.
struct Outcome {
    expected: BTreeMap<&'static str, u64>,
    elapsed: Duration,
    produced_in: Duration,
    input_bytes: u64,
    out_count: i64,
    dlq_count: i64,
    /// Each record's time inside the stage during the paced phase.
    paced: LatencySamples,
}

fn print_summary(
    options: &DemoOptions,
    counters: &RunCounters,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    print_throughput(options, counters, outcome);
    let dead = counters.dead_lettered.load(Ordering::Relaxed);
    let mismatches = print_statuses(counters, &outcome.expected);
    let want_dead = outcome.expected.get("dead_letter").copied().unwrap_or(0);
    println!(
        "  {:<34} {:>9} {:>9}",
        "(dead-letter topic)", dead, want_dead
    );
    println!();
    let (out_count, dlq_count) = (outcome.out_count, outcome.dlq_count);
    println!("  topics: {OUTPUT} holds {out_count} records, {DLQ} holds {dlq_count}");
    let accounted = u64::try_from(out_count + dlq_count).unwrap_or(0);
    let total = options.count + options.paced;
    if accounted != total || mismatches > 0 || dead != want_dead {
        bail!(
            "demo check failed: {accounted} of {total} inputs accounted for downstream, {mismatches} status counts differ"
        );
    }
    println!(
        "  every input accounted for: {out_count} output + {dlq_count} dead-lettered = {total} ✓"
    );
    Ok(())
}

/// Sizes, the backlog's throughput, the paced phase's latencies and the stage's own counts.
fn print_throughput(options: &DemoOptions, counters: &RunCounters, outcome: &Outcome) {
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let produced = counters.produced.load(Ordering::Relaxed);
    let dead = counters.dead_lettered.load(Ordering::Relaxed);
    let total = options.count + options.paced;
    let input_bytes = outcome.input_bytes;
    println!();
    println!(
        "uid2-enricher demo: {total} requests (seed {}, ~{} B each, {:.1} MB)",
        options.seed,
        input_bytes / total.max(1),
        input_bytes as f64 / 1e6
    );
    println!(
        "  backlog: {} requests produced in {:.2} s while the stage ran, all out in {:.2} s: {:.0} records/s through consume → enrich → produce → ack",
        options.count,
        outcome.produced_in.as_secs_f64(),
        outcome.elapsed.as_secs_f64(),
        options.count as f64 / outcome.elapsed.as_secs_f64()
    );
    if options.paced > 0 {
        println!(
            "  paced: {} requests at {} records/s; time inside the stage per record:",
            options.paced, options.rate
        );
        print_percentiles(
            "consumed → handed to the producer",
            &outcome.paced.handed_us,
        );
        print_percentiles(
            "consumed → acknowledged by the brokers",
            &outcome.paced.acked_us,
        );
    }
    println!("  consumed {consumed}, enriched and produced {produced}, dead-lettered {dead}");
}

/// One line of percentiles, in milliseconds.
fn print_percentiles(what: &str, samples_us: &[u32]) {
    let mut sorted = samples_us.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| {
        let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1));
        f64::from(sorted.get(rank - 1).copied().unwrap_or(0)) / 1e3
    };
    println!(
        "    {what:<40} p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

/// The table of statuses against what was generated; returns how many differ.
fn print_statuses(counters: &RunCounters, expected: &BTreeMap<&'static str, u64>) -> u64 {
    println!();
    println!("  {:<34} {:>9} {:>9}", "uid2-status", "records", "expected");
    let mut mismatches = 0;
    for (i, name) in STATUS_NAMES.iter().enumerate() {
        let got = counters.statuses[i].load(Ordering::Relaxed);
        let want = expected.get(name).copied().unwrap_or(0);
        if got == 0 && want == 0 {
            continue;
        }
        let mark = if got == want { "" } else { "  <- differs" };
        mismatches += u64::from(got != want);
        println!("  {name:<34} {got:>9} {want:>9}{mark}");
    }
    mismatches
}

//! At-least-once against exactly-once delivery, in one run on librdkafka's in-process mock cluster: for
//! each contender (at-least-once, exactly-once committing every 1,000 records, every 10,000 records), the
//! saturation throughput (a backlog drained) and the per-record latency inside the stage at a steady rate
//! (consumed → handed to the producer, consumed → acknowledged), plus the time each transaction commit took.
//!
//! The mock cluster simulates transactions at the protocol level only (no commit markers, nothing held
//! back from `read_committed` readers), so what this measures is the stage's own cost of transactions:
//! the commits and the pauses of the partition tasks while one runs. A `read_committed` reader downstream
//! also waits for the commit: up to `transaction_max_ms` plus the commit time.
//!
//! `cargo bench --bench delivery -- [--records N] [--rate R] [--seconds S]`
//!
//! The mock cluster keeps about 5 MiB per partition and silently drops older records: a saturation
//! backlog larger than that (the default 40,000 records of ~1.5 KB over 16 partitions is ~3.7 MiB each)
//! loses records and never drains.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::optout::NoOptOuts;
use uid2_enricher::stage::kafka::KafkaClients;
use uid2_enricher::stage::pipeline::{
    self, Delivery, OutputPartitioning, RunCounters, StageConfig, StageDeps, TransactionSettings,
};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};

const PARTITIONS: i32 = 16;

struct Options {
    records: u64,
    rate: u64,
    seconds: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        records: 40_000,
        rate: 5_000,
        seconds: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> anyhow::Result<u64> {
            args.next()
                .with_context(|| format!("{arg} needs a value"))?
                .parse()
                .with_context(|| arg.clone())
        };
        match arg.as_str() {
            "--bench" => {}
            "--records" => o.records = value()?.max(1000),
            "--rate" => o.rate = value()?.max(100),
            "--seconds" => o.seconds = value()?.max(1),
            other => {
                anyhow::bail!("unknown argument {other:?} (--records N, --rate R, --seconds S)")
            }
        }
    }
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    // The mock cluster is not Send: it stays on this thread, the stage runs on the runtime's workers.
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let contenders: [(&str, Option<u64>); 3] = [
        ("at least once", None),
        ("exactly once, 1,000 per transaction", Some(1000)),
        ("exactly once, 10,000 per transaction", Some(10_000)),
    ];
    println!(
        "Mock cluster (1 broker), {PARTITIONS} partitions, ~1.5 KB requests; saturation: {} records; paced: {}/s for {} s.\n",
        options.records, options.rate, options.seconds
    );
    println!(
        "| delivery | saturation records/s | vs at least once | handed p50 / p99 (ms) | acknowledged p50 / p99 (ms) | commits | commit p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut baseline = None;
    for (phase, (name, per_transaction)) in contenders.iter().enumerate() {
        let topics = [
            format!("in-{phase}"),
            format!("out-{phase}"),
            format!("dlq-{phase}"),
        ];
        for topic in &topics {
            cluster
                .create_topic(topic, PARTITIONS, 1)
                .context("creating a topic")?;
        }
        let brokers = cluster.bootstrap_servers();
        let row = runtime.block_on(measure(&brokers, &topics, *per_transaction, &options))?;
        let ratio = baseline.map_or(1.0, |b: f64| row.records_per_second / b);
        baseline.get_or_insert(row.records_per_second);
        println!(
            "| {name} | {:.0} | {ratio:.2}× | {:.3} / {:.3} | {:.3} / {:.3} | {} | {} |",
            row.records_per_second,
            row.handed.0,
            row.handed.1,
            row.acked.0,
            row.acked.1,
            row.commits,
            row.commit_ms
        );
    }
    Ok(())
}

struct Row {
    records_per_second: f64,
    handed: (f64, f64),
    acked: (f64, f64),
    commits: String,
    commit_ms: String,
}

async fn measure(
    brokers: &str,
    topics: &[String; 3],
    per_transaction: Option<u64>,
    options: &Options,
) -> anyhow::Result<Row> {
    let mut generator = Generator::new(
        7,
        Mix(vec![(Case::ValidV4, 10), (Case::NoToken, 2)]),
        uid2_enricher::support::clock::wall_clock_ms(),
        10_000,
        1500,
    );
    let counters = Arc::new(RunCounters::with_latencies());
    let metrics = Arc::new(Metrics::new());
    let config = StageConfig {
        kafka: KafkaClients::from_brokers(brokers).with_consumer([("session.timeout.ms", "6000")]),
        group_id: format!("g-{}", topics[0]),
        input_topics: vec![topics[0].clone()],
        output_topic: topics[1].clone(),
        dlq_topic: topics[2].clone(),
        policy: Policy::default(),
        format: PayloadFormat::Json,
        topic_formats: Vec::new(),
        direction: Default::default(),
        tokenize: Default::default(),
        enrich: true,
        max_in_flight: 10_000,
        cache_entries: 0,
        drain_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(8),
        output_partitioning: OutputPartitioning::Key,
        delivery: match per_transaction {
            None => Delivery::AtLeastOnce,
            Some(n) => Delivery::ExactlyOnce(TransactionSettings {
                transactional_id: format!("bench-{}", topics[0]),
                max_records: n,
                max_duration: Duration::from_millis(100),
            }),
        },
    };
    let deps = StageDeps {
        keys: Arc::new(Some(Arc::new(generator.key_set()))),
        optouts: Arc::new(NoOptOuts),
        metrics: metrics.clone(),
        counters: counters.clone(),
    };
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(pipeline::run(config, deps, shutdown.clone()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let out = || {
        counters.produced.load(Ordering::Relaxed) + counters.dead_lettered.load(Ordering::Relaxed)
    };
    // Whether the producer took a record (false: its queue is full). The delivery futures are dropped:
    // the stage's output says when records arrived.
    let send = |generator: &mut Generator| -> bool {
        let r = generator.next_request();
        producer
            .send_result(FutureRecord::to(&topics[0]).key(&r.id).payload(&r.bytes))
            .is_ok()
    };
    // Warm-up: the group joins (the mock delays a first join by 3 s) and every path runs once.
    for _ in 0..100 {
        send(&mut generator);
    }
    wait(|| out() >= 100, Duration::from_secs(60)).await?;
    // Saturation: a backlog produced as fast as the producer takes it, drained.
    let started = Instant::now();
    for _ in 0..options.records {
        while !send(&mut generator) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let total = 100 + options.records;
    wait(|| out() >= total, Duration::from_secs(300)).await?;
    let records_per_second = options.records as f64 / started.elapsed().as_secs_f64();
    // Paced: latency inside the stage at a steady rate.
    counters.take_latencies();
    let paced = options.rate * options.seconds;
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < paced {
        let due = ((started.elapsed().as_secs_f64() * options.rate as f64) as u64 + 1).min(paced);
        while sent < due {
            if send(&mut generator) {
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    wait(|| out() >= total + paced, Duration::from_secs(120)).await?;
    let samples = counters.take_latencies();
    shutdown.cancel();
    stage.await.context("the stage task")??;
    let text = metrics.render();
    let commits = text
        .lines()
        .find_map(|l| l.strip_prefix("uid2_enricher_transactions_total{outcome=\"committed\"} "))
        .unwrap_or("–")
        .to_string();
    Ok(Row {
        records_per_second,
        handed: quantiles(&samples.handed_us),
        acked: quantiles(&samples.acked_us),
        commit_ms: commit_quantiles(&text),
        commits,
    })
}

async fn wait(done: impl Fn() -> bool, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "records did not come out within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// p50 and p99 in milliseconds.
fn quantiles(samples_us: &[u32]) -> (f64, f64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for s in samples_us {
        let _ = h.record(u64::from(*s).max(1));
    }
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// p50 / p99 of the commit histogram, read from its buckets (upper bounds), in milliseconds.
fn commit_quantiles(metrics: &str) -> String {
    let prefix = "uid2_enricher_transaction_commit_seconds_bucket{le=\"";
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return "–".into();
    }
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le * 1000.0)
    };
    format!("≤ {:.1} / ≤ {:.1}", at(0.5), at(0.99))
}

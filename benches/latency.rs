//! Latency and scale of the stage through a real broker, measured the way an operator asks: the time the
//! stage adds at a steady rate, the curve up to saturation, one instance against two, and a large opt-out
//! set loaded while records flow.
//!
//! `scripts/bench-latency.sh` starts tansu and runs this; against another cluster:
//! `cargo bench --bench latency -- --brokers HOST:PORT` (or `--config FILE` for TLS and SASL), with the
//! topics created through the admin API. `--help` lists the options.
//!
//! One run, every phase on topics of its own:
//! 1. Saturation: a backlog produced as fast as the producer takes it while the stage runs, drained by
//!    the pass-through stage (`enrich = false`), the enricher, two enricher instances in one group (order
//!    and loss checked with `verify`), and the enricher with `--optouts` opt-outs loaded.
//! 2. Latency at 25%, 50%, 75% and 90% of the enricher's saturation, input paced by the clock with its
//!    send time in a header: the broker's floor (producer → broker → consumer, no stage), the
//!    pass-through and the enricher; and the enricher with the opt-outs loaded at 50%. Per record, in
//!    microseconds (HDR histograms): inside the stage from consumed to handed to the producer and to
//!    acknowledged, and end to end from the send time to the record read back.
//!
//! The stage runs in this process (`pipeline::run`, as `demo` does) so its per-record times are exact;
//! two instances are two group members, each with its own consumer, producer and partition tasks.
//! Writes `summary.md`, `summary.json`, `latency.png` and `scale.png` under `--out`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use uid2_enricher::enrich::{PayloadFormat, Policy};
use uid2_enricher::optout::{LiveOptOuts, NoOptOuts, OptOutLookup, OptOutSet};
use uid2_enricher::stage::kafka::{self, KafkaClients, Logged};
use uid2_enricher::stage::pipeline::{
    self, OutputPartitioning, RunCounters, StageConfig, StageDeps,
};
use uid2_enricher::stage::produce::{Backpressure, send_with_backpressure};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::tools::traffic::{Case, Generator, Mix};
use uid2_enricher::tools::verify::{VerifyOptions, verify};
use uid2_enricher::uid2::KeySet;

/// The header that carries an input record's send time (microseconds since the Unix epoch).
const SENT_HEADER: &str = "bench-sent-us";
/// Records sent before each measurement: the group has joined and every path is warm once they are out.
const WARM_UP: u64 = 200;
/// The offered loads, as fractions of the enricher's saturation throughput.
const LOADS: [f64; 4] = [0.25, 0.50, 0.75, 0.90];

const HELP: &str = "cargo bench --bench latency -- [options]
  --brokers HOST:PORT      the cluster (or --config FILE: the stage's configuration, for TLS and SASL)
  --config FILE            take the brokers and client properties from the stage's configuration
  --tansu PATH             create topics with `PATH topic create` (tansu has no admin API) and use short
                           fetch waits and session timeouts (tansu holds every fetch for fetch.wait.max.ms)
  --broker-pid PID         report the broker's CPU per phase, from /proc/PID/stat
  --size BYTES             approximate request size (default 2000)
  --partitions N           partitions of every topic (default 8)
  --seconds N              length of each paced phase (default 5)
  --saturation-count N     requests of each saturation phase (default 150000)
  --rounds N               saturation rounds, interleaved; goals and plots use each stage's median (default 3)
  --optouts N              opt-outs loaded for the opt-out phases (default 10000000)
  --out DIR                where the summary and plots go (default target/bench-latency)";

struct Options {
    kafka: KafkaClients,
    tansu: Option<PathBuf>,
    broker_pid: Option<u32>,
    size: usize,
    partitions: i32,
    seconds: u64,
    saturation_count: u64,
    rounds: usize,
    optouts: u64,
    out: PathBuf,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut args = std::env::args().skip(1);
        let (mut brokers, mut config, mut tansu, mut broker_pid) = (None, None, None, None);
        let (mut size, mut partitions, mut seconds) = (2000usize, 8i32, 5u64);
        let (mut saturation_count, mut optouts, mut rounds) = (150_000u64, 10_000_000u64, 3usize);
        let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-latency"));
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value (see --help)"))
            };
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "--brokers" => brokers = Some(value()?),
                "--config" => config = Some(PathBuf::from(value()?)),
                "--tansu" => tansu = Some(PathBuf::from(value()?)),
                "--broker-pid" => broker_pid = Some(value()?.parse().context("--broker-pid")?),
                "--size" => size = value()?.parse().context("--size")?,
                "--partitions" => partitions = value()?.parse().context("--partitions")?,
                "--seconds" => seconds = value()?.parse().context("--seconds")?,
                "--saturation-count" => {
                    saturation_count = value()?.parse().context("--saturation-count")?
                }
                "--optouts" => optouts = value()?.parse().context("--optouts")?,
                "--rounds" => rounds = value()?.parse().context("--rounds")?,
                "--out" => out = PathBuf::from(value()?),
                "-h" | "--help" => {
                    println!("{HELP}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{HELP}"),
            }
        }
        let mut kafka = kafka::clients_from(config.as_deref(), brokers.as_deref())?;
        if tansu.is_some() {
            kafka = kafka.with_consumer([
                ("fetch.wait.max.ms", "10"),
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "1000"),
            ]);
        }
        Ok(Options {
            kafka,
            tansu,
            broker_pid,
            size,
            partitions,
            seconds: seconds.max(1),
            saturation_count: saturation_count.max(1000),
            rounds: rounds.max(1),
            optouts,
            out,
        })
    }
}

/// The stage under test in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    /// No stage: the input topic read back directly.
    Floor,
    PassThrough,
    Enricher,
    /// The enricher with the opt-out set loaded.
    EnricherOptOuts,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Floor => "broker floor",
            Contender::PassThrough => "pass-through",
            Contender::Enricher => "enricher",
            Contender::EnricherOptOuts => "enricher + opt-outs",
        }
    }
}

/// What the phases share: the options, the key set and the generator's parameters, and the opt-out set.
struct Bench {
    options: Options,
    run_id: String,
    now_ms: i64,
    keys: Arc<KeySet>,
    optouts: Arc<LiveOptOuts>,
    optouts_loaded_in: Duration,
    phase: AtomicU64,
}

/// A phase's topics.
struct Topics {
    input: String,
    output: String,
    dlq: String,
    group: String,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> anyhow::Result<()> {
    let now_ms = i64::try_from(wall_clock_us() / 1000).unwrap_or(i64::MAX);
    let keys = Arc::new(generator(&options, now_ms, 0).key_set());
    eprintln!("loading {} opt-outs", options.optouts);
    let started = Instant::now();
    let optouts = Arc::new(LiveOptOuts::from(optout_set(options.optouts)));
    let optouts_loaded_in = started.elapsed();
    let bench = Bench {
        run_id: format!("{:x}", now_ms),
        now_ms,
        keys,
        optouts,
        optouts_loaded_in,
        options,
        phase: AtomicU64::new(0),
    };

    // Saturation moves by ±25% from one measurement to the next on a shared machine; rounds interleave the
    // stages so that a slow stretch falls on all of them, and the median of each is what the goals use.
    let (mut saturation, mut stalled) = (Vec::new(), Vec::new());
    for round in 1..=bench.options.rounds {
        for (contender, instances) in [
            (Contender::PassThrough, 1),
            (Contender::Enricher, 1),
            (Contender::Enricher, 2),
            (Contender::EnricherOptOuts, 1),
        ] {
            match bench.saturation(contender, instances, round).await {
                Ok(s) => saturation.push(s),
                // Kept out of the medians and reported: the other rounds still measure.
                Err(e) => stalled.push(format!(
                    "round {round}, {} x{instances}: {e:#}",
                    contender.name()
                )),
            }
        }
    }
    let enricher_saturation = median_saturation(&saturation, Contender::Enricher, 1)
        .map_or(1000.0, |s| s.records_per_second);

    let mut latency = Vec::new();
    for load in LOADS {
        let rate = (enricher_saturation * load).max(100.0);
        for contender in [
            Contender::Floor,
            Contender::PassThrough,
            Contender::Enricher,
        ] {
            latency.push(bench.paced(contender, load, rate).await?);
        }
    }
    let half = (enricher_saturation * 0.5).max(100.0);
    latency.push(bench.paced(Contender::EnricherOptOuts, 0.5, half).await?);

    let report = Report {
        saturation,
        stalled,
        latency,
        optouts: bench.options.optouts,
        optouts_loaded_in: bench.optouts_loaded_in,
        size: bench.options.size,
        partitions: bench.options.partitions,
        seconds: bench.options.seconds,
        brokers: bench.options.kafka.brokers().to_string(),
        machine: machine(),
    };
    report.write(&bench.options.out)
}

impl Bench {
    async fn next_topics(&self, what: &str) -> anyhow::Result<Topics> {
        let n = self.phase.fetch_add(1, Ordering::Relaxed);
        let base = format!("lat-{}-{n}-{what}", self.run_id);
        let topics = Topics {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            dlq: format!("{base}-dlq"),
            group: format!("{base}-group"),
        };
        create_topics(&self.options, &[&topics.input, &topics.output, &topics.dlq]).await?;
        Ok(topics)
    }

    fn start_stage(
        &self,
        topics: &Topics,
        contender: Contender,
        counters: Arc<RunCounters>,
    ) -> Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )> {
        let optouts: Arc<dyn OptOutLookup + Send + Sync> = match contender {
            Contender::Floor => return None,
            Contender::EnricherOptOuts => self.optouts.clone(),
            Contender::PassThrough | Contender::Enricher => Arc::new(NoOptOuts),
        };
        let config = StageConfig {
            kafka: self.options.kafka.clone(),
            group_id: topics.group.clone(),
            input_topics: vec![topics.input.clone()],
            output_topic: topics.output.clone(),
            dlq_topic: topics.dlq.clone(),
            policy: Policy::default(),
            format: PayloadFormat::Json,
            topic_formats: Vec::new(),
            direction: Default::default(),
            tokenize: Default::default(),
            enrich: contender != Contender::PassThrough,
            max_in_flight: 10_000,
            cache_entries: 0,
            drain_timeout: Duration::from_millis(2500),
            shutdown_timeout: Duration::from_secs(8),
            output_partitioning: OutputPartitioning::Key,
            delivery: Default::default(),
        };
        let deps = StageDeps {
            keys: Arc::new(Some(self.keys.clone())),
            optouts,
            metrics: Arc::new(Metrics::new()),
            counters,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(pipeline::run(config, deps, shutdown.clone()));
        Some((shutdown, task))
    }

    /// [`Bench::saturation_once`], once more on fresh topics when the first attempt stalls: two tansu 0.6
    /// group members now and then stop being assigned partitions, which is the broker's, not the stage's.
    async fn saturation(
        &self,
        contender: Contender,
        instances: usize,
        round: usize,
    ) -> anyhow::Result<Saturation> {
        match self.saturation_once(contender, instances, round).await {
            Ok(s) => Ok(s),
            Err(e) => {
                eprintln!(
                    "saturation round {round}: {} x{instances} stalled ({e:#}); once more on fresh topics",
                    contender.name()
                );
                let mut s = self.saturation_once(contender, instances, round).await?;
                s.retried = true;
                Ok(s)
            }
        }
    }

    /// A backlog produced as fast as the producer takes it, drained by `instances` stages.
    async fn saturation_once(
        &self,
        contender: Contender,
        instances: usize,
        round: usize,
    ) -> anyhow::Result<Saturation> {
        let topics = self.next_topics("saturation").await?;
        eprintln!(
            "saturation round {round}: {} x{instances}, {} requests",
            contender.name(),
            self.options.saturation_count
        );
        let counters: Vec<Arc<RunCounters>> = (0..instances)
            .map(|_| Arc::new(RunCounters::default()))
            .collect();
        let stages: Vec<_> = counters
            .iter()
            .filter_map(|c| self.start_stage(&topics, contender, c.clone()))
            .collect();
        let out = || -> u64 {
            counters
                .iter()
                .map(|c| {
                    c.produced.load(Ordering::Relaxed) + c.dead_lettered.load(Ordering::Relaxed)
                })
                .sum()
        };
        let measured = async {
            let mut input = Input::new(&self.options.kafka, &topics.input)?;
            let mut generator = generator(&self.options, self.now_ms, 1);
            for _ in 0..WARM_UP {
                input.send(&mut generator).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            wait_for(
                || out() >= WARM_UP,
                Duration::from_secs(60),
                "the warm-up records",
            )
            .await?;
            // A backlog loaded before the stages start stalls two tansu 0.6 group members; so the backlog
            // is produced while they run, and the drain shares the CPU with its producer.
            let cpu = CpuMeter::start(self.options.broker_pid);
            let started = Instant::now();
            for _ in 0..self.options.saturation_count {
                input.send(&mut generator).await?;
            }
            input.acknowledged().await?;
            let total = WARM_UP + self.options.saturation_count;
            wait_for(|| out() >= total, Duration::from_secs(120), "the backlog")
                .await
                .with_context(|| {
                    let each: Vec<u64> = counters
                        .iter()
                        .map(|c| {
                            c.produced.load(Ordering::Relaxed)
                                + c.dead_lettered.load(Ordering::Relaxed)
                        })
                        .collect();
                    format!("{total} in, out per instance so far {each:?}")
                })?;
            anyhow::Ok((started.elapsed(), cpu.stop()))
        }
        .await;
        for (shutdown, task) in stages {
            shutdown.cancel();
            let stopped = task.await.context("a stage task panicked");
            if measured.is_ok() {
                stopped??;
            }
        }
        let (elapsed, cpu) = measured?;
        let drained = self.options.saturation_count;
        let per_instance: Vec<u64> = counters
            .iter()
            .map(|c| c.produced.load(Ordering::Relaxed) + c.dead_lettered.load(Ordering::Relaxed))
            .collect();
        let verified = if contender == Contender::Enricher {
            let mut options = VerifyOptions::new(
                self.options.kafka.brokers(),
                &topics.input,
                &topics.output,
                &topics.dlq,
            );
            options.kafka = self.options.kafka.clone();
            let report = tokio::task::spawn_blocking(move || verify(&options))
                .await?
                .context("verify")?;
            Some(Verified {
                input: report.input,
                lost: report.lost,
                duplicates: report.duplicates,
                out_of_order: report.out_of_order,
            })
        } else {
            None
        };
        Ok(Saturation {
            contender,
            instances,
            round,
            records: drained,
            seconds: elapsed.as_secs_f64(),
            records_per_second: drained as f64 / elapsed.as_secs_f64(),
            per_instance,
            verified,
            cpu,
            retried: false,
        })
    }

    /// Input paced at `rate` for `--seconds`, with each record's latency at the three points.
    async fn paced(&self, contender: Contender, load: f64, rate: f64) -> anyhow::Result<Paced> {
        let topics = self.next_topics("paced").await?;
        let count = (rate * self.options.seconds as f64).round() as u64;
        eprintln!(
            "paced: {} at {rate:.0} records/s ({:.0}% of the enricher's saturation), {count} requests",
            contender.name(),
            load * 100.0
        );
        let counters = Arc::new(RunCounters::with_latencies());
        let stage = self.start_stage(&topics, contender, counters.clone());
        let read_from = if contender == Contender::Floor {
            &topics.input
        } else {
            &topics.output
        };
        let reader = Reader::start(&self.options, read_from, WARM_UP + count)?;
        let mut input = Input::new(&self.options.kafka, &topics.input)?;
        let mut generator = generator(&self.options, self.now_ms, 2);
        for _ in 0..WARM_UP {
            input.send(&mut generator).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seen = reader.seen.clone();
        wait_for(
            || seen.load(Ordering::Relaxed) >= WARM_UP,
            Duration::from_secs(90),
            "the warm-up records",
        )
        .await?;
        counters.take_latencies();
        reader.measure_from(wall_clock_us());
        let cpu = CpuMeter::start(self.options.broker_pid);
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
            while sent < due {
                input.send(&mut generator).await?;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let offered = count as f64 / started.elapsed().as_secs_f64();
        input.acknowledged().await?;
        let end_to_end = reader
            .finish(Duration::from_secs(self.options.seconds + 60))
            .await?;
        let cpu = cpu.stop();
        if let Some((shutdown, task)) = stage {
            shutdown.cancel();
            task.await.context("the stage task panicked")??;
        }
        let inside = counters.take_latencies();
        Ok(Paced {
            contender,
            load,
            rate: offered,
            records: count,
            handed: (contender != Contender::Floor).then(|| histogram(&inside.handed_us)),
            acked: (contender != Contender::Floor).then(|| histogram(&inside.acked_us)),
            end_to_end,
            cpu,
        })
    }
}

/// The generator of every phase: the default mix without malformed requests (so every record comes out
/// on the output topic), `stream` apart so phases do not repeat each other's requests.
fn generator(options: &Options, now_ms: i64, stream: u64) -> Generator {
    let mix = Mix(Mix::default()
        .0
        .into_iter()
        .filter(|(case, _)| *case != Case::Malformed)
        .collect());
    Generator::new(7 + stream, mix, now_ms, 100_000, options.size)
}

/// `count` random raw UID2s, opted out a day ago.
fn optout_set(count: u64) -> OptOutSet {
    let mut rng = fastrand::Rng::with_seed(42);
    let secs = u32::try_from(wall_clock_us() / 1_000_000 - 86_400).unwrap_or(0);
    let mut set = OptOutSet::new();
    for _ in 0..count {
        set.insert(&support::random_raw(&mut rng), secs);
    }
    set
}

async fn create_topics(options: &Options, names: &[&str]) -> anyhow::Result<()> {
    if let Some(tansu) = &options.tansu {
        for name in names {
            let status = std::process::Command::new(tansu)
                .args(["topic", "create", name, "--partitions"])
                .arg(options.partitions.to_string())
                .arg("--broker")
                .arg(format!("tcp://{}", options.kafka.brokers()))
                .stdout(std::process::Stdio::null())
                .status()
                .with_context(|| format!("running {} topic create", tansu.display()))?;
            if !status.success() {
                bail!("{} topic create {name} failed: {status}", tansu.display());
            }
        }
        return Ok(());
    }
    let admin: AdminClient<Logged> = options
        .kafka
        .admin()
        .create_with_context(Logged("bench admin"))
        .map_err(kafka::creation_error)?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, options.partitions, TopicReplication::Fixed(-1)))
        .collect();
    let results = admin.create_topics(&topics, &AdminOptions::new()).await?;
    for result in results {
        if let Err((topic, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("creating topic {topic}: {code}");
        }
    }
    Ok(())
}

/// The input producer of a phase.
struct Input {
    producer: FutureProducer<Logged>,
    topic: String,
    deliveries: Vec<DeliveryFuture>,
}

impl Input {
    fn new(kafka: &KafkaClients, topic: &str) -> anyhow::Result<Input> {
        let producer = kafka
            .producer()?
            .create_with_context(Logged("bench input producer"))
            .map_err(kafka::creation_error)?;
        Ok(Input {
            producer,
            topic: topic.to_string(),
            deliveries: Vec::new(),
        })
    }

    /// Sends the generator's next request, stamped with its send time.
    async fn send(&mut self, generator: &mut Generator) -> anyhow::Result<()> {
        let request = generator.next_request();
        let sent = wall_clock_us().to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: SENT_HEADER,
            value: Some(sent.as_bytes()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(request.id.as_bytes())
            .payload(request.bytes.as_slice())
            .headers(headers);
        let wait = Backpressure::patient(Duration::from_millis(1));
        let delivery = send_with_backpressure(&self.producer, record, wait, || {})
            .await
            .context("producing the input")?;
        self.deliveries.push(delivery);
        Ok(())
    }

    async fn acknowledged(&mut self) -> anyhow::Result<()> {
        for delivery in self.deliveries.drain(..) {
            if !matches!(delivery.await, Ok(Ok(_))) {
                bail!("the broker did not acknowledge an input record");
            }
        }
        Ok(())
    }
}

/// Reads a topic from its beginning on a thread of its own and records each record's end-to-end latency
/// (read time − send time) once measuring starts.
struct Reader {
    seen: Arc<AtomicU64>,
    measure_from_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Histogram<u64>>>,
}

impl Reader {
    fn start(options: &Options, topic: &str, expected: u64) -> anyhow::Result<Reader> {
        let consumer: BaseConsumer<Logged> = options
            .kafka
            .reader("bench-reader")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(Logged("bench reader"))
            .map_err(kafka::creation_error)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..options.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let seen = Arc::new(AtomicU64::new(0));
        let measure_from_us = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (seen, measure_from_us, stop) =
                (seen.clone(), measure_from_us.clone(), stop.clone());
            move || -> anyhow::Result<Histogram<u64>> {
                let mut latencies = new_histogram();
                while seen.load(Ordering::Relaxed) < expected && !stop.load(Ordering::Relaxed) {
                    let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let message = message?;
                    let now = wall_clock_us();
                    seen.fetch_add(1, Ordering::Relaxed);
                    let sent = message
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == SENT_HEADER))
                        .and_then(|h| std::str::from_utf8(h.value?).ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if let Some(sent) = sent
                        && sent >= measure_from_us.load(Ordering::Relaxed)
                    {
                        latencies.saturating_record(now.saturating_sub(sent).max(1));
                    }
                }
                Ok(latencies)
            }
        });
        Ok(Reader {
            seen,
            measure_from_us,
            stop,
            thread,
        })
    }

    /// Records sent from `us` on are measured.
    fn measure_from(&self, us: u64) {
        self.measure_from_us.store(us, Ordering::Relaxed);
    }

    /// Waits until every expected record was read (at most `timeout`).
    async fn finish(self, timeout: Duration) -> anyhow::Result<Histogram<u64>> {
        let deadline = Instant::now() + timeout;
        while !self.thread.is_finished() {
            if Instant::now() > deadline {
                self.stop.store(true, Ordering::Relaxed);
                bail!(
                    "only {} records were read back within {timeout:?}",
                    self.seen.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
    }
}

async fn wait_for(done: impl Fn() -> bool, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} did not come out within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Microseconds from 1 µs to an hour, three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn histogram(samples_us: &[u32]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &us in samples_us {
        h.saturating_record(u64::from(us.max(1)));
    }
    h
}

/// CPU used by the broker (when its pid is known) and by this process, in cores, over a phase.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    broker_cores: Option<f64>,
    bench_cores: f64,
}

struct CpuMeter {
    pid: Option<u32>,
    started: Instant,
    broker_ticks: Option<u64>,
    own_ticks: u64,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            started: Instant::now(),
            broker_ticks: pid.and_then(|p| cpu_ticks(&format!("/proc/{p}/stat"))),
            own_ticks: cpu_ticks("/proc/self/stat").unwrap_or(0),
        }
    }

    fn stop(self) -> Cpu {
        // /proc reports CPU time in USER_HZ ticks, 100 per second on Linux.
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let cores = |before: u64, after: u64| after.saturating_sub(before) as f64 / 100.0 / seconds;
        Cpu {
            broker_cores: self.pid.and_then(|p| {
                let after = cpu_ticks(&format!("/proc/{p}/stat"))?;
                Some(cores(self.broker_ticks?, after))
            }),
            bench_cores: cores(self.own_ticks, cpu_ticks("/proc/self/stat").unwrap_or(0)),
        }
    }
}

/// utime + stime of a process, from its `/proc/…/stat` line (fields 14 and 15; the name in field 2 may
/// hold spaces, so fields are counted after its closing parenthesis).
fn cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "?".to_string(), |v| v.trim().to_string())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} (CPU family {}), {cores} vCPUs",
        field("model name"),
        field("cpu family")
    )
}

struct Verified {
    input: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
}

struct Saturation {
    contender: Contender,
    instances: usize,
    round: usize,
    records: u64,
    seconds: f64,
    records_per_second: f64,
    per_instance: Vec<u64>,
    verified: Option<Verified>,
    cpu: Cpu,
    /// The first attempt stalled and this is the second.
    retried: bool,
}

struct Paced {
    contender: Contender,
    load: f64,
    /// The rate actually offered.
    rate: f64,
    records: u64,
    handed: Option<Histogram<u64>>,
    acked: Option<Histogram<u64>>,
    end_to_end: Histogram<u64>,
    cpu: Cpu,
}

/// The round of `contender` × `instances` with the median throughput (the lower middle of an even count).
fn median_saturation(
    rounds: &[Saturation],
    contender: Contender,
    instances: usize,
) -> Option<&Saturation> {
    let mut of: Vec<&Saturation> = rounds
        .iter()
        .filter(|s| s.contender == contender && s.instances == instances)
        .collect();
    of.sort_by(|a, b| a.records_per_second.total_cmp(&b.records_per_second));
    of.get(of.len().saturating_sub(1) / 2).copied()
}

/// p50, p90, p99, p99.9 and max, in milliseconds.
fn percentiles(h: &Histogram<u64>) -> [f64; 5] {
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

struct Report {
    saturation: Vec<Saturation>,
    /// Saturation phases that stalled twice, with why.
    stalled: Vec<String>,
    latency: Vec<Paced>,
    optouts: u64,
    optouts_loaded_in: Duration,
    size: usize,
    partitions: i32,
    seconds: u64,
    brokers: String,
    machine: String,
}

impl Report {
    /// The round with the median throughput (the lower of the middle two for an even count).
    fn saturation_of(&self, contender: Contender, instances: usize) -> Option<&Saturation> {
        median_saturation(&self.saturation, contender, instances)
    }

    /// Throughput of `a` over `b` in each round both ran: the stages of a round share its stretch of
    /// the machine, so the ratio within a round is steadier than a ratio of medians.
    fn round_ratios(&self, a: (Contender, usize), b: (Contender, usize)) -> Vec<f64> {
        let of = |(contender, instances): (Contender, usize), round: usize| {
            self.saturation
                .iter()
                .find(|s| s.contender == contender && s.instances == instances && s.round == round)
                .map(|s| s.records_per_second)
        };
        let rounds = self.saturation.iter().map(|s| s.round).max().unwrap_or(0);
        (1..=rounds)
            .filter_map(|round| Some(of(a, round)? / of(b, round)?))
            .collect()
    }

    /// The median of [`Report::round_ratios`] (the lower middle of an even count).
    fn round_ratio(&self, a: (Contender, usize), b: (Contender, usize)) -> Option<f64> {
        let mut ratios = self.round_ratios(a, b);
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len().saturating_sub(1) / 2).copied()
    }

    /// `0.98×, 1.01×, 0.95× by round`.
    fn round_ratios_text(&self, a: (Contender, usize), b: (Contender, usize)) -> String {
        let ratios: Vec<String> = self
            .round_ratios(a, b)
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect();
        format!("{} by round", ratios.join(", "))
    }

    fn paced_of(&self, contender: Contender, load: f64) -> Option<&Paced> {
        self.latency
            .iter()
            .find(|p| p.contender == contender && (p.load - load).abs() < 1e-9)
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let markdown = self.markdown();
        println!("{markdown}");
        std::fs::write(out.join("summary.md"), &markdown)?;
        std::fs::write(
            out.join("summary.json"),
            serde_json::to_string_pretty(&self.json())?,
        )?;
        match plots::font() {
            Ok(()) => {
                plots::latency(self, &out.join("latency.png"))?;
                plots::scale(self, &out.join("scale.png"))?;
                eprintln!(
                    "plots: {}/latency.png, {}/scale.png",
                    out.display(),
                    out.display()
                );
            }
            Err(e) => eprintln!("no plots: {e:#}"),
        }
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let line = |md: &mut String, text: String| {
            md.push_str(&text);
            md.push('\n');
        };
        line(
            &mut md,
            format!(
                "Machine: {}. Brokers: {}. Requests of ~{} B, topics of {} partitions, paced phases of {} s; \
                 {} opt-outs loaded in {:.1} s for the opt-out phases.",
                self.machine,
                self.brokers,
                self.size,
                self.partitions,
                self.seconds,
                self.optouts,
                self.optouts_loaded_in.as_secs_f64()
            ),
        );
        line(&mut md, String::new());
        line(
            &mut md,
            "Saturation (a backlog drained while it is produced, after 200 warm-up records; rounds interleaved, \
             the goals use each stage's median round):"
                .into(),
        );
        line(&mut md, String::new());
        line(
            &mut md,
            "| round | stage | instances | records | seconds | records/s | per instance | verify | broker CPU (cores) | this process (cores) |"
                .into(),
        );
        line(&mut md, "|---|---|---|---|---|---|---|---|---|---|".into());
        for s in &self.saturation {
            let verified = s.verified.as_ref().map_or_else(
                || "–".to_string(),
                |v| {
                    format!(
                        "{} in, {} lost, {} duplicates, {} out of order",
                        v.input, v.lost, v.duplicates, v.out_of_order
                    )
                },
            );
            line(
                &mut md,
                format!(
                    "| {}{} | {} | {} | {} | {:.2} | {:.0} | {:?} | {verified} | {} | {:.2} |",
                    s.round,
                    if s.retried { " (second attempt)" } else { "" },
                    s.contender.name(),
                    s.instances,
                    s.records,
                    s.seconds,
                    s.records_per_second,
                    s.per_instance,
                    s.cpu.broker_cores.map_or("–".into(), |c| format!("{c:.2}")),
                    s.cpu.bench_cores
                ),
            );
        }
        for stall in &self.stalled {
            line(&mut md, format!("\nStalled twice, left out: {stall}"));
        }
        line(&mut md, String::new());
        line(
            &mut md,
            "Latency per record at a steady rate, ms (p50 / p90 / p99 / p99.9 / max):".into(),
        );
        line(&mut md, String::new());
        line(
            &mut md,
            "| load | offered records/s | stage | consumed → handed to the producer | consumed → acknowledged | end to end | broker CPU (cores) | this process (cores) |"
                .into(),
        );
        line(&mut md, "|---|---|---|---|---|---|---|---|".into());
        let fmt = |h: Option<&Histogram<u64>>| {
            h.map_or_else(
                || "–".to_string(),
                |h| {
                    let p = percentiles(h);
                    format!(
                        "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                        p[0], p[1], p[2], p[3], p[4]
                    )
                },
            )
        };
        for p in &self.latency {
            line(
                &mut md,
                format!(
                    "| {:.0}% | {:.0} | {} | {} | {} | {} | {} | {:.2} |",
                    p.load * 100.0,
                    p.rate,
                    p.contender.name(),
                    fmt(p.handed.as_ref()),
                    fmt(p.acked.as_ref()),
                    fmt(Some(&p.end_to_end)),
                    p.cpu.broker_cores.map_or("–".into(), |c| format!("{c:.2}")),
                    p.cpu.bench_cores
                ),
            );
        }
        line(&mut md, String::new());
        line(&mut md, "Goals:".into());
        line(&mut md, String::new());
        for goal in self.goals() {
            line(&mut md, format!("- {goal}"));
        }
        md
    }

    /// The goals, each with the figures that meet or miss it.
    fn goals(&self) -> Vec<String> {
        let mut goals = Vec::new();
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        if let Some(p) = self.paced_of(Contender::Enricher, 0.5)
            && let Some(h) = &p.handed
        {
            let q = percentiles(h);
            goals.push(format!(
                "inside the stage, consumed → handed to the producer at 50%: p99 {:.3} ms (≤ 1 ms: {}), p99.9 {:.3} ms (≤ 5 ms: {})",
                q[2],
                verdict(q[2] <= 1.0),
                q[3],
                verdict(q[3] <= 5.0)
            ));
        }
        for load in [0.25, 0.5, 0.75] {
            if let (Some(e), Some(t), Some(f)) = (
                self.paced_of(Contender::Enricher, load),
                self.paced_of(Contender::PassThrough, load),
                self.paced_of(Contender::Floor, load),
            ) {
                let (e, t, f) = (
                    percentiles(&e.end_to_end),
                    percentiles(&t.end_to_end),
                    percentiles(&f.end_to_end),
                );
                goals.push(format!(
                    "end to end at {:.0}%: enricher p50 {:.2} ms vs pass-through {:.2} ms (within 1 ms: {}); p99 {:.2} vs {:.2} ms (within 10%: {}); pass-through p50 {:.2} ms vs broker floor {:.2} ms (within 2×: {})",
                    load * 100.0,
                    e[0],
                    t[0],
                    verdict(e[0] - t[0] <= 1.0),
                    e[2],
                    t[2],
                    verdict(e[2] <= t[2] * 1.1),
                    t[0],
                    f[0],
                    verdict(t[0] <= f[0] * 2.0)
                ));
            }
        }
        if let Some(ratio) = self.round_ratio((Contender::Enricher, 1), (Contender::PassThrough, 1))
        {
            goals.push(format!(
                "saturation: enricher against pass-through {} (median {ratio:.2}×; ≥ 0.9×: {})",
                self.round_ratios_text((Contender::Enricher, 1), (Contender::PassThrough, 1)),
                verdict(ratio >= 0.9)
            ));
        }
        if let Some(ratio) = self.round_ratio((Contender::Enricher, 2), (Contender::Enricher, 1)) {
            let broker = self
                .saturation_of(Contender::Enricher, 2)
                .and_then(|s| s.cpu.broker_cores)
                .map_or("unknown".into(), |c| format!("{c:.2}"));
            goals.push(format!(
                "two instances against one {} (median {ratio:.2}×; ≥ 1.6× where the broker is not the ceiling: {}; broker CPU {broker} cores with two, median round)",
                self.round_ratios_text((Contender::Enricher, 2), (Contender::Enricher, 1)),
                verdict(ratio >= 1.6),
            ));
        }
        if let Some(ratio) =
            self.round_ratio((Contender::EnricherOptOuts, 1), (Contender::Enricher, 1))
        {
            let p99 = |c| {
                self.paced_of(c, 0.5)
                    .map_or(f64::NAN, |p| percentiles(&p.end_to_end)[2])
            };
            let (with, without) = (p99(Contender::EnricherOptOuts), p99(Contender::Enricher));
            goals.push(format!(
                "{} opt-outs loaded against none {} (median {ratio:.2}×; ≥ 0.95×: {}); end-to-end p99 at 50% {with:.2} ms vs {without:.2} ms (within 1 ms: {})",
                self.optouts,
                self.round_ratios_text((Contender::EnricherOptOuts, 1), (Contender::Enricher, 1)),
                verdict(ratio >= 0.95),
                verdict(with - without <= 1.0)
            ));
        }
        goals
    }

    fn json(&self) -> serde_json::Value {
        let hist = |h: Option<&Histogram<u64>>| {
            h.map(|h| {
                let p = percentiles(h);
                serde_json::json!({
                    "count": h.len(), "p50_ms": p[0], "p90_ms": p[1], "p99_ms": p[2],
                    "p999_ms": p[3], "max_ms": p[4],
                })
            })
        };
        serde_json::json!({
            "machine": self.machine,
            "brokers": self.brokers,
            "size": self.size,
            "partitions": self.partitions,
            "paced_seconds": self.seconds,
            "stalled": self.stalled,
            "optouts": self.optouts,
            "saturation": self.saturation.iter().map(|s| serde_json::json!({
                "stage": s.contender.name(),
                "instances": s.instances,
                "round": s.round,
                "retried": s.retried,
                "records": s.records,
                "seconds": s.seconds,
                "records_per_second": s.records_per_second,
                "per_instance": s.per_instance,
                "verify": s.verified.as_ref().map(|v| serde_json::json!({
                    "input": v.input, "lost": v.lost, "duplicates": v.duplicates,
                    "out_of_order": v.out_of_order,
                })),
                "broker_cores": s.cpu.broker_cores,
                "bench_cores": s.cpu.bench_cores,
            })).collect::<Vec<_>>(),
            "latency": self.latency.iter().map(|p| serde_json::json!({
                "stage": p.contender.name(),
                "load": p.load,
                "offered_records_per_second": p.rate,
                "records": p.records,
                "consumed_to_handed": hist(p.handed.as_ref()),
                "consumed_to_acknowledged": hist(p.acked.as_ref()),
                "end_to_end": hist(Some(&p.end_to_end)),
                "broker_cores": p.cpu.broker_cores,
                "bench_cores": p.cpu.bench_cores,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The two pictures, drawn with plotters (PNG); text needs a TrueType font, DejaVu Sans by default.
mod plots {
    use std::path::Path;

    use anyhow::Context as _;
    use plotters::prelude::*;

    use super::{Contender, LOADS, Report, percentiles};

    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    /// Registers the font plotters draws text with: `BENCH_FONT`, or DejaVu Sans (Debian's
    /// fonts-dejavu-core).
    pub fn font() -> anyhow::Result<()> {
        let path = std::env::var("BENCH_FONT").unwrap_or_else(|_| FONT.to_string());
        let bytes = std::fs::read(&path).with_context(|| {
            format!("reading the font {path} (install fonts-dejavu-core, or set BENCH_FONT)")
        })?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
            .map_err(|_| anyhow::anyhow!("{path} is not a font plotters can read"))
    }

    /// One line of the latency plot: (offered records/s, added ms) points.
    struct Line {
        name: String,
        color: RGBColor,
        points: Vec<(f64, f64)>,
    }

    /// Added latency (end to end, minus the broker floor at the same load) against offered load.
    pub fn latency(report: &Report, path: &Path) -> anyhow::Result<()> {
        let mut lines: Vec<Line> = Vec::new();
        for (contender, color) in [
            (Contender::Enricher, RGBColor(200, 60, 40)),
            (Contender::PassThrough, RGBColor(40, 90, 200)),
        ] {
            for (quantile, index) in [("p50", 0), ("p99", 2)] {
                let points: Vec<(f64, f64)> = LOADS
                    .iter()
                    .filter_map(|&load| {
                        let stage = report.paced_of(contender, load)?;
                        let floor = report.paced_of(Contender::Floor, load)?;
                        let added = percentiles(&stage.end_to_end)[index]
                            - percentiles(&floor.end_to_end)[index];
                        Some((stage.rate, added))
                    })
                    .collect();
                lines.push(Line {
                    name: format!("{} {quantile}", contender.name()),
                    color,
                    points,
                });
            }
        }
        let all = lines.iter().flat_map(|l| l.points.iter());
        let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.1;
        let y_max = all.clone().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let y_min = all.map(|p| p.1).fold(0.0, f64::min) * 1.15;
        let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency the stage adds (end to end − broker floor) against offered load",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc("offered load (records/s)")
            .y_desc("added latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        for Line {
            name,
            color,
            points,
        } in lines
        {
            // p99 in a lighter shade of its stage's colour.
            let tail = name.ends_with("p99");
            let shade = if tail {
                color.mix(0.45)
            } else {
                color.mix(1.0)
            };
            let style = shade.stroke_width(if tail { 2 } else { 3 });
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, if tail { 3 } else { 4 }, shade.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Saturation throughput of each stage, one instance against two.
    pub fn scale(report: &Report, path: &Path) -> anyhow::Result<()> {
        let mut stages: Vec<(Contender, usize)> = Vec::new();
        for s in &report.saturation {
            if !stages.contains(&(s.contender, s.instances)) {
                stages.push((s.contender, s.instances));
            }
        }
        let bars: Vec<(String, f64)> = stages
            .into_iter()
            .filter_map(|(contender, instances)| report.saturation_of(contender, instances))
            .map(|s| {
                let name = if s.instances == 1 {
                    s.contender.name().to_string()
                } else {
                    format!("{} ×{}", s.contender.name(), s.instances)
                };
                (name, s.records_per_second)
            })
            .collect();
        let y_max = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.2;
        let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let count = u32::try_from(bars.len()).unwrap_or(0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Saturation throughput (median round): one instance against two",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            // A segmented 0..n has n + 1 segments.
            .build_cartesian_2d(
                (0u32..count.saturating_sub(1)).into_segmented(),
                0f64..y_max,
            )?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("records/s")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().zip(0u32..).map(|((_, value), i)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *value),
                ],
                RGBColor(40, 90, 200).filled(),
            );
            bar.set_margin(0, 0, 30, 30);
            bar
        }))?;
        chart.draw_series(bars.iter().zip(0u32..).map(|((_, value), i)| {
            Text::new(
                format!("{value:.0}"),
                (SegmentValue::CenterOf(i), *value + y_max * 0.02),
                ("sans-serif", 14),
            )
        }))?;
        root.present()?;
        Ok(())
    }
}

//! The opt-out set at scale: 10,000,000 random raw UID2s (the figure).
//!
//! Criterion groups (`cargo bench --bench optout`):
//! * `optout_lookup_10M`: `OptOutLookup::opted_out_at_ms` on the shared `LiveOptOuts` the pipeline reads
//!   (first 12 base64 characters → hash, shard read lock, probe; the full decode only on a tag match),
//!   for raw UID2s not in the set (`miss`, what nearly every bid request does), in it (`hit`), and
//!   against an empty set (`miss_empty`, the fixed cost without memory traffic), and `parse_only` (the
//!   full base64 decode alone); `miss_unlocked` is the single-owner `OptOutSet` (replay). The queries cycle through 1,048,576 texts so the table lines they touch are not in cache.
//!   `miss_dependent` makes each query depend on the previous answer, so the cache misses cannot
//!   overlap: the latency of one lookup rather than the throughput.
//! * `enrich_2KB_optouts`: the whole enrichment of a ~2 KB JSON request with a warm decrypt cache,
//!   with no opt-outs, with the 10M set (token not in it) and with the token's UID2 opted out — one
//!   token repeated, so its table line stays in cache.
//! * `enrich_2KB_cold_users`: the same enrichment without a decrypt cache, each request carrying the
//!   token of a different one of 262,144 users, so the opt-out check meets a cold table line as in a real
//!   stream of users: no opt-outs, a 10,000-entry set (always in cache), and the 10M set with the check
//!   where it was before the prefetch (right after decrypting), late without the prefetch, and late with
//!   it (what `enrich` does).
//! * `memory_probe`: what this machine does with one cold cache line, without any of this crate's
//!   code: a dependent chain of multiplications (`work_*`, ~0.35 and ~1.4 µs here) and, per iteration, one
//!   random 8-byte read of a 512 MiB buffer after that work, with and without a software prefetch of
//!   it issued before the work. Subtracting `work_*` gives what one cold line adds when the prefetch
//!   had the whole work to arrive in: ~0 where prefetches are carried out, a memory latency where not.
//!
//! Two more modes, for `scripts/bench-optout.sh` (which runs this binary under `/usr/bin/time -v`):
//! * `OPTOUT_BENCH_GEN=FILE OPTOUT_BENCH_COUNT=N`: writes N random opt-outs as CSV and exits;
//! * `OPTOUT_BENCH_LOAD=FILE`: `optout_feed::load_file`, then prints seconds, entries, heap bytes per
//!   entry and the peak RSS (`VmHWM`);
//! * `OPTOUT_BENCH_PRODUCE=N OPTOUT_BENCH_BROKERS=B OPTOUT_BENCH_TOPIC=T`: writes N random opt-outs to
//!   the topic; `OPTOUT_BENCH_FOLLOW=1` with the same brokers/topic: follows the topic until caught up
//!   and prints the same figures; `OPTOUT_BENCH_DRAIN=1` only reads the topic (the broker's and
//!   librdkafka's share of the time).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};

use uid2_enricher::cache::DecryptCache;
use uid2_enricher::enrich::{self, Context, Keys, PayloadFormat, Policy};
use uid2_enricher::optout::{LiveOptOuts, NoOptOuts, OptOutLookup, OptOutSet, RawUid2};
use uid2_enricher::stage::optout_feed;
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::uid2::{Status, TokenVersion};

mod support;

const ENTRIES: usize = 10_000_000;
const QUERIES: usize = 1 << 20;
/// 2026-01-01T00:00:00Z in seconds.
const T: u32 = 1_767_225_600;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn lookups(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(42);
    let started = Instant::now();
    let mut set = OptOutSet::new();
    let mut hits = Vec::with_capacity(QUERIES);
    for i in 0..ENTRIES {
        let raw = support::random_raw(&mut rng);
        set.insert(&raw, T - (i as u32 % 86_400));
        if i % (ENTRIES / QUERIES) == 0 && hits.len() < QUERIES {
            hits.push(raw.to_base64());
        }
    }
    let misses: Vec<String> = (0..QUERIES)
        .map(|_| support::random_raw(&mut rng).to_base64())
        .collect();
    println!(
        "optout bench: {} entries inserted in {:.1} s, {:.1} heap bytes per entry, peak RSS {:.0} MiB",
        set.len(),
        started.elapsed().as_secs_f64(),
        set.heap_bytes() as f64 / set.len() as f64,
        peak_rss_mib()
    );
    assert!(hits.iter().all(|h| set.opted_out_at_ms(h).is_some()));
    assert!(misses.iter().all(|m| set.opted_out_at_ms(m).is_none()));
    let unlocked = set.clone();
    let live = LiveOptOuts::from(set);
    let empty = LiveOptOuts::new();

    let mut group = c.benchmark_group("optout_lookup_10M");
    group.throughput(Throughput::Elements(1));
    let cycle = |name: &str,
                 group: &mut criterion::BenchmarkGroup<'_, _>,
                 set: &dyn OptOutLookup,
                 queries: &[String]| {
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & (QUERIES - 1);
                set.opted_out_at_ms(black_box(&queries[i]))
            })
        });
    };
    {
        let mut i = 0usize;
        group.bench_function("parse_only", |b| {
            b.iter(|| {
                i = (i + 1) & (QUERIES - 1);
                RawUid2::parse(black_box(&misses[i]))
            })
        });
    }
    cycle("miss", &mut group, &live, &misses);
    cycle("hit", &mut group, &live, &hits);
    cycle("miss_empty", &mut group, &empty, &misses);
    cycle("miss_unlocked", &mut group, &unlocked, &misses);
    {
        let mut i = 0usize;
        group.bench_function("miss_dependent", |b| {
            b.iter(|| {
                let found = live.opted_out_at_ms(&misses[i]);
                // The next query's index depends on this answer: no overlap between lookups.
                i = (i + 1 + usize::from(found.is_some())) & (QUERIES - 1);
                found
            })
        });
    }
    group.finish();

    // Whole enrichment of a ~2 KB request with a warm decrypt cache.
    let keys = support::key_set();
    let token = support::token(TokenVersion::V4, 7);
    let (_, request) = support::json_request_near(2048, &token);
    let cache = DecryptCache::new(10_000);
    let mut opted = OptOutSet::new();
    opted.insert(
        &RawUid2::parse(support::RAW_UID2).expect("raw UID2"),
        (support::NOW / 1000) as u32,
    );
    let opted = LiveOptOuts::from(opted);
    let policy = Policy::default();
    let mut group = c.benchmark_group("enrich_2KB_optouts");
    group.throughput(Throughput::Bytes(request.len() as u64));
    let cases: [(&str, &dyn OptOutLookup, Status); 3] = [
        ("no_optouts", &NoOptOuts, Status::Success),
        ("set_10M_not_listed", &live, Status::Success),
        ("opted_out", &opted, Status::OptedOut),
    ];
    for (name, optouts, expected) in cases {
        let ctx = Context {
            keys: Keys::single(Some(&keys)),
            optouts,
            cache: Some(&cache),
            now_ms: support::NOW,
        };
        let out = enrich::enrich(&request, PayloadFormat::Json, &ctx, &policy).expect("enriches");
        assert_eq!(out.status(), Some(expected), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| enrich::enrich(black_box(&request), PayloadFormat::Json, &ctx, &policy))
        });
    }
    group.finish();

    cold_users(c, &live);
}

/// Distinct users the cold-user enrichments cycle through: their table lines (tag group, first slot and
/// the page-table entries that map them), some 2–3 lines a user, far exceed the 32 MiB L3 cache, so each
/// user's lines have left the cache by the time the cycle comes back to them.
const USERS: usize = 1 << 18;

/// A v4 token for each of `USERS` random raw UID2s that are not in the set (the common case: most users
/// never opted out), all of one length, laid end to end.
fn user_tokens(rng: &mut fastrand::Rng) -> (Vec<u8>, usize) {
    use uid2_enricher::uid2::cipher::Secret;
    use uid2_enricher::uid2::encrypt::{self, TokenSpec};
    use uid2_enricher::uid2::{IdentityScope, IdentityType};
    let secret = |hex_text: &str| {
        Secret::new(
            hex::decode(hex_text)
                .expect("hex")
                .try_into()
                .expect("32 bytes"),
        )
    };
    let (master, site) = (
        secret(support::MASTER_SECRET_HEX),
        secret(support::SITE_SECRET_HEX),
    );
    let mut flat = Vec::new();
    let mut len = 0;
    for _ in 0..USERS {
        let raw = support::random_raw(rng).to_base64();
        let token = encrypt::generate(&TokenSpec {
            version: TokenVersion::V4,
            raw_uid2: &raw,
            scope: IdentityScope::Uid2,
            identity_type: IdentityType::Email,
            prefix_override: None,
            master_key_id: support::MASTER_KEY_ID,
            master_secret: &master,
            site_key_id: support::SITE_KEY_ID,
            site_secret: &site,
            site_id: support::SITE_ID,
            publisher_id: 0,
            client_key_id: 0,
            privacy_bits: 0,
            expires_ms: support::NOW + support::DAY_MS,
            generated_ms: support::NOW - 3_600_000,
            established_ms: support::NOW - 30 * support::DAY_MS,
            refreshed_ms: support::NOW - 3_600_000,
            operator_site_id: 0,
            operator_type: 1,
            operator_version: 0,
            operator_key_id: 0,
            master_nonce: std::array::from_fn(|_| rng.u8(..)),
            site_nonce: std::array::from_fn(|_| rng.u8(..)),
        })
        .expect("token");
        assert!(
            flat.is_empty() || token.len() == len,
            "tokens of one length"
        );
        len = token.len();
        flat.extend_from_slice(token.as_bytes());
    }
    (flat, len)
}

/// The live set as `enrich` uses it (a boxed case borrows it).
struct Shared<'a>(&'a LiveOptOuts);

impl OptOutLookup for Shared<'_> {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        self.0.opted_out_at_ms(raw_uid2)
    }

    fn prefetch(&self, raw_uid2: &str) {
        self.0.prefetch(raw_uid2);
    }
}

/// The live set without its prefetch: the check waits for the user's table line when it runs.
struct NoPrefetch<'a>(&'a LiveOptOuts);

impl OptOutLookup for NoPrefetch<'_> {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        self.0.opted_out_at_ms(raw_uid2)
    }
}

/// The live set looked up where the check used to be, right after the token decrypted (and again,
/// from cache, where it is now): the placement before the prefetch.
struct CheckAtDecrypt<'a>(&'a LiveOptOuts);

impl OptOutLookup for CheckAtDecrypt<'_> {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        self.0.opted_out_at_ms(raw_uid2)
    }

    fn prefetch(&self, raw_uid2: &str) {
        black_box(self.0.opted_out_at_ms(raw_uid2));
    }
}

/// `enrich_2KB_cold_users`: the whole enrichment of a ~2 KB JSON request where every request carries
/// the token of a different user (the next of `USERS`), without a decrypt cache (the default: each
/// token decrypts), so each opt-out check meets a table line that is not in cache, as it does in a
/// stream of distinct users. The request buffer stays in cache (as a consumed message is); only the
/// token's bytes are written into it before each enrichment, in every case alike. The cases differ only
/// in the opt-out lookup; their difference to `no_optouts` is what the opt-out check adds per token.
fn cold_users(c: &mut Criterion, live: &LiveOptOuts) {
    let bench = ColdUsers::new(live);
    let mut group = c.benchmark_group("enrich_2KB_cold_users");
    group.throughput(Throughput::Elements(1));
    for case in 0..bench.cases().len() {
        let (name, mut run) = bench.runner(case);
        group.bench_function(name, |b| b.iter(&mut run));
    }
    group.finish();
}

/// The fixtures of `enrich_2KB_cold_users`.
struct ColdUsers<'a> {
    live: &'a LiveOptOuts,
    small: LiveOptOuts,
    tokens: Vec<u8>,
    len: usize,
    template: Vec<u8>,
    at: usize,
    keys: uid2_enricher::uid2::KeySet,
    policy: Policy,
}

impl<'a> ColdUsers<'a> {
    fn new(live: &'a LiveOptOuts) -> ColdUsers<'a> {
        let mut rng = fastrand::Rng::with_seed(99);
        let (tokens, len) = user_tokens(&mut rng);
        let first = std::str::from_utf8(&tokens[..len]).expect("ASCII");
        let (_, template) = support::json_request_near(2048, first);
        let at = template
            .windows(len)
            .position(|w| w == first.as_bytes())
            .expect("the token is in the request");
        let mut small = OptOutSet::new();
        for _ in 0..10_000 {
            small.insert(&support::random_raw(&mut rng), T);
        }
        ColdUsers {
            live,
            small: LiveOptOuts::from(small),
            tokens,
            len,
            template,
            at,
            keys: support::key_set(),
            policy: Policy::default(),
        }
    }

    fn cases(&self) -> [(&'static str, Box<dyn OptOutLookup + '_>); 5] {
        [
            ("no_optouts", Box::new(NoOptOuts)),
            ("set_10k_in_cache", Box::new(Shared(&self.small))),
            (
                "set_10M_check_at_decrypt",
                Box::new(CheckAtDecrypt(self.live)),
            ),
            ("set_10M_no_prefetch", Box::new(NoPrefetch(self.live))),
            ("set_10M_prefetch", Box::new(Shared(self.live))),
        ]
    }

    /// The case's name and one enrichment of the next user's request per call.
    fn runner(&self, case: usize) -> (&'static str, impl FnMut() -> Option<Status> + '_) {
        let (name, optouts) = self.cases().into_iter().nth(case).expect("a case");
        let len = self.len;
        let at = self.at;
        let mut request = self.template.clone();
        let mut k = 0usize;
        let mut run = move || {
            k = (k + 1) & (USERS - 1);
            request[at..at + len].copy_from_slice(&self.tokens[k * len..(k + 1) * len]);
            let ctx = Context {
                keys: Keys::single(Some(&self.keys)),
                optouts: &*optouts,
                cache: None,
                now_ms: support::NOW,
            };
            enrich::enrich(black_box(&request), PayloadFormat::Json, &ctx, &self.policy)
                .ok()
                .and_then(|e| e.status())
        };
        for _ in 0..2 {
            assert_eq!(run(), Some(Status::Success), "{name}");
        }
        (name, run)
    }
}

/// `OPTOUT_BENCH_ROUNDS=R`: the cases of `enrich_2KB_cold_users` in turns of 20,000 enrichments each,
/// R rounds, so the load of other processes on the machine falls on every case alike; prints each case's
/// median and quartiles of the per-turn means, and its median difference to `no_optouts` within a round.
fn cold_users_interleaved(rounds: usize) {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut set = OptOutSet::new();
    for i in 0..ENTRIES {
        set.insert(&support::random_raw(&mut rng), T - (i as u32 % 86_400));
    }
    let live = LiveOptOuts::from(set);
    let bench = ColdUsers::new(&live);
    let mut runners: Vec<_> = (0..bench.cases().len()).map(|c| bench.runner(c)).collect();
    let mut per_turn: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
    const TURN: usize = 20_000;
    for _ in 0..rounds {
        for (i, (_, run)) in runners.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..TURN {
                black_box(run());
            }
            per_turn[i].push(started.elapsed().as_nanos() as f64 / TURN as f64);
        }
    }
    let quartiles = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.25), at(0.5), at(0.75))
    };
    println!("enrich_2KB_cold_users, {rounds} rounds of {TURN} per case (ns per enrichment):");
    for (i, (name, _)) in runners.iter().enumerate() {
        let (q1, med, q3) = quartiles(&per_turn[i]);
        let diffs: Vec<f64> = per_turn[i]
            .iter()
            .zip(&per_turn[0])
            .map(|(a, b)| a - b)
            .collect();
        let (d1, dmed, d3) = quartiles(&diffs);
        println!(
            "  {name:<26} median {med:7.0} [{q1:.0}, {q3:.0}]   vs no_optouts {dmed:+6.0} [{d1:+.0}, {d3:+.0}]"
        );
    }
}

/// One step of a dependent chain the CPU cannot shorten (each multiply waits for the one before).
/// The constants come through `black_box` so the compiler cannot fold steps together.
fn work(mut x: u64, steps: u64) -> u64 {
    let (multiplier, increment) =
        black_box((6_364_136_223_846_793_005u64, 1_442_695_040_888_963_407u64));
    for _ in 0..steps {
        x = x.wrapping_mul(multiplier).wrapping_add(increment);
    }
    x
}

#[cfg(target_arch = "x86_64")]
fn prefetch(at: &u64) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch never faults, and `at` is a valid reference anyway.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((at as *const u64).cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_at: &u64) {}

fn memory_probe(c: &mut Criterion) {
    const WORDS: usize = 64 << 20; // 512 MiB: far past every cache and the TLBs' reach
    let memory: Vec<u64> = (0..WORDS as u64).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let lines: Vec<usize> = (0..QUERIES).map(|_| rng.usize(..WORDS / 8) * 8).collect();
    let mut group = c.benchmark_group("memory_probe");
    for (label, steps) in [("0.35us", 256u64), ("1.4us", 1024)] {
        let steps = black_box(steps);
        let mut x = 1u64;
        group.bench_function(format!("work_{label}"), |b| {
            b.iter(|| {
                x = work(x, steps);
                x
            })
        });
        for prefetched in [false, true] {
            let name = if prefetched {
                "prefetch_work_read"
            } else {
                "work_read"
            };
            let mut i = 0usize;
            group.bench_function(format!("{name}_{label}"), |b| {
                b.iter(|| {
                    i = (i + 1) & (QUERIES - 1);
                    let line = &memory[lines[i]];
                    if prefetched {
                        prefetch(line);
                    }
                    // The read feeds the next iteration's chain, so its latency is not hidden by
                    // out-of-order execution beyond what the prefetch already brought in.
                    x = work(x, steps).wrapping_add(*black_box(line));
                    x
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, memory_probe, lookups);

fn gen_file(path: &str, count: usize) {
    use std::io::Write;
    let mut rng = fastrand::Rng::with_seed(1);
    let file = std::fs::File::create(path).expect("creating the opt-out file");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "raw_uid2,unix_seconds").expect("write");
    for i in 0..count {
        let raw = support::random_raw(&mut rng);
        writeln!(out, "{},{}", raw.to_base64(), T - (i as u32 % 86_400)).expect("write");
    }
    out.flush().expect("flush");
}

fn report(how: &str, seconds: f64, entries: u64, heap: usize) {
    println!(
        "optout load ({how}): {entries} entries in {seconds:.2} s ({:.0} per second), {:.1} heap bytes per entry, peak RSS {:.0} MiB",
        entries as f64 / seconds,
        heap as f64 / entries.max(1) as f64,
        peak_rss_mib()
    );
}

fn feed(brokers: String, topic: String) -> optout_feed::FeedConfig {
    optout_feed::FeedConfig {
        kafka: uid2_enricher::stage::kafka::KafkaClients::from_brokers(&brokers),
        group_id: "optout-bench".into(),
        topic,
    }
}

fn produce(brokers: String, topic: String, count: usize) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(optout_feed::ensure_topic(&feed(
        brokers.clone(),
        topic.clone(),
    )));
    let mut rng = fastrand::Rng::with_seed(2);
    let started = Instant::now();
    for i in 0..count {
        let key = support::random_raw(&mut rng).to_base64();
        let value = (T - (i as u32 % 86_400)).to_string();
        let mut record = BaseRecord::to(&topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(1800)).expect("flush");
    println!(
        "optout produce: {count} records to {topic} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn follow(brokers: String, topic: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(LiveOptOuts::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let mut follower = optout_feed::spawn_follower(
        &feed(brokers, topic),
        store.clone(),
        Arc::new(Metrics::new()),
        stop.clone(),
    )
    .expect("follower");
    rt.block_on(follower.wait_caught_up());
    report(
        "topic",
        started.elapsed().as_secs_f64(),
        store.len(),
        store.heap_bytes(),
    );
    stop.cancel();
    follower.join();
}

/// Reads the whole topic without applying anything: what the broker and librdkafka alone allow.
fn drain(brokers: String, topic: String) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = optout_feed::follower_config(&feed(brokers, topic.clone()))
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    let started = Instant::now();
    consumer.assign(&tpl).expect("assign");
    let (mut records, mut at_end) = (0u64, 0usize);
    while at_end < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => records += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end += 1,
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "optout drain (topic, nothing applied): {records} records in {seconds:.2} s ({:.0} per second)",
        records as f64 / seconds
    );
}

fn main() {
    let var = |k: &str| std::env::var(k).ok();
    if let Some(path) = var("OPTOUT_BENCH_GEN") {
        let count = var("OPTOUT_BENCH_COUNT")
            .and_then(|c| c.parse().ok())
            .unwrap_or(ENTRIES);
        gen_file(&path, count);
        return;
    }
    if let Some(path) = var("OPTOUT_BENCH_LOAD") {
        let started = Instant::now();
        let set = optout_feed::load_file(std::path::Path::new(&path)).expect("loading");
        report(
            "file",
            started.elapsed().as_secs_f64(),
            set.len() as u64,
            set.heap_bytes(),
        );
        return;
    }
    let brokers = var("OPTOUT_BENCH_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = var("OPTOUT_BENCH_TOPIC").unwrap_or_else(|| "uid2-optouts-bench".into());
    if let Some(count) = var("OPTOUT_BENCH_PRODUCE").and_then(|c| c.parse().ok()) {
        produce(brokers, topic, count);
        return;
    }
    if var("OPTOUT_BENCH_DRAIN").is_some() {
        drain(brokers, topic);
        return;
    }
    if var("OPTOUT_BENCH_FOLLOW").is_some() {
        follow(brokers, topic);
        return;
    }
    if let Some(rounds) = var("OPTOUT_BENCH_ROUNDS").and_then(|r| r.parse().ok()) {
        cold_users_interleaved(rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! The stage's Prometheus metrics (prometheus-client), rendered by the HTTP server at `/metrics`.
//! Names follow `uid2_enricher_<noun>_<unit>[_total]`; labels are bounded (statuses, reasons, topics and
//! partitions the stage consumes), never request data. Beside them, the standard process metrics
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`), read from
//! `/proc/self` at each scrape on Linux. Depends on prometheus-client.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// A key source by its configured name (`uid2`, `euid`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeySourceLabel {
    pub key_source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
    pub librdkafka: String,
    pub features: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

/// 25 µs … 10 s, a few hundred microseconds apart below 1 ms and a few milliseconds apart below 10 ms: a
/// healthy stage hands a record on in tens of microseconds, and the brokers' acknowledgement adds
/// milliseconds.
const LATENCY_BUCKETS: [f64; 22] = [
    25e-6, 50e-6, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2,
    2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric of the stage. Cheap to update from any thread.
pub struct Metrics {
    pub registry: Registry,
    pub records_in: Counter,
    pub records_out: Counter,
    pub dead_lettered: Family<ReasonLabel, Counter>,
    /// One per request: the status of its selected token, or `no_token`.
    pub request_status: Family<StatusLabel, Counter>,
    /// One per distinct token.
    pub token_status: Family<StatusLabel, Counter>,
    pub opted_out: Counter,
    pub enrich_seconds: Histogram,
    pub stage_seconds: Histogram,
    pub handoff_seconds: Histogram,
    pub in_flight: Gauge,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    pub key_set_age_seconds: Family<KeySourceLabel, Gauge<f64, AtomicU64>>,
    pub key_set_latest_expiry_seconds: Family<KeySourceLabel, Gauge<i64, AtomicI64>>,
    pub key_refresh_failures: Family<KeySourceLabel, Counter>,
    pub produce_retries: Counter,
    /// Exactly-once delivery: transactions by outcome (committed, aborted).
    pub transactions: Family<OutcomeLabel, Counter>,
    /// Exactly-once delivery: time to send the offsets and commit one transaction.
    pub transaction_commit_seconds: Histogram,
    pub rebalances: Family<ReasonLabel, Counter>,
    /// Raw UID2s in the opt-out set.
    pub optout_set_size: Gauge,
    /// 1 once the opt-out set holds what the topic held at start.
    pub optout_caught_up: Gauge,
    /// Opt-out topic records read, by what they did to the set: new, later, unchanged, invalid,
    /// tombstone_ignored.
    pub optout_records: Family<OutcomeLabel, Counter>,
    /// Opt-out webhook calls by outcome: accepted, unauthorized, invalid, disabled, unavailable.
    pub optout_webhook_requests: Family<OutcomeLabel, Counter>,
    /// 1, labelled with the crate version, librdkafka's version and its features.
    pub build_info: Family<BuildLabel, Gauge>,
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    pub process_resident_memory_bytes: Gauge,
    pub process_open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let m = Metrics {
            records_in: Counter::default(),
            records_out: Counter::default(),
            dead_lettered: Family::default(),
            request_status: Family::default(),
            token_status: Family::default(),
            opted_out: Counter::default(),
            // 250 ns … ~1 ms: the enrichment of one record, which is microseconds when healthy.
            enrich_seconds: Histogram::new([
                250e-9, 500e-9, 1e-6, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 64e-6, 128e-6, 256e-6, 1e-3,
            ]),
            stage_seconds: Histogram::new(LATENCY_BUCKETS),
            handoff_seconds: Histogram::new(LATENCY_BUCKETS),
            in_flight: Gauge::default(),
            consumer_lag: Family::default(),
            key_set_age_seconds: Family::default(),
            key_set_latest_expiry_seconds: Family::default(),
            key_refresh_failures: Family::default(),
            produce_retries: Counter::default(),
            transactions: Family::default(),
            transaction_commit_seconds: Histogram::new(LATENCY_BUCKETS),
            rebalances: Family::default(),
            optout_set_size: Gauge::default(),
            optout_caught_up: Gauge::default(),
            optout_records: Family::default(),
            optout_webhook_requests: Family::default(),
            build_info: Family::default(),
            process_cpu_seconds: Counter::default(),
            process_resident_memory_bytes: Gauge::default(),
            process_open_fds: Gauge::default(),
            registry: Registry::default(),
        };
        let registry = root.sub_registry_with_prefix("uid2_enricher");
        registry.register(
            "records_in",
            "Records consumed from the input topics",
            m.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Records produced to the output topic and acknowledged",
            m.records_out.clone(),
        );
        registry.register(
            "dead_lettered",
            "Malformed records produced to the dead-letter topic, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "requests",
            "Requests by the status of their selected token (no_token when none)",
            m.request_status.clone(),
        );
        registry.register(
            "tokens",
            "Distinct tokens decrypted, by status",
            m.token_status.clone(),
        );
        registry.register(
            "opted_out",
            "Tokens whose user opted out after the identity was established",
            m.opted_out.clone(),
        );
        registry.register(
            "enrich_seconds",
            "Time to enrich one record (scan, decrypt, splice)",
            m.enrich_seconds.clone(),
        );
        registry.register(
            "stage_seconds",
            "Time from consuming a record to its output being acknowledged (the latency the stage adds)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "handoff_seconds",
            "Time from consuming a record to handing its output to the producer (the stage's own part)",
            m.handoff_seconds.clone(),
        );
        registry.register(
            "in_flight_records",
            "Records consumed but not yet acknowledged downstream",
            m.in_flight.clone(),
        );
        registry.register(
            "consumer_lag_records",
            "Consumer lag per input partition, from librdkafka statistics",
            m.consumer_lag.clone(),
        );
        registry.register(
            "key_set_age_seconds",
            "Seconds since each key source last confirmed its key set in use",
            m.key_set_age_seconds.clone(),
        );
        registry.register(
            "key_set_latest_expiry_timestamp_seconds",
            "When the last key of each key source's set in use expires (Unix seconds); its tokens get keys_not_synced after it",
            m.key_set_latest_expiry_seconds.clone(),
        );
        registry.register(
            "key_refresh_failures",
            "Failed key refreshes, by key source",
            m.key_refresh_failures.clone(),
        );
        registry.register(
            "produce_retries",
            "Produce attempts retried because the producer queue was full",
            m.produce_retries.clone(),
        );
        registry.register(
            "transactions",
            "Kafka transactions of exactly-once delivery, by outcome: committed, aborted",
            m.transactions.clone(),
        );
        registry.register(
            "transaction_commit_seconds",
            "Time to send a transaction's offsets and commit it (exactly-once delivery)",
            m.transaction_commit_seconds.clone(),
        );
        registry.register(
            "rebalances",
            "Partition assignments and revocations",
            m.rebalances.clone(),
        );
        registry.register(
            "optout_set_entries",
            "Raw UID2s in the opt-out set",
            m.optout_set_size.clone(),
        );
        registry.register(
            "optout_caught_up",
            "1 once the opt-out set holds everything the opt-out topic held when the instance started",
            m.optout_caught_up.clone(),
        );
        registry.register(
            "optout_records",
            "Opt-out topic records read, by effect on the set (new, later, unchanged, invalid, tombstone_ignored)",
            m.optout_records.clone(),
        );
        registry.register(
            "optout_webhook_requests",
            "Opt-out webhook calls by outcome (accepted, unauthorized, invalid, disabled, unavailable)",
            m.optout_webhook_requests.clone(),
        );
        registry.register(
            "build_info",
            "1, labelled with the version, librdkafka's version and its builtin features",
            m.build_info.clone(),
        );
        let (version, librdkafka, features) = crate::support::build_info::library_parts();
        m.build_info
            .get_or_create(&BuildLabel {
                version: version.to_string(),
                librdkafka,
                features,
            })
            .set(1);
        root.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.process_cpu_seconds.clone(),
        );
        root.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.process_resident_memory_bytes.clone(),
        );
        root.register(
            "process_open_fds",
            "Number of open file descriptors",
            m.process_open_fds.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Reads the process metrics from `/proc/self` (Linux; elsewhere they stay 0).
    pub fn update_process(&self) {
        let Some(sample) = read_process() else {
            return;
        };
        let seen = self.process_cpu_seconds.get();
        if sample.cpu_seconds > seen {
            self.process_cpu_seconds.inc_by(sample.cpu_seconds - seen);
        }
        self.process_resident_memory_bytes
            .set(sample.resident_bytes as i64);
        self.process_open_fds.set(sample.open_fds as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: u64,
}

/// CPU time from `/proc/self/stat` (fields 14 and 15, in clock ticks of 1/100 s on Linux), resident
/// memory from `/proc/self/status` (`VmRSS`, kB), descriptors from `/proc/self/fd`.
fn read_process() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    const TICKS_PER_SECOND: f64 = 100.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let resident_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcessSample {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        resident_bytes: resident_kb * 1024,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_build_info_and_process_metrics() {
        let m = Metrics::new();
        m.update_process();
        let text = m.render();
        assert!(
            text.contains("uid2_enricher_build_info{version=\""),
            "{text}"
        );
        assert!(text.contains("uid2_enricher_records_in_total"), "{text}");
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
        };
        if cfg!(target_os = "linux") {
            assert!(value("process_resident_memory_bytes") > 1_000_000.0);
            assert!(value("process_open_fds") >= 3.0);
            assert!(value("process_cpu_seconds_total") >= 0.0);
        }
    }
}

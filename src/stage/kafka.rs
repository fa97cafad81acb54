//! Kafka clients (rust-rdkafka over its bundled librdkafka). Every client the binary makes — the stage's
//! consumer and producer, the opt-out follower, publisher and admin client, `capture`, `verify`,
//! `replay --to-topic`, `demo` — is configured by [`KafkaClients`] from the same `[kafka]` settings, so a
//! security or codec property set once applies to all of them. Also here: how librdkafka's errors are
//! classified and logged (once per cause, rate-limited, secrets scrubbed), the consumer context that drains
//! revoked partitions before letting them go, and header helpers. Depends on rdkafka, tokio, the
//! configuration's `[kafka]` section and the metrics.
//!
//! Delivery contract (at-least-once): offsets are stored by the stage only after the output (or
//! dead-letter) record of that offset and of every earlier offset of the partition was acknowledged;
//! librdkafka's auto-commit then commits what was stored (and commits it on revoke and close).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::statistics::Statistics;
use tokio::task::JoinHandle;

use crate::config::{KafkaProps, KafkaSettings};
use crate::support::metrics::{Metrics, PartitionLabel, ReasonLabel};

/// Consumer properties the stage sets itself and that pass-through tables may not override.
pub const OWNED_CONSUMER_KEYS: &[&str] =
    &["group.id", "bootstrap.servers", "enable.auto.offset.store"];
/// Producer properties the stage sets itself and that pass-through tables may not override.
pub const OWNED_PRODUCER_KEYS: &[&str] = &["bootstrap.servers", "enable.idempotence"];

/// Why a pass-through property was refused.
#[derive(Debug, thiserror::Error)]
#[error("librdkafka property `{key}` is set by the stage itself and cannot be overridden: {hint}")]
pub struct OwnedPropertyError {
    pub key: String,
    pub hint: &'static str,
}

fn check_overrides<'a>(
    mut overrides: impl Iterator<Item = (&'a str, &'a str)>,
    owned: &[&str],
) -> Result<(), OwnedPropertyError> {
    match overrides.find(|(k, _)| owned.contains(k)) {
        Some((key, _)) => Err(OwnedPropertyError {
            key: key.to_string(),
            hint: "use [kafka] brokers / group_id; offsets are stored only after delivery and the producer is always idempotent",
        }),
        None => Ok(()),
    }
}

/// The one place every Kafka client's configuration is made: the brokers, then what the client's role
/// needs, then `[kafka.client]` (every client), then `[kafka.consumer]` or `[kafka.producer]` (clients of
/// that kind; admin clients count as producers, as in librdkafka), then the few keys a role must own.
#[derive(Clone, Debug, Default)]
pub struct KafkaClients {
    brokers: String,
    client: KafkaProps,
    consumer: KafkaProps,
    producer: KafkaProps,
}

impl KafkaClients {
    /// The clients of a configuration file's `[kafka]` section.
    pub fn new(settings: &KafkaSettings) -> KafkaClients {
        KafkaClients {
            brokers: settings.brokers.clone(),
            client: settings.client.clone(),
            consumer: settings.consumer.clone(),
            producer: settings.producer.clone(),
        }
    }

    /// Clients of an open cluster at `brokers` (`--brokers`), with no extra properties.
    pub fn from_brokers(brokers: &str) -> KafkaClients {
        KafkaClients {
            brokers: brokers.to_string(),
            ..KafkaClients::default()
        }
    }

    /// Adds properties for every client (as `[kafka.client]` does).
    pub fn with_client<K: Into<String>, V: Into<String>>(
        mut self,
        props: impl IntoIterator<Item = (K, V)>,
    ) -> KafkaClients {
        self.client = self.client.with(props);
        self
    }

    /// Adds consumer properties (as `[kafka.consumer]` does).
    pub fn with_consumer<K: Into<String>, V: Into<String>>(
        mut self,
        props: impl IntoIterator<Item = (K, V)>,
    ) -> KafkaClients {
        self.consumer = self.consumer.with(props);
        self
    }

    /// Adds producer properties (as `[kafka.producer]` does).
    pub fn with_producer<K: Into<String>, V: Into<String>>(
        mut self,
        props: impl IntoIterator<Item = (K, V)>,
    ) -> KafkaClients {
        self.producer = self.producer.with(props);
        self
    }

    /// Whether `[kafka.client]` or `[kafka.producer]` sets `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.client
            .iter()
            .chain(self.producer.iter())
            .any(|(k, _)| k == key)
    }

    /// `bootstrap.servers`, for messages.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    fn base(&self, defaults: &[(&str, &str)], role: &KafkaProps) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // The system's CA bundle: librdkafka's built-in OpenSSL would otherwise look in its own build
        // directory, which does not exist on the machine that runs it, and trust no public CA.
        c.set("ssl.ca.location", "probe");
        #[cfg(feature = "oidc")]
        c.set("https.ca.location", "probe");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.client.iter().chain(role.iter()) {
            c.set(k, v);
        }
        register_secrets(self.client.iter().chain(role.iter()));
        c
    }

    /// The stage's consumer: cooperative-sticky assignment, earliest reset, manual offset store with
    /// auto-commit, statistics for the lag metric.
    ///
    /// # Errors
    /// A pass-through table sets a property the stage owns.
    pub fn stage_consumer(&self, group_id: &str) -> Result<ClientConfig, OwnedPropertyError> {
        check_overrides(
            self.client.iter().chain(self.consumer.iter()),
            OWNED_CONSUMER_KEYS,
        )?;
        let mut c = self.base(
            &[
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
                ("statistics.interval.ms", "5000"),
                ("fetch.wait.max.ms", "100"),
            ],
            &self.consumer,
        );
        c.set("group.id", group_id)
            .set("enable.auto.offset.store", "false");
        Ok(c)
    }

    /// An idempotent producer (acks=all, ordered retries), batched: the stage's, the opt-out publisher's
    /// and `replay --to-topic`'s.
    ///
    /// # Errors
    /// A pass-through table sets a property the stage owns.
    pub fn producer(&self) -> Result<ClientConfig, OwnedPropertyError> {
        check_overrides(
            self.client.iter().chain(self.producer.iter()),
            OWNED_PRODUCER_KEYS,
        )?;
        let mut c = self.base(
            &[
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "1000000"),
                ("message.timeout.ms", "300000"),
            ],
            &self.producer,
        );
        c.set("enable.idempotence", "true");
        Ok(c)
    }

    /// A consumer that assigns partitions itself and never joins a group nor commits (`capture`,
    /// `verify`, the opt-out follower). librdkafka wants a `group.id` even so: `group_id` names it.
    pub fn reader(&self, group_id: &str) -> ClientConfig {
        let mut c = self.base(
            &[
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "100"),
            ],
            &self.consumer,
        );
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        c
    }

    /// A consumer group member that commits what it read (`capture --group`).
    pub fn group_reader(&self, group_id: &str, offset_reset: &str) -> ClientConfig {
        let mut c = self.base(
            &[
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "100"),
            ],
            &self.consumer,
        );
        // `--from end` must win over the file's `auto.offset.reset`.
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", offset_reset);
        c
    }

    /// An admin client (creating topics): `[kafka.client]` and `[kafka.producer]`.
    pub fn admin(&self) -> ClientConfig {
        self.base(&[], &self.producer)
    }

    /// Every client kind the stage makes, created to prove librdkafka accepts the properties (names,
    /// values, and features such as TLS or a codec), without connecting: the first it refuses.
    ///
    /// # Errors
    /// The first client librdkafka refuses, with its role and librdkafka's reason (secrets scrubbed).
    pub fn check(&self, group_id: &str) -> Result<(), ClientCheckError> {
        match self.problems(group_id).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every client kind the stage makes, each created without connecting: what librdkafka refuses.
    pub fn problems(&self, group_id: &str) -> Vec<ClientCheckError> {
        use rdkafka::admin::AdminClient;
        use rdkafka::producer::BaseProducer;
        let fail = |role: &'static str, e: &dyn std::fmt::Display| ClientCheckError {
            role,
            reason: scrub(&e.to_string()),
        };
        let mut problems = Vec::new();
        match self.stage_consumer(group_id) {
            Err(e) => problems.push(fail("consumer", &e)),
            Ok(c) => {
                if let Err(e) = c.create_with_context::<_, BaseConsumer<Quiet>>(Quiet) {
                    problems.push(fail("consumer", &e));
                }
            }
        }
        match self.producer() {
            Err(e) => problems.push(fail("producer", &e)),
            Ok(c) => {
                if let Err(e) = c.create_with_context::<_, BaseProducer<Quiet>>(Quiet) {
                    problems.push(fail("producer", &e));
                }
            }
        }
        if let Err(e) = self
            .reader(group_id)
            .create_with_context::<_, BaseConsumer<Quiet>>(Quiet)
        {
            problems.push(fail("opt-out follower", &e));
        }
        if let Err(e) = self
            .admin()
            .create_with_context::<_, AdminClient<Quiet>>(Quiet)
        {
            problems.push(fail("admin client", &e));
        }
        // The same property refused by several clients is one problem.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert(p.reason.clone()));
        problems
    }
}

/// Where a tool finds the cluster: `--config` (its `[kafka]` section: brokers, security, codecs) and/or
/// `--brokers` (which wins over the file's brokers), as kcat's `-F` and `-b`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// The stage's configuration file: its [kafka] brokers and client properties (TLS, SASL, …) are used.
    /// Environment references in it are expanded; UID2 operator credentials need not be set.
    #[arg(long, value_name = "FILE", required_unless_present = "brokers")]
    pub config: Option<std::path::PathBuf>,
    /// Bootstrap brokers, host:port, comma-separated (overrides the config file's).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
}

impl ClusterArgs {
    /// The clients these arguments describe.
    ///
    /// # Errors
    /// The configuration file cannot be read or is invalid (the message says where and how to fix it).
    pub fn clients(&self) -> anyhow::Result<KafkaClients> {
        clients_from(self.config.as_deref(), self.brokers.as_deref())
    }
}

/// The clients of a tool given `--config` and/or `--brokers`.
///
/// # Errors
/// Neither is given, or the configuration file cannot be read or is invalid.
pub fn clients_from(
    config: Option<&std::path::Path>,
    brokers: Option<&str>,
) -> anyhow::Result<KafkaClients> {
    let mut clients = match config {
        Some(path) => {
            KafkaClients::new(&crate::config::load_without_operator_credentials(path)?.kafka)
        }
        None => KafkaClients::default(),
    };
    match brokers {
        Some(b) if !b.trim().is_empty() => clients.brokers = b.to_string(),
        _ if config.is_some() => {}
        _ => anyhow::bail!(
            "no cluster given: pass --config FILE (the stage's configuration, for a secured cluster) or --brokers HOST:PORT"
        ),
    }
    Ok(clients)
}

/// A client librdkafka refused to create.
#[derive(Debug, thiserror::Error)]
#[error("librdkafka refused the {role} configuration: {reason}")]
pub struct ClientCheckError {
    pub role: &'static str,
    pub reason: String,
}

impl ClientCheckError {
    /// The pass-through table, besides `[kafka.client]`, whose properties this client takes.
    pub fn table(&self) -> &'static str {
        match self.role {
            "consumer" | "opt-out follower" => "consumer",
            _ => "producer",
        }
    }
}

/// A context that logs nothing: clients made only to check a configuration.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl ConsumerContext for Quiet {}

impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

// ---------------------------------------------------------------------------------------------------------
// What librdkafka reports, and how the stage treats it
// ---------------------------------------------------------------------------------------------------------

/// What a consumer error means for the records of its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerErrorClass {
    /// A connection, leader or coordinator problem: librdkafka retries and resumes where it was; no record
    /// is skipped. Logged (rate-limited), the stage goes on.
    Transient,
    /// Authentication or TLS failed: librdkafka keeps retrying, and nothing is read until the cause is
    /// fixed. Logged loudly once per cause; the stage goes on (not ready while nothing can be read).
    Authentication,
    /// A record batch that cannot be read (corrupt, compressed with a codec this build lacks, or an
    /// unsupported format). librdkafka either retries it forever (the partition stalls) or skips it (its
    /// records are lost): the stage stops instead, with nothing committed past the last record delivered,
    /// so the next owner re-reads from there and an orchestrator restarts and alerts.
    UnreadableBatch,
    /// The client cannot go on (fatal error, authorization refused, bad subscription): the stage stops.
    Fatal,
}

/// Classifies an error returned by a consumer's `recv`/`poll`.
pub fn classify_consumer_error(e: &KafkaError) -> ConsumerErrorClass {
    use ConsumerErrorClass::*;
    match e {
        KafkaError::MessageConsumptionFatal(_)
        | KafkaError::Subscription(_)
        | KafkaError::ClientCreation(_)
        | KafkaError::ClientConfig(..) => return Fatal,
        KafkaError::PartitionEOF(_) => return Transient,
        _ => {}
    }
    match e.rdkafka_error_code() {
        Some(code) => classify_code(code),
        None => Transient,
    }
}

/// Classifies a librdkafka error code seen by a consumer.
pub fn classify_code(code: RDKafkaErrorCode) -> ConsumerErrorClass {
    use ConsumerErrorClass::*;
    use RDKafkaErrorCode as C;
    match code {
        C::BadMessage
        | C::BadCompression
        | C::NotImplemented
        | C::InvalidMessage
        | C::InvalidRecord
        | C::UnsupportedCompressionType
        | C::UnsupportedForMessageFormat
        | C::MessageSizeTooLarge
        | C::Underflow
        | C::InvalidDifferentRecord => UnreadableBatch,
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::SSL
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState => Authentication,
        C::Fatal
        | C::GroupAuthorizationFailed
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::InvalidGroupId
        | C::InconsistentGroupProtocol
        | C::UnsupportedFeature
        | C::Fenced
        | C::InvalidArgument => Fatal,
        _ => Transient,
    }
}

/// Classifies an error librdkafka reports for a client as a whole (`error_cb`). A TLS failure the broker
/// signals with an alert after the handshake (a missing or refused client certificate under TLS 1.3)
/// reaches librdkafka as a failed receive, a transport error: its text says what it is.
pub fn classify_client_error(error: &KafkaError, reason: &str) -> ConsumerErrorClass {
    let code = error.rdkafka_error_code();
    let tls_failure = ["SSL routines", "SSL handshake", "certificate"]
        .iter()
        .any(|s| reason.contains(s));
    match code {
        Some(RDKafkaErrorCode::BrokerTransportFailure) if tls_failure => {
            ConsumerErrorClass::Authentication
        }
        Some(code) => classify_code(code),
        None => ConsumerErrorClass::Transient,
    }
}

/// How long a repeated client error stays quiet after it was logged.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// librdkafka's errors and log lines, logged once per cause and then at most once per
/// [`ERROR_LOG_INTERVAL`] with the count of repeats, with every secret value of the configuration
/// scrubbed. librdkafka repeats a failing connection's error on every retry (every second or so): left
/// alone, a wrong password floods the log and buries the one line that says why.
#[derive(Default)]
pub struct ClientLog {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
    last_error: Mutex<Option<LastError>>,
}

/// The last authentication, TLS or fatal client error: what, when, and which class.
struct LastError {
    text: String,
    at: Instant,
    class: ConsumerErrorClass,
}

/// The process's client log (librdkafka's callbacks have no other way back to the stage).
pub fn client_log() -> &'static ClientLog {
    static LOG: OnceLock<ClientLog> = OnceLock::new();
    LOG.get_or_init(ClientLog::default)
}

impl ClientLog {
    /// Whether a line with this cause should be logged now, and how many were held back since the last.
    fn admit(&self, cause: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match seen.get_mut(cause) {
            Some((last, held)) if now.duration_since(*last) < ERROR_LOG_INTERVAL => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let repeats = *held;
                *last = now;
                *held = 0;
                Some(repeats)
            }
            None => {
                if seen.len() > 1024 {
                    seen.clear();
                }
                seen.insert(cause.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// An error librdkafka reported for a client (`error_cb`).
    pub fn error(&self, client: &str, error: &KafkaError, reason: &str) {
        let reason = scrub(reason);
        let error_text = scrub(&error.to_string());
        let class = classify_client_error(error, &reason);
        let cause = format!("{client}|{error_text}|{}", cause_key(&reason));
        if class != ConsumerErrorClass::Transient {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastError {
                text: format!("{error_text}: {reason}"),
                at: Instant::now(),
                class,
            });
        }
        let Some(repeats) = self.admit(&cause) else {
            return;
        };
        match class {
            ConsumerErrorClass::Authentication => tracing::error!(
                client,
                error = %error_text,
                reason = %reason,
                repeats,
                "Kafka authentication or TLS failed; nothing is read or written until it succeeds. Check the security.protocol, sasl.* and ssl.* properties in [kafka.client]."
            ),
            ConsumerErrorClass::Fatal | ConsumerErrorClass::UnreadableBatch => {
                tracing::error!(client, error = %error_text, reason = %reason, repeats, "Kafka client error.")
            }
            _ => {
                tracing::warn!(client, error = %error_text, reason = %reason, repeats, "Kafka client error (librdkafka retries).")
            }
        }
    }

    /// A librdkafka log line (`log_cb`).
    pub fn log(&self, client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let quiet = matches!(
            level,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug
        );
        if quiet {
            // With `debug` set librdkafka logs every fetch and produce: scrub only what is written.
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(client, facility, "librdkafka: {}", scrub(message));
            }
            return;
        }
        let message = scrub(message);
        let Some(repeats) = self.admit(&format!("{client}|{facility}|{}", cause_key(&message)))
        else {
            return;
        };
        match level {
            RDKafkaLogLevel::Warning => {
                tracing::warn!(client, facility, repeats, "librdkafka: {message}")
            }
            _ => tracing::error!(client, facility, repeats, "librdkafka: {message}"),
        }
    }

    /// The last authentication, TLS or fatal client error, for `/readyz`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|e| e.text.clone())
    }

    /// The last authentication or TLS error, when it is more recent than `within`: librdkafka retries a
    /// refused connection every few seconds and reports each refusal, so a cause that has not recurred for
    /// that long is taken as fixed (librdkafka reports no success to compare with).
    pub fn authentication_failing(&self, within: Duration) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|e| e.class == ConsumerErrorClass::Authentication && e.at.elapsed() < within)
            .map(|e| e.text.clone())
    }
}

/// A message's cause without the parts that change between repeats (timings, counts, broker ids), so the
/// same failure maps to one rate-limit slot.
fn cause_key(message: &str) -> String {
    // librdkafka appends "(after 30ms in state AUTH_REQ, 2 identical error(s) suppressed)".
    let message = message.split(" (after ").next().unwrap_or(message);
    let mut key = String::with_capacity(message.len());
    let mut last_digit = false;
    for c in message.chars().take(200) {
        if c.is_ascii_digit() {
            if !last_digit {
                key.push('#');
            }
            last_digit = true;
        } else {
            key.push(c);
            last_digit = false;
        }
    }
    key
}

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers the values of secret-bearing properties, so [`scrub`] can take them out of any text
/// librdkafka hands back.
fn register_secrets<'a>(props: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut known = secrets().lock().unwrap_or_else(|e| e.into_inner());
    for (key, value) in props {
        if crate::config::is_secret_property(key)
            && value.len() >= 4
            && !known.iter().any(|s| s == value)
        {
            known.push(value.to_string());
        }
    }
}

/// `text` with every secret value of the Kafka configuration replaced by `<redacted>`.
pub fn scrub(text: &str) -> String {
    let known = secrets().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// A client-creation error as an `anyhow` error, with secret values scrubbed: librdkafka's configuration
/// errors quote the value they refused.
pub fn creation_error(error: KafkaError) -> anyhow::Error {
    anyhow::anyhow!(scrub(&error.to_string()))
}

/// A client context for tools and helper clients: librdkafka's errors and logs go through
/// [`client_log`] under the client's name.
#[derive(Clone, Copy, Debug)]
pub struct Logged(pub &'static str);

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        client_log().log(self.0, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_log().error(self.0, &error, reason);
    }
}

impl ConsumerContext for Logged {}

/// (topic, partition)
pub type TopicPartition = (String, i32);

/// A partition the stage is working on: the only sender of its queue, and its task.
pub struct PartitionSlot<J> {
    /// The only sender: removing the slot closes the queue, so the task finishes what it holds, stores
    /// the offsets and ends.
    pub queue: tokio::sync::mpsc::UnboundedSender<J>,
    pub task: JoinHandle<()>,
}

/// The partitions the stage is working on, shared by the consume loop and the rebalance callback.
pub type PartitionRegistry<J> = Arc<Mutex<HashMap<TopicPartition, PartitionSlot<J>>>>;

/// Consumer context: drains revoked partitions (bounded by `drain_timeout`) inside the revoke callback,
/// while they are still assigned, so their in-flight records' offsets can still be stored; and turns
/// librdkafka statistics into the lag metric.
pub struct StageContext<J> {
    pub partitions: PartitionRegistry<J>,
    pub drain_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Exactly-once delivery: called once the revoked partitions have drained, with whether the open
    /// transaction must be aborted instead of committed: the assignment was lost, or the drain timed out
    /// (its tasks may still send). Set after the consumer exists, so a cell.
    pub on_revoke: Arc<std::sync::OnceLock<RevokeHook>>,
}

/// What a revoke does after draining: commit the open transaction, or abort it (`true`).
pub type RevokeHook = Box<
    dyn Fn(bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync,
>;

impl<J: Send + 'static> ClientContext for StageContext<J> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        client_log().log("stage consumer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_log().error("stage consumer", &error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        // Only the partitions this instance works on: statistics gathered before a revoke may arrive
        // after it, and must not bring back a series another instance now reports.
        let working: std::collections::HashSet<TopicPartition> = self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *id >= 0 && p.consumer_lag >= 0 && working.contains(&(topic.clone(), *id)) {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&PartitionLabel {
                            topic: topic.clone(),
                            partition: *id,
                        })
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl<J: Send + 'static> ConsumerContext for StageContext<J> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Assign(tpl) = rebalance {
                self.metrics
                    .rebalances
                    .get_or_create(&ReasonLabel { reason: "assign" })
                    .inc();
                tracing::info!(partitions = tpl.count(), "Partitions assigned.");
            }
            return;
        };
        self.metrics
            .rebalances
            .get_or_create(&ReasonLabel { reason: "revoke" })
            .inc();
        let lost = consumer.assignment_lost();
        // Another instance reports these partitions' lag from now on: a stale series here would be
        // counted twice in a sum across instances.
        for elem in tpl.elements() {
            self.metrics.consumer_lag.remove(&PartitionLabel {
                topic: elem.topic().to_string(),
                partition: elem.partition(),
            });
        }
        let mut slots = Vec::new();
        {
            let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for elem in tpl.elements() {
                if let Some(slot) = partitions.remove(&(elem.topic().to_string(), elem.partition()))
                {
                    slots.push(slot);
                }
            }
        }
        tracing::info!(
            partitions = tpl.count(),
            draining = slots.len(),
            lost,
            "Partitions revoked."
        );
        // Dropping each queue's only sender closes it.
        let tasks: Vec<JoinHandle<()>> = slots.into_iter().map(|slot| slot.task).collect();
        let hook = self.on_revoke.get();
        if (lost || tasks.is_empty()) && hook.is_none() {
            // A lost assignment belongs to someone else already: storing offsets would fail anyway.
            return;
        }
        // The callback runs on the thread polling the consumer, a tokio worker: hand its other tasks to
        // the rest of the runtime and wait here, so the partitions stay assigned until drained.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let timeout = self.drain_timeout;
        let drained = tokio::task::block_in_place(|| {
            handle.block_on(async move {
                let drained = if lost {
                    Ok(())
                } else {
                    tokio::time::timeout(timeout, async {
                        for task in tasks {
                            let _ = task.await;
                        }
                    })
                    .await
                };
                if let Some(hook) = hook {
                    hook(lost || drained.is_err()).await;
                }
                drained
            })
        });
        if drained.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "Revoked partitions did not drain in time; their unacknowledged records will be redelivered to the new owner (exactly once: the transaction is aborted and the run restarts)."
            );
        }
    }
}

/// One partition of a topic and the offsets it holds now: `low` is the first, `high` the next to be
/// written (the high watermark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// Why [`partition_ranges`] could not list a topic's partitions.
#[derive(Debug, thiserror::Error)]
pub enum PartitionRangeError {
    #[error("metadata: {0}")]
    Metadata(KafkaError),
    #[error("the topic is not in the metadata")]
    Missing,
    #[error("the topic: {0:?}")]
    Topic(RDKafkaErrorCode),
    #[error("the topic has no partitions")]
    NoPartitions,
    #[error("watermarks of partition {partition}: {error}")]
    Watermarks { partition: i32, error: KafkaError },
}

impl PartitionRangeError {
    /// The topic does not exist as far as a reader can tell (absent, in error, or without partitions).
    pub fn no_such_topic(&self) -> bool {
        matches!(
            self,
            PartitionRangeError::Missing
                | PartitionRangeError::Topic(_)
                | PartitionRangeError::NoPartitions
        )
    }
}

/// Every partition of `topic` with its low and high watermarks, from the topic's metadata and one
/// watermark request per partition, each waiting at most `timeout`.
///
/// # Errors
/// The metadata or a partition's watermarks cannot be read, or the topic is absent, in error or empty.
pub fn partition_ranges<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionRange>, PartitionRangeError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(PartitionRangeError::Metadata)?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or(PartitionRangeError::Missing)?;
    if let Some(e) = t.error() {
        return Err(PartitionRangeError::Topic(RDKafkaErrorCode::from(e)));
    }
    if t.partitions().is_empty() {
        return Err(PartitionRangeError::NoPartitions);
    }
    t.partitions()
        .iter()
        .map(|p| {
            let (low, high) =
                consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .map_err(|error| PartitionRangeError::Watermarks {
                        partition: p.id(),
                        error,
                    })?;
            Ok(PartitionRange {
                partition: p.id(),
                low,
                high,
            })
        })
        .collect()
}

/// Copies the input headers and appends `extra`, keeping the input's order.
pub fn headers_with(input: Option<&OwnedHeaders>, extra: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(input.map_or(0, Headers::count) + extra.len());
    if let Some(input) = input {
        for h in input.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    for (key, value) in extra {
        out = out.insert(Header {
            key,
            value: Some(*value),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_errors_are_classified() {
        use ConsumerErrorClass::*;
        use RDKafkaErrorCode as C;
        let consumption = |c| classify_consumer_error(&KafkaError::MessageConsumption(c));
        // Records of a batch that cannot be read: stop, never skip.
        for code in [
            C::BadCompression,
            C::BadMessage,
            C::NotImplemented,
            C::InvalidRecord,
            C::InvalidMessage,
            C::UnsupportedCompressionType,
        ] {
            assert_eq!(consumption(code), UnreadableBatch, "{code:?}");
        }
        // librdkafka retries these and resumes where it was.
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::OperationTimedOut,
            C::NotLeaderForPartition,
            C::UnknownTopicOrPartition,
            C::CoordinatorNotAvailable,
            C::AutoOffsetReset,
        ] {
            assert_eq!(consumption(code), Transient, "{code:?}");
        }
        for code in [C::Authentication, C::SSL, C::SaslAuthenticationFailed] {
            assert_eq!(consumption(code), Authentication, "{code:?}");
        }
        for code in [
            C::Fatal,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
        ] {
            assert_eq!(consumption(code), Fatal, "{code:?}");
        }
        assert_eq!(
            classify_consumer_error(&KafkaError::MessageConsumptionFatal(
                C::BrokerTransportFailure
            )),
            Fatal
        );
        assert_eq!(
            classify_consumer_error(&KafkaError::PartitionEOF(3)),
            Transient
        );
        assert_eq!(
            classify_consumer_error(&KafkaError::Subscription("x".into())),
            Fatal
        );
    }

    #[test]
    fn a_tls_alert_after_the_handshake_is_an_authentication_failure() {
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(
            classify_client_error(
                &transport,
                "ssl://k:9093/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116"
            ),
            ConsumerErrorClass::Authentication
        );
        assert_eq!(
            classify_client_error(&transport, "k:9092/1: Disconnected (after 5ms in state UP)"),
            ConsumerErrorClass::Transient
        );
        assert_eq!(
            classify_client_error(
                &KafkaError::Global(RDKafkaErrorCode::SSL),
                "SSL handshake failed: certificate verify failed"
            ),
            ConsumerErrorClass::Authentication
        );
    }

    #[test]
    fn an_authentication_failure_counts_while_it_recurs() {
        let log = ClientLog::default();
        assert_eq!(log.authentication_failing(Duration::from_secs(30)), None);
        log.error(
            "test",
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "k:9092/1: Disconnected",
        );
        assert_eq!(
            log.authentication_failing(Duration::from_secs(30)),
            None,
            "a transport failure is not an authentication failure"
        );
        log.error(
            "test",
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: invalid-proof",
        );
        let failing = log.authentication_failing(Duration::from_secs(30));
        assert!(failing.is_some_and(|t| t.contains("invalid-proof")));
        assert_eq!(
            log.authentication_failing(Duration::ZERO),
            None,
            "not once it stopped recurring"
        );
    }

    #[test]
    fn repeated_causes_are_logged_once_per_interval() {
        let log = ClientLog::default();
        assert_eq!(log.admit("a"), Some(0));
        assert_eq!(log.admit("a"), None);
        assert_eq!(log.admit("a"), None);
        assert_eq!(log.admit("b"), Some(0), "another cause is logged at once");
        // Once the interval has passed, the next line says how many were held back.
        log.seen.lock().unwrap().get_mut("a").unwrap().0 -= ERROR_LOG_INTERVAL;
        assert_eq!(log.admit("a"), Some(2));
        assert_eq!(log.admit("a"), None);
    }

    #[test]
    fn causes_ignore_what_changes_between_repeats() {
        assert_eq!(
            cause_key("127.0.0.1:9092/1: Disconnected (after 12ms in state UP)"),
            cause_key(
                "127.0.0.1:9092/1: Disconnected (after 4031ms in state UP, 1 identical error(s) suppressed)"
            )
        );
        assert_ne!(
            cause_key("SSL handshake failed"),
            cause_key("SASL authentication error")
        );
    }

    #[test]
    fn secret_values_are_scrubbed_and_other_values_kept() {
        let clients = KafkaClients::from_brokers("k:9093").with_client([
            ("sasl.username", "alice-user"),
            ("sasl.password", "Scrub-Me-Pw-1"),
            ("ssl.key.password", "Scrub-Me-Key-2"),
        ]);
        let _ = clients.producer().unwrap();
        let text = scrub("auth failed for alice-user with Scrub-Me-Pw-1 (key Scrub-Me-Key-2)");
        assert_eq!(
            text,
            "auth failed for alice-user with <redacted> (key <redacted>)"
        );
    }

    #[test]
    fn every_client_gets_the_shared_properties_and_its_role_its_own() {
        let clients = KafkaClients::from_brokers("k1:9093,k2:9093")
            .with_client([("security.protocol", "SSL"), ("client.id", "c")])
            .with_consumer([("client.id", "consumer"), ("fetch.wait.max.ms", "10")])
            .with_producer([("compression.type", "zstd")]);
        let consumer = clients.stage_consumer("g").unwrap();
        let producer = clients.producer().unwrap();
        let reader = clients.reader("r");
        let admin = clients.admin();
        for c in [&consumer, &producer, &reader, &admin] {
            assert_eq!(c.get("bootstrap.servers"), Some("k1:9093,k2:9093"));
            assert_eq!(c.get("security.protocol"), Some("SSL"));
        }
        assert_eq!(
            consumer.get("client.id"),
            Some("consumer"),
            "role wins over shared"
        );
        assert_eq!(
            consumer.get("fetch.wait.max.ms"),
            Some("10"),
            "the file wins over defaults"
        );
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(producer.get("client.id"), Some("c"));
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(admin.get("compression.type"), Some("zstd"));
        assert_eq!(reader.get("compression.type"), None);
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        let owned = KafkaClients::from_brokers("k")
            .with_client([("enable.idempotence", "false")])
            .producer();
        assert!(owned.is_err(), "a shared table cannot turn idempotence off");
    }
}

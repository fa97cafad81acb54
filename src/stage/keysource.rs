//! The key sources: each loads a key set from a keys file or an operator (UID2 or EUID), keeps it fresh,
//! and publishes each new set to the pipeline as an `Arc<KeySet>` through a [`tokio::sync::watch`]
//! channel. A [`KeyRing`] holds every configured source (one per identity scope, or the single `[uid2]`
//! source) and answers the pipeline with the sets in force by scope.
//!
//! - **File** (`[uid2] keys_file`): read at start and re-read every refresh interval, so another process
//!   can rewrite it (write a temporary file and rename it over the old one).
//! - **Operator** (`[uid2] base_url`): `POST {base_url}/v2/key/bidstream` (bidstream mode) or
//!   `/v2/key/sharing` (sharing mode) with the v2 envelope (`../shared/spec/uid2-tokens.md` §3–4): an
//!   empty payload sealed with the client secret, `Authorization: Bearer <API key>`, the response opened
//!   with the same secret and checked against the request's nonce.
//!
//! Schedule: the first load starts at once; after a success the next refresh is `interval ± uniform
//! jitter`; after a failure the wait is `retry_initial_backoff`, doubling per consecutive failure up to
//! `retry_max_backoff`, forever. A failure never drops the key set in use: tokens simply get
//! `keys_not_synced` once all of its keys have expired (the token engine's rule). A fetched set with no
//! unexpired key does not replace a set that still has one. A fetch whose JSON is byte-identical to the
//! current set's is a success that publishes nothing, so decrypt caches keyed on the set's generation
//! survive a routine refresh.
//!
//! Logs: every failure at `warn` with the reason, every success at `info` with the key count and the latest
//! expiry. Never the API key, the client secret or key material: errors carry URLs, HTTP statuses and at
//! most a short, sanitised snippet of an error body.
//!
//! Shell code: it reads the wall clock, files and the network (reqwest over rustls); the envelope and
//! the key set's parsing are the engine's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::config::{KeySourceSettings, Uid2Settings};
pub use crate::config::{KeysFrom, RefreshSettings};
use crate::engine::uid2::envelope::{self, EnvelopeError};
use crate::engine::uid2::{ClientMode, IdentityScope, KeySet, KeysError};
use crate::stage::pipeline::{DEFAULT_KEY_SOURCE, KeyProvider, KeySnapshot};
use crate::support::clock::{fill_random, wall_clock_ms};

/// Sent as `X-UID2-Client-Version` (the operator uses it for metrics only).
pub const CLIENT_VERSION: &str = concat!("uid2-enricher-", env!("CARGO_PKG_VERSION"));

/// Longest error-body snippet kept in an error message.
const SNIPPET_CHARS: usize = 200;

/// Why one attempt to get keys failed. `Display` is a complete, secret-free sentence.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read keys file {}: {error}", path.display())]
    ReadFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "keys from {origin} cannot be used: {error} (expected what a key endpoint returns once decrypted: {{\"body\":{{\"keys\":[…],…}},\"status\":\"success\"}} or just the body)"
    )]
    Keys { origin: String, error: KeysError },
    #[error("POST {url} failed: {detail}")]
    Transport { url: String, detail: String },
    #[error("POST {url} returned HTTP {status}: {snippet}{hint}")]
    Http {
        url: String,
        status: u16,
        snippet: String,
        hint: &'static str,
    },
    #[error("POST {url}: {error}")]
    Envelope { url: String, error: EnvelopeError },
    #[error("POST {url}: the operator answered status {status:?}{message} instead of \"success\"")]
    NotSuccess {
        url: String,
        status: String,
        message: String,
    },
    #[error(
        "POST {url}: the decrypted response is not {{\"body\":…,\"status\":\"success\"}} JSON: {detail}"
    )]
    BadResponse { url: String, detail: String },
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
}

/// A snapshot of the key source's health, for metrics and `/readyz`. Never holds a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// `keys file /path` or `operator https://…`.
    pub source: String,
    /// A key set has been loaded at least once.
    pub ready: bool,
    /// Wall-clock ms of the last successful fetch (changed or not).
    pub last_success_ms: Option<i64>,
    /// Wall-clock ms when the set in use was published.
    pub last_change_ms: Option<i64>,
    /// The most recent failure (kept after a recovery; compare the times).
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Successful fetches.
    pub refreshes: u64,
    /// Key sets published (the first load included).
    pub changes: u64,
    /// Failed attempts, in total.
    pub failures: u64,
    /// Keys in the set in use (0 before the first load).
    pub key_count: usize,
    /// [`KeySet::generation`] of the set in use.
    pub generation: Option<u64>,
    /// When the last key of the set in use expires (ms); after it every token gets `keys_not_synced`.
    pub latest_expiry_ms: Option<i64>,
    /// How long since the keys were last confirmed (time since `last_success_ms`, at snapshot time).
    pub age: Option<Duration>,
}

struct Shared {
    tx: watch::Sender<Option<Arc<KeySet>>>,
    status: Mutex<KeyStatus>,
    refresh_now: Notify,
}

struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// The pipeline's view of the key source. Cheap to clone; the refresh task stops when the last clone is
/// dropped (or on [`KeyHandle::stop`]).
#[derive(Clone)]
pub struct KeyHandle {
    shared: Arc<Shared>,
    task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl KeyHandle {
    /// A handle on a fixed key set, with no refresh task (replay, tests, benchmarks).
    pub fn fixed(keys: Arc<KeySet>) -> KeyHandle {
        let now = wall_clock_ms();
        let status = KeyStatus {
            source: "fixed key set".to_string(),
            ready: true,
            last_success_ms: Some(now),
            last_change_ms: Some(now),
            refreshes: 1,
            changes: 1,
            key_count: keys.len(),
            generation: Some(keys.generation()),
            latest_expiry_ms: keys.latest_expiry_ms(),
            ..KeyStatus::default()
        };
        let (tx, _) = watch::channel(Some(keys));
        KeyHandle {
            shared: Arc::new(Shared {
                tx,
                status: Mutex::new(status),
                refresh_now: Notify::new(),
            }),
            task: Arc::new(AbortOnDrop(None)),
        }
    }

    /// The key set in use, if one has been loaded. Cheap: a read lock and an `Arc` clone.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.shared.tx.borrow().clone()
    }

    /// A receiver that wakes on every newly published key set (to invalidate a decrypt cache). The
    /// value present at subscription counts as seen.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<KeySet>>> {
        self.shared.tx.subscribe()
    }

    /// A key set has been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.shared.tx.borrow().is_some()
    }

    /// Waits until a key set has been loaded; returns it.
    pub async fn wait_ready(&self) -> Arc<KeySet> {
        let mut rx = self.shared.tx.subscribe();
        let keys = rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives as long as the handle");
        keys.clone().expect("waited for Some")
    }

    /// A snapshot of the source's health; `age` is computed from the wall clock now.
    pub fn status(&self) -> KeyStatus {
        let mut status = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        status.age = status
            .last_success_ms
            .map(|t| Duration::from_millis(u64::try_from(wall_clock_ms() - t).unwrap_or(0)));
        status
    }

    /// Starts a refresh now instead of at the next scheduled time (e.g. on SIGHUP). A failure still
    /// backs off as usual.
    pub fn refresh_now(&self) {
        self.shared.refresh_now.notify_one();
    }

    /// Stops the refresh task; the last key set stays available through this handle.
    pub fn stop(&self) {
        if let Some(handle) = &self.task.0 {
            handle.abort();
        }
    }
}

/// Every configured key source, each with its own refresh task, backoff and last good set. Cheap to
/// clone; the tasks stop with the last clone (or on [`KeyRing::stop`]).
#[derive(Clone, Debug)]
pub struct KeyRing {
    members: Arc<[RingMember]>,
    /// The sources are `[[uid2.key_sources]]` entries, one per scope (not the single `[uid2]` source).
    per_scope: bool,
}

#[derive(Clone, Debug)]
struct RingMember {
    name: String,
    /// `None` for the single `[uid2]` source, whose set answers tokens of every scope.
    scope: Option<IdentityScope>,
    handle: KeyHandle,
}

impl KeyRing {
    /// Starts a refresh task per source of `settings` on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(settings: &Uid2Settings) -> KeyRing {
        let members = settings
            .sources
            .iter()
            .map(|source: &KeySourceSettings| RingMember {
                name: source.name.clone(),
                scope: source.scope,
                handle: KeySource::spawn_for(
                    &source.name,
                    source.scope,
                    source.from.clone(),
                    settings.refresh.clone(),
                    settings.mode,
                ),
            })
            .collect::<Arc<[RingMember]>>();
        let per_scope = members.iter().any(|m| m.scope.is_some());
        KeyRing { members, per_scope }
    }

    /// The first source: the one whose set encrypts in the tokenize direction.
    pub fn primary(&self) -> Option<&KeyHandle> {
        self.members.first().map(|m| &m.handle)
    }

    /// Waits until every source has loaded a key set.
    pub async fn wait_ready(&self) {
        for member in self.members.iter() {
            member.handle.wait_ready().await;
        }
    }

    /// Each source's name and health, in configuration order.
    pub fn statuses(&self) -> Vec<(&str, KeyStatus)> {
        self.members
            .iter()
            .map(|m| (m.name.as_str(), m.handle.status()))
            .collect()
    }

    /// `name (keys file …)` for each source, for logs.
    pub fn describe(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{} ({})", m.name, m.handle.status().source))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Stops every refresh task; the last key sets stay available.
    pub fn stop(&self) {
        for member in self.members.iter() {
            member.handle.stop();
        }
    }
}

impl KeyProvider for KeyRing {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.primary().and_then(KeyHandle::current)
    }

    fn snapshot(&self) -> KeySnapshot {
        if !self.per_scope {
            return KeySnapshot::single(self.current());
        }
        let of = |scope| {
            self.members
                .iter()
                .find(|m| m.scope == Some(scope))
                .map(|m| m.handle.current())
        };
        KeySnapshot::per_scope(of(IdentityScope::Uid2), of(IdentityScope::Euid))
    }

    fn by_source(&self) -> Vec<(String, Option<Arc<KeySet>>)> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), m.handle.current()))
            .collect()
    }
}

/// The refresh task: fetches, publishes and schedules. Start it with [`KeySource::spawn`].
pub struct KeySource {
    fetcher: Fetcher,
    /// The source's name in the logs (`uid2` for the single `[uid2]` source).
    name: String,
    /// The scope this source serves: a set of another scope is refused. `None` takes any.
    scope: Option<IdentityScope>,
    settings: RefreshSettings,
    shared: Arc<Shared>,
    /// The bytes the set in use was parsed from, to skip republishing an unchanged set.
    last_json: Option<Vec<u8>>,
}

impl KeySource {
    /// Starts loading and refreshing keys on the current tokio runtime and returns the handle at once;
    /// the handle is not ready until the first load succeeds. `identity` picks the operator endpoint
    /// (`/v2/key/bidstream` or `/v2/key/sharing`).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(from: KeysFrom, settings: RefreshSettings, identity: ClientMode) -> KeyHandle {
        KeySource::spawn_for(DEFAULT_KEY_SOURCE, None, from, settings, identity)
    }

    /// [`KeySource::spawn`] for a source that serves one identity scope: a key set that declares another
    /// scope is a failed refresh (the set in use, if any, stays).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_for(
        name: &str,
        scope: Option<IdentityScope>,
        from: KeysFrom,
        settings: RefreshSettings,
        identity: ClientMode,
    ) -> KeyHandle {
        let source = from.describe();
        let (tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            tx,
            status: Mutex::new(KeyStatus {
                source,
                ..KeyStatus::default()
            }),
            refresh_now: Notify::new(),
        });
        let fetcher = Fetcher::new(from, identity, settings.request_timeout);
        let task = KeySource {
            fetcher,
            name: name.to_string(),
            scope,
            settings,
            shared: shared.clone(),
            last_json: None,
        };
        let join = tokio::spawn(task.run());
        KeyHandle {
            shared,
            task: Arc::new(AbortOnDrop(Some(join.abort_handle()))),
        }
    }

    async fn run(mut self) {
        let mut consecutive_failures: u32 = 0;
        loop {
            let wait = match self.refresh().await {
                Ok(()) => {
                    consecutive_failures = 0;
                    jittered(self.settings.interval, self.settings.jitter)
                }
                Err(error) => {
                    consecutive_failures = consecutive_failures.saturating_add(1);
                    let wait = backoff(&self.settings, consecutive_failures);
                    self.record_failure(&error, consecutive_failures, wait);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shared.refresh_now.notified() => {}
            }
        }
    }

    /// One attempt: fetch, parse, decide, publish. Success bookkeeping happens here.
    async fn refresh(&mut self) -> Result<(), String> {
        let json = self.fetcher.fetch_json().await.map_err(|e| e.to_string())?;
        let now = wall_clock_ms();
        let unchanged = self.last_json.as_deref() == Some(json.as_slice());
        let current = self.shared.tx.borrow().clone();
        let reuse = unchanged && current.is_some();
        let published = if reuse {
            current.clone().expect("checked")
        } else {
            let origin = self.fetcher.from.describe();
            let keys = KeySet::parse_json(&json)
                .map_err(|error| FetchError::Keys { origin, error }.to_string())?;
            if let Some(expected) = self.scope
                && keys.identity_scope != expected
            {
                return Err(format!(
                    "{} returned a key set whose identity_scope is {}, but this key source serves {}; check the source's scope and its base_url or keys_file",
                    self.fetcher.from.describe(),
                    keys.identity_scope.as_str(),
                    expected.as_str()
                ));
            }
            if !keys.is_valid(now) {
                if current.as_ref().is_some_and(|c| c.is_valid(now)) {
                    return Err(format!(
                        "{} returned a key set with no unexpired key ({} keys, latest expiry {}); keeping the previous key set",
                        self.fetcher.from.describe(),
                        keys.len(),
                        fmt_ms(keys.latest_expiry_ms())
                    ));
                }
                tracing::warn!(
                    key_source = %self.name,
                    source = %self.fetcher.from.describe(),
                    keys = keys.len(),
                    latest_expiry = %fmt_ms(keys.latest_expiry_ms()),
                    "loaded a key set with no unexpired key: every token of its scope will get keys_not_synced"
                );
            }
            let keys = Arc::new(keys);
            self.last_json = Some(json);
            self.shared.tx.send_replace(Some(keys.clone()));
            keys
        };
        let changed = !reuse;
        {
            let mut status = self.lock_status();
            status.ready = true;
            status.last_success_ms = Some(now);
            status.consecutive_failures = 0;
            status.refreshes += 1;
            if changed {
                status.changes += 1;
                status.last_change_ms = Some(now);
            }
            status.key_count = published.len();
            status.generation = Some(published.generation());
            status.latest_expiry_ms = published.latest_expiry_ms();
        }
        tracing::info!(
            key_source = %self.name,
            source = %self.fetcher.from.describe(),
            keys = published.len(),
            latest_expiry = %fmt_ms(published.latest_expiry_ms()),
            generation = published.generation(),
            changed,
            "Keys refreshed"
        );
        Ok(())
    }

    fn record_failure(&self, error: &str, consecutive: u32, retry_in: Duration) {
        let now = wall_clock_ms();
        let still_valid = self.shared.tx.borrow().as_ref().map(|k| k.is_valid(now));
        {
            let mut status = self.lock_status();
            status.last_error = Some(error.to_string());
            status.last_error_ms = Some(now);
            status.consecutive_failures = consecutive;
            status.failures += 1;
        }
        let in_use = match still_valid {
            None => "no key set loaded yet: the stage is not ready",
            Some(true) => "keeping the key set in use",
            Some(false) => {
                "keeping the key set in use, but all its keys have expired: tokens get keys_not_synced"
            }
        };
        tracing::warn!(
            key_source = %self.name,
            consecutive_failures = consecutive,
            retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
            "Key refresh failed: {error}; {in_use}"
        );
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, KeyStatus> {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fetches key JSON from one source. Holds the HTTP client (connection reuse) for operator mode.
pub struct Fetcher {
    from: KeysFrom,
    mode: ClientMode,
    client: Result<reqwest::Client, String>,
}

impl Fetcher {
    pub fn new(from: KeysFrom, mode: ClientMode, request_timeout: Duration) -> Fetcher {
        let client = match &from {
            KeysFrom::File(_) => Err("no HTTP client in file mode".to_string()),
            KeysFrom::Operator { .. } => {
                install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(request_timeout)
                    .connect_timeout(request_timeout)
                    .build()
                    .map_err(|e| error_chain(&e))
            }
        };
        Fetcher { from, mode, client }
    }

    /// The endpoint URL for operator mode.
    pub fn url(&self) -> Option<String> {
        match &self.from {
            KeysFrom::File(_) => None,
            KeysFrom::Operator { base_url, .. } => Some(endpoint_url(base_url, self.mode)),
        }
    }

    /// The decrypted key JSON (`{"body":…,"status":"success"}` from the operator, the file's bytes in file
    /// mode), not yet parsed into a [`KeySet`].
    ///
    /// # Errors
    /// I/O, HTTP, envelope or response-shape failures; see [`FetchError`].
    pub async fn fetch_json(&self) -> Result<Vec<u8>, FetchError> {
        match &self.from {
            KeysFrom::File(path) => read_file(path).await,
            KeysFrom::Operator {
                base_url,
                api_key,
                secret,
            } => {
                let client = self
                    .client
                    .as_ref()
                    .map_err(|e| FetchError::Client(e.clone()))?;
                let url = endpoint_url(base_url, self.mode);
                let mut nonce = [0u8; 8];
                let mut iv = [0u8; 12];
                fill_random(&mut nonce);
                fill_random(&mut iv);
                let request =
                    envelope::build_request(secret.expose(), b"", wall_clock_ms(), nonce, iv);
                let response = client
                    .post(&url)
                    .bearer_auth(api_key.expose())
                    .header("X-UID2-Client-Version", CLIENT_VERSION)
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(request.body_base64)
                    .send()
                    .await
                    .map_err(|e| FetchError::Transport {
                        url: url.clone(),
                        detail: error_chain(&e),
                    })?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| FetchError::Transport {
                    url: url.clone(),
                    detail: format!("reading the response body: {}", error_chain(&e)),
                })?;
                if status != reqwest::StatusCode::OK {
                    let hint = match status.as_u16() {
                        401 | 403 => {
                            " (check UID2_API_KEY and UID2_SECRET_KEY, and that the API key has the ID_READER or SHARER role)"
                        }
                        400 => {
                            " (the operator rejected the request envelope: check UID2_SECRET_KEY and the host clock)"
                        }
                        404 => " (check [uid2] base_url and mode)",
                        _ => "",
                    };
                    return Err(FetchError::Http {
                        url,
                        status: status.as_u16(),
                        snippet: snippet(&body, api_key.expose()),
                        hint,
                    });
                }
                let opened = envelope::open_response(secret.expose(), &body, request.nonce)
                    .map_err(|error| FetchError::Envelope {
                        url: url.clone(),
                        error,
                    })?;
                check_success(&url, &opened.json, api_key.expose())?;
                Ok(opened.json)
            }
        }
    }
}

/// Fetches and parses the key set once (tests, `uid2-enricher` commands that need keys once).
///
/// # Errors
/// As [`Fetcher::fetch_json`], plus a key JSON that [`KeySet::parse_json`] rejects.
pub async fn fetch_once(
    from: &KeysFrom,
    mode: ClientMode,
    request_timeout: Duration,
) -> Result<KeySet, FetchError> {
    let fetcher = Fetcher::new(from.clone(), mode, request_timeout);
    let json = fetcher.fetch_json().await?;
    KeySet::parse_json(&json).map_err(|error| FetchError::Keys {
        origin: from.describe(),
        error,
    })
}

/// `{base_url}/v2/key/bidstream` or `{base_url}/v2/key/sharing`.
pub fn endpoint_url(base_url: &str, mode: ClientMode) -> String {
    let path = match mode {
        ClientMode::Bidstream => "/v2/key/bidstream",
        ClientMode::Sharing => "/v2/key/sharing",
    };
    format!("{}{path}", base_url.trim_end_matches('/'))
}

/// The wait after `failures` consecutive failures (≥ 1): initial × 2^(failures−1), capped.
pub fn backoff(settings: &RefreshSettings, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    settings
        .retry_initial_backoff
        .saturating_mul(1u32 << doublings)
        .min(settings.retry_max_backoff)
}

/// `interval ± uniform(jitter)`, never below 1 ms.
pub fn jittered(interval: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return interval.max(Duration::from_millis(1));
    }
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX / 4);
    let offset = fastrand::u64(0..=jitter_ms.saturating_mul(2));
    let base = interval + Duration::from_millis(offset);
    base.saturating_sub(jitter).max(Duration::from_millis(1))
}

async fn read_file(path: &Path) -> Result<Vec<u8>, FetchError> {
    let owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || std::fs::read(&owned)).await;
    match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(FetchError::ReadFile {
            path: path.to_path_buf(),
            error,
        }),
        Err(join) => Err(FetchError::ReadFile {
            path: path.to_path_buf(),
            error: std::io::Error::other(join.to_string()),
        }),
    }
}

/// Checks `"status":"success"` without building a DOM of the (possibly large) body.
fn check_success(url: &str, json: &[u8], api_key: &str) -> Result<(), FetchError> {
    #[derive(serde::Deserialize)]
    struct Head {
        status: Option<String>,
        message: Option<String>,
    }
    let head: Head = serde_json::from_slice(json).map_err(|e| FetchError::BadResponse {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    match head.status.as_deref() {
        Some("success") => Ok(()),
        other => Err(FetchError::NotSuccess {
            url: url.to_string(),
            status: other.unwrap_or("<missing>").to_string(),
            message: head
                .message
                .map(|m| format!(" ({})", snippet(m.as_bytes(), api_key)))
                .unwrap_or_default(),
        }),
    }
}

/// A short, printable excerpt of an error body, with the API key masked should the server echo it.
fn snippet(body: &[u8], api_key: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let text = if api_key.is_empty() {
        text.into_owned()
    } else {
        text.replace(api_key, "<redacted>")
    };
    let mut out: String = text
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        "<empty body>".to_string()
    } else {
        trimmed.to_string()
    }
}

/// An error and its causes, `: `-separated (reqwest's `Display` alone omits the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads and parses a keys file at once (`validate`, `decrypt`, `replay`), naming the file and the fix in
/// the error.
pub fn load_keys_file(path: &Path) -> anyhow::Result<KeySet> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "reading keys file {}: give the decrypted response of /v2/key/bidstream or \
             /v2/key/sharing (`uid2-enricher gen --keys-out FILE` writes a test key set)",
            path.display()
        )
    })?;
    KeySet::parse_json(&text).with_context(|| {
        format!(
            "parsing keys file {}: it must hold what a key endpoint returns once decrypted, \
             {{\"body\":{{\"keys\":[…],…}},\"status\":\"success\"}} or just the body",
            path.display()
        )
    })
}

/// Reads several keys files (`--keys` given more than once): each set serves the identity scope its body
/// declares (`identity_scope`, UID2 when absent), and no two may declare the same scope.
pub fn load_keys_files(paths: &[PathBuf]) -> anyhow::Result<Vec<KeySet>> {
    let mut sets: Vec<(KeySet, &Path)> = Vec::with_capacity(paths.len());
    for path in paths {
        let set = load_keys_file(path)?;
        if let Some((_, first)) = sets
            .iter()
            .find(|(k, _)| k.identity_scope == set.identity_scope)
        {
            anyhow::bail!(
                "keys files {} and {} both hold {} keys: give one keys file per identity scope (a file's scope is its body's identity_scope field, UID2 when absent)",
                first.display(),
                path.display(),
                set.identity_scope.as_str()
            );
        }
        sets.push((set, path));
    }
    Ok(sets.into_iter().map(|(k, _)| k).collect())
}

/// Installs rustls' ring provider as the process default, once; an Err means one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial_ms: u64, max_ms: u64) -> RefreshSettings {
        RefreshSettings {
            retry_initial_backoff: Duration::from_millis(initial_ms),
            retry_max_backoff: Duration::from_millis(max_ms),
            ..RefreshSettings::default()
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = settings(1000, 60_000);
        let waits: Vec<u64> = (1..=9).map(|n| backoff(&s, n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [
                1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(backoff(&s, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_range() {
        let interval = Duration::from_secs(3600);
        let jitter = Duration::from_secs(300);
        for _ in 0..1000 {
            let w = jittered(interval, jitter);
            assert!(w >= interval - jitter && w <= interval + jitter, "{w:?}");
        }
        assert_eq!(jittered(interval, Duration::ZERO), interval);
        assert!(jittered(Duration::ZERO, Duration::from_millis(5)) >= Duration::from_millis(1));
    }

    #[test]
    fn snippet_is_short_printable_and_masks_the_key() {
        let body = format!("bad key sk-123\n{}", "x".repeat(500));
        let s = snippet(body.as_bytes(), "sk-123");
        assert!(s.starts_with("bad key <redacted> x"), "{s}");
        assert!(s.ends_with('…'));
        assert!(s.chars().count() <= SNIPPET_CHARS + 1);
        assert_eq!(snippet(b"  ", "k"), "<empty body>");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_url("https://op.example/", ClientMode::Bidstream),
            "https://op.example/v2/key/bidstream"
        );
        assert_eq!(
            endpoint_url("https://op.example", ClientMode::Sharing),
            "https://op.example/v2/key/sharing"
        );
    }

    #[test]
    fn not_success_is_reported() {
        let e = check_success("u", br#"{"status":"unauthorized","message":"nope"}"#, "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"unauthorized\" (nope)"), "{e}");
        assert!(check_success("u", br#"{"body":{},"status":"success"}"#, "k").is_ok());
        assert!(check_success("u", b"[1", "k").is_err());
    }
}

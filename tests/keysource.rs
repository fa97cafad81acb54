//! The key source against a fake UID2 operator that speaks the real v2 envelope (it opens the request
//! with the client secret, checks the bearer token, the client-version header and the timestamp, and
//! seals its answer with the request's nonce), and against keys files on disk. Real short durations:
//! 50 ms refreshes, 20 ms initial backoff.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use uid2_enricher::config::{KeysFrom, Redacted, RefreshSettings};
use uid2_enricher::stage::keysource::{self, FetchError, KeyHandle, KeySource};
use uid2_enricher::uid2::cipher::Secret;
use uid2_enricher::uid2::envelope::{self, EnvelopeError};
use uid2_enricher::uid2::{ClientMode, wire};

const CLIENT_SECRET_B64: &str = "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=";
const OTHER_SECRET_B64: &str = "Vt3FRIA2R3fNTqRY5hTsYsvnkq/Gtuw6pfNx94e0ZzA=";
const API_KEY: &str = "UID2-C-L-123-abcdef.ApiKeyValueThatMustNotLeak=";
const KEY_SECRET_1: &str = "hU3EwQBVFDgN2qXR2nznRSU4aXp9fevYOWPCZM3vHMg=";
const KEY_SECRET_2: &str = "Qy7cPCETehIDEfwdq7LBuib/S2Yj5itFdpgeVjbcDV0=";
/// 2050-01-01T00:00:00Z, in seconds.
const EXPIRES_2050: i64 = 2_524_608_000;

fn secret(b64: &str) -> Secret {
    Secret::new(wire::decode_standard(b64).unwrap().try_into().unwrap())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A bidstream key document with two keys `first_id` and `first_id + 1`.
fn bidstream_json(first_id: u32, expires_s: i64) -> String {
    format!(
        r#"{{"body":{{"max_bidstream_lifetime_seconds":259210,"identity_scope":"UID2","allow_clock_skew_seconds":1800,
        "keys":[{{"id":{first_id},"created":1735689600,"activates":1735689600,"expires":{expires_s},"secret":"{KEY_SECRET_1}"}},
                {{"id":{second},"created":1735689600,"activates":1735689600,"expires":{expires_s},"secret":"{KEY_SECRET_2}"}}],
        "site_data":[{{"id":9000,"domain_names":["example.com"]}}]}},"status":"success"}}"#,
        second = first_id + 1
    )
}

fn sharing_json() -> String {
    format!(
        r#"{{"body":{{"caller_site_id":9000,"master_keyset_id":9999999,"default_keyset_id":99,"token_expiry_seconds":"2592000",
        "identity_scope":"UID2","allow_clock_skew_seconds":1800,
        "keys":[{{"id":7,"keyset_id":9999999,"created":1735689600,"activates":1735689600,"expires":{EXPIRES_2050},"secret":"{KEY_SECRET_1}"}},
                {{"id":8,"keyset_id":99,"created":1735689600,"activates":1735689600,"expires":{EXPIRES_2050},"secret":"{KEY_SECRET_2}"}}]}},
        "status":"success"}}"#
    )
}

// ---------------------------------------------------------------------------------------------------------
// The fake operator
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    No,
    Status500,
    WrongNonce,
    Garbage,
    NotSuccess,
}

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    at: Instant,
    served: bool,
}

struct Fake {
    secret: Secret,
    api_key: String,
    keys_json: Mutex<String>,
    fail: Mutex<Fail>,
    hits: Mutex<Vec<Hit>>,
}

impl Fake {
    fn set_keys(&self, json: String) {
        *self.keys_json.lock().unwrap() = json;
    }
    fn set_fail(&self, fail: Fail) {
        *self.fail.lock().unwrap() = fail;
    }
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
    fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    UrlPath(kind): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let (status, text) = answer(&fake, &kind, &headers, &body);
    fake.hits.lock().unwrap().push(Hit {
        path: format!("/v2/key/{kind}"),
        at: Instant::now(),
        served: status == StatusCode::OK,
    });
    (status, text)
}

fn answer(fake: &Fake, kind: &str, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if kind != "bidstream" && kind != "sharing" {
        return (StatusCode::NOT_FOUND, "no such endpoint".into());
    }
    if header("authorization") != format!("Bearer {}", fake.api_key) {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"status":"unauthorized","message":"invalid api key"}"#.into(),
        );
    }
    if !header("x-uid2-client-version").starts_with("uid2-enricher-")
        || header("content-type") != "text/plain"
    {
        return (StatusCode::BAD_REQUEST, "bad headers".into());
    }
    let Ok((timestamp, nonce, payload)) = envelope::open_request(&fake.secret, body) else {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"status":"unauthorized","message":"cannot decrypt request"}"#.into(),
        );
    };
    if (now_ms() - timestamp).abs() > 120_000 || !payload.is_empty() {
        return (StatusCode::BAD_REQUEST, "stale request".into());
    }
    let mut iv = [0u8; 12];
    getrandom::fill(&mut iv).unwrap();
    let fail = *fake.fail.lock().unwrap();
    let json = fake.keys_json.lock().unwrap().clone();
    match fail {
        Fail::No => (
            StatusCode::OK,
            envelope::seal_response(&fake.secret, json.as_bytes(), now_ms(), nonce, iv),
        ),
        Fail::Status500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "operator exploded".into(),
        ),
        Fail::WrongNonce => {
            let mut other = nonce;
            other[0] ^= 0xff;
            (
                StatusCode::OK,
                envelope::seal_response(&fake.secret, json.as_bytes(), now_ms(), other, iv),
            )
        }
        Fail::Garbage => (StatusCode::OK, "<html>proxy error</html>".into()),
        Fail::NotSuccess => (
            StatusCode::OK,
            envelope::seal_response(
                &fake.secret,
                br#"{"status":"client_error","message":"keyset disabled"}"#,
                now_ms(),
                nonce,
                iv,
            ),
        ),
    }
}

/// Starts a fake operator on 127.0.0.1:0 serving `keys_json`; returns it and its base URL.
async fn start_operator(keys_json: String) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake {
        secret: secret(CLIENT_SECRET_B64),
        api_key: API_KEY.to_string(),
        keys_json: Mutex::new(keys_json),
        fail: Mutex::new(Fail::No),
        hits: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v2/key/{kind}", post(handle))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

fn operator(base_url: &str, secret_b64: &str, api_key: &str) -> KeysFrom {
    KeysFrom::Operator {
        base_url: base_url.to_string(),
        api_key: Redacted::new(api_key.to_string()),
        secret: Redacted::new(secret(secret_b64)),
    }
}

fn fast() -> RefreshSettings {
    RefreshSettings {
        interval: Duration::from_millis(50),
        jitter: Duration::ZERO,
        retry_initial_backoff: Duration::from_millis(20),
        retry_max_backoff: Duration::from_millis(160),
        request_timeout: Duration::from_secs(1),
    }
}

fn slow() -> RefreshSettings {
    RefreshSettings {
        interval: Duration::from_secs(30),
        ..fast()
    }
}

async fn ready(handle: &KeyHandle) {
    tokio::time::timeout(Duration::from_secs(1), handle.wait_ready())
        .await
        .unwrap_or_else(|_| panic!("not ready within 1 s: {:?}", handle.status()));
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(1500);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_no_secrets(text: &str) {
    for s in [
        API_KEY,
        CLIENT_SECRET_B64,
        OTHER_SECRET_B64,
        KEY_SECRET_1,
        KEY_SECRET_2,
    ] {
        assert!(!text.contains(s), "secret leaked: {text}");
    }
}

fn key_ids(handle: &KeyHandle) -> Vec<u32> {
    let mut ids: Vec<u32> = handle.current().unwrap().keys().map(|k| k.id).collect();
    ids.sort_unstable();
    ids
}

// ---------------------------------------------------------------------------------------------------------
// Operator mode
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn first_load_makes_the_source_ready() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        slow(),
        ClientMode::Bidstream,
    );
    ready(&handle).await;
    assert!(handle.is_ready());
    assert_eq!(key_ids(&handle), [1, 2]);
    let keys = handle.current().unwrap();
    let status = handle.status();
    assert!(status.ready);
    assert_eq!(status.refreshes, 1);
    assert_eq!(status.changes, 1);
    assert_eq!(status.failures, 0);
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.last_error, None);
    assert_eq!(status.key_count, 2);
    assert_eq!(status.generation, Some(keys.generation()));
    assert_eq!(status.latest_expiry_ms, Some(EXPIRES_2050 * 1000));
    assert!(status.age.unwrap() < Duration::from_secs(5));
    assert!(status.last_success_ms.unwrap() <= now_ms());
    assert_eq!(status.source, format!("operator {url}"));
    let hits = fake.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/v2/key/bidstream");
    assert!(
        hits[0].served,
        "the fake operator accepted the envelope and headers"
    );
    assert_no_secrets(&format!("{handle:?}"));
}

#[tokio::test]
async fn refresh_picks_up_a_changed_key_set_and_keeps_an_unchanged_one() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    ready(&handle).await;
    let first = handle.current().unwrap().generation();

    // Same JSON: refreshed, not republished (decrypt caches survive).
    wait_until("3 refreshes", || handle.status().refreshes >= 3).await;
    assert_eq!(handle.current().unwrap().generation(), first);
    assert_eq!(handle.status().changes, 1);

    let mut rx = handle.subscribe();
    fake.set_keys(bidstream_json(10, EXPIRES_2050));
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("a new key set within 1 s")
        .unwrap();
    let second = rx.borrow().as_ref().unwrap().generation();
    assert_ne!(second, first);
    assert_eq!(key_ids(&handle), [10, 11]);
    assert_eq!(handle.status().generation, Some(second));
    assert_eq!(handle.status().changes, 2);
}

#[tokio::test]
async fn a_failure_keeps_the_last_good_set_backs_off_and_recovers() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    ready(&handle).await;
    let generation = handle.current().unwrap().generation();

    fake.set_fail(Fail::Status500);
    let before = fake.hit_count();
    tokio::time::sleep(Duration::from_millis(650)).await;
    let failed: Vec<Hit> = fake.hits()[before..]
        .iter()
        .filter(|h| !h.served)
        .cloned()
        .collect();
    // Without backoff (every 20 ms) there would be ~30 attempts; with 20, 40, 80, 160, 160… about 6.
    assert!(
        (3..=9).contains(&failed.len()),
        "{} failed attempts in 650 ms",
        failed.len()
    );
    for (i, pair) in failed.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let expected = Duration::from_millis((20u64 << i).min(160));
        assert!(
            gap + Duration::from_millis(3) >= expected,
            "gap {i} was {gap:?}, expected at least {expected:?}"
        );
    }
    let status = handle.status();
    assert!(status.ready, "the last good set stays in use");
    assert_eq!(handle.current().unwrap().generation(), generation);
    assert!(status.consecutive_failures >= 3, "{status:?}");
    assert!(status.failures >= 3);
    let error = status.last_error.clone().unwrap();
    assert!(
        error.contains("returned HTTP 500: operator exploded"),
        "{error}"
    );
    assert!(error.contains("/v2/key/bidstream"), "{error}");
    assert_no_secrets(&error);

    fake.set_fail(Fail::No);
    wait_until("recovery", || handle.status().consecutive_failures == 0).await;
    let status = handle.status();
    assert!(status.last_success_ms >= status.last_error_ms);
    // The operator's keys did not change, so neither did the published set.
    assert_eq!(handle.current().unwrap().generation(), generation);
    assert_eq!(status.changes, 1);
}

#[tokio::test]
async fn failing_from_the_start_is_not_ready_until_the_operator_answers() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    fake.set_fail(Fail::Status500);
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    wait_until("two failures", || handle.status().consecutive_failures >= 2).await;
    assert!(!handle.is_ready());
    assert!(handle.current().is_none());
    let status = handle.status();
    assert!(!status.ready);
    assert_eq!(status.key_count, 0);
    assert!(status.last_error.unwrap().contains("HTTP 500"));

    fake.set_fail(Fail::No);
    ready(&handle).await;
    assert_eq!(key_ids(&handle), [1, 2]);
    assert_eq!(handle.status().consecutive_failures, 0);
}

#[tokio::test]
async fn a_wrong_secret_or_api_key_is_a_clear_error_and_never_ready() {
    let (_fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, OTHER_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    wait_until("a failure", || handle.status().failures >= 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!handle.is_ready());
    let error = handle.status().last_error.unwrap();
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(
        error.contains("check UID2_API_KEY and UID2_SECRET_KEY"),
        "{error}"
    );
    assert_no_secrets(&error);

    let e = keysource::fetch_once(
        &operator(&url, CLIENT_SECRET_B64, "wrong-api-key"),
        ClientMode::Bidstream,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Http { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("invalid api key"), "{e}");
    assert!(!e.to_string().contains("wrong-api-key"), "{e}");
}

#[tokio::test]
async fn bad_responses_are_rejected_with_the_reason() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let from = operator(&url, CLIENT_SECRET_B64, API_KEY);
    let fetch = || keysource::fetch_once(&from, ClientMode::Bidstream, Duration::from_secs(1));

    fake.set_fail(Fail::WrongNonce);
    let e = fetch().await.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::Envelope {
                error: EnvelopeError::NonceMismatch,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nonce does not match"), "{e}");

    fake.set_fail(Fail::Garbage);
    let e = fetch().await.unwrap_err();
    assert!(e.to_string().contains("not base64"), "{e}");

    fake.set_fail(Fail::NotSuccess);
    let e = fetch().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("status \"client_error\" (keyset disabled)"),
        "{e}"
    );

    fake.set_fail(Fail::No);
    fake.set_keys(r#"{"body":{"keys":[{"id":1}]},"status":"success"}"#.to_string());
    let e = fetch().await.unwrap_err();
    assert!(matches!(e, FetchError::Keys { .. }), "{e}");

    // Nothing listening.
    let closed = operator("http://127.0.0.1:9", CLIENT_SECRET_B64, API_KEY);
    let e = keysource::fetch_once(&closed, ClientMode::Bidstream, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Transport { .. }), "{e}");
    assert_no_secrets(&e.to_string());
}

#[tokio::test]
async fn sharing_mode_calls_the_sharing_endpoint() {
    let (fake, url) = start_operator(sharing_json()).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        slow(),
        ClientMode::Sharing,
    );
    ready(&handle).await;
    assert_eq!(fake.hits()[0].path, "/v2/key/sharing");
    let keys = handle.current().unwrap();
    assert_eq!(keys.caller_site_id, Some(9000));
    assert_eq!(keys.default_keyset_id, Some(99));
}

#[tokio::test]
async fn an_expired_key_set_does_not_replace_a_valid_one() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    ready(&handle).await;
    let generation = handle.current().unwrap().generation();
    fake.set_keys(bidstream_json(20, 1_600_000_000));
    wait_until("a failure", || handle.status().failures >= 1).await;
    let error = handle.status().last_error.unwrap();
    assert!(error.contains("no unexpired key"), "{error}");
    assert!(error.contains("keeping the previous key set"), "{error}");
    assert_eq!(handle.current().unwrap().generation(), generation);
}

#[tokio::test]
async fn refresh_now_and_dropping_the_handle() {
    let (fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        slow(),
        ClientMode::Bidstream,
    );
    ready(&handle).await;
    assert_eq!(fake.hit_count(), 1);
    handle.refresh_now();
    wait_until("a second request", || fake.hit_count() == 2).await;

    // The task stops with the last handle; a subscriber alone does not keep it running.
    let fast_handle = KeySource::spawn(
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    ready(&fast_handle).await;
    let rx = fast_handle.subscribe();
    let clone = fast_handle.clone();
    drop(fast_handle);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(fake.hit_count() > 3, "the clone keeps it alive");
    drop(clone);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let after_drop = fake.hit_count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.hit_count(),
        after_drop,
        "no requests after the last handle dropped"
    );
    assert!(rx.borrow().is_some(), "the last set stays readable");
}

// ---------------------------------------------------------------------------------------------------------
// File mode
// ---------------------------------------------------------------------------------------------------------

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "uid2-enricher-keysource-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces a file atomically, as an operator-side process should.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn file_mode_loads_and_reloads() {
    let dir = TempDir::new();
    let path = dir.0.join("keys.json");
    replace(&path, &bidstream_json(1, EXPIRES_2050));
    let handle = KeySource::spawn(KeysFrom::File(path.clone()), fast(), ClientMode::Bidstream);
    ready(&handle).await;
    assert_eq!(key_ids(&handle), [1, 2]);
    assert_eq!(
        handle.status().source,
        format!("keys file {}", path.display())
    );
    let first = handle.current().unwrap().generation();

    let mut rx = handle.subscribe();
    replace(&path, &bidstream_json(30, EXPIRES_2050));
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("reloaded within 1 s")
        .unwrap();
    assert_eq!(key_ids(&handle), [30, 31]);
    let second = handle.current().unwrap().generation();
    assert_ne!(first, second);

    // A broken file: the set in use stays, the error says what is wrong.
    replace(&path, "{\"body\": ");
    wait_until("a parse failure", || handle.status().failures >= 1).await;
    let error = handle.status().last_error.unwrap();
    assert!(error.contains("cannot be used"), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert_eq!(handle.current().unwrap().generation(), second);

    std::fs::remove_file(&path).unwrap();
    wait_until("a read failure", || {
        handle
            .status()
            .last_error
            .is_some_and(|e| e.contains("cannot read keys file"))
    })
    .await;
    assert!(handle.is_ready());
    assert_no_secrets(&format!("{:?}", handle.status()));
}

#[tokio::test]
async fn file_mode_missing_at_start_retries_until_the_file_appears() {
    let dir = TempDir::new();
    let path = dir.0.join("later.json");
    let handle = KeySource::spawn(KeysFrom::File(path.clone()), fast(), ClientMode::Bidstream);
    wait_until("a failure", || handle.status().failures >= 2).await;
    assert!(!handle.is_ready());
    assert!(
        handle
            .status()
            .last_error
            .unwrap()
            .contains("cannot read keys file")
    );
    replace(&path, &bidstream_json(5, EXPIRES_2050));
    ready(&handle).await;
    assert_eq!(key_ids(&handle), [5, 6]);
}

#[tokio::test]
async fn fetch_once_reads_a_file() {
    let keys = keysource::fetch_once(
        &KeysFrom::File(PathBuf::from("config/demo-keys.json")),
        ClientMode::Bidstream,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(keys.len(), 2);
    let e = keysource::fetch_once(
        &KeysFrom::File(PathBuf::from("config/none.json")),
        ClientMode::Bidstream,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read keys file config/none.json"),
        "{e}"
    );
}

#[test]
fn a_fixed_handle_is_ready_without_a_runtime() {
    let keys = uid2_enricher::uid2::KeySet::parse_json(bidstream_json(1, EXPIRES_2050).as_bytes())
        .unwrap();
    let handle = KeyHandle::fixed(Arc::new(keys));
    assert!(handle.is_ready());
    assert_eq!(handle.status().key_count, 2);
    assert_eq!(key_ids(&handle), [1, 2]);
}

/// A source that serves one scope refuses a key set of another (an EUID source pointed at the UID2
/// operator by mistake): never ready on it, the reason named, and the refusal retried as a failure.
#[tokio::test]
async fn a_source_refuses_a_key_set_of_another_scope() {
    let (_fake, url) = start_operator(bidstream_json(1, EXPIRES_2050)).await;
    let handle = KeySource::spawn_for(
        "euid",
        Some(uid2_enricher::uid2::IdentityScope::Euid),
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        fast(),
        ClientMode::Bidstream,
    );
    wait_until("two refused loads", || handle.status().failures >= 2).await;
    assert!(!handle.is_ready());
    let error = handle.status().last_error.unwrap();
    assert!(
        error.contains("identity_scope is UID2") && error.contains("serves EUID"),
        "{error}"
    );
    // The same operator for a UID2 source is fine.
    let uid2 = KeySource::spawn_for(
        "uid2",
        Some(uid2_enricher::uid2::IdentityScope::Uid2),
        operator(&url, CLIENT_SECRET_B64, API_KEY),
        slow(),
        ClientMode::Bidstream,
    );
    ready(&uid2).await;
}

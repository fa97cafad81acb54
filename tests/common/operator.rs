//! A fake UID2 operator for stage-level tests: `POST /v2/key/{bidstream,sharing}` speaking the real v2
//! envelope (it opens the request with the client secret, checks the bearer token, and seals the key
//! document with the request's nonce), which can be taken down (503) and brought back, and whose key
//! document can be replaced. `tests/keysource.rs` tests the key source itself against a stricter one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use uid2_enricher::uid2::cipher::Secret;
use uid2_enricher::uid2::{envelope, wire};

pub struct FakeOperator {
    secret: Secret,
    api_key: String,
    keys_json: Mutex<String>,
    up: AtomicBool,
    /// Key documents served.
    pub served: AtomicU64,
    /// Requests answered 503 while down.
    pub refused: AtomicU64,
}

impl FakeOperator {
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
    pub fn set_keys(&self, json: String) {
        *self.keys_json.lock().unwrap() = json;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn handle(
    State(fake): State<Arc<FakeOperator>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if !fake.up.load(Ordering::SeqCst) {
        fake.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "operator down".into());
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if bearer != format!("Bearer {}", fake.api_key) {
        return (StatusCode::UNAUTHORIZED, "invalid api key".into());
    }
    let Ok((_, nonce, _)) = envelope::open_request(&fake.secret, &body) else {
        return (StatusCode::UNAUTHORIZED, "cannot decrypt request".into());
    };
    let mut iv = [0u8; 12];
    getrandom::fill(&mut iv).unwrap();
    let json = fake.keys_json.lock().unwrap().clone();
    fake.served.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::OK,
        envelope::seal_response(&fake.secret, json.as_bytes(), now_ms(), nonce, iv),
    )
}

/// Starts a fake operator on 127.0.0.1:0, down or up; returns it and its base URL.
pub async fn start(
    secret_b64: &str,
    api_key: &str,
    keys_json: String,
    up: bool,
) -> (Arc<FakeOperator>, String) {
    let secret = Secret::new(
        wire::decode_standard(secret_b64)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let fake = Arc::new(FakeOperator {
        secret,
        api_key: api_key.to_string(),
        keys_json: Mutex::new(keys_json),
        up: AtomicBool::new(up),
        served: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v2/key/{kind}", post(handle))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

/// `keys_json` (a key-endpoint document) with every key's `expires` set to `expires_s`.
pub fn with_expiry(keys_json: &str, expires_s: i64) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(keys_json).unwrap();
    for key in doc["body"]["keys"].as_array_mut().unwrap() {
        key["expires"] = serde_json::json!(expires_s);
    }
    doc.to_string()
}

//! The stage's HTTP endpoints on `[server] listen` (axum): `/metrics` (Prometheus text), `/healthz` (the
//! process is alive and not failing), `/readyz` (keys loaded, the opt-out set caught up with its topic,
//! the stage consuming) and the opt-out webhook `GET|POST /optout` (bearer token from
//! `UID2_OPTOUT_TOKEN`; answers 200 only once the opt-outs are acknowledged by the opt-out topic).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::engine::optout::{self, LiveOptOuts, OptOutRecord, OptOutTimeError};
use crate::stage::pipeline::KeyProvider;
use crate::support::metrics::{KeySourceLabel, Metrics, OutcomeLabel};
use crate::support::secret::Redacted;

/// Writes opt-outs where every instance reads them (the opt-out topic) and resolves once they are
/// acknowledged. A trait so the webhook can be tested without a broker.
pub trait OptOutPublisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        records: &'a [OptOutRecord],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The opt-out side of the server: the live set, whether it has caught up, and the webhook.
pub struct OptOutEndpoint {
    pub store: Arc<LiveOptOuts>,
    /// Set once the set holds what the topic held at start.
    pub caught_up: Arc<AtomicBool>,
    /// `UID2_OPTOUT_TOKEN`; without it the webhook answers 503 (disabled).
    pub token: Option<Redacted<String>>,
    /// Without it the webhook answers 503 (disabled).
    pub publisher: Option<Arc<dyn OptOutPublisher>>,
    /// The wall clock in Unix milliseconds (opt-out times more than a day ahead are refused).
    pub now_ms: fn() -> i64,
}

impl OptOutEndpoint {
    /// No webhook, an empty set that counts as caught up: for tools and tests without opt-outs.
    pub fn disabled() -> OptOutEndpoint {
        OptOutEndpoint {
            store: Arc::new(LiveOptOuts::new()),
            caught_up: Arc::new(AtomicBool::new(true)),
            token: None,
            publisher: None,
            now_ms: crate::support::clock::wall_clock_ms,
        }
    }
}

/// What the endpoints report on.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub keys: Arc<dyn KeyProvider>,
    /// Set once the consumer has subscribed; cleared when the stage stops.
    pub consuming: Arc<AtomicBool>,
    /// Set when the stage hit a fatal error.
    pub failed: Arc<AtomicBool>,
    pub optouts: Arc<OptOutEndpoint>,
}

/// The routes, for mounting in tests or next to other routes.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/optout", get(optout_get).post(optout_post))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled. Returns the bound address through `bound` before serving, so
/// `127.0.0.1:0` works in tests.
pub async fn serve(
    listen: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("binding the HTTP server to {listen}: {e} (change [server] listen)")
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP server listening (/metrics, /healthz, /readyz, /optout).");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    for (name, keys) in state.keys.by_source() {
        if let Some(latest) = keys.and_then(|k| k.latest_expiry_ms()) {
            state
                .metrics
                .key_set_latest_expiry_seconds
                .get_or_create(&KeySourceLabel { key_source: name })
                .set(latest / 1000);
        }
    }
    state
        .metrics
        .optout_set_size
        .set(state.optouts.store.len() as i64);
    state.metrics.update_process();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.failed.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "failed: the stage stopped on a fatal error (see the log)\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.failed.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the stage stopped on a fatal error\n".to_string(),
        );
    }
    let by_source = state.keys.by_source();
    let waiting: Vec<&str> = by_source
        .iter()
        .filter(|(_, keys)| keys.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if !waiting.is_empty() {
        let which = if by_source.len() > 1 {
            format!(" from key source {}", waiting.join(", "))
        } else {
            String::new()
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no key set loaded yet{which}\n"),
        );
    }
    if !state.optouts.caught_up.load(Ordering::Relaxed) {
        // Most often because no Kafka client can connect: say why when librdkafka said.
        let why = crate::stage::kafka::client_log()
            .last_error()
            .map(|e| format!(" (last Kafka client error: {e})"))
            .unwrap_or_default();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the opt-out set is still loading from its topic{why}\n"),
        );
    }
    if !state.consuming.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not consuming yet\n".to_string(),
        );
    }
    // A credential or certificate that stops working while the stage runs (a rotated password, an
    // expired certificate): nothing can be read or written, whatever the other checks say.
    if let Some(e) = crate::stage::kafka::client_log().authentication_failing(AUTH_FAILURE_WINDOW) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: Kafka authentication or TLS is failing ({e})\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// How long after the last Kafka authentication or TLS failure `/readyz` keeps answering 503.
const AUTH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Seconds an opt-out time may be ahead of this instance's clock.
const MAX_AHEAD_SECS: i64 = 86_400;

fn answer(state: &ServerState, outcome: &'static str, code: StatusCode, body: String) -> Response {
    state
        .metrics
        .optout_webhook_requests
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    let mut response = (code, body).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Equal in time independent of where the two differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The checks every webhook call passes before its input is looked at: enabled, then authenticated.
fn admit(
    state: &ServerState,
    headers: &HeaderMap,
) -> Result<Arc<dyn OptOutPublisher>, Box<Response>> {
    let endpoint = &state.optouts;
    let (Some(token), Some(publisher)) = (&endpoint.token, &endpoint.publisher) else {
        return Err(Box::new(answer(
            state,
            "disabled",
            StatusCode::SERVICE_UNAVAILABLE,
            "opt-out webhook disabled: set UID2_OPTOUT_TOKEN for this instance\n".into(),
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.expose().as_bytes()) => Ok(publisher.clone()),
        Some(_) => Err(Box::new(answer(
            state,
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "unauthorized: wrong bearer token\n".into(),
        ))),
        None => Err(Box::new(answer(
            state,
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer <UID2_OPTOUT_TOKEN>\n".into(),
        ))),
    }
}

/// Refuses times too far ahead of the clock; then writes, waits for the topic's acknowledgement, and
/// applies locally (the follower will read the same records back; inserting is idempotent).
async fn accept(
    state: &ServerState,
    publisher: Arc<dyn OptOutPublisher>,
    mut records: Vec<OptOutRecord>,
) -> Response {
    let endpoint = &state.optouts;
    let now_secs = (endpoint.now_ms)() / 1000;
    if let Some((index, r)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| i64::from(r.secs) > now_secs + MAX_AHEAD_SECS)
    {
        let e = OptOutTimeError::InTheFuture {
            secs: i64::from(r.secs),
            now_secs,
        };
        let which = if records.len() > 1 {
            format!("item {index}: ")
        } else {
            String::new()
        };
        return answer(
            state,
            "invalid",
            StatusCode::BAD_REQUEST,
            format!("{which}the opt-out time {e}\n"),
        );
    }
    // The topic keeps the last record per raw UID2: write the latest time this instance knows, so an
    // opt-out delivered twice out of order cannot move the kept time back.
    for r in &mut records {
        if let Some(known) = endpoint.store.get(&r.raw_uid2) {
            r.secs = r.secs.max(known);
        }
    }
    match publisher.publish(&records).await {
        Ok(()) => {
            for r in &records {
                endpoint.store.insert(&r.raw_uid2, r.secs);
            }
            answer(
                state,
                "accepted",
                StatusCode::OK,
                format!("ok: {} opt-out(s) stored\n", records.len()),
            )
        }
        Err(e) => {
            tracing::warn!(records = records.len(), error = %e, "Opt-out webhook: not acknowledged by the opt-out topic; answered 503.");
            answer(
                state,
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not stored, retry: {e}\n"),
            )
        }
    }
}

/// `GET /optout?user=<raw UID2>&optouttime=<unix seconds>`: the UID2 service's call.
async fn optout_get(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let publisher = match admit(&state, &headers) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let (Some(user), Some(time)) = (params.get("user"), params.get("optouttime")) else {
        return answer(
            &state,
            "invalid",
            StatusCode::BAD_REQUEST,
            "expected ?user=<raw UID2>&optouttime=<unix seconds>\n".into(),
        );
    };
    // A `+` of base64 sent unescaped in a query string arrives as a space; base64 has no spaces.
    let user = user.trim().replace(' ', "+");
    match optout::parse_record(&user, time) {
        Ok(record) => accept(&state, publisher, vec![record]).await,
        Err(e) => answer(&state, "invalid", StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// `POST /optout` with a JSON array of `{"user":…,"optouttime":…}`: taken whole or refused whole.
async fn optout_post(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let publisher = match admit(&state, &headers) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    match optout::parse_json_batch(&body) {
        Ok(records) => accept(&state, publisher, records).await,
        Err(e) => answer(&state, "invalid", StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

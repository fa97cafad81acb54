//! The stage's HTTP endpoints on `[server] listen` (axum): `/metrics` (Prometheus text), `/healthz` (the
//! process is alive and not failing) and `/readyz` (keys loaded and the stage consuming). Depends on
//! axum, tokio and the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::KeyProvider;

/// What the endpoints report on.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub keys: Arc<dyn KeyProvider>,
    /// Set once the consumer has subscribed; cleared when the stage stops.
    pub consuming: Arc<AtomicBool>,
    /// Set when the stage hit a fatal error.
    pub failed: Arc<AtomicBool>,
}

/// The routes, for mounting in tests or next to other routes.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
    tracing::info!(%addr, "HTTP server listening (/metrics, /healthz, /readyz).");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    if let Some(keys) = state.keys.current()
        && let Some(latest) = keys.latest_expiry_ms()
    {
        state
            .metrics
            .key_set_latest_expiry_seconds
            .set(latest / 1000);
    }
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
    if state.keys.current().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no key set loaded yet\n".to_string(),
        );
    }
    if !state.consuming.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not consuming yet\n".to_string(),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

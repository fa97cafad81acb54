//! Turning SIGTERM and SIGINT into a cancellation the stage observes: it then stops consuming, drains,
//! commits and flushes. A second signal exits at once. Depends on tokio.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT; exits the process with status 130 on a second one.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "Signal received: draining, committing and flushing (a second signal exits at once)."
        );
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting without draining.");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

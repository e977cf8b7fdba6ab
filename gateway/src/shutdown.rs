//! Graceful shutdown: SIGINT or SIGTERM cancel one token; every task selects
//! on it, and dropped senders let consumers drain and finish.

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

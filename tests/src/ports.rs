//! Free loopback ports for servers the tests start.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A port that was free a moment ago on 127.0.0.1. The small race between
/// closing the probe and the server binding is accepted: tests bind port 0
/// themselves wherever the server under test lets them.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_for_listener(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("nothing listens at {addr} after {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

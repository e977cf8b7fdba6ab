//! Free loopback ports for servers the tests start.

use std::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1. The small race between
/// closing the probe and the server binding is accepted: tests bind port 0
/// themselves wherever the server under test lets them.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

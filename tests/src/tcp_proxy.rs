//! A TCP proxy in front of a real server, for fault injection: it passes
//! traffic through, or makes the server look unreachable without stopping
//! it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards bytes both ways.
    PassThrough,
    /// Closes every connection at once, as a crashed or restarting server
    /// would.
    Refuse,
    /// Accepts connections and never answers (a dead route, a firewall
    /// dropping packets): clients run into their timeouts.
    Blackhole,
    /// Forwards bytes both ways, the client's at most this many a second
    /// (a thin link to a remote server: a request takes longer the larger
    /// it is).
    Slow { client_bytes_per_sec: u64 },
    /// Forwards bytes both ways, each way this many milliseconds late (a
    /// server on another site: every request waits a round trip of twice
    /// this for its answer, whatever its size).
    Delay { one_way_ms: u64 },
}

/// Changing the mode also cuts the connections already forwarded (in
/// [`ProxyMode::PassThrough`], [`ProxyMode::Slow`] or
/// [`ProxyMode::Delay`]), so a client's pooled keep-alive connection cannot
/// slip past a fault.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    /// Bumped by [`TcpProxy::cut`]: every forwarded connection ends.
    cuts: watch::Sender<u64>,
    /// Bytes the clients sent, counted when their connection ends.
    bytes_to_upstream: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(ProxyMode::PassThrough);
        let (cuts, _) = watch::channel(0);
        let modes = mode.clone();
        let cut_signals = cuts.clone();
        let bytes_to_upstream = Arc::new(AtomicU64::new(0));
        let counted = bytes_to_upstream.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(
                    client,
                    upstream,
                    modes.subscribe(),
                    cut_signals.subscribe(),
                    counted.clone(),
                ));
            }
        });
        Ok(Self {
            addr,
            mode,
            cuts,
            bytes_to_upstream,
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Bytes clients sent upstream over the connections passed through
    /// that have ended (both sides closed); a connection cut or switched
    /// off midway is not counted.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.bytes_to_upstream.load(Ordering::Relaxed)
    }

    /// Closes every connection forwarded so far, as a network blip or a
    /// firewall's reset would; new connections pass as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Dropping the sender ends every connection task (see `serve`).
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    mut cuts: watch::Receiver<u64>,
    bytes_to_upstream: Arc<AtomicU64>,
) {
    cuts.mark_unchanged();
    let current = *mode.borrow_and_update();
    match current {
        ProxyMode::Refuse => {}
        ProxyMode::Blackhole => {
            // Read and discard until the client gives up or the mode changes;
            // the connection then closes without an answer.
            let mut sink = [0u8; 4096];
            loop {
                tokio::select! {
                    read = client.read(&mut sink) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    _ = mode.changed() => break,
                }
            }
        }
        ProxyMode::PassThrough | ProxyMode::Slow { .. } | ProxyMode::Delay { .. } => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            // Until the bytes stop, the mode changes or the connections are
            // cut; only a connection that ended by itself is counted.
            tokio::select! {
                sent = forward(client, server, current) => {
                    if let Some(sent) = sent {
                        bytes_to_upstream.fetch_add(sent, Ordering::Relaxed);
                    }
                }
                _ = wait_until_not(&mut mode, current) => {}
                _ = cuts.changed() => {}
            }
        }
    }
}

/// Forwards both ways as `mode` says (a forwarding mode) until both sides
/// have closed; returns the bytes the client sent, `None` after an error.
async fn forward(mut client: TcpStream, mut server: TcpStream, mode: ProxyMode) -> Option<u64> {
    match mode {
        ProxyMode::Slow {
            client_bytes_per_sec,
        } => {
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let upstream_slowly = async {
                let mut chunk = [0u8; 1024];
                let mut sent = 0u64;
                loop {
                    let n = match from_client.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(std::time::Duration::from_secs_f64(
                        n as f64 / client_bytes_per_sec.max(1) as f64,
                    ))
                    .await;
                    if to_server.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                }
                let _ = to_server.shutdown().await;
                sent
            };
            let downstream = tokio::io::copy(&mut from_server, &mut to_client);
            Some(tokio::join!(upstream_slowly, downstream).0)
        }
        ProxyMode::Delay { one_way_ms } => {
            let delay = std::time::Duration::from_millis(one_way_ms);
            let (from_client, to_client) = client.into_split();
            let (from_server, to_server) = server.into_split();
            let (sent, _) = tokio::join!(
                forward_late(from_client, to_server, delay),
                forward_late(from_server, to_client, delay),
            );
            Some(sent)
        }
        ProxyMode::PassThrough => tokio::io::copy_bidirectional(&mut client, &mut server)
            .await
            .ok()
            .map(|(sent, _)| sent),
        // Not forwarding modes (`serve` handles them without a server).
        ProxyMode::Refuse | ProxyMode::Blackhole => None,
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, and
/// returns the bytes copied. Reading goes on while earlier chunks wait,
/// as on a long link: the delay is latency, not a lower bandwidth.
async fn forward_late(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) -> u64 {
    let (chunks, mut due) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = tokio::time::Instant::now() + delay;
                    if chunks.send((at, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `chunks` ends the writer once it has written the rest.
    };
    let write = async move {
        let mut sent = 0u64;
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return sent;
            }
            sent += chunk.len() as u64;
        }
        let _ = to.shutdown().await;
        sent
    };
    tokio::join!(read, write).1
}

async fn wait_until_not(mode: &mut watch::Receiver<ProxyMode>, current: ProxyMode) {
    // An error means the proxy is gone: stop forwarding too.
    let _ = mode.wait_for(|m| *m != current).await;
}

//! [`TcpProxy`]: an in-process TCP proxy between clients and the service whose
//! connections can be cut on demand, to exercise the client's reconnects.
//!
//! ```text
//! client ──▶ 127.0.0.1:<proxy port> ──▶ upstream (the service)
//!            cut():      close every open connection (RST), refuse new ones
//!            restore():  listen again on the same port
//!            cut_next_after(n): the next connection is closed after n bytes
//!                        went from the service to the client (mid-stream)
//! ```
//!
//! Invariants:
//! - The proxy keeps its port for its whole life: after a cut it listens
//!   again on the same address, so a client configured once reconnects to it.
//! - While cut, the port is closed (connections are refused, not accepted and
//!   dropped), and no byte of an old connection is forwarded any more.
//! - Everything the proxy runs is aborted when it drops.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// What the accept loop and the connections share with the proxy.
#[derive(Default)]
struct Shared {
    /// Open connections (finished ones are pruned lazily).
    connections: Mutex<Vec<Connection>>,
    /// Connections accepted since the start.
    accepted: AtomicU64,
    /// Bytes forwarded from the service to clients since the start.
    bytes_down: AtomicU64,
    /// When set, the next accepted connection is closed after this many bytes
    /// from the service (then it is cleared).
    next_limit: Mutex<Option<u64>>,
    /// Connections closed by a byte limit.
    limited: AtomicU64,
}

struct Connection {
    task: AbortHandle,
    /// The client side, to reset it on a cut; the forwarding task owns it, so
    /// it closes when the task ends.
    client: Weak<TcpStream>,
}

/// A cuttable TCP proxy. See the module docs.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let mut proxy = TcpProxy {
            addr,
            upstream,
            shared: Arc::new(Shared::default()),
            accept: None,
        };
        proxy.spawn_accept(listener);
        Ok(proxy)
    }

    fn spawn_accept(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        let upstream = self.upstream;
        self.accept = Some(tokio::spawn(accept_loop(listener, upstream, shared)));
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a server URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.accept.is_none()
    }

    /// Closes every open connection with a reset and stops listening, so new
    /// connections are refused until [`restore`](Self::restore). Returns how
    /// many open connections were cut.
    pub fn cut(&mut self) -> usize {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        let mut cut = 0;
        for c in connections {
            if !c.task.is_finished() {
                cut += 1;
                // A zero linger makes the close send RST, as a broken network
                // path would surface to the client.
                if let Some(client) = c.client.upgrade() {
                    let _ = client.set_zero_linger();
                }
            }
            c.task.abort();
        }
        cut
    }

    /// Listens again on the same address. Retries briefly while the kernel
    /// still holds the port.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..50 {
            match listen(self.addr) {
                Ok(listener) => {
                    self.spawn_accept(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context(format!("listening again on {}", self.addr)))
    }

    /// Closes the next connection the proxy accepts once `bytes` bytes went
    /// from the service to the client: a cut in the middle of a stream.
    pub fn cut_next_after(&self, bytes: u64) {
        *lock(&self.shared.next_limit) = Some(bytes);
    }

    /// Whether a [`cut_next_after`](Self::cut_next_after) limit is still
    /// waiting for its connection.
    pub fn limit_pending(&self) -> bool {
        lock(&self.shared.next_limit).is_some()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed by a byte limit since the start.
    pub fn limited(&self) -> u64 {
        self.shared.limited.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the service to clients since the start.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let mut connections = lock(&self.shared.connections);
        connections.retain(|c| !c.task.is_finished());
        connections.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A listener with SO_REUSEADDR, so the port can be bound again right after
/// a cut while old connections linger in the kernel.
fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(128)?)
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::debug!(error = %e, "proxy accept failed");
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let limit = lock(&shared.next_limit).take();
        let client = Arc::new(client);
        let weak = Arc::downgrade(&client);
        let task = tokio::spawn(forward(client, upstream, limit, shared.clone()));
        let mut connections = lock(&shared.connections);
        connections.retain(|c| !c.task.is_finished());
        connections.push(Connection {
            task: task.abort_handle(),
            client: weak,
        });
    }
}

/// Forwards one connection until either side closes or the byte limit from
/// the service is reached.
async fn forward(
    client: Arc<TcpStream>,
    upstream: SocketAddr,
    limit: Option<u64>,
    shared: Arc<Shared>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        tracing::debug!(%upstream, "proxy cannot reach the upstream");
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            client.readable().await?;
            let n = match client.try_read(&mut buf) {
                Ok(0) => return Ok::<(), std::io::Error>(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let n = match limit {
                Some(limit) => (n as u64).min(limit - sent) as usize,
                None => n,
            };
            write_all(&client, &buf[..n]).await?;
            sent += n as u64;
            shared.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
            if limit.is_some_and(|l| sent >= l) {
                shared.limited.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_zero_linger();
                return Ok(());
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

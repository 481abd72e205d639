//! [`HoldProxy`]: a TCP proxy between clients and the service that can hold
//! back everything the service sends and then reset every connection — a
//! reply lost on its way back after the request reached the service.
//!
//! ```text
//! client ──▶ 127.0.0.1:<proxy port> ──▶ upstream (the service)
//!   hold_replies():      client → service bytes still flow;
//!                        service → client bytes are kept back
//!   drop_connections():  every open connection is reset; what was kept
//!                        back is discarded, never delivered; connections
//!                        accepted afterwards forward both ways
//! ```
//!
//! Invariants:
//! - from the moment [`HoldProxy::hold_replies`] returns until
//!   [`HoldProxy::drop_connections`], no byte the service sends on any
//!   connection reaches a client, and held bytes are never delivered;
//! - the proxy listens on the same port for its whole life;
//! - everything the proxy runs is aborted when it drops.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the accept loop and the connections share with the proxy.
struct Shared {
    /// Whether bytes from the service are kept back.
    holding: AtomicBool,
    /// Bumped by every reset; a connection ends when it changes.
    generation: watch::Sender<u64>,
    /// Connections accepted since the start.
    accepted: AtomicU64,
    /// Bytes forwarded from clients to the service since the start.
    bytes_up: AtomicU64,
    /// Bytes from the service kept back since the start.
    bytes_held: AtomicU64,
}

/// A proxy that can lose replies. See the module docs.
pub struct HoldProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl HoldProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<HoldProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            holding: AtomicBool::new(false),
            generation,
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_held: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(HoldProxy {
            addr,
            shared,
            accept,
        })
    }

    /// The proxy as a server URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, keeps back every byte the service sends to clients.
    pub fn hold_replies(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// Resets every open connection (discarding what was kept back) and
    /// stops holding: connections accepted from now on forward both ways.
    pub fn drop_connections(&self) {
        // The generation changes first: a connection that sees `holding`
        // off after this also sees the new generation, so it resets instead
        // of forwarding.
        self.shared.generation.send_modify(|g| *g += 1);
        self.shared.holding.store(false, Ordering::SeqCst);
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from clients to the service since the start.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes from the service kept back since the start.
    pub fn bytes_held(&self) -> u64 {
        self.shared.bytes_held.load(Ordering::SeqCst)
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it aborts them.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::debug!(error = %e, "proxy accept failed");
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let generation = shared.generation.subscribe();
        connections.spawn(forward(client, upstream, shared.clone(), generation));
    }
}

/// Forwards one connection until either side closes or the generation
/// changes (then the client side is reset).
async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut generation: watch::Receiver<u64>,
) {
    let mine = *generation.borrow_and_update();
    let Ok(server) = TcpStream::connect(upstream).await else {
        tracing::debug!(%upstream, "proxy cannot reach the upstream");
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let mut held = Vec::new();
    loop {
        tokio::select! {
            _ = generation.changed() => break,
            n = client_read.read(&mut up) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if server_write.write_all(&up[..n]).await.is_err() {
                    return;
                }
                shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
            }
            n = server_read.read(&mut down) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let holding = shared.holding.load(Ordering::SeqCst);
                if *generation.borrow() != mine {
                    break;
                }
                if holding {
                    held.extend_from_slice(&down[..n]);
                    shared.bytes_held.fetch_add(n as u64, Ordering::SeqCst);
                } else if client_write.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    tracing::debug!(
        held = held.len(),
        "proxy resets a connection, discarding what it held"
    );
    if let Ok(stream) = client_read.reunite(client_write) {
        // A zero linger makes the close send RST, as a broken path would.
        let _ = stream.set_zero_linger();
    }
}

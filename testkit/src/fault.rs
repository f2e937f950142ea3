//! Faults between an operator and the real API server, injected on the wire.
//!
//! [`FaultProxy`] is a TCP relay in front of a [`crate::cluster::TestCluster`]'s kube-apiserver.
//! It does not speak HTTP or TLS (the bytes pass through untouched, so the server's certificate
//! still verifies): it only decides whether bytes move. A client built with
//! [`crate::cluster::TestCluster::client_via`] talks to the real API server through it, and a
//! test can then make that path fail the ways networks and overloaded servers do:
//!
//! - [`FaultProxy::freeze`]: connections stay open and nothing arrives (a partition, or a server
//!   that accepted the request and never answers). Requests hang until the client gives up.
//! - [`FaultProxy::cut`]: every open connection is reset (a server restart, a dropped route).
//! - [`FaultProxy::thaw`]: traffic flows again.
//!
//! ```no_run
//! # async fn f(cluster: &cuebe_testkit::cluster::TestCluster) -> std::io::Result<()> {
//! let proxy = cuebe_testkit::fault::FaultProxy::start(cluster.api_addr()).await?;
//! let client = cluster.client_via(&proxy);
//! proxy.freeze(); // every request of `client` now hangs
//! # Ok(()) }
//! ```
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    frozen: bool,
    /// Bumped by [`FaultProxy::cut`]: connections opened before it end.
    epoch: u64,
}

/// A TCP relay to an upstream address whose traffic a test can freeze or cut.
///
/// Dropping it stops accepting and ends every relayed connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, watcher) = watch::channel(State {
            frozen: false,
            epoch: 0,
        });
        let accept = tokio::spawn(async move {
            while let Ok((downstream, _)) = listener.accept().await {
                tokio::spawn(relay(downstream, upstream, watcher.clone()));
            }
        });
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every byte in both directions, on open and new connections, until [`Self::thaw`].
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.frozen = true);
    }

    /// Lets traffic flow again.
    pub fn thaw(&self) {
        self.state.send_modify(|s| s.frozen = false);
    }

    /// Ends every connection open now (new ones are relayed as usual).
    pub fn cut(&self) {
        self.state.send_modify(|s| s.epoch += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Relays watch the state: a closed channel ends them.
        self.state.send_modify(|s| s.epoch += 1);
    }
}

async fn relay(downstream: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<State>) {
    let epoch = state.borrow().epoch;
    // A frozen proxy accepts but does not even connect: the client's handshake hangs.
    if wait_until_flowing(&mut state, epoch).await.is_none() {
        return;
    }
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::select! {
        () = pump(down_read, up_write, state.clone(), epoch) => {}
        () = pump(up_read, down_write, state, epoch) => {}
    }
}

/// Copies one direction, holding each chunk while the proxy is frozen; ends on EOF, an error or
/// a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    epoch: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            cut = cut_since(&mut state, epoch) => { let () = cut; return; }
        };
        if wait_until_flowing(&mut state, epoch).await.is_none() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while frozen; `None` when the connection was cut (or the proxy dropped) meanwhile.
async fn wait_until_flowing(state: &mut watch::Receiver<State>, epoch: u64) -> Option<()> {
    loop {
        let now = *state.borrow_and_update();
        if now.epoch != epoch {
            return None;
        }
        if !now.frozen {
            return Some(());
        }
        state.changed().await.ok()?;
    }
}

/// Resolves once the connection opened at `epoch` is cut (or the proxy is dropped).
async fn cut_since(state: &mut watch::Receiver<State>, epoch: u64) {
    loop {
        if state.borrow_and_update().epoch != epoch {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

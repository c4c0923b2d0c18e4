//! Accepting TCP connections and upgrading them to WebSocket sessions, over
//! TLS when `[listen.tls]` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::admission::{redacted_path, Admission, Protocol};
use super::pending::PendingSlot;
use super::{deadline_after, pusher, starling, Gateway};

/// Accepts client connections until `shutdown` is cancelled. Each connection
/// runs as a task on `tracker`, so shutdown can wait for all of them. With
/// `tls`, every connection is a TLS connection (`wss://`).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Dropping `tcp` when refused closes it at once, before any response.
        let Some(pending) = take_pending_slot(&gateway, peer) else {
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%peer, %error, "set_nodelay failed");
        }
        let gateway = Arc::clone(&gateway);
        let tls = tls.clone();
        let connection_shutdown = shutdown.clone();
        tracker.spawn(async move {
            // One deadline for the TLS handshake and the upgrade together.
            let timeout = Duration::from_millis(gateway.config.websocket.handshake_timeout_ms);
            let deadline = deadline_after(timeout);
            let Some(acceptor) = tls else {
                return serve_connection(tcp, peer, gateway, pending, deadline, connection_shutdown).await;
            };
            match timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    serve_connection(stream, peer, gateway, pending, deadline, connection_shutdown).await
                }
                Ok(Err(error)) => debug!(%peer, %error, "tls handshake failed"),
                Err(_) => debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

/// What a connection holds until its upgrade is done or refused.
struct PendingHandshake {
    _global: OwnedSemaphorePermit,
    _per_address: PendingSlot,
}

/// A slot for one more pending handshake from `peer`, or `None` (counted)
/// when its address or the node already has too many.
fn take_pending_slot(gateway: &Gateway, peer: SocketAddr) -> Option<PendingHandshake> {
    let metrics = &gateway.metrics;
    let Some(per_address) = gateway.pending_per_address.try_take(peer.ip()) else {
        debug!(%peer, "too many pending handshakes from this address; connection dropped");
        metrics.handshakes_rejected.increment(1);
        metrics.rejected_pending_handshakes_per_ip.increment(1);
        return None;
    };
    let Ok(global) = Arc::clone(&gateway.handshake_permits).try_acquire_owned() else {
        debug!(%peer, "too many pending handshakes; connection dropped");
        metrics.handshakes_rejected.increment(1);
        metrics.rejected_pending_handshakes.increment(1);
        return None;
    };
    Some(PendingHandshake { _global: global, _per_address: per_address })
}

/// Upgrades `stream` (plain TCP or TLS) and runs its session. Generic, so
/// the plain path pays nothing for TLS.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    pending: PendingHandshake,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upgraded = upgrade(stream, peer, &gateway, deadline).await;
    drop(pending);
    if let Some((ws, admission)) = upgraded {
        let (sink, stream) = ws.split();
        let Admission { conn, protocol, permit } = admission;
        match protocol {
            Protocol::Starling { claims } => {
                let encoder = Arc::clone(&gateway.starling_encoder);
                starling::run(gateway, encoder, conn, claims, sink, stream, shutdown).await;
            }
            Protocol::Pusher(request) => pusher::run(gateway, conn, request, sink, stream, shutdown).await,
        }
        drop(permit);
    }
}

fn websocket_config(gateway: &Gateway) -> WebSocketConfig {
    let ws = &gateway.config.websocket;
    let max_message = gateway.config.limits.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_write_buffer_size(ws.write_buffer_bytes.saturating_mul(4).max(max_message * 2))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

// The callback's error type is tungstenite's HTTP response; it is built
// once per refused upgrade, so its size does not matter.
#[allow(clippy::result_large_err)]
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    gateway: &Gateway,
    deadline: Instant,
) -> Option<(tokio_tungstenite::WebSocketStream<S>, Admission)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut admitted = None;
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        match gateway.admit(request) {
            Ok(admission) => {
                admitted = Some(admission);
                Ok(response)
            }
            Err(rejection) => {
                debug!(%peer, path = redacted_path(request), status = %rejection.status(), "upgrade refused");
                gateway.metrics.handshakes_rejected.increment(1);
                Err(rejection.into_response())
            }
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(websocket_config(gateway)));
    match timeout_at(deadline, handshake).await {
        Ok(Ok(ws)) => admitted.map(|admission| (ws, admission)),
        Ok(Err(error)) => {
            debug!(%peer, %error, "handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "handshake timed out");
            None
        }
    }
}

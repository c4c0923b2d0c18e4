//! Accepting TCP connections and upgrading them to WebSocket sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::admission::{redacted_path, Admission};
use super::{session, Gateway};

/// Accepts client connections until `shutdown` is cancelled. Each connection
/// runs as a task on `tracker`, so shutdown can wait for all of them.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
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
        let Ok(handshake_permit) = Arc::clone(&gateway.handshake_permits).try_acquire_owned() else {
            debug!(%peer, "too many pending handshakes; connection dropped");
            gateway.metrics.handshakes_rejected.increment(1);
            continue;
        };
        let gateway = Arc::clone(&gateway);
        let connection_shutdown = shutdown.clone();
        tracker.spawn(async move {
            let upgraded = upgrade(tcp, peer, &gateway).await;
            drop(handshake_permit);
            if let Some((ws, admission)) = upgraded {
                let (sink, stream) = ws.split();
                session::run(gateway, admission, sink, stream, connection_shutdown).await;
            }
        });
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
async fn upgrade(
    tcp: TcpStream,
    peer: SocketAddr,
    gateway: &Gateway,
) -> Option<(tokio_tungstenite::WebSocketStream<TcpStream>, Admission)> {
    if let Err(error) = tcp.set_nodelay(true) {
        debug!(%peer, %error, "set_nodelay failed");
    }
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
    let timeout = Duration::from_millis(gateway.config.websocket.handshake_timeout_ms);
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, check, Some(websocket_config(gateway)));
    match tokio::time::timeout(timeout, handshake).await {
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

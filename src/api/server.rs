//! Serving the routes on the API listener: plain HTTP through warp's own
//! server, or HTTPS over connections accepted here and wrapped in TLS.
//!
//! warp 0.4 cannot be handed a listener of TLS streams (its `Accept` trait
//! is private, and its `tls` feature would bring a second TLS stack), so the
//! HTTPS side turns the routes into a service with `warp::service` and runs
//! each connection with hyper, as warp itself does, with the same graceful
//! shutdown. This module serves; what is served is `routes`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{routes, ApiState};

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// requests in progress finish. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let handshake_timeout = Duration::from_millis(state.gateway.config.websocket.handshake_timeout_ms);
    let routes = routes(state);
    let Some(acceptor) = tls else {
        let server =
            warp::serve(routes).incoming(listener).graceful(async move { shutdown.cancelled().await });
        return server.run().await;
    };
    let service = TowerToHyperService::new(warp::service(routes));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "api accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, service, watcher) = (acceptor.clone(), service.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return debug!(%peer, %error, "api tls handshake failed"),
                Err(_) => return debug!(%peer, "api tls handshake timed out"),
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                debug!(%peer, %error, "api connection ended with an error");
            }
        });
    }
    // Stop accepting, then wait for the connections (idle ones are closed).
    drop(listener);
    graceful.shutdown().await;
}

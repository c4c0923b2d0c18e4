//! A gossip socket opened before chitchat starts.
//!
//! Owns the hand-over of one already bound socket to `spawn_chitchat`, so that
//! membership knows the bound address (port 0 works) before it builds the
//! node's chitchat id. Must not open sockets itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use chitchat::transport::{Socket, Transport};

type OpenFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Box<dyn Socket>>> + Send + 'a>>;

/// A `Transport` whose `open` hands out one socket opened beforehand.
pub(super) struct OpenedSocket {
    /// Taken by the first (and only) `open`.
    socket: Mutex<Option<Box<dyn Socket>>>,
}

impl OpenedSocket {
    pub(super) fn new(socket: Box<dyn Socket>) -> Self {
        OpenedSocket { socket: Mutex::new(Some(socket)) }
    }
}

// `Transport` is declared with `#[async_trait]`; this is the signature that
// macro generates, written out to avoid a dependency for one method.
impl Transport for OpenedSocket {
    fn open<'life0, 'async_trait>(&'life0 self, _listen_addr: SocketAddr) -> OpenFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner).take();
        Box::pin(async move { socket.context("gossip socket already handed over") })
    }
}

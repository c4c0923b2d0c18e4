//! The writer half of a connection, for every wire protocol: drains the
//! connection's outbound queue to the socket in batches, measures
//! publish-to-deliver latency, and sends the close frame.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Gateway;
use crate::fanout::{BatchEnd, OutFrame, Outbound};
use crate::protocol::CloseCode;

/// Writes queued frames until a close is asked for or the socket fails.
pub async fn write_loop<S>(
    mut sink: S,
    outbound: &Outbound,
    gateway: &Gateway,
    close_timeout: Duration,
    close_frame: fn(CloseCode) -> CloseFrame,
) where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut batch = VecDeque::new();
    loop {
        let end = outbound.next_batch(&mut batch).await;
        let oldest = batch.iter().find_map(|frame| frame.published);
        let written = {
            let write = write_batch(&mut sink, &mut batch);
            tokio::pin!(write);
            let mut close_seen = matches!(end, BatchEnd::Close(_));
            loop {
                tokio::select! {
                    result = &mut write => break result.is_ok(),
                    code = outbound.closed(), if !close_seen => {
                        if code == CloseCode::SlowConsumer {
                            // The client is not reading; this write may never finish.
                            break false;
                        }
                        close_seen = true;
                    }
                }
            }
        };
        batch.clear();
        if let Some(published) = oldest.filter(|_| written) {
            gateway.metrics.observe_delivery(published.at.elapsed(), published.cross_node);
        }
        let code = match (written, end) {
            (true, BatchEnd::Open) => continue,
            (true, BatchEnd::Close(code)) => code,
            (false, _) => match outbound.closing() {
                Some(CloseCode::SlowConsumer) => CloseCode::SlowConsumer,
                _ => return,
            },
        };
        gateway.metrics.closed(&gateway.node, code);
        let _ = tokio::time::timeout(close_timeout, sink.send(Message::Close(Some(close_frame(code))))).await;
        return;
    }
}

async fn write_batch<S>(sink: &mut S, batch: &mut VecDeque<OutFrame>) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    for frame in batch.drain(..) {
        sink.feed(Message::Text(frame.text)).await?;
    }
    sink.flush().await
}

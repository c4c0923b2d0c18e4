//! The bounded outbound queue of one connection, and its close signal.
//!
//! Producers (fan-out, replies, pings) push encoded frames without waiting;
//! the connection's writer takes them in batches. The queue is bounded in
//! frames and in bytes: a push over either bound marks the connection as a
//! slow consumer (close 4008) instead of blocking the producer, so one
//! client that does not read never slows a room down.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::message::Published;
use crate::protocol::CloseCode;

/// One encoded frame waiting to be written.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub text: Utf8Bytes,
    /// Set on room messages; `None` for other frames.
    pub published: Option<Published>,
}

impl OutFrame {
    /// A frame that is not a room message (welcome, reply, event).
    pub fn control(text: impl Into<Utf8Bytes>) -> OutFrame {
        OutFrame { text: text.into(), published: None }
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue was over a bound: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection was already closing; the frame is dropped.
    Closing,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<OutFrame>,
    bytes: usize,
    closing: Option<CloseCode>,
}

/// What the writer gets from [`Outbound::next_batch`].
#[derive(Debug, PartialEq, Eq)]
pub enum BatchEnd {
    /// More frames may follow.
    Open,
    /// Write the batch (empty for a slow consumer), then close with this code.
    Close(CloseCode),
}

#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    /// Wakes the writer on a push or a close.
    wake: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbound {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State { frames: VecDeque::new(), bytes: 0, closing: None }),
            wake: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame. Frames pushed after a close began are dropped: the
    /// connection is going away.
    pub fn push(&self, frame: OutFrame) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(PushError::Closing);
        }
        let len = frame.text.len();
        if state.frames.len() >= self.max_frames || state.bytes + len > self.max_bytes {
            state.closing = Some(CloseCode::SlowConsumer);
            state.frames = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Overflow);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Asks the writer to send what is queued, then close with `code`. The
    /// first close wins.
    pub fn close(&self, code: CloseCode) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(code);
        }
        drop(state);
        self.wake.notify_one();
    }

    pub fn closing(&self) -> Option<CloseCode> {
        self.lock().closing
    }

    /// Frames and bytes waiting to be written.
    pub fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.frames.len(), state.bytes)
    }

    /// Waits until there are frames or a close, then moves every queued frame
    /// into `batch` (which must be empty).
    pub async fn next_batch(&self, batch: &mut VecDeque<OutFrame>) -> BatchEnd {
        debug_assert!(batch.is_empty());
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || state.closing.is_some() {
                    std::mem::swap(&mut state.frames, batch);
                    state.bytes = 0;
                    return match state.closing {
                        Some(code) => BatchEnd::Close(code),
                        None => BatchEnd::Open,
                    };
                }
            }
            self.wake.notified().await;
        }
    }

    /// Resolves once a close has been asked for (used to abandon a write
    /// that is stuck on a client that does not read).
    pub async fn closed(&self) -> CloseCode {
        loop {
            if let Some(code) = self.closing() {
                return code;
            }
            self.wake.notified().await;
        }
    }

    pub fn queued_frames(&self) -> usize {
        self.lock().frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> OutFrame {
        OutFrame::control(text)
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_batches() {
        let out = Outbound::new(10, 1000);
        out.push(frame("a")).unwrap();
        out.push(frame("b")).unwrap();
        let mut batch = VecDeque::new();
        assert_eq!(out.next_batch(&mut batch).await, BatchEnd::Open);
        let texts: Vec<_> = batch.iter().map(|f| f.text.as_str().to_string()).collect();
        assert_eq!(texts, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn overflow_by_count_or_bytes_closes_as_slow_consumer_and_drops_the_queue() {
        let out = Outbound::new(2, 1000);
        out.push(frame("a")).unwrap();
        out.push(frame("b")).unwrap();
        assert_eq!(out.push(frame("c")), Err(PushError::Overflow));
        let mut batch = VecDeque::new();
        assert_eq!(out.next_batch(&mut batch).await, BatchEnd::Close(CloseCode::SlowConsumer));
        assert!(batch.is_empty());

        let out = Outbound::new(100, 5);
        out.push(frame("abc")).unwrap();
        assert_eq!(out.push(frame("abc")), Err(PushError::Overflow));
        assert_eq!(out.closing(), Some(CloseCode::SlowConsumer));
    }

    #[tokio::test]
    async fn a_close_flushes_what_was_queued_first_and_the_first_close_wins() {
        let out = Outbound::new(10, 1000);
        out.push(frame("last words")).unwrap();
        out.close(CloseCode::Restarting);
        out.close(CloseCode::Normal);
        assert_eq!(out.push(frame("dropped")), Err(PushError::Closing));
        let mut batch = VecDeque::new();
        assert_eq!(out.next_batch(&mut batch).await, BatchEnd::Close(CloseCode::Restarting));
        assert_eq!(batch.len(), 1);
        assert_eq!(out.closed().await, CloseCode::Restarting);
    }
}

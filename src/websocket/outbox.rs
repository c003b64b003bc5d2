//! What courier holds on its way to the browser's side of a relayed WebSocket, and the response
//! body that writes it.
//!
//! actix-ws's own response body drains its whole queue (32 messages) into one buffer each time
//! it is polled, so a service flooding a browser that reads nothing made courier hold hundreds
//! of MiB per connection. Here the relay hands each message to an `Outbox` that takes it only
//! while what is queued fits the connection's byte budget (one message of
//! `websocket_max_message_bytes`: with the one the relay holds while it waits, about two per
//! direction) and the instance's (`live::WebSocketBudget`). `BrowserBody` writes the queue out
//! in small slices, so that the connection's own write buffer takes only a few KiB beyond what
//! the socket accepts, and releases each message's budget once its last byte is handed over.
//!
//! The body also tells when the browser stopped reading: nothing handed over for
//! `STALLED_AFTER` while data waits. The relay then cuts the TCP connection (`Socket`), since a
//! connection whose writes are blocked never polls its body again, so no close frame or error
//! from the body could end it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_codec::Encoder;
use actix_http::ws::{Codec, Message};
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::Instant;

use crate::live::{Binding, BudgetPermit, WebSocketBudget};

/// A peer that takes nothing for this long while data waits for it is disconnected.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// How much the body hands the connection at a time. The connection polls its body only while
/// its write buffer is below its limit (actix-http's `h1_write_buffer_size`), so it holds at
/// most about that limit plus one slice.
const SLICE: usize = 16 * 1024;

/// The browser's side is gone: its connection closed, so the body was dropped.
#[derive(Debug)]
pub struct Gone;

struct Queued {
    frame: Bytes,
    /// The bytes it counts against the connection's budget, and its place in the instance's.
    cost: usize,
    permit: Option<BudgetPermit>,
}

struct State {
    /// Whole frames waiting, in order.
    frames: VecDeque<Queued>,
    /// The frame being handed over, and what it costs until its last byte is.
    current: Bytes,
    current_cost: usize,
    current_permit: Option<BudgetPermit>,
    /// Bytes of data frames queued or being handed over, against `budget`.
    queued: usize,
    budget: usize,
    /// The answer to the browser's last ping: only the latest is owed (RFC 6455 §5.5.3).
    pong: Option<Bytes>,
    /// The close frame, once courier closes: it goes after the frame being handed over.
    close: Option<Bytes>,
    /// Nothing follows what is queued: the body ends once it is handed over.
    finished: bool,
    /// When the body last handed bytes over, or when data began to wait after none did.
    progress: Instant,
    gone: bool,
    body: Option<Waker>,
    space: Option<Waker>,
    codec: Codec,
}

impl State {
    fn waiting(&self) -> bool {
        !self.current.is_empty()
            || !self.frames.is_empty()
            || self.pong.is_some()
            || self.close.is_some()
    }

    /// Data is about to wait: a connection idle until now has not stalled.
    fn note_waiting(&mut self) {
        if !self.waiting() {
            self.progress = Instant::now();
        }
    }

    fn encode(&mut self, message: Message) -> Bytes {
        let mut frame = BytesMut::new();
        // Encoding into memory fails only for a close reason or control payload that is too
        // long, which courier never sends: such a frame is left out.
        if self.codec.encode(message, &mut frame).is_err() {
            return Bytes::new();
        }
        frame.freeze()
    }

    fn wake_body(&mut self) {
        if let Some(waker) = self.body.take() {
            waker.wake();
        }
    }

    fn release_current(&mut self) {
        self.queued -= self.current_cost;
        self.current_cost = 0;
        self.current_permit = None;
        if let Some(waker) = self.space.take() {
            waker.wake();
        }
    }
}

/// The relay's handle on what goes to the browser.
#[derive(Clone)]
pub struct Outbox {
    state: Rc<RefCell<State>>,
    instance: WebSocketBudget,
}

impl Outbox {
    /// An outbox that queues at most `budget` bytes of data frames (one larger frame alone).
    pub fn new(budget: usize, instance: WebSocketBudget) -> Self {
        let state = State {
            frames: VecDeque::new(),
            current: Bytes::new(),
            current_cost: 0,
            current_permit: None,
            queued: 0,
            budget,
            pong: None,
            close: None,
            finished: false,
            progress: Instant::now(),
            gone: false,
            body: None,
            space: None,
            codec: Codec::new(),
        };
        Outbox {
            state: Rc::new(RefCell::new(state)),
            instance,
        }
    }

    /// The response body that writes this outbox to the browser. It holds `binding` (the
    /// connection's place among the live connections) and `handshake_body` (actix-ws's, never
    /// polled: dropping it tells the browser's message stream that the connection is gone)
    /// until the connection is done with it.
    pub fn body<B: 'static>(&self, binding: Binding, handshake_body: B) -> BrowserBody<B> {
        BrowserBody {
            state: self.state.clone(),
            _binding: binding,
            _handshake_body: handshake_body,
        }
    }

    /// Queues a text or binary message once it fits the connection's budget and the
    /// instance's; waits until then.
    pub async fn send(&self, message: Message) -> Result<(), Gone> {
        let frame = self.state.borrow_mut().encode(message);
        let cost = frame.len();
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.gone {
                return Poll::Ready(Err(Gone));
            }
            if state.queued == 0 || state.queued + cost <= state.budget {
                return Poll::Ready(Ok(()));
            }
            state.space = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        let permit = self.instance.acquire(cost).await;
        let mut state = self.state.borrow_mut();
        if state.gone {
            return Err(Gone);
        }
        state.note_waiting();
        state.queued += cost;
        state.frames.push_back(Queued {
            frame,
            cost,
            permit: Some(permit),
        });
        state.wake_body();
        Ok(())
    }

    /// Owes the browser a pong for `payload` (a later ping's replaces it).
    pub fn pong(&self, payload: Bytes) {
        let mut state = self.state.borrow_mut();
        if state.close.is_some() || state.finished {
            return;
        }
        state.note_waiting();
        let pong = state.encode(Message::Pong(payload));
        state.pong = Some(pong);
        state.wake_body();
    }

    /// Closes the browser's side: what is queued and not yet begun is dropped, the close frame
    /// follows the frame being handed over, and the body ends after it.
    pub fn close(&self, reason: Option<actix_http::ws::CloseReason>) {
        let mut state = self.state.borrow_mut();
        if state.close.is_some() || state.finished {
            return;
        }
        state.note_waiting();
        let dropped: usize = state.frames.drain(..).map(|q| q.cost).sum();
        state.queued -= dropped;
        state.pong = None;
        let close = state.encode(Message::Close(reason));
        state.close = Some(close);
        state.finished = true;
        state.wake_body();
    }

    /// Ends the browser's side without a close frame (its connection failed or went away).
    pub fn finish(&self) {
        let mut state = self.state.borrow_mut();
        state.finished = true;
        state.wake_body();
    }

    /// Whether data has waited for the browser for `STALLED_AFTER` without a byte taken.
    pub fn stalled(&self) -> bool {
        let state = self.state.borrow();
        !state.gone && state.waiting() && state.progress.elapsed() >= STALLED_AFTER
    }

    /// Whether everything queued, the close frame included, has been handed over (or the
    /// browser is gone).
    pub fn drained(&self) -> bool {
        let state = self.state.borrow();
        state.gone || !state.waiting()
    }
}

/// The browser's side of a relayed WebSocket, as a response body (see the module's comment).
pub struct BrowserBody<B> {
    state: Rc<RefCell<State>>,
    _binding: Binding,
    _handshake_body: B,
}

impl<B> Stream for BrowserBody<B> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.state.borrow_mut();
        if state.current.is_empty() {
            if state.current_cost > 0 {
                state.release_current();
            }
            // A pong may go between any two frames: courier never splits a message.
            if let Some(pong) = state.pong.take() {
                state.current = pong;
            } else if let Some(next) = state.frames.pop_front() {
                state.current = next.frame;
                state.current_cost = next.cost;
                state.current_permit = next.permit;
            } else if let Some(close) = state.close.take() {
                state.current = close;
            } else if state.finished {
                return Poll::Ready(None);
            } else {
                state.body = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        let take = state.current.len().min(SLICE);
        let slice = state.current.split_to(take);
        state.progress = Instant::now();
        Poll::Ready(Some(Ok(slice)))
    }
}

impl<B> Drop for BrowserBody<B> {
    fn drop(&mut self) {
        let mut state = self.state.borrow_mut();
        state.gone = true;
        state.frames.clear();
        state.current = Bytes::new();
        state.current_permit = None;
        if let Some(waker) = state.space.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn outbox(budget: usize) -> (Outbox, BrowserBody<()>) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let live = crate::live::LiveConnections::new(pool, 10, 1, 1 << 20);
        let binding = live
            .follow(uuid::Uuid::new_v4(), None)
            .expect("not stopping");
        let outbox = Outbox::new(budget, WebSocketBudget::new(1 << 20));
        let body = outbox.body(binding, ());
        (outbox, body)
    }

    fn binary(len: usize) -> Message {
        Message::Binary(Bytes::from(vec![b'x'; len]))
    }

    #[tokio::test]
    async fn the_queue_holds_one_budget_and_frees_it_as_bytes_are_handed_over() {
        let (outbox, mut body) = outbox(100_000);
        outbox.send(binary(60_000)).await.unwrap();
        // A second message does not fit beside the first: the relay waits.
        let second = outbox.send(binary(60_000));
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        // The body hands over the first in slices; its budget is free once the last is taken.
        let mut taken = 0;
        while taken < 60_000 {
            let slice = body.next().await.unwrap().unwrap();
            assert!(slice.len() <= SLICE);
            taken += slice.len();
        }
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        let _ = futures_util::poll!(body.next());
        second.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_browser_that_takes_nothing_while_data_waits_has_stalled() {
        let (outbox, mut body) = outbox(1 << 20);
        tokio::time::advance(STALLED_AFTER * 2).await;
        assert!(!outbox.stalled(), "an idle connection has not stalled");
        outbox.send(binary(10)).await.unwrap();
        tokio::time::advance(STALLED_AFTER - Duration::from_secs(1)).await;
        assert!(!outbox.stalled());
        let _ = body.next().await;
        tokio::time::advance(STALLED_AFTER * 2).await;
        assert!(!outbox.stalled(), "all of it was taken");
        outbox.send(binary(10)).await.unwrap();
        tokio::time::advance(STALLED_AFTER).await;
        assert!(outbox.stalled());
    }

    #[tokio::test]
    async fn closing_drops_what_has_not_begun_and_ends_after_the_close_frame() {
        let (outbox, mut body) = outbox(1 << 20);
        outbox.send(binary(40_000)).await.unwrap();
        outbox.send(binary(40_000)).await.unwrap();
        let first = body.next().await.unwrap().unwrap();
        outbox.close(Some(actix_http::ws::CloseCode::from(4401).into()));
        let mut rest = Vec::new();
        while let Some(slice) = body.next().await {
            rest.extend_from_slice(&slice.unwrap());
        }
        // The first message's remaining bytes, then a close frame with 4401 (0x1131).
        let header = 4; // 0x82, 126, two length bytes
        assert_eq!(first.len() + rest.len(), header + 40_000 + 4);
        assert_eq!(&rest[rest.len() - 4..], &[0x88, 2, 0x11, 0x31]);
        assert!(outbox.drained());
    }

    #[tokio::test]
    async fn a_dropped_body_frees_the_relay() {
        let (outbox, body) = outbox(10);
        outbox.send(binary(100)).await.unwrap();
        let waiting = outbox.send(binary(100));
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(body);
        assert!(waiting.await.is_err());
        assert!(outbox.drained());
    }
}

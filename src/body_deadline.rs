//! Request bodies under a deadline: a body must arrive within a bounded time of courier starting
//! to read it, so that a client trickling bytes cannot hold a connection (and a service call)
//! open forever.
//!
//! `DeadlineBody` wraps the request's payload; when no byte is ready and the deadline has
//! passed, it fails with an I/O error of kind `TimedOut` (never a clean end: a half-read body
//! must not pass for a whole one, in courier or in a service it is streamed to). The shared
//! `BodyDeadline` handle, kept in the request's extensions, tells whether that happened and
//! whether the body was read to its end.
//!
//! A body left unread must not hold the connection either: actix-http drains the rest of an
//! unread chunked body at the client's pace, without limit, once the body's reader is gone,
//! and closes the connection instead while the reader is alive. `HeldBody` keeps the reader
//! alive inside the response until the response has been written.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::{HttpMessage, HttpRequest};
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;

/// What became of a request body read under a deadline.
#[derive(Clone)]
pub struct BodyDeadline {
    outcome: Rc<Outcome>,
    payload: Rc<RefCell<Payload>>,
}

#[derive(Default)]
struct Outcome {
    finished: Cell<bool>,
    timed_out: Cell<bool>,
    /// The last read found no byte ready: courier was waiting for the client (rather than
    /// the body's consumer, a service say, being slow to take it).
    waiting_for_client: Cell<bool>,
}

impl BodyDeadline {
    /// Puts `payload` under a deadline of `timeout` from its first read: the handle, and the
    /// body to read instead.
    pub fn start(payload: Payload, timeout: Duration) -> (BodyDeadline, DeadlineBody) {
        let deadline = BodyDeadline {
            outcome: Rc::default(),
            payload: Rc::new(RefCell::new(payload)),
        };
        let body = DeadlineBody {
            deadline: deadline.clone(),
            timeout,
            sleep: None,
        };
        (deadline, body)
    }

    /// Whether the body stopped arriving before its deadline.
    pub fn timed_out(&self) -> bool {
        self.outcome.timed_out.get()
    }

    /// Whether the body was read to its end.
    pub fn finished(&self) -> bool {
        self.outcome.finished.get()
    }

    /// Whether `req`'s client is to blame for a body that did not get through: its deadline
    /// passed, or courier was still waiting for its bytes (when a service call's own timeout,
    /// which starts a little later, fired at the same moment).
    pub fn client_is_late(req: &HttpRequest) -> bool {
        req.extensions()
            .get::<BodyDeadline>()
            .is_some_and(|d| d.timed_out() || (!d.finished() && d.outcome.waiting_for_client.get()))
    }

    /// `body` holding this request body's reader until it has been written (see the module
    /// documentation).
    pub fn hold(&self, body: BoxBody) -> HeldBody {
        HeldBody {
            body,
            _reader: self.payload.clone(),
        }
    }
}

/// A response body that keeps the request body's reader alive until it is dropped.
pub struct HeldBody {
    body: BoxBody,
    _reader: Rc<RefCell<Payload>>,
}

impl MessageBody for HeldBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// The error a body that missed its deadline ends with.
pub fn timed_out_error() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request body did not arrive in time",
    ))
}

/// Whether `e` is the error of a body that missed its deadline.
pub fn is_timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The request's payload, failing once `timeout` has passed since the first read while the
/// client still owes bytes.
pub struct DeadlineBody {
    deadline: BodyDeadline,
    timeout: Duration,
    /// Started by the first read: time spent before the handler reads (fetching a token, say)
    /// does not count against the client.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stream for DeadlineBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let outcome = &this.deadline.outcome;
        if outcome.timed_out.get() {
            return Poll::Ready(Some(Err(timed_out_error())));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        // Bytes that have arrived are passed on first; the deadline only cuts a wait.
        let polled = Pin::new(&mut *this.deadline.payload.borrow_mut()).poll_next(cx);
        outcome.waiting_for_client.set(polled.is_pending());
        match polled {
            Poll::Ready(None) => {
                outcome.finished.set(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    outcome.timed_out.set(true);
                    Poll::Ready(Some(Err(timed_out_error())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

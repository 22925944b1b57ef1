//! One connection as the hub sees it: identity for filtering, a bounded send
//! queue, and a way to ask its transport task to close.
//!
//! The queue is a `VecDeque` behind a mutex rather than a channel: it allocates
//! nothing until the first event (an idle connection costs no queue memory) and
//! counts messages and bytes exactly under the same lock. Its one reader is
//! woken through an `AtomicWaker` rather than a `Notify`: a fan-out wakes
//! every subscriber's task once per event, and `Notify` keeps a mutex-guarded
//! waiter list that each wake-up enters twice.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{oneshot, Notify};

use crate::engine::Publication;
use crate::protocol::{ChannelName, CloseCode, ErrorCode, PresenceStatus};
use tidings_auth::Identity;

/// What the hub hands a connection's transport task. Rare variants are boxed
/// so the common one (an event) keeps queue slots small.
#[derive(Debug)]
pub enum Outbound {
    /// An event of a channel the connection is subscribed to.
    Event(Arc<Publication>),
    /// A presence push for a channel the connection is on.
    Presence(Box<PresencePush>),
    /// The server removed a subscription.
    Unsubscribed(Box<ServerUnsubscribe>),
    /// A request for this connection that arrived over `POST /request`.
    Control(Box<Control>),
}

/// A [`ControlRequest`] queued for a connection, and the `POST /request`
/// that waits for it to be applied.
#[derive(Debug)]
pub struct Control {
    /// What to do.
    request: ControlRequest,
    /// Told once the transport task has applied the request (with the
    /// refusal's code and message if the engine could not store all of it);
    /// dropped unanswered when the connection ends first.
    applied: oneshot::Sender<ControlOutcome>,
}

impl Control {
    /// The request, and the signal to give once it is applied.
    pub fn take(self) -> (ControlRequest, Applied) {
        (self.request, Applied(self.applied))
    }
}

/// How a control request ended: applied, or refused with this code and
/// message (the engine could not store all of it).
pub type ControlOutcome = Result<(), (ErrorCode, String)>;

/// Tells the waiting `POST /request` that its request took effect.
#[derive(Debug)]
pub struct Applied(oneshot::Sender<ControlOutcome>);

impl Applied {
    /// The request was applied, or failed with this code and message
    /// (whoever waited may have gone: nothing then).
    pub fn done(self, outcome: ControlOutcome) {
        let _ = self.0.send(outcome);
    }
}

/// What `POST /request` asks of a live connection.
#[derive(Debug)]
pub enum ControlRequest {
    /// Set the connection's presence status.
    Status(PresenceStatus),
    /// Replace the connection's identity with a newer token's (same user).
    Refresh(Identity),
}

/// A presence push, encoded once and shared by every recipient.
#[derive(Debug)]
pub struct PresencePush {
    /// The channel.
    pub channel: ChannelName,
    /// The encoded `presence` message.
    pub text: Utf8Bytes,
}

/// A server-side unsubscribe.
#[derive(Debug)]
pub struct ServerUnsubscribe {
    /// The channel.
    pub channel: ChannelName,
    /// Why.
    pub reason: String,
}

impl Outbound {
    fn size(&self) -> usize {
        match self {
            Self::Event(p) => p.encoded().len(),
            Self::Presence(push) => push.text.len(),
            Self::Unsubscribed(_) | Self::Control(_) => 0,
        }
    }
}

/// Bounds of one send queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most messages waiting.
    pub messages: usize,
    /// Most bytes waiting.
    pub bytes: usize,
}

/// Why a connection must close, as requested by the hub or the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// Close code.
    pub code: CloseCode,
    /// Reason sent with it.
    pub reason: String,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    bytes: usize,
    /// `Outbound::Control` items among `items`, at most [`MAX_CONTROLS`].
    controls: usize,
    /// Set once the transport task is gone; later pushes are dropped.
    closed: bool,
}

/// Requests from `POST /request` waiting in one queue. They are not dropped
/// like events (a refresh must not be lost) but refused past this bound: a
/// stream that stopped reading would otherwise hold every refresh (each with
/// its token's claims) sent for it until the kernel ends it.
pub const MAX_CONTROLS: usize = 16;

/// Queues that grew during a burst give their memory back once drained.
const KEEP_CAPACITY: usize = 16;

/// The hub's side of a connection.
#[derive(Debug)]
pub struct Connection {
    /// Internal key (unique per node run).
    pub key: u64,
    /// Public connection id (`c_…`).
    pub client_id: Arc<str>,
    /// The user (`sub`).
    pub user: Arc<str>,
    /// Roles, for audience filtering: the connection's token's, replaced by
    /// a `refresh`. Read only for events whose audience lists roles.
    roles: Mutex<Arc<[String]>>,
    queue: Mutex<QueueState>,
    queue_waker: AtomicWaker,
    limits: QueueLimits,
    close: Mutex<Option<CloseRequest>>,
    /// `close` is set: lets the queue's reader check for a close on every
    /// wake-up without taking the lock.
    close_pending: AtomicBool,
    close_notify: Notify,
}

/// The transport task's side of the queue; marks the queue closed when dropped.
#[derive(Debug)]
pub struct ConnectionQueue {
    connection: Arc<Connection>,
}

/// What [`Connection::push`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Audience or exclusion filtered it out.
    Filtered,
    /// The queue is full: this push asked the connection to close with
    /// 4002 (once per connection; a later push finds it `Closed`). For a
    /// control request: refused, and nothing is closed.
    Overflow,
    /// The connection is gone, or asked to close.
    Closed,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding the lock; recover rather than cascade.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    /// A connection and the queue its transport task reads.
    pub fn new(
        key: u64,
        client_id: Arc<str>,
        user: Arc<str>,
        roles: Arc<[String]>,
        limits: QueueLimits,
    ) -> (Arc<Self>, ConnectionQueue) {
        let connection = Arc::new(Self {
            key,
            client_id,
            user,
            roles: Mutex::new(roles),
            queue: Mutex::new(QueueState::default()),
            queue_waker: AtomicWaker::new(),
            limits,
            close: Mutex::new(None),
            close_pending: AtomicBool::new(false),
            close_notify: Notify::new(),
        });
        let queue = ConnectionQueue {
            connection: connection.clone(),
        };
        (connection, queue)
    }

    /// Queues an event if the connection may receive it and the queue has room.
    /// Never blocks; a full queue closes the connection instead of growing.
    pub fn push(&self, publication: &Arc<Publication>) -> PushOutcome {
        if !self.admits(publication) {
            return PushOutcome::Filtered;
        }
        self.enqueue(Outbound::Event(publication.clone()), true)
    }

    /// Whether this connection may receive `publication` (its audience and
    /// exclusion), with the roles in force now. The roles' lock is taken only
    /// for an audience that lists roles: the fan-out calls this per recipient.
    pub fn admits(&self, publication: &Publication) -> bool {
        let Some(filter) = &publication.filter else {
            return true;
        };
        let by_role = filter
            .audience
            .as_ref()
            .is_some_and(|audience| !audience.roles.is_empty());
        if by_role {
            let roles = lock(&self.roles);
            publication.admits(&self.client_id, &self.user, &roles)
        } else {
            publication.admits(&self.client_id, &self.user, &[])
        }
    }

    /// Replaces the roles used for audience filtering (a refreshed token's).
    pub fn set_roles(&self, roles: Arc<[String]>) {
        *lock(&self.roles) = roles;
    }

    /// Queues a server-side unsubscribe notice (ordered after queued events).
    pub fn push_unsubscribed(&self, channel: ChannelName, reason: String) {
        let notice = ServerUnsubscribe { channel, reason };
        self.enqueue(Outbound::Unsubscribed(Box::new(notice)), false);
    }

    /// Queues a request from `POST /request` for the transport task:
    /// `Overflow` when [`MAX_CONTROLS`] are waiting already (nothing is
    /// closed). The receiver answers once the request is applied, and fails
    /// if the connection ends first.
    pub fn push_control(
        &self,
        request: ControlRequest,
    ) -> (PushOutcome, oneshot::Receiver<ControlOutcome>) {
        let (applied, done) = oneshot::channel();
        let control = Control { request, applied };
        (
            self.enqueue(Outbound::Control(Box::new(control)), false),
            done,
        )
    }

    /// Queues a presence push. Subject to the same bounds as events.
    pub fn push_presence(&self, channel: ChannelName, text: Utf8Bytes) -> PushOutcome {
        let push = PresencePush { channel, text };
        self.enqueue(Outbound::Presence(Box::new(push)), true)
    }

    fn enqueue(&self, item: Outbound, bounded: bool) -> PushOutcome {
        let size = item.size();
        let mut queue = lock(&self.queue);
        if queue.closed {
            return PushOutcome::Closed;
        }
        let control = matches!(item, Outbound::Control(_));
        if control && queue.controls >= MAX_CONTROLS {
            return PushOutcome::Overflow;
        }
        if bounded
            && (queue.items.len() >= self.limits.messages || queue.bytes + size > self.limits.bytes)
        {
            drop(queue);
            return if self.request_close(CloseCode::SlowConsumer, None) {
                PushOutcome::Overflow
            } else {
                PushOutcome::Closed
            };
        }
        let was_empty = queue.items.is_empty();
        queue.controls += usize::from(control);
        queue.items.push_back(item);
        queue.bytes += size;
        drop(queue);
        // The reader drains everything per wake-up, so only the first item needs one.
        if was_empty {
            self.queue_waker.wake();
        }
        PushOutcome::Queued
    }

    /// Asks the transport task to send `disconnect` and close. The first
    /// request wins; returns whether this one was it.
    pub fn request_close(&self, code: CloseCode, reason: Option<String>) -> bool {
        let mut close = lock(&self.close);
        if close.is_some() {
            return false;
        }
        *close = Some(CloseRequest {
            code,
            reason: reason.unwrap_or_else(|| code.default_reason().to_owned()),
        });
        drop(close);
        self.close_pending.store(true, Ordering::Release);
        // Every waiter (the request loop, a blocked write) must see it:
        // those of `close_requested` and the queue's reader.
        self.close_notify.notify_waiters();
        self.queue_waker.wake();
        true
    }

    /// Whether its transport task has let go of the queue: the connection
    /// is closing or closed, and will never subscribe again.
    pub fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }

    /// The pending close request, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        lock(&self.close).clone()
    }

    /// Resolves once a close has been requested.
    pub async fn close_requested(&self) -> CloseRequest {
        loop {
            let notified = self.close_notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a request between the check and the
            // await still wakes us.
            notified.as_mut().enable();
            if let Some(request) = self.close_request() {
                return request;
            }
            notified.await;
        }
    }

    fn pop(&self) -> Option<Outbound> {
        let mut queue = lock(&self.queue);
        let item = queue.items.pop_front()?;
        queue.bytes -= item.size();
        queue.controls -= usize::from(matches!(item, Outbound::Control(_)));
        if queue.items.is_empty() && queue.items.capacity() > KEEP_CAPACITY {
            queue.items = VecDeque::new();
        }
        Some(item)
    }
}

impl ConnectionQueue {
    /// Waits for the next item.
    pub async fn recv(&mut self) -> Outbound {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item, or `Pending` with the task registered to be woken when
    /// one is queued or a close is requested.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        // Registered before looking, so a push in between wakes this task.
        self.connection.queue_waker.register(cx.waker());
        self.pop_registered()
    }

    /// A close request first, else the next item; `Pending` with the task
    /// registered to be woken by either.
    ///
    /// For the task that reads this queue: closes share the queue's one
    /// waker slot, so a transport that waits on both in one task registers
    /// once per poll (other tasks use [`Connection::close_requested`]).
    pub fn poll_close_or_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Outbound, CloseRequest>> {
        if let Poll::Ready(request) = self.poll_close(cx) {
            return Poll::Ready(Err(request));
        }
        self.pop_registered().map(Ok)
    }

    /// The next item, for a poll that has registered the task already.
    fn pop_registered(&mut self) -> Poll<Outbound> {
        match self.connection.pop() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// The close request, once there is one; until then `Pending`, with the
    /// task registered to be woken by a close request (or a queued item).
    /// For the task that reads this queue, as
    /// [`poll_close_or_recv`](Self::poll_close_or_recv).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        self.connection.queue_waker.register(cx.waker());
        match self.requested_close() {
            Some(request) => Poll::Ready(request),
            None => Poll::Pending,
        }
    }

    /// The close request if there is one (a lock-free check first).
    pub fn requested_close(&self) -> Option<CloseRequest> {
        let connection = &self.connection;
        if connection.close_pending.load(Ordering::Acquire) {
            connection.close_request()
        } else {
            None
        }
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.connection.pop()
    }
}

impl Drop for ConnectionQueue {
    fn drop(&mut self) {
        let mut queue = lock(&self.connection.queue);
        queue.closed = true;
        queue.items = VecDeque::new();
        queue.bytes = 0;
        drop(queue);
        // A stored waker keeps the finished task's memory until the hub lets go.
        drop(self.connection.queue_waker.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_waiting_are_bounded_and_nothing_closes() {
        let (connection, mut queue) = Connection::new(
            1,
            Arc::from("c_1"),
            Arc::from("u1"),
            Arc::from(Vec::new()),
            QueueLimits {
                messages: 1024,
                bytes: 1 << 20,
            },
        );
        let status = || ControlRequest::Status(PresenceStatus::Away);
        for _ in 0..MAX_CONTROLS {
            assert_eq!(connection.push_control(status()).0, PushOutcome::Queued);
        }
        assert_eq!(connection.push_control(status()).0, PushOutcome::Overflow);
        assert!(
            connection.close_request().is_none(),
            "a refusal closes nothing"
        );
        // Read one: room for one more.
        assert!(matches!(queue.try_recv(), Some(Outbound::Control(_))));
        assert_eq!(connection.push_control(status()).0, PushOutcome::Queued);
        assert_eq!(connection.push_control(status()).0, PushOutcome::Overflow);
    }
}

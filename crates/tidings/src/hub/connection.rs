//! One connection as the hub sees it: identity for filtering, a bounded send
//! queue, and a way to ask its transport task to close.
//!
//! The queue is a `VecDeque` behind a mutex rather than a channel: it allocates
//! nothing until the first event (an idle connection costs no queue memory) and
//! counts messages and bytes exactly under the same lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::engine::Publication;
use crate::protocol::{ChannelName, CloseCode, PresenceStatus};
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
    Control(Box<ControlRequest>),
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
    /// Set once the transport task is gone; later pushes are dropped.
    closed: bool,
}

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
    /// Roles, for audience filtering.
    pub roles: Arc<[String]>,
    queue: Mutex<QueueState>,
    queue_notify: Notify,
    limits: QueueLimits,
    close: Mutex<Option<CloseRequest>>,
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
    /// The queue is full: the connection was asked to close with 4002.
    Overflow,
    /// The connection is gone.
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
            roles,
            queue: Mutex::new(QueueState::default()),
            queue_notify: Notify::new(),
            limits,
            close: Mutex::new(None),
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
        if !publication.admits(&self.client_id, &self.user, &self.roles) {
            return PushOutcome::Filtered;
        }
        self.enqueue(Outbound::Event(publication.clone()), true)
    }

    /// Queues a server-side unsubscribe notice (ordered after queued events).
    pub fn push_unsubscribed(&self, channel: ChannelName, reason: String) {
        let notice = ServerUnsubscribe { channel, reason };
        self.enqueue(Outbound::Unsubscribed(Box::new(notice)), false);
    }

    /// Queues a request from `POST /request` for the transport task.
    pub fn push_control(&self, request: ControlRequest) -> bool {
        self.enqueue(Outbound::Control(Box::new(request)), false) == PushOutcome::Queued
    }

    /// Queues a presence push. Subject to the same bounds as events.
    pub fn push_presence(&self, channel: ChannelName, text: Utf8Bytes) {
        let push = PresencePush { channel, text };
        self.enqueue(Outbound::Presence(Box::new(push)), true);
    }

    fn enqueue(&self, item: Outbound, bounded: bool) -> PushOutcome {
        let size = item.size();
        let mut queue = lock(&self.queue);
        if queue.closed {
            return PushOutcome::Closed;
        }
        if bounded
            && (queue.items.len() >= self.limits.messages || queue.bytes + size > self.limits.bytes)
        {
            drop(queue);
            self.request_close(CloseCode::SlowConsumer, None);
            return PushOutcome::Overflow;
        }
        let was_empty = queue.items.is_empty();
        queue.items.push_back(item);
        queue.bytes += size;
        drop(queue);
        // The reader drains everything per wake-up, so only the first item needs one.
        if was_empty {
            self.queue_notify.notify_one();
        }
        PushOutcome::Queued
    }

    /// Asks the transport task to send `disconnect` and close. The first request wins.
    pub fn request_close(&self, code: CloseCode, reason: Option<String>) {
        let mut close = lock(&self.close);
        if close.is_none() {
            *close = Some(CloseRequest {
                code,
                reason: reason.unwrap_or_else(|| code.default_reason().to_owned()),
            });
            drop(close);
            // Every waiter (the request loop, a blocked write) must see it.
            self.close_notify.notify_waiters();
        }
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
        if queue.items.is_empty() && queue.items.capacity() > KEEP_CAPACITY {
            queue.items = VecDeque::new();
        }
        Some(item)
    }
}

impl ConnectionQueue {
    /// Waits for the next item.
    pub async fn recv(&mut self) -> Outbound {
        let connection = &self.connection;
        loop {
            // Created before looking, so a push in between leaves a permit.
            let notified = connection.queue_notify.notified();
            if let Some(item) = connection.pop() {
                return item;
            }
            notified.await;
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
    }
}

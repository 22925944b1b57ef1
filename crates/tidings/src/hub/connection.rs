//! One connection as the hub sees it: identity for filtering, a bounded send
//! queue, and a way to ask its transport task to close.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, Notify};

use crate::engine::Publication;
use crate::protocol::{ChannelName, CloseCode};

/// What the hub hands a connection's transport task.
#[derive(Debug)]
pub enum Outbound {
    /// An event of a channel the connection is subscribed to.
    Event(Arc<Publication>),
    /// A presence push for a channel the connection is on.
    Presence {
        /// The channel.
        channel: ChannelName,
        /// The encoded push, shared by every recipient.
        text: Utf8Bytes,
    },
    /// The server removed a subscription.
    Unsubscribed {
        /// The channel.
        channel: ChannelName,
        /// Why.
        reason: String,
    },
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
    sender: mpsc::UnboundedSender<Outbound>,
    queued_messages: AtomicUsize,
    queued_bytes: AtomicUsize,
    limits: QueueLimits,
    close: Mutex<Option<CloseRequest>>,
    close_notify: Notify,
}

/// The transport task's side of the queue.
#[derive(Debug)]
pub struct ConnectionQueue {
    receiver: mpsc::UnboundedReceiver<Outbound>,
    connection: Arc<Connection>,
}

/// Why [`Connection::push`] did not queue an event.
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

impl Connection {
    /// A connection and the queue its transport task reads.
    pub fn new(
        key: u64,
        client_id: Arc<str>,
        user: Arc<str>,
        roles: Arc<[String]>,
        limits: QueueLimits,
    ) -> (Arc<Self>, ConnectionQueue) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let connection = Arc::new(Self {
            key,
            client_id,
            user,
            roles,
            sender,
            queued_messages: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            limits,
            close: Mutex::new(None),
            close_notify: Notify::new(),
        });
        let queue = ConnectionQueue {
            receiver,
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
        let size = publication.encoded().len();
        let messages = self.queued_messages.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if messages > self.limits.messages || bytes > self.limits.bytes {
            self.queued_messages.fetch_sub(1, Ordering::Relaxed);
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.request_close(CloseCode::SlowConsumer, None);
            return PushOutcome::Overflow;
        }
        if self
            .sender
            .send(Outbound::Event(publication.clone()))
            .is_err()
        {
            return PushOutcome::Closed;
        }
        PushOutcome::Queued
    }

    /// Queues a server-side unsubscribe notice (ordered after queued events).
    pub fn push_unsubscribed(&self, channel: ChannelName, reason: String) {
        self.push_control(Outbound::Unsubscribed { channel, reason });
    }

    /// Queues a presence push. Subject to the same bounds as events.
    pub fn push_presence(&self, channel: ChannelName, text: Utf8Bytes) {
        let size = text.len();
        let messages = self.queued_messages.load(Ordering::Relaxed);
        let bytes = self.queued_bytes.load(Ordering::Relaxed);
        if messages >= self.limits.messages || bytes + size > self.limits.bytes {
            self.request_close(CloseCode::SlowConsumer, None);
            return;
        }
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        self.push_control(Outbound::Presence { channel, text });
    }

    fn push_control(&self, item: Outbound) {
        self.queued_messages.fetch_add(1, Ordering::Relaxed);
        if self.sender.send(item).is_err() {
            self.queued_messages.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Asks the transport task to send `disconnect` and close. The first request wins.
    pub fn request_close(&self, code: CloseCode, reason: Option<String>) {
        let mut close = self.close.lock().unwrap_or_else(|p| p.into_inner());
        if close.is_none() {
            *close = Some(CloseRequest {
                code,
                reason: reason.unwrap_or_else(|| code.default_reason().to_owned()),
            });
            self.close_notify.notify_one();
        }
    }

    /// The pending close request, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.close.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves once a close has been requested.
    pub async fn close_requested(&self) -> CloseRequest {
        loop {
            if let Some(request) = self.close_request() {
                return request;
            }
            self.close_notify.notified().await;
        }
    }

    /// Messages waiting in the send queue.
    pub fn queued_messages(&self) -> usize {
        self.queued_messages.load(Ordering::Relaxed)
    }
}

impl ConnectionQueue {
    fn account(&self, item: &Outbound) {
        self.connection
            .queued_messages
            .fetch_sub(1, Ordering::Relaxed);
        let bytes = match item {
            Outbound::Event(p) => p.encoded().len(),
            Outbound::Presence { text, .. } => text.len(),
            Outbound::Unsubscribed { .. } => 0,
        };
        self.connection
            .queued_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Waits for the next item.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.receiver.recv().await?;
        self.account(&item);
        Some(item)
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.receiver.try_recv().ok()?;
        self.account(&item);
        Some(item)
    }

    /// The connection this queue belongs to.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }
}

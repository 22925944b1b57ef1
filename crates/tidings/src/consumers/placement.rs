//! Placing one consumed message: read it, publish it, retry transient failures
//! (the engine unavailable) with backoff until they pass or the consumer stops.
//! Everything else a publish can refuse is final: the message is dead-lettered.
//! So is a message whose reading or publishing panics (a bug, or an embedding
//! application's own engine): a poison message must not stop its consumer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;

use super::message::{MessageReader, PublishAction};
use super::{pause_or_stop, ConsumerConfig};
use crate::config::ApiSettings;
use crate::metrics::ConsumerMetrics;
use crate::publisher::{PublishError, Published, Publisher};

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Placed in its channel(s) (or all of them were duplicates).
    Placed,
    /// Its event name is not consumed.
    Skipped,
    /// It cannot be published, for this reason: dead-letter it.
    DeadLetter(String),
}

/// The dead-letter reason of a message whose placement panicked.
pub const PANICKED: &str = "internal error while placing the message";

/// The consumer was stopped while a transient failure was being retried; the
/// message is left unacknowledged.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stopped")]
pub struct Stopped;

/// Places messages of one consumer.
#[derive(Clone)]
pub struct Placer {
    reader: Option<Arc<MessageReader>>,
    publisher: Publisher,
    metrics: ConsumerMetrics,
    max_backoff: Duration,
}

impl Placer {
    /// A placer publishing with `publisher` (already carrying the consumer's
    /// idempotency window).
    pub(crate) fn new(
        config: Arc<ConsumerConfig>,
        publisher: Publisher,
        api: ApiSettings,
        metrics: ConsumerMetrics,
    ) -> Self {
        // The configuration was validated, so this only fails for a config
        // built in code without validation: every message is dead-lettered
        // with the reason rather than panicking.
        let reader = match MessageReader::new(&config, &api) {
            Ok(reader) => Some(Arc::new(reader)),
            Err(reason) => {
                tracing::error!(consumer = %config.name, %reason, "invalid consumer mapping");
                None
            }
        };
        Self {
            reader,
            publisher,
            metrics,
            max_backoff: config.max_retry_backoff,
        }
    }

    /// Reads and publishes `message`. It is counted as processed, and its
    /// dead-lettering logged, by the consumer once that is recorded.
    pub async fn place(
        &self,
        message: &[u8],
        source_id: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Placement, Stopped> {
        // Unwinding leaves nothing of the placer half-changed: it holds no
        // state across messages, and a broadcast's channels placed before the
        // panic keep the event (its id makes a later retry a duplicate).
        match AssertUnwindSafe(self.place_unguarded(message, source_id, stop))
            .catch_unwind()
            .await
        {
            Ok(placement) => placement,
            Err(_) => {
                tracing::error!(
                    source_id,
                    "placing a consumed message panicked; dead-lettering it"
                );
                Ok(Placement::DeadLetter(PANICKED.into()))
            }
        }
    }

    async fn place_unguarded(
        &self,
        message: &[u8],
        source_id: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Placement, Stopped> {
        let Some(reader) = &self.reader else {
            return Ok(Placement::DeadLetter(
                "the consumer's mapping is invalid".into(),
            ));
        };
        let action = match reader.read(message, source_id) {
            Ok(PublishAction::Skip) => return Ok(Placement::Skipped),
            Ok(action) => action,
            Err(reason) => return Ok(Placement::DeadLetter(reason)),
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.publish(&action).await {
                Ok(results) => {
                    for published in results {
                        if published.duplicate {
                            self.metrics.duplicate();
                        } else {
                            self.metrics.published();
                        }
                    }
                    return Ok(Placement::Placed);
                }
                Err(PublishError::Engine(err)) => {
                    self.metrics.retry();
                    tracing::debug!(source_id, error = %err, ?backoff, "publish failed; retrying");
                    if pause_or_stop(stop, backoff).await {
                        return Err(Stopped);
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(refused) => {
                    return Ok(Placement::DeadLetter(super::message::refusal(&refused)))
                }
            }
        }
    }

    async fn publish(&self, action: &PublishAction) -> Result<Vec<Published>, PublishError> {
        // Cloned because a retry needs the request again; messages are small.
        match action {
            PublishAction::Publish(request) => {
                Ok(vec![self.publisher.publish(request.clone()).await?])
            }
            PublishAction::Broadcast(request) => self.publisher.broadcast(request.clone()).await,
            PublishAction::EntityChange(change) => {
                self.publisher.publish_entity_change(change.clone()).await
            }
            PublishAction::Skip => Ok(Vec::new()),
        }
    }
}

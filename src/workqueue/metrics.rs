//! A hook through which a [`WorkQueue`](super::WorkQueue) reports what it
//! does, so that metrics can be exported without the queue knowing how.

use std::time::Duration;

/// Observations a queue reports. Every method defaults to doing nothing, so
/// an implementation only overrides what it records. The queue calls these
/// while holding its internal lock: keep them cheap and never call back into
/// the queue.
pub trait QueueMetrics: Send + Sync {
    /// An item was accepted by `add` (it was not already waiting).
    fn add(&self) {}
    /// The number of items ready to be handed out changed to `depth`.
    fn depth(&self, _depth: usize) {}
    /// An item was handed out by `get` after waiting `waited` in the queue.
    fn get(&self, _waited: Duration) {}
    /// An item was marked done after being processed for `worked`.
    fn done(&self, _worked: Duration) {}
    /// An item was re-added through the rate limiter.
    fn retry(&self) {}
}

/// Records nothing; the default for queues built without metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopMetrics;

impl QueueMetrics for NoopMetrics {}

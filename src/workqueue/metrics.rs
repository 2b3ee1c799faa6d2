//! A hook through which a [`WorkQueue`](super::WorkQueue) reports what it
//! does, so that metrics can be exported without the queue knowing how.

use std::fmt;
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
    /// Called once, when the queue is built, with a probe that measures the
    /// work in progress when asked (e.g. at scrape time). The queue already
    /// records when each item was handed out, so nothing has to run
    /// periodically for this (client-go refreshes these values every 500 ms).
    fn unfinished_work_probe(&self, _probe: UnfinishedWorkProbe) {}
}

/// Items held by workers at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct UnfinishedWork {
    /// Number of items handed out and not yet done.
    pub in_flight: usize,
    /// Sum over those items of how long they have been processed so far
    /// (client-go's `unfinished_work_seconds`).
    pub total: Duration,
    /// How long the oldest of them has been processed so far (client-go's
    /// `longest_running_processor_seconds`).
    pub longest: Duration,
}

/// Measures a queue's [`UnfinishedWork`] on demand. It holds only a weak
/// reference: once the queue is dropped it reports nothing.
pub struct UnfinishedWorkProbe(Box<dyn Fn() -> Option<UnfinishedWork> + Send + Sync>);

impl UnfinishedWorkProbe {
    pub(super) fn new(f: impl Fn() -> Option<UnfinishedWork> + Send + Sync + 'static) -> Self {
        Self(Box::new(f))
    }

    /// The work in progress now, or `None` if the queue is gone.
    pub fn measure(&self) -> Option<UnfinishedWork> {
        (self.0)()
    }
}

impl fmt::Debug for UnfinishedWorkProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnfinishedWorkProbe")
    }
}

/// Records nothing; the default for queues built without metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopMetrics;

impl QueueMetrics for NoopMetrics {}

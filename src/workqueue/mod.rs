//! A work queue with client-go semantics, for async workers.
//!
//! Event handlers [`add`](WorkQueue::add) keys; worker tasks loop on
//! [`get`](WorkQueue::get), reconcile, then call [`done`](WorkQueue::done),
//! and on failure [`add_rate_limited`](WorkQueue::add_rate_limited) (on
//! success [`forget`](WorkQueue::forget)). A key is never queued twice and
//! never processed by two workers at once. Rate limiters decide retry
//! delays; [`QueueMetrics`] is the hook for exporting metrics.

mod metrics;
mod queue;
mod rate_limiter;

pub use metrics::{NoopMetrics, QueueMetrics, UnfinishedWork, UnfinishedWorkProbe};
pub use queue::WorkQueue;
pub use rate_limiter::{
    default_controller_rate_limiter, BucketRateLimiter, ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter, RateLimiter,
};

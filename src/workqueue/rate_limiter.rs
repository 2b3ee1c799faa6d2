//! Rate limiters that decide how long a failed item waits before it is retried.
//!
//! The shapes follow client-go's `workqueue` package: a per-item exponential
//! backoff, an overall token bucket, and a combinator that takes the longest
//! delay of several limiters.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Decides the delay before an item is retried.
pub trait RateLimiter<T>: Send + Sync {
    /// Delay before `item` may be processed again. Each call counts as one
    /// more failure of `item`.
    fn when(&self, item: &T) -> Duration;
    /// Stop tracking `item` (it succeeded); its next failure starts afresh.
    fn forget(&self, item: &T);
    /// How many times `item` has been rate limited since it was last forgotten.
    fn num_requeues(&self, item: &T) -> u32;
}

fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-item exponential backoff: the n-th failure (counting from 0) of an
/// item waits `base * 2^n`, never more than `max`.
pub struct ItemExponentialFailureRateLimiter<T> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<T, u32>>,
}

impl<T> ItemExponentialFailureRateLimiter<T> {
    /// A limiter starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Eq + Hash + Clone + Send + Sync> RateLimiter<T> for ItemExponentialFailureRateLimiter<T> {
    fn when(&self, item: &T) -> Duration {
        let exp = {
            let mut failures = lock(&self.failures);
            let n = failures.entry(item.clone()).or_insert(0);
            let exp = *n;
            *n = n.saturating_add(1);
            exp
        };
        2u32.checked_pow(exp)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    fn forget(&self, item: &T) {
        lock(&self.failures).remove(item);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        lock(&self.failures).get(item).copied().unwrap_or(0)
    }
}

/// An overall token bucket shared by all items: `burst` tokens, refilled at
/// `qps` tokens per second.
///
/// Like a reservation in Go's `x/time/rate`, every call to
/// [`when`](RateLimiter::when) takes a token, even one that is not there yet,
/// and returns how long until that token becomes available. With burst 100
/// and 10 qps, the first 100 calls get zero and the following ones 100 ms,
/// 200 ms, ... unless time has passed in between. It keeps no per-item state.
pub struct BucketRateLimiter {
    /// Time for one token to refill.
    interval: Duration,
    /// Time for the whole bucket to refill (`burst * interval`).
    capacity: Duration,
    /// The instant at which the bucket will be full again, given the tokens
    /// taken so far; `None` until the first call (the bucket starts full).
    full_at: Mutex<Option<Instant>>,
}

impl BucketRateLimiter {
    /// A bucket of `burst` tokens refilled at `qps` tokens per second.
    ///
    /// # Panics
    /// If `qps` is not a positive finite number.
    pub fn new(qps: f64, burst: u32) -> Self {
        assert!(
            qps.is_finite() && qps > 0.0,
            "BucketRateLimiter: qps must be positive, got {qps}"
        );
        let interval = Duration::from_nanos((1e9 / qps).round() as u64);
        Self {
            interval,
            capacity: interval.saturating_mul(burst),
            full_at: Mutex::new(None),
        }
    }
}

impl<T> RateLimiter<T> for BucketRateLimiter {
    fn when(&self, _item: &T) -> Duration {
        let now = Instant::now();
        let mut full_at = lock(&self.full_at);
        // Taking a token pushes the "full again" instant one interval later.
        let next = full_at.map_or(now, |t| t.max(now)) + self.interval;
        *full_at = Some(next);
        // The bucket holds `burst - (next - now) / interval` tokens now; when
        // that is negative, the reserved token arrives after the deficit.
        (next - now).saturating_sub(self.capacity)
    }

    fn forget(&self, _item: &T) {}

    fn num_requeues(&self, _item: &T) -> u32 {
        0
    }
}

/// Combines limiters: the delay is the longest any of them asks for, the
/// requeue count the highest any of them reports.
pub struct MaxOfRateLimiter<T>(Vec<Box<dyn RateLimiter<T>>>);

impl<T> MaxOfRateLimiter<T> {
    /// Combines `limiters`; every one of them sees every call.
    pub fn new(limiters: Vec<Box<dyn RateLimiter<T>>>) -> Self {
        Self(limiters)
    }
}

impl<T> RateLimiter<T> for MaxOfRateLimiter<T> {
    fn when(&self, item: &T) -> Duration {
        // Every limiter must record the failure, so no short-circuiting.
        self.0
            .iter()
            .map(|l| l.when(item))
            .fold(Duration::ZERO, Duration::max)
    }

    fn forget(&self, item: &T) {
        for l in &self.0 {
            l.forget(item);
        }
    }

    fn num_requeues(&self, item: &T) -> u32 {
        self.0
            .iter()
            .map(|l| l.num_requeues(item))
            .max()
            .unwrap_or(0)
    }
}

/// The limiter controllers use by default: the longer of a per-item
/// exponential backoff from 5 ms to 1000 s and an overall bucket of 10 qps
/// with a burst of 100.
pub fn default_controller_rate_limiter<T>() -> MaxOfRateLimiter<T>
where
    T: Eq + Hash + Clone + Send + Sync + 'static,
{
    MaxOfRateLimiter::new(vec![
        Box::new(ItemExponentialFailureRateLimiter::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        )),
        Box::new(BucketRateLimiter::new(10.0, 100)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn exponential_doubles_up_to_the_cap_per_item() {
        let rl = ItemExponentialFailureRateLimiter::new(5 * MS, 100 * MS);
        let got: Vec<_> = (0..7).map(|_| rl.when(&"a")).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 100, 100].map(|n| n * MS));
        assert_eq!(rl.num_requeues(&"a"), 7);
        // Another item has its own count.
        assert_eq!(rl.when(&"b"), 5 * MS);
        assert_eq!(rl.num_requeues(&"b"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_survives_huge_exponents() {
        let rl = ItemExponentialFailureRateLimiter::new(5 * MS, Duration::from_secs(1000));
        for _ in 0..100 {
            rl.when(&1);
        }
        assert_eq!(rl.when(&1), Duration::from_secs(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn forget_resets_the_backoff() {
        let rl = ItemExponentialFailureRateLimiter::new(5 * MS, Duration::from_secs(1));
        rl.when(&"a");
        rl.when(&"a");
        assert_eq!(rl.when(&"a"), 20 * MS);
        rl.forget(&"a");
        assert_eq!(rl.num_requeues(&"a"), 0);
        assert_eq!(rl.when(&"a"), 5 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_spaces_by_interval() {
        let rl = BucketRateLimiter::new(10.0, 100);
        for i in 0..100 {
            assert_eq!(
                RateLimiter::<u32>::when(&rl, &i),
                Duration::ZERO,
                "call {i}"
            );
        }
        assert_eq!(RateLimiter::<u32>::when(&rl, &0), 100 * MS);
        assert_eq!(RateLimiter::<u32>::when(&rl, &0), 200 * MS);
        assert_eq!(RateLimiter::<u32>::when(&rl, &0), 300 * MS);
        // 350 ms later three and a half tokens have come back: the next
        // reservation waits only for the missing half token.
        tokio::time::advance(350 * MS).await;
        assert_eq!(RateLimiter::<u32>::when(&rl, &0), 50 * MS);
        // A long pause refills the bucket, but never beyond the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..100 {
            assert_eq!(RateLimiter::<u32>::when(&rl, &0), Duration::ZERO);
        }
        assert_eq!(RateLimiter::<u32>::when(&rl, &0), 100 * MS);
        assert_eq!(RateLimiter::<u32>::num_requeues(&rl, &0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_of_takes_the_longest_delay_and_forgets_everywhere() {
        let rl = MaxOfRateLimiter::new(vec![
            Box::new(ItemExponentialFailureRateLimiter::new(
                MS,
                Duration::from_secs(10),
            )),
            Box::new(BucketRateLimiter::new(1.0, 2)),
        ]);
        assert_eq!(rl.when(&"a"), MS); // exponential 1 ms, bucket 0
        assert_eq!(rl.when(&"a"), 2 * MS); // exponential 2 ms, bucket 0
        assert_eq!(rl.when(&"a"), Duration::from_secs(1)); // bucket empty
        assert_eq!(rl.num_requeues(&"a"), 3);
        rl.forget(&"a");
        assert_eq!(rl.num_requeues(&"a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn default_controller_limiter_values() {
        let rl = default_controller_rate_limiter::<String>();
        let a = "a".to_string();
        assert_eq!(rl.when(&a), 5 * MS);
        assert_eq!(rl.when(&a), 10 * MS);
        assert_eq!(rl.when(&a), 20 * MS);
        // Other keys drain the burst (3 tokens taken already, 97 left)...
        for i in 0..97 {
            assert_eq!(rl.when(&format!("k{i}")), 5 * MS);
        }
        // ...so a fresh key now waits for the bucket rather than 5 ms.
        assert_eq!(rl.when(&"fresh".to_string()), 100 * MS);
    }
}

//! Exponential backoff with jitter (+0..25 %).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base + base.mul_f64(rand::random::<f64>() * 0.25)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

impl Default for Backoff {
    /// 800 ms .. 30 s, as for API calls.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(800), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let bases = [100, 200, 400, 500, 500];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base && d <= base.mul_f64(1.25), "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(126));
    }
}

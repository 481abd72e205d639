//! Exponential backoff with jitter between connection attempts.
//!
//! The n-th consecutive failure waits a random time between half and all of
//! `initial · 2ⁿ`, capped at `max`; the jitter keeps many clients that lost the
//! service at the same moment from reconnecting in lockstep. A successful
//! checkpoint resets the sequence.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Consecutive failures since the last success.
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }

    /// Starts again from `initial` after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds_and_reset() {
        let initial = Duration::from_millis(200);
        let max = Duration::from_secs(10);
        let mut b = Backoff::new(initial, max);
        let mut ceiling = initial;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= initial);
    }
}

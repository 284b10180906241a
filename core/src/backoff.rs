//! Retry timing, the one home for every reconnect and retry loop (agent
//! sessions, proxy subscriptions, the control plane's store sync, accept
//! loops, the CLI). No IO: the caller supplies the random number for jitter.

use std::time::Duration;

/// Jittered exponential backoff ("full jitter" on the upper half): each
/// failure doubles the ceiling up to `max`; a success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            ceiling: base,
        }
    }

    /// The delay before the next attempt; `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(self.max);
        d
    }

    /// [`Backoff::next_delay`] with a random jitter.
    pub fn next_jittered(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }
}

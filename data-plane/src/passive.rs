//! Passive health, sans IO: `consecutive_failures` failed connects in a row
//! eject a backend from this proxy's rotation for `base_ejection` ×
//! (times ejected, at most 10), without waiting for the control plane. At
//! most `max_percent` of a pool's backends are ejected at once, so a proxy
//! with a local problem cannot eject a whole pool. A successful connect
//! resets the count; an ejected backend returns when its time is up.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Failed connects in a row that eject a backend (0: passive health off).
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_percent: u32,
}

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
}

#[derive(Debug)]
pub struct Passive {
    cfg: PassiveConfig,
    backends: HashMap<String, Entry>,
}

impl Passive {
    pub fn new(cfg: PassiveConfig) -> Self {
        Passive {
            cfg,
            backends: HashMap::new(),
        }
    }

    /// Backends ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<String> {
        self.backends
            .iter()
            .filter(|(_, e)| e.until.is_some_and(|u| u > now))
            .map(|(b, _)| b.clone())
            .collect()
    }

    pub fn on_success(&mut self, backend: &str) {
        if let Some(e) = self.backends.get_mut(backend) {
            e.failures = 0;
        }
    }

    /// Records a failed connect; returns true when it ejects the backend.
    pub fn on_failure(&mut self, backend: &str, pool_size: usize, now: Instant) -> bool {
        if self.cfg.consecutive_failures == 0 {
            return false;
        }
        let ejected_now = self.ejected(now).len();
        let cap = pool_size * self.cfg.max_percent as usize / 100;
        let e = self.backends.entry(backend.to_string()).or_default();
        if e.until.is_some_and(|u| u > now) {
            return false;
        }
        e.failures += 1;
        if e.failures < self.cfg.consecutive_failures || ejected_now >= cap {
            return false;
        }
        e.failures = 0;
        e.ejections = (e.ejections + 1).min(10);
        e.until = Some(now + self.cfg.base_ejection * e.ejections);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PassiveConfig {
        PassiveConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_and_time_returns() {
        let t0 = Instant::now();
        let mut p = Passive::new(cfg());
        assert!(!p.on_failure("a", 4, t0));
        assert!(!p.on_failure("a", 4, t0));
        p.on_success("a");
        assert!(!p.on_failure("a", 4, t0), "a success resets the count");
        assert!(!p.on_failure("a", 4, t0));
        assert!(p.on_failure("a", 4, t0), "third in a row ejects");
        assert_eq!(p.ejected(t0), vec!["a".to_string()]);
        assert!(
            p.ejected(t0 + Duration::from_secs(10)).is_empty(),
            "back after 10 s"
        );
        // Ejected again: twice as long.
        for _ in 0..3 {
            p.on_failure("a", 4, t0 + Duration::from_secs(11));
        }
        assert!(!p.ejected(t0 + Duration::from_secs(30)).is_empty());
        assert!(p.ejected(t0 + Duration::from_secs(31)).is_empty());
    }

    #[test]
    fn never_more_than_max_percent() {
        let t0 = Instant::now();
        let mut p = Passive::new(cfg());
        for b in ["a", "b", "c"] {
            for _ in 0..3 {
                p.on_failure(b, 4, t0);
            }
        }
        assert_eq!(p.ejected(t0).len(), 2, "50% of 4");
        let mut off = Passive::new(PassiveConfig {
            consecutive_failures: 0,
            ..cfg()
        });
        for _ in 0..10 {
            assert!(!off.on_failure("a", 4, t0));
        }
    }
}

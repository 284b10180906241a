//! Runs the assigned checks: one task per target, each with its own jittered
//! schedule and rise/fall machine. Applying a new assignment starts new
//! targets, stops removed ones and restarts only those whose spec changed;
//! the others keep their schedule and state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use trackwire_core::time::now_ms;

use parking_lot::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};
use trackwire_core::convert::health_to_pb;
use trackwire_core::{CheckSpec, HealthState};
use trackwire_proto::v1 as pb;

use crate::check::{CheckResult, PreparedCheck};
use crate::risefall::{Cadence, RiseFall};

/// (pool, backend)
pub type TargetKey = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub address: String,
    pub check: CheckSpec,
    /// The control plane's fingerprint of (address, check), echoed in
    /// verdicts so they count only for the spec they were made against.
    pub fingerprint: u64,
}

/// State shared between check tasks, the session and the HTTP port.
#[derive(Default)]
pub struct Shared {
    verdicts: Mutex<Verdicts>,
    /// Woken when a verdict changes and must be reported.
    pub changed: Notify,
    pub last_results: Mutex<HashMap<TargetKey, CheckResult>>,
    /// Targets whose outcome or status changed since the last heartbeat.
    results_changed: Mutex<std::collections::BTreeSet<TargetKey>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Verdicts {
    current: BTreeMap<TargetKey, pb::Verdict>,
    /// Keys whose verdict changed since the last report.
    pending: BTreeSet<TargetKey>,
}

impl Shared {
    fn set_verdict(
        &self,
        key: &TargetKey,
        fingerprint: u64,
        state: HealthState,
        at_ms: u64,
        reason: String,
    ) {
        let mut v = self.verdicts.lock();
        v.current.insert(
            key.clone(),
            pb::Verdict {
                pool: key.0.clone(),
                backend: key.1.clone(),
                state: health_to_pb(state),
                since_ms: at_ms,
                reason,
                fingerprint,
            },
        );
        v.pending.insert(key.clone());
        drop(v);
        self.metrics.transitions.inc();
        self.changed.notify_one();
    }

    fn forget(&self, key: &TargetKey) {
        let mut v = self.verdicts.lock();
        v.current.remove(key);
        v.pending.remove(key);
        self.last_results.lock().remove(key);
    }

    /// Every verdict held, for the hello of a new session; nothing stays pending.
    pub fn all_verdicts(&self) -> Vec<pb::Verdict> {
        let mut v = self.verdicts.lock();
        v.pending.clear();
        v.current.values().cloned().collect()
    }

    /// Verdicts changed since the last call.
    pub fn take_pending(&self) -> Vec<pb::Verdict> {
        let mut v = self.verdicts.lock();
        let keys = std::mem::take(&mut v.pending);
        keys.iter()
            .filter_map(|k| v.current.get(k).cloned())
            .collect()
    }

    /// Result summaries for the next heartbeat: changed ones, or all when `full`.
    pub fn take_results(&self, full: bool) -> Vec<pb::ResultSummary> {
        let changed = std::mem::take(&mut *self.results_changed.lock());
        let results = self.last_results.lock();
        let summary = |k: &TargetKey, r: &CheckResult| pb::ResultSummary {
            pool: k.0.clone(),
            backend: k.1.clone(),
            outcome: r.outcome.to_string(),
            status: r.status.map(u32::from).unwrap_or(0),
            latency_us: u32::try_from(r.latency.as_micros()).unwrap_or(u32::MAX),
            at_ms: now_ms(),
            reason: r.reason.chars().take(200).collect(),
        };
        if full {
            results.iter().map(|(k, r)| summary(k, r)).collect()
        } else {
            changed
                .iter()
                .filter_map(|k| results.get(k).map(|r| summary(k, r)))
                .collect()
        }
    }

    pub fn verdict(&self, key: &TargetKey) -> Option<pb::Verdict> {
        self.verdicts.lock().current.get(key).cloned()
    }
}

pub struct Runner {
    shared: Arc<Shared>,
    running: HashMap<TargetKey, (TargetSpec, JoinHandle<()>)>,
}

impl Runner {
    pub fn new(shared: Arc<Shared>) -> Self {
        Runner {
            shared,
            running: HashMap::new(),
        }
    }

    /// Makes the running set equal to `targets`.
    pub fn apply(&mut self, targets: HashMap<TargetKey, TargetSpec>) {
        let (mut started, mut stopped) = (0, 0);
        self.running.retain(|key, (spec, handle)| {
            let keep = targets.get(key) == Some(spec);
            if !keep {
                handle.abort();
                self.shared.forget(key);
                stopped += 1;
            }
            keep
        });
        for (key, spec) in targets {
            if self.running.contains_key(&key) {
                continue;
            }
            let span = info_span!("check", pool = %key.0, backend = %key.1);
            let handle = tokio::spawn(
                check_loop(key.clone(), spec.clone(), Arc::clone(&self.shared)).instrument(span),
            );
            self.running.insert(key, (spec, handle));
            started += 1;
        }
        self.shared.metrics.targets.set(self.running.len() as u64);
        if started + stopped > 0 {
            info!(
                started,
                stopped,
                running = self.running.len(),
                "applied assignment"
            );
        }
    }

    pub fn stop_all(&mut self) {
        self.apply(HashMap::new());
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for (_, handle) in self.running.values() {
            handle.abort();
        }
    }
}

/// `base` ± `percent`: checks of many targets drift apart instead of firing
/// together. `unit` is a random number in [0, 1).
pub fn jittered(base: Duration, percent: u32, unit: f64) -> Duration {
    let spread = f64::from(percent.min(50)) / 100.0;
    base.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

/// Offset of a target's first check: anywhere in one (fast) interval, so a
/// fresh agent with 10,000 targets spreads them instead of a burst.
pub fn first_offset(fast_interval: Duration, unit: f64) -> Duration {
    fast_interval.mul_f64(unit)
}

async fn check_loop(key: TargetKey, spec: TargetSpec, shared: Arc<Shared>) {
    let check = match PreparedCheck::new(&spec.address, spec.check.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot run check");
            return;
        }
    };
    let metrics = &shared.metrics;
    let counters = metrics.pool(&key.0);
    let mut rf = RiseFall::new(spec.check.rise, spec.check.fall);
    let first = first_offset(spec.check.fast_interval, rand::rng().random_range(0.0..1.0));
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        metrics
            .lateness
            .observe(Instant::now().saturating_duration_since(next));
        // Boxed: the check's state machine (connect, TLS, HTTP) is large and
        // lives only while a check runs, not for the life of each of 10,000
        // idle target tasks.
        let result = Box::pin(check.run()).await;
        metrics.record(&counters, &result);
        if let Some(t) = rf.observe(result.passed(), now_ms()) {
            info!(to = %t.to, outcome = %result.outcome, reason = %result.reason, "verdict changed");
            shared.set_verdict(&key, spec.fingerprint, t.to, t.at_ms, result.summary());
        }
        let changed = shared
            .last_results
            .lock()
            .insert(key.clone(), result.clone())
            .is_none_or(|old| old.outcome != result.outcome || old.status != result.status);
        if changed {
            shared.results_changed.lock().insert(key.clone());
        }
        let base = match rf.cadence() {
            Cadence::Normal => spec.check.interval,
            Cadence::Fast => spec.check.fast_interval,
            Cadence::Down => spec.check.down_interval,
        };
        next += jittered(
            base,
            spec.check.jitter_percent,
            rand::rng().random_range(0.0..1.0),
        );
        // A check that overran its slot starts the next one now, not in a burst.
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_percent() {
        let base = Duration::from_secs(1);
        assert_eq!(jittered(base, 10, 0.0), Duration::from_millis(900));
        assert_eq!(jittered(base, 10, 0.5), base);
        assert!(jittered(base, 10, 0.999_999) < Duration::from_millis(1100));
        assert_eq!(jittered(base, 0, 0.3), base);
        assert_eq!(first_offset(base, 0.25), Duration::from_millis(250));
    }
}

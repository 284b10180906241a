//! Flap damping, as BGP route-flap damping (RFC 2439): the arithmetic
//! (sans IO) and the task that writes its facts
//! (`{prefix}damping/{pool}/{backend}`). The pool's settings are
//! [`trackwire_core::DampingSpec`].
//!
//! Every transition of a backend's derived state adds `penalty` to a figure
//! of merit that decays exponentially with `half_life`. When the figure
//! exceeds `suppress`, the backend is held DOWN, and stays held until the
//! figure has decayed below `reuse` (never longer than `max_suppress`). A
//! backend that flaps a few times is therefore kept out of rotation until it
//! has been stable for a while, instead of bouncing proxies' traffic.
//!
//! The state is a fact in the store, so derivation stays a function of the
//! facts alone; the math takes times (Unix milliseconds) from its caller.
//!
//! The task runs on every replica. For each backend of a damped pool it
//! feeds the undamped derived state into [`observe`] and, when a suppression
//! has run out, [`release`]. Every
//! write is a compare-and-set on the record's revision, and its content
//! follows from the facts alone (transition times are the verdicts'), so
//! replicas racing each other produce one write with the same content; the
//! losers see the record already updated on their next snapshot. A record
//! is first written once a backend has votes, so appearing is not a flap.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trackwire_core::time::now_ms;
use trackwire_core::{DampingSpec, HealthState};

use crate::keys::{self, Keys};
use crate::state::{Snapshot, StateRx, next_change};
use crate::store::{Compare, Op, Store};

pub async fn run(
    store: Arc<dyn Store>,
    keys: Keys,
    mut state: StateRx,
    shutdown: CancellationToken,
) {
    loop {
        let snap = state.borrow_and_update().clone();
        let next_release = match snap {
            Some(snap) => step(store.as_ref(), &keys, &snap, now_ms()).await,
            None => None,
        };
        if !next_change(&mut state, next_release, &shutdown).await {
            return;
        }
    }
}

/// Makes the writes one snapshot calls for; returns the earliest pending release time.
pub async fn step(store: &dyn Store, keys: &Keys, snap: &Snapshot, now_ms: u64) -> Option<u64> {
    let mut next: Option<u64> = None;
    for (pool_name, pool) in snap.facts.pools.iter() {
        for b in &pool.backends {
            let id = (pool_name.clone(), b.name.clone());
            let old = snap.facts.damping.get(&id);
            let Some(spec) = &pool.damping else {
                if let Some(old) = old {
                    // Damping was turned off: the record goes.
                    cas(
                        store,
                        keys.damping(pool_name, &b.name),
                        old.mod_revision,
                        None,
                    )
                    .await;
                }
                continue;
            };
            let undamped = snap
                .derived
                .detail(pool_name, &b.name)
                .and_then(|d| d.undamped);
            let Some((state, at)) = undamped else {
                continue;
            };
            if old.is_none() && at == 0 {
                continue;
            }
            let mut new = observe(spec, old.map(|o| &o.state), state, at);
            if let Some(released) = release(spec, &new, now_ms) {
                new = released;
            }
            if new.suppressed {
                next = Some(next.map_or(new.until_ms, |n| n.min(new.until_ms)));
            }
            if old.map(|o| &o.state) != Some(&new) {
                if new.suppressed && !old.is_some_and(|o| o.state.suppressed) {
                    info!(pool = %pool_name, backend = %b.name, penalty = new.penalty, until_ms = new.until_ms, "flapping backend suppressed");
                }
                let rev = old.map(|o| o.mod_revision).unwrap_or(0);
                cas(
                    store,
                    keys.damping(pool_name, &b.name),
                    rev,
                    Some(keys::encode_damping(&new)),
                )
                .await;
            }
        }
    }
    next
}

/// Writes (or deletes) `key` if it is still at `rev` (0: absent).
async fn cas(store: &dyn Store, key: String, rev: u64, value: Option<Vec<u8>>) {
    let compare = if rev == 0 {
        Compare::Absent(key.clone())
    } else {
        Compare::ModRevision(key.clone(), rev)
    };
    let op = match value {
        Some(value) => Op::Put {
            key: key.clone(),
            value,
            lease: None,
        },
        None => Op::Delete(key.clone()),
    };
    match store.txn(vec![compare], vec![op]).await {
        Ok(r) if !r.succeeded => {
            debug!(%key, "damping record changed meanwhile (another replica wrote it)")
        }
        Ok(_) => {}
        Err(e) => {
            warn!(%key, error = %e, "writing damping record failed; retrying on the next change")
        }
    }
}

/// The damping state of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct DampState {
    /// The undamped derived state this record has seen last.
    pub last_state: HealthState,
    /// Figure of merit at `at_ms`.
    pub penalty: f64,
    pub at_ms: u64,
    pub suppressed: bool,
    /// When a suppressed backend is released (0 when not suppressed).
    pub until_ms: u64,
}

/// `penalty` decayed over `elapsed_ms`.
pub fn decay(penalty: f64, elapsed_ms: u64, half_life: Duration) -> f64 {
    let hl = half_life.as_millis().max(1) as f64;
    penalty * 0.5f64.powf(elapsed_ms as f64 / hl)
}

/// The record after the undamped state became `state` at `at_ms`. A first
/// record (`old` = `None`) carries no penalty: appearing is not flapping.
pub fn observe(
    spec: &DampingSpec,
    old: Option<&DampState>,
    state: HealthState,
    at_ms: u64,
) -> DampState {
    let Some(old) = old else {
        return DampState {
            last_state: state,
            penalty: 0.0,
            at_ms,
            suppressed: false,
            until_ms: 0,
        };
    };
    if old.last_state == state {
        return old.clone();
    }
    let at_ms = at_ms.max(old.at_ms);
    let penalty = decay(old.penalty, at_ms - old.at_ms, spec.half_life) + f64::from(spec.penalty);
    let suppressed =
        penalty > f64::from(spec.suppress) || (old.suppressed && penalty > f64::from(spec.reuse));
    let until_ms = if suppressed {
        // Time for the penalty to decay to `reuse`, capped at max_suppress.
        let hl = spec.half_life.as_millis() as f64;
        let wait = hl * (penalty / f64::from(spec.reuse)).log2();
        let cap = spec.max_suppress.as_millis() as f64;
        at_ms + wait.min(cap).max(0.0).ceil() as u64
    } else {
        0
    };
    DampState {
        last_state: state,
        penalty,
        at_ms,
        suppressed,
        until_ms,
    }
}

/// The record once a suppression has run out (`None` while it holds).
pub fn release(spec: &DampingSpec, st: &DampState, now_ms: u64) -> Option<DampState> {
    if !st.suppressed || now_ms < st.until_ms {
        return None;
    }
    let now_ms = now_ms.max(st.at_ms);
    Some(DampState {
        penalty: decay(st.penalty, now_ms - st.at_ms, spec.half_life),
        at_ms: now_ms,
        suppressed: false,
        until_ms: 0,
        ..st.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use trackwire_core::HealthState::{Down, Up};

    fn spec() -> DampingSpec {
        DampingSpec {
            half_life: Duration::from_secs(10),
            ..DampingSpec::default()
        }
    }

    #[test]
    fn decay_halves_per_half_life() {
        assert!((decay(1000.0, 10_000, Duration::from_secs(10)) - 500.0).abs() < 1e-9);
        assert!((decay(1000.0, 20_000, Duration::from_secs(10)) - 250.0).abs() < 1e-9);
    }

    #[test]
    fn flapping_suppresses_then_releases() {
        let s = spec();
        let mut st = observe(&s, None, Up, 0);
        assert_eq!(st.penalty, 0.0, "appearing is not a flap");
        st = observe(&s, Some(&st), Down, 1_000);
        st = observe(&s, Some(&st), Up, 2_000);
        assert!(!st.suppressed, "two flaps: {}", st.penalty);
        st = observe(&s, Some(&st), Down, 3_000);
        assert!(
            st.suppressed,
            "three quick flaps exceed 2000: {}",
            st.penalty
        );
        // Released when the penalty decays to 750: 10 s * log2(p / 750) later.
        let expect = 3_000 + (10_000.0 * (st.penalty / 750.0).log2()).ceil() as u64;
        assert_eq!(st.until_ms, expect);
        assert_eq!(release(&s, &st, expect - 1), None);
        let r = release(&s, &st, expect).expect("released");
        assert!(!r.suppressed && (r.penalty - 750.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn suppression_is_capped() {
        let s = DampingSpec {
            half_life: Duration::from_secs(60),
            max_suppress: Duration::from_secs(60),
            ..DampingSpec::default()
        };
        let mut st = observe(&s, None, Up, 0);
        for i in 1..20u64 {
            st = observe(&s, Some(&st), if i % 2 == 0 { Up } else { Down }, i);
        }
        assert!(st.suppressed);
        assert!(st.until_ms <= st.at_ms + 60_000);
    }

    proptest! {
        /// Whatever the flap pattern, a suppressed record is never released
        /// before its penalty has decayed to `reuse` (or max_suppress passed).
        #[test]
        fn never_released_early(gaps in proptest::collection::vec(1u64..20_000, 1..30)) {
            let s = spec();
            let mut st = observe(&s, None, Up, 0);
            let mut t = 0;
            let mut state = Up;
            for g in gaps {
                t += g;
                state = if state == Up { Down } else { Up };
                st = observe(&s, Some(&st), state, t);
                if st.suppressed {
                    let at_release = decay(st.penalty, st.until_ms - st.at_ms, s.half_life);
                    let capped = st.until_ms - st.at_ms >= s.max_suppress.as_millis() as u64;
                    prop_assert!(at_release <= f64::from(s.reuse) + 1.0 || capped);
                    prop_assert!(release(&s, &st, st.until_ms.saturating_sub(1)).is_none() || st.until_ms == 0);
                }
            }
        }
    }
}
